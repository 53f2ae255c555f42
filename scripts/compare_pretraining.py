"""Does pretraining pay? The same fine-tuning recipe on a default task from (a) a
pretrained run and (b) random weights; prints a markdown table, writes OUT/results.json.

    python scripts/compare_pretraining.py --pretrained runs/pretrain --out runs/compare
    python scripts/compare_pretraining.py --task tag --train-examples 0 500 --out runs/compare_tag
    python scripts/compare_pretraining.py --task qa --out runs/compare_qa
    python scripts/compare_pretraining.py --task choice --out runs/compare_choice

--task seq: which package a docstring comes from; tag: the docstring words that name a
parameter; qa: what a function returns, what a parameter is; choice: which of 4 sentences
comes next in a docstring (minibert.default_tasks).

The work is minibert.compare.compare_pretraining.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from finetune import QA_MAX_LENGTH, add_recipe_args  # noqa: E402  (scripts/finetune.py: the recipe flags)
from minibert.compare import compare_pretraining  # noqa: E402
from minibert.finetune import RECIPE_KEYS, FinetuneConfig  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description="Does pretraining pay? Fine-tune the same recipe from a pretrained "
                                "run and from random weights; print a markdown table and write JSON.")
    p.add_argument("--pretrained", default="runs/pretrain", help="pretraining run directory (default %(default)s)")
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--task", default="seq", choices=["seq", "tag", "qa", "choice"], help="seq: the package of a "
                   "docstring; tag: the words that name a parameter; qa: returns and parameters; choice: the next "
                   "sentence of a docstring (default %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--train-per-class", type=int, nargs="+", default=[0], help="training-set sizes to compare "
                   "(at most N examples per class; 0: all), e.g. 0 32 (--task seq)")
    p.add_argument("--train-examples", type=int, nargs="+", default=[0], help="training-set sizes to compare "
                   "(N drawn training examples; 0: all), e.g. 0 500 (--task tag, qa and choice)")
    p.add_argument("--tokenizer", default="", help="tokenizer.json (default: the pretraining run's, checked "
                   "against the fingerprint its checkpoint records)")
    add_recipe_args(p)
    p.add_argument("--dropout", type=float, default=None, help="hidden dropout while fine-tuning, both arms "
                   "(default: the pretrained config's; the default job pretrains without dropout, so 0)")
    p.set_defaults(max_length=None)  # 128, or QA_MAX_LENGTH for --task qa, as scripts/finetune.py
    args = p.parse_args(argv)
    if args.max_length is None:
        args.max_length = QA_MAX_LENGTH if args.task == "qa" else FinetuneConfig().max_length
    try:
        compare_pretraining(args.pretrained, args.out, tuple(args.seeds), tuple(args.train_per_class),
                            task=args.task, train_examples=tuple(args.train_examples),
                            tokenizer=args.tokenizer, dropout=args.dropout, **{k: getattr(args, k) for k in RECIPE_KEYS})
    except (ValueError, FloatingPointError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
