"""A run directory: what pretraining and fine-tuning write, one writer at a time, and the
one way to read it back.

    OUT/
      .lock                          the writer's lock (see lock()), holding its PID
      tokenizer.json                 the tokenizer the run trained with (BPETokenizer or WordPieceTokenizer .save)
      config.json                    the run's settings: {"model": ..., "train" or "finetune": ...}
      last.json, last.<sha16>.safetensors   the latest checkpoint (checkpoint.py)
      best.json, best.<sha16>.safetensors   pretraining: the lowest held-out loss so far
      metrics.jsonl                  one JSON line per log interval and evaluation (appended)
      results.json                   fine-tuning: the final evaluation

Every checkpoint's meta says what it holds, its kind (RUN_KINDS), and carries the fingerprint
of the tokenizer it was trained with:

    "minibert-pretraining"      BertForPreTraining: params, AdamW state, step, data position
    "minibert-classification"   BertForSequenceClassification: the same, plus the label
                                names, max length and data columns
    "minibert-tagging"          BertForTokenClassification: the same, plus the tag names and scheme
    "minibert-question-answering"  BertForQuestionAnswering: the same, plus the window settings
    "minibert-multiple-choice"  BertForMultipleChoice: the same, plus the max length

Writing. Every file except metrics.jsonl (appended one line at a time) is written with
atomic.atomic_write, whole or not at all; a checkpoint commits its record NAME.json last.
A kill -9 at any moment therefore leaves each file either as it was or as it was meant to
be. A writer holds lock(OUT) for the life of its run, so two runs never write into one
directory; readers (fill-mask, evaluate, export, fine-tuning from a pretraining run) take
no lock and still see only complete checkpoints.

Reading, by kind. load_run and read_checkpoint check, naming the file: the checkpoint is
whole (sha256, checkpoint.py), its kind is the one asked for, tokenizer.json is the
tokenizer it was trained with (fingerprint), and a pretraining checkpoint's parameters are
exactly those its config describes.
"""
import contextlib
import json
import os
import time

try:
    import fcntl
except ImportError:  # Windows has no flock: runs there are not guarded against a second writer
    fcntl = None

from minibert import backend
from minibert.atomic import atomic_write
from minibert.checkpoint import CheckpointError, check_tensors, load_checkpoint, record_path, save_checkpoint
from minibert.checkpoint import read_meta as read_record_meta
from minibert.encoder import encoder_param_shapes
from minibert.model import BertConfig, pretraining_model
from minibert.tokenizer_files import load_tokenizer

PRETRAINING_KIND = "minibert-pretraining"
CLASSIFICATION_KIND = "minibert-classification"
TAGGING_KIND = "minibert-tagging"
QA_KIND = "minibert-question-answering"
CHOICE_KIND = "minibert-multiple-choice"
RUN_KINDS = {PRETRAINING_KIND: "a pretraining checkpoint", CLASSIFICATION_KIND: "a fine-tuned classifier",
             TAGGING_KIND: "a fine-tuned token tagger", QA_KIND: "a fine-tuned question answerer",
             CHOICE_KIND: "a fine-tuned multiple-choice model"}

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "config.json"  # a run's settings here; a model's config in a transformers directory (interop.py)
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
LOCK_FILE = ".lock"


# ----------------------------------------------------------------------------------------
# one writer at a time


class RunDirLocked(RuntimeError):
    """Another process is writing to the run directory."""


def _lock_holder(fd):
    """The PID written into the lock file by its holder ("unknown" if it has not yet written it)."""
    for _ in range(50):  # the holder writes its PID just after taking the lock
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text:
            return text
        time.sleep(0.01)
    return "unknown"


