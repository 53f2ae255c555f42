"""The run directory: atomic writes, one writer at a time, and loading by kind with the
tokenizer-fingerprint check. The two-programs lock test and the kill -9 resume test with
scripts/pretrain.py are in test_train.py."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from minibert import backend, rundir
from minibert.atomic import atomic_write
from minibert.checkpoint import CheckpointError, save_checkpoint
from minibert.inference import load_pretrained
from minibert.metrics import MetricsFile
from minibert.model import BertConfig, BertForPreTraining
from minibert.tokenizer import SPECIAL_TOKENS, BPETokenizer

TEXT = "The parser reads the buffer. A socket writes a byte string. The queue yields the next item.\n"


def small_config(vocab_size):
    return BertConfig(vocab_size=vocab_size, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=12,
                      max_position=16, dtype="float64")


def make_tokenizer(extra=""):
    return BPETokenizer.train_from_iterator([TEXT + extra], 256 + len(SPECIAL_TOKENS) + 8,
                                            special_tokens=SPECIAL_TOKENS, progress=False)


@pytest.fixture
def run(tmp_path):
    """A pretraining run directory: tokenizer.json and checkpoint "last" of a tiny BERT."""
    tok = make_tokenizer()
    config = small_config(tok.vocab_size)
    model = BertForPreTraining(config, seed=0)
    tok.save(tmp_path / rundir.TOKENIZER_FILE)
    rundir.save(str(tmp_path), "last", rundir.PRETRAINING_KIND, model.params, {},
                {"config": config.to_dict(), "step": 7}, tok)
    rundir.write_json(tmp_path / rundir.CONFIG_FILE, {"model": config.to_dict(), "train": {"heldout_fraction": 0.2}})
    return tmp_path, model, tok


# ----------------------------------------------------------------------------------------
# atomic_write


def test_atomic_write_str_and_bytes(tmp_path):
    atomic_write(tmp_path / "a.json", '{"é": 1}')
    atomic_write(str(tmp_path / "b.bin"), b"\x00\xff")
    assert (tmp_path / "a.json").read_bytes() == '{"é": 1}'.encode("utf-8")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    assert sorted(os.listdir(tmp_path)) == ["a.json", "b.bin"]  # no temporary left behind


def test_atomic_write_crash_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    atomic_write(path, "old")

    def crash(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        atomic_write(path, "new and longer")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["config.json"]


def test_every_file_of_a_run_is_written_through_atomic_write(tmp_path, monkeypatch):
    """Checkpoints, tokenizer.json, config/results JSON and HF exports all go through
    atomic_write: with os.replace broken, none of them is written."""
    from minibert import interop
    tok = make_tokenizer()
    model = BertForPreTraining(small_config(tok.vocab_size), seed=0)
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError("no rename")))
    writes = [lambda: tok.save(tmp_path / "tokenizer.json"),
              lambda: tok.save_gpt2_files(tmp_path / "gpt2"),
              lambda: rundir.write_json(tmp_path / "results.json", {"acc": 1.0}),
              lambda: rundir.save(str(tmp_path), "last", rundir.PRETRAINING_KIND, model.params, {}, {}, tok),
              lambda: interop.save_hf(model, tmp_path / "hf")]
    for write in writes:
        with pytest.raises(OSError, match="no rename"):
            write()
    left = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs]
    assert left == [], left


def test_metrics_cut_short_by_a_kill_resume(tmp_path):
    """kill -9 in the middle of an append leaves half a line: a resumed run drops it (and the
    lines past its checkpoint) instead of failing on it."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 5, "loss": 2.0}\n\n{"step": 10, "loss": 1.5}\n{"step": 15, "loss": 1.2}\n{"step": 20, "lo')
    metrics = MetricsFile(str(path), resume_step=10)
    assert path.read_text() == '{"step": 5, "loss": 2.0}\n{"step": 10, "loss": 1.5}\n'
    metrics.write({"step": 15, "loss": 1.1})
    assert [json.loads(l)["step"] for l in path.read_text().splitlines()] == [5, 10, 15]
    path.write_text('{"step": 5, "loss": 2.0}')  # a whole last line, only its newline lost
    MetricsFile(str(path), resume_step=10).write({"step": 10})
    assert path.read_text() == '{"step": 5, "loss": 2.0}\n{"step": 10}\n'


