"""A tokenizer from its files, of whichever kind they hold: `load_tokenizer`.

    load_tokenizer("runs/pretrain/tokenizer.json")   # a minibert run's: BPE or WordPiece
    load_tokenizer("bert-base-uncased/")             # vocab.txt (+ tokenizer_config.json)

The kind is read from the files, not from the name: a JSON file with "format": "minibert-bpe"
is a tokenizer.BPETokenizer; everything else that wordpiece.WordPieceTokenizer.load reads (its
one-file JSON, a vocab.txt, a Hugging Face tokenizer.json with a WordPiece model, a directory
holding one of those) is a WordPieceTokenizer. The programs take either kind through this
one function (train.py's --tokenizer, fine-tuning and inference from a Hugging Face directory,
rundir.run_tokenizer for a run's own tokenizer.json).
"""
from __future__ import annotations

import os
from pathlib import Path

from minibert.tokenizer import FORMAT_NAME as BPE_FORMAT_NAME, BPETokenizer
from minibert.vocab import read_json
from minibert.wordpiece import JSON_FILE, VOCAB_FILE, WordPieceTokenizer


def load_tokenizer(path: str | os.PathLike) -> BPETokenizer | WordPieceTokenizer:
    """The tokenizer at `path`, of the kind the files say:
      a minibert-bpe JSON file (tokenizer.json of a BPE run)           -> BPETokenizer
      a minibert-wordpiece JSON, a vocab.txt, a Hugging Face
      tokenizer.json with a WordPiece model, or a directory with
      vocab.txt (+ tokenizer_config.json) or tokenizer.json          -> WordPieceTokenizer
    FileNotFoundError when there is no tokenizer there, ValueError when the files are broken."""
    path = Path(path)
    if path.is_dir() and not (path / VOCAB_FILE).is_file() and (path / JSON_FILE).is_file():
        path = path / JSON_FILE
    if path.suffix == ".json" and path.is_file():
        d = read_json(path)
        if d.get("format") == BPE_FORMAT_NAME:
            return BPETokenizer.from_dict(d, str(path))
        return WordPieceTokenizer.from_json(d, str(path))
    return WordPieceTokenizer.load(path)
