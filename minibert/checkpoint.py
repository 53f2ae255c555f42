"""Checkpoints: tensors in safetensors, everything else in JSON, written atomically.

A checkpoint NAME in a directory is two files:

    NAME.<sha16>.safetensors   every tensor, as host NumPy arrays:
                                 "param.<name>"    model parameters
                                 "optim.<key>"     optimizer state, e.g. "optim.m.<name>",
                                                   "optim.v.<name>" (AdamW.state_dict keys)
    NAME.json                  the commit record:
                                 {"format": "minibert-checkpoint", "version": 1,
                                  "tensors_file": "NAME.<sha16>.safetensors",
                                  "tensors_sha256": <hex>, "tensors_bytes": <int>,
                                  "params": [names], "optim": [keys],
                                  "meta": <the caller's JSON-able dict, returned as given>}

<sha16> is the first 16 hex digits of the tensors file's sha256. The tensors file is named
by its content so that saving NAME again never overwrites the file the current NAME.json
points to: each file is written to a temporary file in the same directory, flushed,
fsynced and renamed into place (os.replace), then the directory is fsynced; the tensors
file first, NAME.json last. Until the rename of NAME.json the previous checkpoint stays
complete and loadable; after it the new one is. Tensor files no longer referenced are
removed after the commit. (With a fixed name NAME.safetensors a crash between the two
renames would leave new tensors beside an old record: two files cannot be swapped at once.)

Loading checks the recorded byte size and sha256 before parsing, so truncation and bit
flips are reported as CheckpointError with the file named, never as a deep traceback.
No pickle anywhere: safetensors holds only raw arrays, JSON only plain values.
"""
import hashlib
import json
import os
import re
import tempfile

import numpy
import safetensors.numpy

from minibert import backend

FORMAT = "minibert-checkpoint"
VERSION = 1
_CHUNK = 1 << 22  # bytes read at a time when hashing


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupted or does not match what was expected."""


def _check_name(name):
    if not name or os.sep in name or (os.altsep and os.altsep in name) or name in (".", ".."):
        raise ValueError(f"checkpoint name must be a plain file name, got {name!r}")


def _json_path(directory, name):
    return os.path.join(directory, name + ".json")


def _tensor_file_re(name):
    return re.compile(re.escape(name) + r"\.[0-9a-f]{16}\.safetensors")


def _tmp_file_re(name):
    # mkstemp's random part is 8 characters of [a-z0-9_]; a dot-free match keeps the
    # temporary files of another checkpoint ("NAME.best") out of reach
    return re.compile(r"\." + re.escape(name) + r"\.[a-z0-9_]{8}\.tmp")


def _sha256_file(path):
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def _fsync_dir(directory):
    """Make the renames in directory durable (POSIX; Windows cannot open a directory)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _host(a):
    """A contiguous host NumPy array (0-d scalars included) from either backend."""
    # not ascontiguousarray: it turns a 0-d array into shape (1,)
    return numpy.asarray(backend.to_host(a), order="C")


def save_checkpoint(directory, name, params, optim_tensors, meta):
    """Write checkpoint ``name`` into ``directory`` atomically (see the module docstring).

    params: dict name -> array (either backend); optim_tensors: dict key -> array, e.g. the
    tensors of AdamW.state_dict(); meta: JSON-able dict (config, step, RNG states, data
    position, optimizer meta, tokenizer fingerprint, ...), returned unchanged by load.
    Returns the path of NAME.json.
    """
    _check_name(name)
    os.makedirs(directory, exist_ok=True)
    tensors = {"param." + k: _host(v) for k, v in params.items()}
    tensors.update({"optim." + k: _host(v) for k, v in optim_tensors.items()})
    json.dumps(meta)  # fail on a non-JSON-able meta before anything is written

    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        safetensors.numpy.save_file(tensors, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        sha, nbytes = _sha256_file(tmp)
        tensors_file = f"{name}.{sha[:16]}.safetensors"
        os.replace(tmp, os.path.join(directory, tensors_file))
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(directory)

    record = {
        "format": FORMAT,
        "version": VERSION,
        "tensors_file": tensors_file,
        "tensors_sha256": sha,
        "tensors_bytes": nbytes,
        "params": list(params),
        "optim": list(optim_tensors),
        "meta": meta,
    }
    text = json.dumps(record, indent=1)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, _json_path(directory, name))  # the commit
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(directory)

    # committed: tensor files of earlier saves (or of crashed ones) are garbage now
    stale, tmp_re = _tensor_file_re(name), _tmp_file_re(name)
    for entry in os.listdir(directory):
        if (stale.fullmatch(entry) and entry != tensors_file) or tmp_re.fullmatch(entry):
            try:
                os.remove(os.path.join(directory, entry))
            except OSError:
                pass  # a leftover costs disk space, not correctness
    return _json_path(directory, name)


