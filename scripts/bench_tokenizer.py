"""Benchmark minibert's BPE tokenizer against Hugging Face `tokenizers`, in the same process.

Both train on the same ~10 MB corpus (built at run time from real text on this machine: the
Python standard library's sources) to the same vocabulary size with the same special tokens
and min_frequency, then encode the same corpus (split into lines/documents for encode_batch).
Figures are medians over --repeat runs, the two sides taking turns to go first; the per-run
ratios show how much a busy machine moves them.

    python scripts/bench_tokenizer.py --mb 10 --vocab-size 8192 --repeat 3
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minibert.tokenizer import SPECIAL_TOKENS as SPECIALS, BPETokenizer  # noqa: E402


@dataclass
class Config:
    mb: float = 10.0
    vocab_size: int = 8192
    min_frequency: int = 2
    repeat: int = 3
    workdir: str = ""




def build_corpus(path: Path, n_bytes: int) -> None:
    """Concatenate the standard library's .py files (sorted, so the corpus is reproducible)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    total = 0
    with open(path, "w", encoding="utf-8", newline="") as out:
        for f in sorted(stdlib.rglob("*.py")):
            if "site-packages" in f.parts:
                continue
            try:
                text = f.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            out.write(text)
            total += len(text.encode("utf-8"))
            if total >= n_bytes:
                return
    if total < n_bytes:
        print(f"warning: only {total / 1e6:.1f} MB of stdlib text found", file=sys.stderr)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in vars(Config()).items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    cfg = Config(**vars(p.parse_args()))
    work = Path(cfg.workdir or tempfile.mkdtemp(prefix="minibert-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.txt"
    if not corpus.exists() or corpus.stat().st_size < cfg.mb * 1e6 * 0.99:
        build_corpus(corpus, int(cfg.mb * 1e6))
    n_bytes = corpus.stat().st_size
    text = corpus.read_text(encoding="utf-8")
    docs = text.splitlines(keepends=True)                          # many short documents
    chunks = ["".join(docs[i:i + 2000]) for i in range(0, len(docs), 2000)]  # few long ones
    print(f"corpus: {n_bytes / 1e6:.2f} MB, {len(docs):,} lines, from {sysconfig.get_paths()['stdlib']} | "
          f"vocab {cfg.vocab_size} | min_frequency {cfg.min_frequency} | specials {SPECIALS} | cpus {os.cpu_count()}")

    try:
        from tokenizers import ByteLevelBPETokenizer
    except ImportError:
        ByteLevelBPETokenizer = None

    results: dict[str, list[float]] = {}
    tok = hf = n_tok = hf_tok = None

    def run_minibert(r):
        nonlocal tok, n_tok
        t, tok = timed(lambda: BPETokenizer.train_from_files(corpus, cfg.vocab_size, SPECIALS, cfg.min_frequency, progress=False))
        results.setdefault("minibert train s", []).append(t)
        tok.clear_cache()   # encoding starts cold, as Hugging Face's does
        t, ids = timed(lambda: tok.encode_batch(docs))
        results.setdefault("minibert encode s", []).append(t)
        n_tok = sum(map(len, ids))
        tok.clear_cache()
        t, _ = timed(lambda: tok.encode_batch(chunks))
        results.setdefault("minibert encode chunks s", []).append(t)
        rng = random.Random(r)
        long_word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(100_000))   # one pre-token
        t, _ = timed(lambda: tok.encode(long_word))
        results.setdefault("minibert 100k-char pre-token s", []).append(t)

    def run_hf(r):
        nonlocal hf, hf_tok
        hf = ByteLevelBPETokenizer()
        t, _ = timed(lambda: hf.train([str(corpus)], vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                                      special_tokens=SPECIALS, show_progress=False))
        results.setdefault("hf train s", []).append(t)
        t, enc = timed(lambda: hf.encode_batch(docs))
        results.setdefault("hf encode_batch s", []).append(t)
        hf_tok = sum(len(e.ids) for e in enc)
        del enc
        t, _ = timed(lambda: hf.encode_batch(chunks))
        results.setdefault("hf encode_batch chunks s", []).append(t)

    sides = [run_minibert] + ([run_hf] if ByteLevelBPETokenizer is not None else [])
    for r in range(cfg.repeat):
        for run in (sides if r % 2 == 0 else sides[::-1]):   # the order alternates, as the machine drifts
            run(r)
        print(f"run {r + 1}: " + " | ".join(f"{k} {v[-1]:.2f}" for k, v in results.items()), flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    mbps = {k: n_bytes / 1e6 / v for k, v in med.items() if "encode" in k}
    print(f"minibert: vocab {tok.vocab_size}, train {med['minibert train s']:.2f} s, encode lines "
          f"{med['minibert encode s']:.2f} s = {mbps['minibert encode s']:.2f} MB/s, encode {len(chunks)} chunks "
          f"{mbps['minibert encode chunks s']:.2f} MB/s, {n_tok:,} tokens ({n_bytes / n_tok:.2f} bytes/token), "
          f"one 100,000-char pre-token {med['minibert 100k-char pre-token s']:.3f} s")
    if ByteLevelBPETokenizer is not None:
        print(f"hf tokenizers: vocab {hf.get_vocab_size()}, train {med['hf train s']:.2f} s, encode_batch lines "
              f"{med['hf encode_batch s']:.2f} s = {mbps['hf encode_batch s']:.2f} MB/s, encode_batch {len(chunks)} "
              f"chunks {mbps['hf encode_batch chunks s']:.2f} MB/s, {hf_tok:,} tokens ({n_bytes / hf_tok:.2f} bytes/token)")
        print(f"ratios (medians of {cfg.repeat}): train time minibert/hf = "
              f"{med['minibert train s'] / med['hf train s']:.2f} (target <= 1.0); encode throughput minibert/hf = "
              f"{mbps['minibert encode s'] / mbps['hf encode_batch s']:.2f} on lines, "
              f"{mbps['minibert encode chunks s'] / mbps['hf encode_batch chunks s']:.2f} on chunks (target >= 1.0)")
        per_run = [(a / b, c / d) for a, b, c, d in zip(results["minibert train s"], results["hf train s"],
                                                         results["hf encode_batch s"], results["minibert encode s"])]
        print("per-run (train ratio, encode-lines ratio): " + ", ".join(f"({a:.2f}, {b:.2f})" for a, b in per_run))
    else:
        print("tokenizers is not installed: no Hugging Face comparison")


if __name__ == "__main__":
    main()
