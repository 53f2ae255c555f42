"""Train minibert's byte-level BPE tokenizer on corpus files and save it.

    python scripts/train_tokenizer.py corpus1.txt corpus2.txt --out tokenizer.json \\
        --vocab-size 8192 --special-tokens "[PAD]" "[CLS]" "[SEP]" "[MASK]"

The last --heldout-bytes of the last file are not trained on; the summary reports the
compression (UTF-8 bytes per token) on that held-out slice, the vocabulary size and the times.
--gpt2-dir also writes vocab.json and merges.txt for GPT-2 / Hugging Face code.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from itertools import chain
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minibert.tokenizer import GPT2_PATTERN, BPETokenizer, read_file_blocks  # noqa: E402


@dataclass
class Config:
    corpus: list[str] = field(default_factory=list)
    out: str = "tokenizer.json"
    vocab_size: int = 8192
    special_tokens: list[str] = field(default_factory=lambda: ["[PAD]", "[CLS]", "[SEP]", "[MASK]"])
    min_frequency: int = 2
    pattern: str = GPT2_PATTERN
    heldout_bytes: int = 1_000_000
    gpt2_dir: str = ""
    workers: int = 0   # 0: automatic


def parse_args() -> Config:
    d = Config()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpus", nargs="+", help="UTF-8 text files")
    p.add_argument("--out", default=d.out)
    p.add_argument("--vocab-size", type=int, default=d.vocab_size)
    p.add_argument("--special-tokens", nargs="*", default=d.special_tokens)
    p.add_argument("--min-frequency", type=int, default=d.min_frequency)
    p.add_argument("--pattern", default=d.pattern, help="pre-tokenization regex (default: GPT-2's)")
    p.add_argument("--heldout-bytes", type=int, default=d.heldout_bytes,
                   help="bytes at the end of the last file kept out of training (0: none)")
    p.add_argument("--gpt2-dir", default=d.gpt2_dir, help="also write vocab.json and merges.txt here")
    p.add_argument("--workers", type=int, default=d.workers)
    return Config(**vars(p.parse_args()))


def heldout_split(path: Path, n_bytes: int) -> tuple[int, str]:
    """(bytes of `path` to train on, held-out text): the last ~n_bytes, from a line start."""
    size = path.stat().st_size
    if n_bytes <= 0 or size <= 2 * n_bytes:   # too small to spare a slice: hold out nothing
        return size, ""
    with open(path, "rb") as f:
        f.seek(size - n_bytes)
        tail = f.read()
    start = tail.find(b"\n") + 1   # start the slice on a line (and so on a character) boundary
    return size - n_bytes + start, tail[start:].decode("utf-8")


def main() -> None:
    cfg = parse_args()
    files = [Path(c) for c in cfg.corpus]
    for f in files:
        if not f.is_file():
            sys.exit(f"error: corpus file {f} does not exist")
    train_bytes, heldout = heldout_split(files[-1], cfg.heldout_bytes)
    corpus = files
    if heldout:   # the last file streams in blocks up to the held-out slice
        corpus = chain(files[:-1], read_file_blocks(files[-1], train_bytes, cfg.special_tokens))
    total = sum(f.stat().st_size for f in files)
    print(f"corpus: {len(files)} file(s), {total / 1e6:,.1f} MB; held out {len(heldout.encode()) / 1e6:,.2f} MB "
          f"| vocab_size {cfg.vocab_size} | specials {cfg.special_tokens}", file=sys.stderr)

    t0 = time.perf_counter()
    tok = BPETokenizer.train(corpus, cfg.vocab_size, cfg.special_tokens, cfg.min_frequency, cfg.pattern,
                             progress=True, workers=cfg.workers or None)
    train_s = time.perf_counter() - t0
    tok.save(cfg.out)
    if cfg.gpt2_dir:
        tok.save_gpt2_files(cfg.gpt2_dir)

    summary = {"out": cfg.out, "vocab_size": tok.vocab_size, "merges": len(tok.merges),
               "train_s": round(train_s, 2), "fingerprint": tok.fingerprint()}
    if heldout:
        t0 = time.perf_counter()
        n_tokens = len(tok.encode(heldout, allowed_special="all"))
        encode_s = time.perf_counter() - t0
        n_bytes = len(heldout.encode("utf-8"))
        summary |= {"heldout_bytes": n_bytes, "heldout_tokens": n_tokens,
                    "bytes_per_token": round(n_bytes / max(n_tokens, 1), 3), "encode_s": round(encode_s, 3)}
    print(" | ".join(f"{k} {v}" for k, v in summary.items()))
    print(json.dumps({"config": asdict(cfg), **summary}), file=sys.stderr)


if __name__ == "__main__":
    main()
