"""Files written whole or not at all: the one way minibert writes a file.

    atomic_write("runs/pretrain/config.json", text)     # str (UTF-8) or bytes

The data goes to a temporary file in the same directory (".NAME.<random>.tmp"), which is
flushed and fsynced, then renamed over NAME (os.replace, atomic on POSIX and Windows), and
the directory is fsynced so that the rename itself survives a power cut. A reader, or a
process killed at any moment, therefore sees either the previous file or the new one,
never half of one. A failed write removes its temporary file; one left by kill -9 is
harmless (checkpoint.py collects its own).

This module imports nothing from minibert, so every module can use it (the tokenizer, the
checkpoint, the run directory and the Hugging Face export all do).
"""
import os
import tempfile


def fsync_dir(directory):
    """Make the renames in directory durable (POSIX; Windows cannot open a directory)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, data):
    """Write data (str, encoded as UTF-8, or bytes) to path atomically; returns path."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    path = os.fspath(path)
    directory, base = os.path.split(path)
    directory = directory or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(directory)
    return path
