"""Tests run on whichever backend MINIBERT_BACKEND selects; cupy without a GPU skips cleanly.

Shared helpers for the model tests (import them as `from conftest import tiny_config, make_batch`):
tiny_config, a float64 BERT small enough for finite differences, and make_batch, a random
batch with Hugging Face's keys for pretraining or classification.
"""
import atexit
import os
import shutil
import tempfile

import numpy as np
import pytest

# token caches written by the tests go to a throwaway directory, not ~/.cache/minibert,
# removed when the session ends (subprocesses the tests start inherit the variable)
os.environ["MINIBERT_CACHE"] = tempfile.mkdtemp(prefix="minibert-test-cache-")
atexit.register(shutil.rmtree, os.environ["MINIBERT_CACHE"], ignore_errors=True)

_WANT_CUPY = os.environ.get("MINIBERT_BACKEND", "").strip().lower() == "cupy"
_CUPY_MISSING = False
if _WANT_CUPY:
    try:
        import cupy
        _CUPY_MISSING = cupy.cuda.runtime.getDeviceCount() < 1
    except Exception:
        _CUPY_MISSING = True
    if _CUPY_MISSING:  # let the package import on numpy, then skip every test below
        os.environ["MINIBERT_BACKEND"] = "numpy"

# minibert reads MINIBERT_BACKEND (and MINIBERT_CACHE) when imported, so it comes after them
from minibert import backend  # noqa: E402
from minibert.model import BertConfig  # noqa: E402


@pytest.fixture(autouse=True)
def restore_backend():
    """Whatever a test selects (pretrain() and finetune() call backend.use), the next test
    starts on the backend MINIBERT_BACKEND chose."""
    before = backend.name
    yield
    if backend.name != before:
        backend.use(before)


def pytest_collection_modifyitems(config, items):
    if _CUPY_MISSING:
        skip = pytest.mark.skip(reason="MINIBERT_BACKEND=cupy but CuPy or a CUDA GPU is not available")
        for item in items:
            item.add_marker(skip)


# ----------------------------------------------------------------------------------------
# model helpers


def tiny_config(**kw):
    """A float64 BERT small enough for finite differences, dropout off; kw overrides fields."""
    base = dict(vocab_size=23, hidden_size=8, num_layers=2, num_heads=2, intermediate_size=12,
                max_position=16, dropout=0.0, attention_dropout=0.0, dtype="float64", layer_norm_eps=1e-5)
    base.update(kw)
    return BertConfig(**base)


def make_batch(rng, B, T, V, lengths=None, types=2, n_masked=None, num_labels=None, hf=False):
    """A random batch of host arrays with Hugging Face's keys.

    lengths: real tokens per row, padding at the end (None: 1..T at random; 0 pads a whole row).
    types: the token-type vocabulary; each row switches from type 0 to one random type >= 1
      at a random position (its segment B).
    num_labels None: a pretraining batch: MLM labels (B, T), -100 where unlabelled, at
      n_masked random positions per row (None: 0..T of them), and next_sentence_label (B,).
    num_labels C: a classification batch: labels (B,), class ids in [0, C), floats for C == 1.
    hf True: comparable with transformers (tests/test_parity.py says why): row 0 unpadded,
      the pad id 0 only at padded positions, token types and MLM labels only at real
      positions (about one in five; at least one in row 0, none in the last row).
    """
    lengths = rng.integers(1, T + 1, B) if lengths is None else np.array(lengths)
    if hf:
        lengths[0] = T
    real = np.arange(T)[None] < lengths[:, None]  # (B, T)
    ids = rng.integers(1 if hf else 0, V, (B, T))  # (B, T)
    segment_b = np.arange(T)[None] >= rng.integers(0, T + 1, (B, 1))  # (B, T)
    types_b = rng.integers(1, types, (B, 1)) if types > 1 else 0  # (B, 1)
    if hf:
        ids = np.where(real, ids, 0)
        segment_b &= real
    batch = dict(input_ids=ids, token_type_ids=np.where(segment_b, types_b, 0),
                 attention_mask=real.astype(np.int64))
    if num_labels is not None:
        batch["labels"] = rng.standard_normal(B) if num_labels == 1 else rng.integers(0, num_labels, B)
        return batch
    if hf:
        labelled = real & (rng.random((B, T)) < 0.2)  # (B, T)
        labelled[0, rng.integers(0, T)] = True
        if B > 1:
            labelled[B - 1] = False
    else:
        labelled = np.zeros((B, T), dtype=bool)  # (B, T)
        for b in range(B):
            k = rng.integers(0, T + 1) if n_masked is None else n_masked
            labelled[b, rng.choice(T, size=min(k, T), replace=False)] = True
    batch["labels"] = np.where(labelled, rng.integers(0, V, (B, T)), -100)  # (B, T)
    batch["next_sentence_label"] = rng.integers(0, 2, B)  # (B,)
    return batch


def random_hf_model(model_class, hf_config, seed=0):
    """A transformers model of class model_class, every parameter random (LayerNorm weights
    near 1, the rest N(0, 0.3)) so that none is a trivial 0 or 1; eval mode, float32."""
    import torch  # the parity tests' optional reference, imported by the tests that need it
    torch.manual_seed(seed)
    model = model_class(hf_config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.3)
    return model.eval()