def checkpoint_exists(directory, name):
    """True when the commit record NAME.json exists (load_checkpoint then validates it)."""
    return os.path.isfile(_json_path(directory, name))


def load_checkpoint(directory, name, expect_params=None):
    """Read checkpoint ``name`` -> (params, optim_tensors, meta), all on the host.

    params: dict name -> NumPy array; optim_tensors: dict key -> NumPy array (the keys
    given to save, e.g. "m.<name>"); meta: the caller's dict as saved.
    expect_params: optional dict name -> array (or anything with .shape): when given, the
    checkpoint must hold exactly those names with those shapes.
    Raises CheckpointError, naming the file, when anything is missing or does not check out.
    """
    _check_name(name)
    jpath = _json_path(directory, name)
    try:
        with open(jpath, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"{jpath}: checkpoint record not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{jpath}: cannot read checkpoint record ({e})") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{jpath}: invalid JSON ({e})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{jpath}: not a minibert checkpoint record (format is not {FORMAT!r})")
    if record.get("version") != VERSION:
        raise CheckpointError(f"{jpath}: unsupported checkpoint version {record.get('version')!r}, expected {VERSION}")
    fields = ("tensors_file", "tensors_sha256", "tensors_bytes", "params", "optim", "meta")
    absent = [k for k in fields if k not in record]
    if absent:
        raise CheckpointError(f"{jpath}: checkpoint record lacks {absent}")
    tfile = record["tensors_file"]
    if not isinstance(tfile, str) or not _tensor_file_re(name).fullmatch(tfile):
        raise CheckpointError(f"{jpath}: bad tensors_file entry {tfile!r}")

    tpath = os.path.join(directory, tfile)
    try:
        sha, nbytes = _sha256_file(tpath)
    except FileNotFoundError:
        raise CheckpointError(f"{tpath}: tensors file not found (named by {jpath})") from None
    except OSError as e:
        raise CheckpointError(f"{tpath}: cannot read tensors file ({e})") from None
    if nbytes != record["tensors_bytes"]:
        raise CheckpointError(
            f"{tpath}: truncated or wrong file: {nbytes} bytes, the record says {record['tensors_bytes']}"
        )
    if sha != record["tensors_sha256"]:
        raise CheckpointError(f"{tpath}: corrupted: sha256 {sha} differs from the recorded {record['tensors_sha256']}")
    try:
        tensors = safetensors.numpy.load_file(tpath)
    except Exception as e:  # SafetensorError and friends: report, do not unwind into Rust
        raise CheckpointError(f"{tpath}: cannot parse safetensors ({type(e).__name__}: {e})") from None

    expected = {"param." + k for k in record["params"]} | {"optim." + k for k in record["optim"]}
    if set(tensors) != expected:
        missing = sorted(expected - set(tensors))
        extra = sorted(set(tensors) - expected)
        raise CheckpointError(f"{tpath}: tensors differ from the record: missing {missing}, unexpected {extra}")
    # writable copies: the caller may hand them to the optimizer, which updates in place
    params = {k: numpy.array(tensors["param." + k]) for k in record["params"]}
    optim = {k: numpy.array(tensors["optim." + k]) for k in record["optim"]}

    if expect_params is not None:
        missing = sorted(set(expect_params) - set(params))
        extra = sorted(set(params) - set(expect_params))
        if missing or extra:
            raise CheckpointError(f"{tpath}: parameters differ from the model: missing {missing}, unexpected {extra}")
        for k, a in expect_params.items():
            if tuple(params[k].shape) != tuple(a.shape):
                raise CheckpointError(
                    f"{tpath}: parameter {k!r} has shape {tuple(params[k].shape)}, the model has {tuple(a.shape)}"
                )
    return params, optim, record["meta"]
