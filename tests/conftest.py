"""Tests run on whichever backend MINIBERT_BACKEND selects; cupy without a GPU skips cleanly."""
import os
import tempfile

import pytest

# token caches written by the tests go to a throwaway directory, not ~/.cache/minibert
os.environ["MINIBERT_CACHE"] = tempfile.mkdtemp(prefix="minibert-test-cache-")

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


def pytest_collection_modifyitems(config, items):
    if _CUPY_MISSING:
        skip = pytest.mark.skip(reason="MINIBERT_BACKEND=cupy but CuPy or a CUDA GPU is not available")
        for item in items:
            item.add_marker(skip)
