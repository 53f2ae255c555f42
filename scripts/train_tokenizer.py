"""Train minibert's byte-level BPE tokenizer on corpus files and save it.

    python scripts/train_tokenizer.py corpus1.txt corpus2.txt --out tokenizer.json \\
        --vocab-size 8192 --special-tokens "[PAD]" "[CLS]" "[SEP]" "[MASK]"

The last --heldout-bytes of the last file are not trained on; the summary reports the
compression (UTF-8 bytes per token) on that held-out slice, the vocabulary size and the times.
--gpt2-dir also writes vocab.json and merges.txt for GPT-2 / Hugging Face code.
The work is minibert.tokenizer.train_tokenizer; this script parses the arguments.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minibert.bpe import GPT2_PATTERN  # noqa: E402
from minibert.tokenizer import SPECIAL_TOKENS, train_tokenizer  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpus", nargs="+", help="UTF-8 text files")
    p.add_argument("--out", default="tokenizer.json")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--special-tokens", nargs="*", default=SPECIAL_TOKENS)
    p.add_argument("--min-frequency", type=int, default=2)
    p.add_argument("--pattern", default=GPT2_PATTERN, help="pre-tokenization regex (default: GPT-2's)")
    p.add_argument("--heldout-bytes", type=int, default=1_000_000,
                   help="bytes at the end of the last file kept out of training (0: none)")
    p.add_argument("--gpt2-dir", default="", help="also write vocab.json and merges.txt here")
    p.add_argument("--workers", type=int, default=0, help="processes that count pre-tokens (0: automatic)")
    args = p.parse_args(argv)
    try:
        summary = train_tokenizer(args.corpus, args.out, args.vocab_size, args.special_tokens, args.min_frequency,
                                  args.pattern, args.heldout_bytes, args.gpt2_dir or None, args.workers or None)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(" | ".join(f"{k} {v}" for k, v in summary.items()))
    print(json.dumps({"config": vars(args), **summary}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
