"""Checkpoint round trips, damage detection and atomicity.

Damage is made by hand (truncation, one flipped byte, garbage JSON, deleted files), and a
crash is simulated by making os.replace raise part-way through a save.
"""
import json
import os

import numpy as np
import pytest

from minibert import backend
from minibert.checkpoint import CheckpointError, checkpoint_exists, load_checkpoint, save_checkpoint
from minibert.optim import AdamW


def make(seed, dtype):
    r = np.random.default_rng(seed)
    params = {"emb": r.standard_normal((7, 4)).astype(dtype), "ln.b": r.standard_normal(4).astype(dtype),
              "scale": np.array(r.standard_normal(), dtype=dtype), "empty": np.zeros((0, 3), dtype)}
    optim = {"m.emb": r.standard_normal((7, 4)).astype(dtype), "v.emb": r.random((7, 4)).astype(dtype)}
    meta = {"step": 120 + seed, "config": {"hidden": 4, "dropout": 0.1, "name": "tiny"},
            "rng": {"seed": 1234, "state": [2**63 + 5, 7]}, "data_position": [3, 1024],
            "tokenizer_sha256": "ab" * 32, "loss": float("nan"), "lr": 1e-4 / 3}
    return params, optim, meta


def tensors_path(directory, name):
    return os.path.join(directory, json.load(open(os.path.join(directory, name + ".json")))["tensors_file"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_roundtrip_bitwise(tmp_path, dtype):
    params, optim, meta = make(0, dtype)
    dev_params = {k: backend.to_device(v) for k, v in params.items()}  # device arrays go in
    assert not checkpoint_exists(tmp_path, "ckpt")
    save_checkpoint(tmp_path, "ckpt", dev_params, optim, meta)
    assert checkpoint_exists(tmp_path, "ckpt")
    p2, o2, m2 = load_checkpoint(tmp_path, "ckpt", expect_params=params)
    assert list(p2) == list(params) and list(o2) == list(optim)
    for src, got in ((params, p2), (optim, o2)):
        for k in src:
            assert type(got[k]) is np.ndarray and got[k].dtype == dtype and got[k].shape == src[k].shape
            assert got[k].tobytes() == src[k].tobytes(), k  # bitwise
            assert got[k].flags.writeable
    assert np.isnan(m2.pop("loss")) and np.isnan(meta.pop("loss"))
    assert m2 == meta and m2["lr"] == 1e-4 / 3  # floats survive JSON exactly
    # no temporary files are left behind
    assert sorted(os.listdir(tmp_path)) == sorted(["ckpt.json", os.path.basename(tensors_path(tmp_path, "ckpt"))])


def test_roundtrip_with_optimizer_state(tmp_path):
    params, _, _ = make(1, np.float64)
    dev = {k: backend.to_device(v.copy()) for k, v in params.items() if v.size}
    opt = AdamW(dev, lr=1e-3)
    r = np.random.default_rng(2)
    for _ in range(3):
        opt.step({k: backend.to_device(r.standard_normal(v.shape)) for k, v in dev.items()})
    tensors, ometa = opt.state_dict()
    save_checkpoint(tmp_path, "c", dev, tensors, {"optim": ometa, "step": 3})
    p2, o2, m2 = load_checkpoint(tmp_path, "c")
    opt2 = AdamW({k: backend.to_device(v) for k, v in p2.items()})
    opt2.load_state_dict(o2, m2["optim"])
    assert opt2.t == 3
    for k in dev:
        np.testing.assert_array_equal(backend.to_host(opt2.m[k]), backend.to_host(opt.m[k]))


def test_overwrite_keeps_one_tensor_file(tmp_path):
    for seed in range(3):
        params, optim, meta = make(seed, np.float32)
        save_checkpoint(tmp_path, "latest", params, optim, meta)
    save_checkpoint(tmp_path, "latest.best", *make(9, np.float32))  # a neighbour is not touched
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 4, files
    p2, _, m2 = load_checkpoint(tmp_path, "latest")
    assert m2["step"] == 122
    assert p2["emb"].tobytes() == make(2, np.float32)[0]["emb"].tobytes()
    assert load_checkpoint(tmp_path, "latest.best")[2]["step"] == 129


def test_truncated_tensors(tmp_path):
    save_checkpoint(tmp_path, "ckpt", *make(0, np.float32))
    tpath = tensors_path(tmp_path, "ckpt")
    data = open(tpath, "rb").read()
    open(tpath, "wb").write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or wrong file: ") as e:
        load_checkpoint(tmp_path, "ckpt")
    assert os.path.basename(tpath) in str(e.value) and "\n" not in str(e.value)


def test_corrupted_byte(tmp_path):
    save_checkpoint(tmp_path, "ckpt", *make(0, np.float64))
    tpath = tensors_path(tmp_path, "ckpt")
    data = bytearray(open(tpath, "rb").read())
    data[-3] ^= 0x01  # one bit in the last tensor's payload: safetensors alone would not notice
    open(tpath, "wb").write(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted: sha256 ") as e:
        load_checkpoint(tmp_path, "ckpt")
    assert os.path.basename(tpath) in str(e.value)


def test_unparseable_tensors_with_matching_record(tmp_path):
    """A record that vouches for a broken file still gives CheckpointError, not a SafetensorError."""
    save_checkpoint(tmp_path, "ckpt", *make(0, np.float32))
    jpath = tmp_path / "ckpt.json"
    record = json.loads(jpath.read_text())
    tpath = os.path.join(tmp_path, record["tensors_file"])
    garbage = b"\x08\x00\x00\x00\x00\x00\x00\x00not json"
    open(tpath, "wb").write(garbage)
    import hashlib
    record.update(tensors_bytes=len(garbage), tensors_sha256=hashlib.sha256(garbage).hexdigest())
    jpath.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="cannot parse safetensors") as e:
        load_checkpoint(tmp_path, "ckpt")
    assert os.path.basename(tpath) in str(e.value)


def test_garbage_json(tmp_path):
    save_checkpoint(tmp_path, "ckpt", *make(0, np.float32))
    (tmp_path / "ckpt.json").write_bytes(b'{"format": "minibert-checkpoint", "vers')
    with pytest.raises(CheckpointError, match="invalid JSON") as e:
        load_checkpoint(tmp_path, "ckpt")
    assert "ckpt.json" in str(e.value)
    (tmp_path / "ckpt.json").write_text('{"format": "minibert-checkpoint", "version": 1}')
    with pytest.raises(CheckpointError, match="lacks") as e:
        load_checkpoint(tmp_path, "ckpt")
    assert "ckpt.json" in str(e.value)
    (tmp_path / "ckpt.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not a minibert checkpoint"):
        load_checkpoint(tmp_path, "ckpt")


def test_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="ckpt.json.*not found"):
        load_checkpoint(tmp_path, "ckpt")
    save_checkpoint(tmp_path, "ckpt", *make(0, np.float32))
    tpath = tensors_path(tmp_path, "ckpt")
    os.remove(tpath)
    with pytest.raises(CheckpointError, match="not found") as e:
        load_checkpoint(tmp_path, "ckpt")
    assert os.path.basename(tpath) in str(e.value)


def test_expected_params_mismatch(tmp_path):
    params, optim, meta = make(0, np.float32)
    save_checkpoint(tmp_path, "ckpt", params, optim, meta)
    with pytest.raises(CheckpointError, match="missing \\['extra'\\]"):
        load_checkpoint(tmp_path, "ckpt", expect_params={**params, "extra": np.zeros(2)})
    with pytest.raises(CheckpointError, match="unexpected \\['scale'\\]"):
        load_checkpoint(tmp_path, "ckpt", expect_params={k: v for k, v in params.items() if k != "scale"})
    with pytest.raises(CheckpointError, match="'emb' has shape \\(7, 4\\), the model has \\(4, 7\\)"):
        load_checkpoint(tmp_path, "ckpt", expect_params={**params, "emb": params["emb"].T})


def test_non_json_meta_writes_nothing(tmp_path):
    params, optim, _ = make(0, np.float32)
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, "ckpt", params, optim, {"bad": object()})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("fail_on", [1, 2])
def test_crash_during_save_keeps_previous(tmp_path, monkeypatch, fail_on):
    """os.replace raising on its 1st (tensors) or 2nd (JSON) call of a save leaves the old checkpoint."""
    old_params, old_optim, old_meta = make(0, np.float64)
    save_checkpoint(tmp_path, "ckpt", old_params, old_optim, old_meta)

    real_replace, calls = os.replace, []

    def crashing_replace(src, dst):
        calls.append(dst)
        if len(calls) == fail_on:
            raise OSError("simulated crash before rename")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crashing_replace)
    new = make(1, np.float64)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(tmp_path, "ckpt", *new)
    monkeypatch.setattr(os, "replace", real_replace)

    p, o, m = load_checkpoint(tmp_path, "ckpt")
    assert m["step"] == old_meta["step"]
    for k in old_params:
        assert p[k].tobytes() == old_params[k].tobytes()
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # the failed save cleaned up

    # the next save succeeds and removes whatever the crashed one left
    save_checkpoint(tmp_path, "ckpt", *new)
    assert load_checkpoint(tmp_path, "ckpt")[2]["step"] == new[2]["step"]
    assert len(os.listdir(tmp_path)) == 2


def test_leftover_temp_files_are_collected(tmp_path):
    """A hard kill leaves a temporary file behind; the next save of that name removes it."""
    (tmp_path / ".ckpt.abcd1234.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".ckpt.best.abcd1234.tmp").write_bytes(b"someone else's")
    save_checkpoint(tmp_path, "ckpt", *make(0, np.float32))
    assert not (tmp_path / ".ckpt.abcd1234.tmp").exists()
    assert (tmp_path / ".ckpt.best.abcd1234.tmp").exists()


def test_bad_names(tmp_path):
    for name in ("", "a/b", "..", "."):
        with pytest.raises(ValueError):
            save_checkpoint(tmp_path, name, *make(0, np.float32))
