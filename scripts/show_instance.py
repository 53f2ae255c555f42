"""Print one pretraining instance, as the model sees it, with its labels.

    python scripts/show_instance.py                          # the json package's docstrings
    python scripts/show_instance.py --packages email --index 3 --seq-len 64
    python scripts/show_instance.py --whole-word-mask --mlm-prob 0.3      # whole words, marked
    python scripts/show_instance.py --objective mlm                       # a packed block, no NSP

Documents come from the embedded corpus (the standard library's docstrings, of --packages);
the tokenizer is --tokenizer, or one trained on those documents. The instance is built
exactly as pretraining builds them (minibert.instances.PretrainingData, or for --objective mlm
minibert.mlm_blocks.BlockData); the work is minibert.instance_view.format_instance and
minibert.mlm_blocks.format_block.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minibert.corpus import stdlib_documents  # noqa: E402
from minibert.instance_view import format_instance  # noqa: E402
from minibert.instances import PretrainingData  # noqa: E402
from minibert.mlm_blocks import BlockData, format_block  # noqa: E402
from minibert.token_cache import TokenizedCorpus  # noqa: E402
from minibert.tokenizer import SPECIAL_TOKENS, BPETokenizer  # noqa: E402
from minibert.tokenizer_files import load_tokenizer  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--packages", nargs="+", default=["json"], help="standard-library packages to read")
    p.add_argument("--tokenizer", default="", help="a saved tokenizer.json or BERT vocab.txt (default: train one, vocab 1,000)")
    p.add_argument("--index", type=int, default=0, help="which instance of the epoch")
    p.add_argument("--epoch", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seq-len", type=int, default=48)
    p.add_argument("--max-predictions", type=int, default=20)
    p.add_argument("--mlm-prob", type=float, default=0.15, help="share of a row's non-special tokens to predict")
    p.add_argument("--whole-word-mask", action="store_true", help="mask whole words (their labels are numbered)")
    p.add_argument("--objective", choices=["mlm+nsp", "mlm"], default="mlm+nsp",
                   help="mlm+nsp: a sentence pair; mlm: a packed block of full sentences (RoBERTa)")
    args = p.parse_args(argv)
    docs = stdlib_documents(packages=args.packages)
    if args.objective == "mlm+nsp" and len(docs) < 2:
        print(f"error: packages {args.packages} have {len(docs)} docstrings; NSP needs two documents", file=sys.stderr)
        return 1
    if args.tokenizer:
        tok = load_tokenizer(args.tokenizer)
    else:
        tok = BPETokenizer.train_from_iterator((d.text for d in docs), 1000, special_tokens=SPECIAL_TOKENS,
                                               progress=False)
    kind, fmt = (BlockData, format_block) if args.objective == "mlm" else (PretrainingData, format_instance)
    data = kind(TokenizedCorpus.build(docs, tok), tok, max_seq_len=args.seq_len, max_predictions=args.max_predictions,
                masked_lm_prob=args.mlm_prob, seed=args.seed, whole_word_mask=args.whole_word_mask)
    n = data.num_instances(args.epoch)
    what = "blocks" if args.objective == "mlm" else "instances"
    if not 0 <= args.index < n:
        print(f"error: --index {args.index}: epoch {args.epoch} has {n} {what}", file=sys.stderr)
        return 1
    print(f"{len(docs)} documents of {', '.join(args.packages)}; {n} {what} in epoch {args.epoch}")
    print(fmt(data, tok, args.index, args.epoch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
