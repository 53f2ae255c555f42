"""Benchmark minibert's WordPiece tokenizer against Hugging Face's slow BertTokenizer (pure
Python) and BertTokenizerFast (Rust), in the same process, on the same few MB of text.

The text is real and built at run time on this machine: every docstring of the Python standard
library (minibert.corpus.stdlib_documents, ~1.6 MB), then whole standard-library source files
until --mb is reached. A vocabulary is trained on it with `tokenizers`' BertWordPieceTokenizer
(or --vocab DIR/vocab.txt is used), and each tokenizer encodes every document without [CLS]/[SEP]:
minibert with encode_batch from a cold cache (clear_cache first), the slow one with one
encode() per document, the fast one with one batched call (it uses every core). The ids of
minibert and the slow tokenizer are compared document by document. Times are medians over
--repeat runs.

    python scripts/bench_wordpiece.py --mb 4 --vocab-size 8192 --repeat 3
    python scripts/bench_wordpiece.py --text my_corpus.txt --cased
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minibert.corpus import stdlib_documents  # noqa: E402
from minibert.wordpiece import WordPieceTokenizer  # noqa: E402


@dataclass
class Config:
    mb: float = 4.0
    vocab_size: int = 8192
    cased: bool = False
    vocab: str = ""      # a vocab.txt (or its directory) to use instead of training one
    text: tuple = ()     # UTF-8 files to encode (one document each) instead of the stdlib text
    repeat: int = 3


def build_documents(n_bytes: int) -> list[str]:
    """Standard-library docstrings, then source files, until n_bytes of UTF-8."""
    docs = [" ".join(d.sentences) for d in stdlib_documents()]
    total = sum(len(d.encode("utf-8")) for d in docs)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for f in sorted(stdlib.rglob("*.py")):
        if total >= n_bytes:
            break
        if "site-packages" in f.parts:
            continue
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        docs.append(text)
        total += len(text.encode("utf-8"))
    return docs


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=Config.mb, help="megabytes of text to encode")
    p.add_argument("--vocab-size", type=int, default=Config.vocab_size)
    p.add_argument("--cased", action="store_true", help="a cased vocabulary (do_lower_case=False)")
    p.add_argument("--vocab", default="", help="use this vocab.txt (or directory) instead of training one")
    p.add_argument("--text", nargs="*", default=(), help="encode these UTF-8 files instead (the stdlib text is "
                   "almost all ASCII; give your own to measure other scripts)")
    p.add_argument("--repeat", type=int, default=Config.repeat)
    cfg = Config(**{k.replace("-", "_"): v for k, v in vars(p.parse_args()).items()})
    try:
        import tokenizers
        import transformers
    except ImportError:
        sys.exit("this benchmark needs the parity extra: pip install -e '.[parity]'")
    try:   # transformers 5 names the pure-Python one BertTokenizerLegacy; in 4.x it is BertTokenizer
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy as Slow
    except ImportError:
        Slow = transformers.BertTokenizer

    docs = ([Path(f).read_text(encoding="utf-8") for f in cfg.text] if cfg.text
            else build_documents(int(cfg.mb * 1e6)))
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    n_chars = sum(map(len, docs))
    non_ascii = sum(len(d) - len(d.encode("ascii", "ignore")) for d in docs)
    lower = not cfg.cased
    if cfg.vocab:
        vocab_txt = Path(cfg.vocab)
        vocab_txt = vocab_txt / "vocab.txt" if vocab_txt.is_dir() else vocab_txt
    else:
        work = Path(tempfile.mkdtemp(prefix="minibert-bench-wordpiece-"))
        trainer = tokenizers.BertWordPieceTokenizer(lowercase=lower)
        trainer.train_from_iterator(docs, vocab_size=cfg.vocab_size, show_progress=False)
        trainer.save_model(str(work))
        vocab_txt = work / "vocab.txt"
    mine = WordPieceTokenizer.from_vocab_file(vocab_txt, {"do_lower_case": lower})
    slow = Slow(str(vocab_txt), do_lower_case=lower)
    fast = transformers.BertTokenizerFast(vocab_file=str(vocab_txt), do_lower_case=lower) \
        if int(transformers.__version__.split(".")[0]) < 5 else \
        transformers.BertTokenizerFast(vocab=str(vocab_txt), do_lower_case=lower)
    print(f"text: {n_bytes / 1e6:.2f} MB, {len(docs):,} documents, {n_chars:,} characters "
          f"({non_ascii:,} non-ASCII) | vocab {mine.vocab_size:,} from {vocab_txt} | do_lower_case {lower} | "
          f"cpus {os.cpu_count()} | transformers {transformers.__version__}, tokenizers {tokenizers.__version__}")

    def run_mine():
        mine.clear_cache()
        return mine.encode_batch(docs)

    times = {"minibert": [], "slow": [], "fast": []}
    for r in range(cfg.repeat):
        t, ids_mine = timed(run_mine)
        times["minibert"].append(t)
        t, ids_slow = timed(lambda: [slow.encode(d, add_special_tokens=False) for d in docs])
        times["slow"].append(t)
        t, ids_fast = timed(lambda: fast(docs, add_special_tokens=False)["input_ids"])
        times["fast"].append(t)
        print(f"run {r + 1}: " + " | ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    differ = sum(a != b for a, b in zip(ids_mine, ids_slow))
    differ_fast = sum(a != b for a, b in zip(ids_fast, ids_slow))
    print(f"documents whose ids differ: minibert vs slow {differ}, fast vs slow {differ_fast} (of {len(docs):,})")
    for k, t in med.items():
        print(f"{k:9s} {t:7.2f} s  {n_bytes / 1e6 / t:6.2f} MB/s  {t / med['slow']:5.2f}x the slow tokenizer's time")


if __name__ == "__main__":
    main()