@contextlib.contextmanager
def lock(out):
    """Hold the run directory's writer lock for the body of the with-statement.

    An exclusive fcntl.flock on OUT/.lock, with this process's PID written into the file.
    The kernel releases it when the process ends, however it ends (kill -9 included), so a
    stale lock file never blocks a later run. A second writer, in this process or another,
    raises RunDirLocked at once, naming the directory and the holder's PID."""
    os.makedirs(out, exist_ok=True)
    fd = os.open(os.path.join(out, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunDirLocked(
                    f"{out} is in use: another minibert run (PID {_lock_holder(fd)}) is writing to it. Wait for "
                    f"it to finish or stop it, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


# ----------------------------------------------------------------------------------------
# writing


def write_json(path, obj):
    """obj as indented JSON at path, atomically (config.json, results.json)."""
    atomic_write(path, json.dumps(obj, indent=2))


def save(out, name, kind, params, optim_tensors, meta, tok):
    """Checkpoint NAME of kind KIND into OUT, its meta stamped with the kind and tok's
    fingerprint (see checkpoint.save_checkpoint for the rest)."""
    if kind not in RUN_KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}: expected one of {sorted(RUN_KINDS)}")
    meta = dict(meta, kind=kind, tokenizer_fingerprint=tok.fingerprint())
    return save_checkpoint(out, name, params, optim_tensors, meta)


# ----------------------------------------------------------------------------------------
# reading


def check_kind(meta, run_dir, name, kind):
    """CheckpointError unless checkpoint NAME of run_dir (its meta given) is of KIND."""
    found = meta.get("kind")
    if found != kind:
        hint = f" (it is {RUN_KINDS[found]})" if found in RUN_KINDS else ""
        raise CheckpointError(f"{record_path(run_dir, name)} is not {RUN_KINDS[kind]}: its kind is "
                              f"{found!r}, expected {kind!r}{hint}")


def check_tokenizer(meta, tok, run_dir, name, tok_source):
    """CheckpointError unless tok (read from tok_source) is the tokenizer checkpoint NAME was trained with."""
    if meta.get("tokenizer_fingerprint") != tok.fingerprint():
        raise CheckpointError(f"{tok_source} is not the tokenizer that {record_path(run_dir, name)} was trained with "
                              f"(fingerprint {tok.fingerprint()}, the checkpoint's {meta.get('tokenizer_fingerprint')})")


def read_meta(run_dir, name, kind):
    """The meta of checkpoint NAME of KIND, from its record alone (no tensors read)."""
    meta = read_record_meta(run_dir, name)
    check_kind(meta, run_dir, name, kind)
    return meta


def read_checkpoint(run_dir, name, kind, tok=None):
    """(params, optimizer tensors, meta), on the host, of checkpoint NAME of KIND: what a
    resumed run restores. With tok, it must be the tokenizer the checkpoint was trained with."""
    params, optim, meta = load_checkpoint(run_dir, name)
    check_kind(meta, run_dir, name, kind)
    if tok is not None:
        check_tokenizer(meta, tok, run_dir, name, "the tokenizer given")
    return params, optim, meta


def restore(run_dir, kind, tok, model, opt, expect):
    """Load checkpoint RUN_DIR/last into model.params and opt, for an exact resume; returns its meta.

    expect maps a section of the checkpoint's meta to the settings that change what the run
    computes, as {what: (section, settings)}, e.g. {"settings": ("train", {"seed": 0, ...})}
    (section None: the meta itself): each must equal what was saved, or ValueError names the differing fields. CheckpointError
    for a checkpoint of another kind, another tokenizer, or other parameters."""
    params, tensors, meta = read_checkpoint(run_dir, "last", kind, tok)
    for what, (section, now) in expect.items():
        saved = meta[section] if section else meta
        diff = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
        if diff:
            raise ValueError(f"cannot resume {run_dir} exactly: {what} differ from the checkpoint's "
                             f"(field: (checkpoint, now) {diff})")
    check_tensors(params, model.params, record_path(run_dir, "last"))
    for k, v in params.items():
        model.params[k][...] = backend.to_device(v)
    opt.load_state_dict(tensors, meta["optim"])
    return meta


def run_tokenizer(run_dir, meta, name="last", path=None):
    """The run's tokenizer.json, checked against checkpoint NAME's fingerprint (meta); or
    the tokenizer at `path`, which the caller vouches for (it is not checked)."""
    if path:
        return load_tokenizer(path)
    tok_path = os.path.join(run_dir, TOKENIZER_FILE)
    if not os.path.exists(tok_path):
        raise FileNotFoundError(f"{run_dir} is not a minibert run directory: {tok_path} is missing")
    tok = load_tokenizer(tok_path)
    check_tokenizer(meta, tok, run_dir, name, tok_path)
    return tok


def load_run(run_dir, name, kind, dtype=None, tokenizer=None):
    """(BertConfig, params on the device, meta, tokenizer) of checkpoint NAME of a run directory.

    The checkpoint must be of KIND and RUN_DIR/tokenizer.json the tokenizer it was trained
    with (tokenizer: a tokenizer.json to use instead, unchecked); CheckpointError otherwise.
    dtype: None keeps the saved one, else "float32" or "float64"."""
    if not tokenizer and not os.path.exists(os.path.join(run_dir, TOKENIZER_FILE)):
        raise FileNotFoundError(f"{run_dir} is not a minibert run directory: "
                                f"{os.path.join(run_dir, TOKENIZER_FILE)} is missing")
    params, _, meta = read_checkpoint(run_dir, name, kind)
    tok = run_tokenizer(run_dir, meta, name, tokenizer)
    config = BertConfig.from_dict(meta["config"])
    if kind == PRETRAINING_KIND:  # MLM + NSP, or MLM alone (meta "model_class")
        check_tensors(params, pretraining_model(meta)[1](config), record_path(run_dir, name))
    if dtype is not None:
        config.dtype = dtype
    params = {k: backend.to_device(v, dtype=config.dtype) for k, v in params.items()}
    return config, params, meta, tok


def read_pretrained_encoder(run_dir, name="last", dtype=None):
    """(BertConfig, encoder params on the device, meta) of a pretraining run's checkpoint.

    Only the encoder (emb.*, layers.*, pool.*) is kept: the MLM and NSP heads are dropped
    (an MLM-only run has no pool.*).
    The tokenizer is left to the caller (run_tokenizer). CheckpointError for a checkpoint
    of another kind, naming what it is, or one whose parameters do not match its config."""
    params, _, meta = read_checkpoint(run_dir, name, PRETRAINING_KIND)
    config = BertConfig.from_dict(meta["config"])
    check_tensors(params, pretraining_model(meta)[1](config), record_path(run_dir, name))
    if dtype is not None:
        config.dtype = dtype
    # an MLM-only run (BertForMaskedLM) has no pooler: the classifier draws a fresh one
    params = {k: backend.to_device(params[k], dtype=config.dtype) for k in encoder_param_shapes(config) if k in params}
    return config, params, meta


def read_config(run_dir):
    """The run's config.json as a dict; FileNotFoundError or ValueError naming the file."""
    path = os.path.join(run_dir, CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{run_dir} is not a minibert run directory: {path} is missing") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None


def run_heldout_fraction(run_dir, default=0.05):
    """The heldout_fraction a pretraining run used (its config.json), else `default`."""
    try:
        return float(read_config(run_dir)["train"]["heldout_fraction"])
    except (OSError, KeyError, ValueError, TypeError):
        return default
