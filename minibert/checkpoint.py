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
points to: each file is written with atomic.atomic_write (a temporary file in the same
directory, flushed, fsynced and renamed into place, then the directory fsynced); the
tensors file first, NAME.json last. Until the rename of NAME.json the previous checkpoint stays
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

import numpy
import safetensors.numpy

from minibert import backend
from minibert.atomic import atomic_write

FORMAT = "minibert-checkpoint"
VERSION = 1
_CHUNK = 1 << 22  # bytes read at a time when hashing


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupted or does not match what was expected."""


def _check_name(name):
    if not name or os.sep in name or (os.altsep and os.altsep in name) or name in (".", ".."):
        raise ValueError(f"checkpoint name must be a plain file name, got {name!r}")


def record_path(directory, name):
    """DIRECTORY/NAME.json, the commit record of checkpoint NAME: the one place its file name is spelled."""
    return os.path.join(directory, name + ".json")


def _tensor_file_re(name):
    return re.compile(re.escape(name) + r"\.[0-9a-f]{16}\.safetensors")


def _tmp_file_re(name):
    # atomic_write's temporary files: ".NAME.<sha16>.safetensors.<random>.tmp" and
    # ".NAME.json.<random>.tmp" (older versions wrote ".NAME.<random>.tmp"); mkstemp's random
    # part is 8 characters of [a-z0-9_]. The exact middle keeps the temporary files of
    # another checkpoint ("NAME.best") out of reach.
    return re.compile(r"\." + re.escape(name) + r"(\.[0-9a-f]{16}\.safetensors|\.json)?\.[a-z0-9_]{8}\.tmp")


def _sha256_file(path):
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


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

    data = safetensors.numpy.save(tensors)
    sha = hashlib.sha256(data).hexdigest()
    tensors_file = f"{name}.{sha[:16]}.safetensors"
    atomic_write(os.path.join(directory, tensors_file), data)

    record = {
        "format": FORMAT,
        "version": VERSION,
        "tensors_file": tensors_file,
        "tensors_sha256": sha,
        "tensors_bytes": len(data),
        "params": list(params),
        "optim": list(optim_tensors),
        "meta": meta,
    }
    atomic_write(record_path(directory, name), json.dumps(record, indent=1))  # the commit

    # committed: tensor files of earlier saves (or of crashed ones) are garbage now
    stale, tmp_re = _tensor_file_re(name), _tmp_file_re(name)
    for entry in os.listdir(directory):
        if (stale.fullmatch(entry) and entry != tensors_file) or tmp_re.fullmatch(entry):
            try:
                os.remove(os.path.join(directory, entry))
            except OSError:
                pass  # a leftover costs disk space, not correctness
    return record_path(directory, name)


def checkpoint_exists(directory, name):
    """True when the commit record NAME.json exists (load_checkpoint then validates it)."""
    return os.path.isfile(record_path(directory, name))


def _read_record(directory, name):
    """The validated commit record NAME.json (a dict); CheckpointError naming the file."""
    _check_name(name)
    jpath = record_path(directory, name)
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
    return record


def read_meta(directory, name):
    """The meta dict of checkpoint ``name``, from its commit record alone (no tensors read)."""
    return _read_record(directory, name)["meta"]


def check_tensors(tensors, expect, where):
    """CheckpointError, starting with `where`, unless tensors (name -> array) holds exactly
    the names of expect (name -> array or shape tuple) with those shapes."""
    backend.check_keys(tensors, expect, f"{where}: parameters differ from the model", CheckpointError)
    for k, a in expect.items():
        shape = tuple(getattr(a, "shape", a))
        if tuple(tensors[k].shape) != shape:
            raise CheckpointError(f"{where}: parameter {k!r} has shape {tuple(tensors[k].shape)}, the model has {shape}")


def load_checkpoint(directory, name, expect_params=None):
    """Read checkpoint ``name`` -> (params, optim_tensors, meta), all on the host.

    params: dict name -> NumPy array; optim_tensors: dict key -> NumPy array (the keys
    given to save, e.g. "m.<name>"); meta: the caller's dict as saved.
    expect_params: optional dict name -> array or shape tuple: when given, the checkpoint
    must hold exactly those names with those shapes (check_tensors).
    Raises CheckpointError, naming the file, when anything is missing or does not check out.
    """
    record = _read_record(directory, name)
    jpath = record_path(directory, name)
    tpath = os.path.join(directory, record["tensors_file"])
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
    backend.check_keys(tensors, expected, f"{tpath}: tensors differ from the record", CheckpointError)
    # writable copies: the caller may hand them to the optimizer, which updates in place
    params = {k: numpy.array(tensors["param." + k]) for k in record["params"]}
    optim = {k: numpy.array(tensors["optim." + k]) for k in record["optim"]}
    if expect_params is not None:
        check_tensors(params, expect_params, tpath)
    return params, optim, record["meta"]
