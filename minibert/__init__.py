"""minibert: BERT pretraining from scratch, every gradient by hand, on NumPy or CuPy."""
from minibert import backend

__all__ = ["backend"]