# ----------------------------------------------------------------------------------------
# one writer at a time


def test_second_writer_is_refused_naming_dir_and_pid(tmp_path):
    out = tmp_path / "run"
    with rundir.lock(out):
        assert (out / rundir.LOCK_FILE).read_text().strip() == str(os.getpid())
        with pytest.raises(rundir.RunDirLocked, match=f"{out} is in use.*PID {os.getpid()}"):
            with rundir.lock(out):
                pass
    with rundir.lock(out):  # released at the end of the with-statement
        pass


HOLDER = """
import sys, time
from minibert import rundir
with rundir.lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_lock_held_by_another_process_and_released_by_kill_9(tmp_path):
    out = tmp_path / "run"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=root))
    try:
        assert proc.stdout.readline().strip() == "locked"
        t0 = time.time()
        with pytest.raises(rundir.RunDirLocked, match=f"PID {proc.pid}\\)") as e:
            with rundir.lock(out):
                pass
        assert time.time() - t0 < 2  # at once, not after a wait
        assert str(out) in str(e.value)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with rundir.lock(out):  # the kernel released the dead holder's lock; its stale PID is replaced
        assert (out / rundir.LOCK_FILE).read_text().strip() == str(os.getpid())


# ----------------------------------------------------------------------------------------
# loading by kind


def test_load_run_round_trip(run):
    path, model, tok = run
    config, params, meta, tok2 = rundir.load_run(str(path), "last", rundir.PRETRAINING_KIND)
    assert meta["kind"] == rundir.PRETRAINING_KIND and meta["step"] == 7
    assert meta["tokenizer_fingerprint"] == tok.fingerprint() == tok2.fingerprint()
    assert config == model.config
    for k, v in model.params.items():
        assert np.array_equal(backend.to_host(params[k]), backend.to_host(v)), k
    config32, params32, _, _ = rundir.load_run(str(path), "last", rundir.PRETRAINING_KIND, dtype="float32")
    assert config32.dtype == "float32" and all(p.dtype == np.float32 for p in params32.values())
    assert rundir.read_meta(str(path), "last", rundir.PRETRAINING_KIND)["step"] == 7
    assert rundir.run_heldout_fraction(str(path)) == 0.2
    assert rundir.run_heldout_fraction(str(path / "nowhere"), default=0.05) == 0.05


def test_wrong_kind_is_refused_by_every_reader(run):
    path, _, tok = run
    with pytest.raises(CheckpointError, match=r"last\.json is not a fine-tuned classifier: its kind is "
                                              r"'minibert-pretraining'.*\(it is a pretraining checkpoint\)"):
        rundir.load_run(str(path), "last", rundir.CLASSIFICATION_KIND)
    for read in (rundir.read_meta, rundir.read_checkpoint):
        with pytest.raises(CheckpointError, match="is not a fine-tuned classifier"):
            read(str(path), "last", rundir.CLASSIFICATION_KIND)
    # a checkpoint from elsewhere, with no kind at all
    save_checkpoint(str(path), "other", {"w": np.zeros(2)}, {}, {"step": 1})
    with pytest.raises(CheckpointError, match="other.json is not a pretraining checkpoint: its kind is None"):
        rundir.read_pretrained_encoder(str(path), "other")
    with pytest.raises(ValueError, match="unknown checkpoint kind"):
        rundir.save(str(path), "x", "minibert-something", {}, {}, {}, tok)


def test_wrong_or_missing_tokenizer_is_refused(run):
    path, _, tok = run
    other = make_tokenizer("Completely different words: zebra quartz.")
    assert other.fingerprint() != tok.fingerprint()
    with pytest.raises(CheckpointError, match="is not the tokenizer that .*last.json was trained with"):
        rundir.read_checkpoint(str(path), "last", rundir.PRETRAINING_KIND, tok=other)
    rundir.read_checkpoint(str(path), "last", rundir.PRETRAINING_KIND, tok=tok)  # the right one passes
    other.save(path / rundir.TOKENIZER_FILE)
    with pytest.raises(CheckpointError, match=r"tokenizer\.json is not the tokenizer that .*last\.json was trained"):
        rundir.load_run(str(path), "last", rundir.PRETRAINING_KIND)
    # an explicitly given tokenizer is the caller's word: not checked
    tok.save(path / "mine.json")
    assert rundir.load_run(str(path), "last", rundir.PRETRAINING_KIND, tokenizer=str(path / "mine.json"))[3] \
        .fingerprint() == tok.fingerprint()
    os.remove(path / rundir.TOKENIZER_FILE)
    with pytest.raises(FileNotFoundError, match="not a minibert run directory: .*tokenizer.json is missing"):
        rundir.load_run(str(path), "last", rundir.PRETRAINING_KIND)


def test_params_that_do_not_match_the_config_are_refused(run):
    path, model, tok = run
    params = dict(model.params)
    del params["nsp.b"]
    rundir.save(str(path), "last", rundir.PRETRAINING_KIND, params, {}, {"config": model.config.to_dict()}, tok)
    for read in (lambda: rundir.load_run(str(path), "last", rundir.PRETRAINING_KIND),
                 lambda: rundir.read_pretrained_encoder(str(path))):
        with pytest.raises(CheckpointError, match=r"last\.json: parameters differ from the model: "
                                                  r"missing \['nsp\.b'\], unexpected \[\]"):
            read()


def test_read_pretrained_encoder_drops_the_heads(run):
    path, model, _ = run
    config, params, meta = rundir.read_pretrained_encoder(str(path))
    assert meta["step"] == 7 and config == model.config
    assert params and not [k for k in params if k.startswith(("mlm.", "nsp."))]
    assert set(params) == {k for k in model.params if not k.startswith(("mlm.", "nsp."))}


def test_read_config(run, tmp_path_factory):
    path, model, _ = run
    assert rundir.read_config(str(path))["model"] == model.config.to_dict()
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        rundir.read_config(str(tmp_path_factory.mktemp("empty")))
    (path / rundir.CONFIG_FILE).write_text('{"model": ')
    with pytest.raises(ValueError, match="config.json: invalid JSON"):
        rundir.read_config(str(path))


def test_check_keys_names_both_sides():
    with pytest.raises(ValueError, match=r"^grads: missing \['a'\], unexpected \['c'\]$"):
        backend.check_keys({"b": 1, "c": 2}, ["a", "b"], "grads")
    with pytest.raises(CheckpointError):
        backend.check_keys({"b"}, {"b", "z"}, "x", CheckpointError)
    backend.check_keys({"a": 1}, {"a"}, "fine")  # same names: no error


def test_checkpoint_written_as_before_still_loads(tmp_path):
    """The layout written before atomic_write (safetensors.save_file to a temporary file,
    then a hand-built record) is the layout read today: old run directories load."""
    import hashlib
    from safetensors.numpy import save_file
    tok = make_tokenizer()
    config = small_config(tok.vocab_size)
    model = BertForPreTraining(config, seed=3)
    tmp = tmp_path / "t.tmp"
    save_file({"param." + k: backend.to_host(v) for k, v in model.params.items()}, str(tmp))
    data = tmp.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    os.replace(tmp, tmp_path / f"last.{sha[:16]}.safetensors")
    meta = {"kind": "minibert-pretraining", "config": config.to_dict(), "tokenizer_fingerprint": tok.fingerprint()}
    record = {"format": "minibert-checkpoint", "version": 1, "tensors_file": f"last.{sha[:16]}.safetensors",
              "tensors_sha256": sha, "tensors_bytes": len(data), "params": list(model.params), "optim": [],
              "meta": meta}
    (tmp_path / "last.json").write_text(json.dumps(record, indent=1))
    tok.save(tmp_path / "tokenizer.json")
    model2, _ = load_pretrained(str(tmp_path))
    for k, v in model.params.items():
        assert np.array_equal(backend.to_host(model2.params[k]), backend.to_host(v)), k
