"""Does pretraining pay? The same fine-tuning recipe on the default task from (a) a
pretrained run and (b) random weights; prints a markdown table, writes OUT/results.json.

    python scripts/compare_pretraining.py --pretrained runs/pretrain --out runs/compare

The work is minibert.compare.compare_pretraining.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from finetune import add_recipe_args  # noqa: E402  (scripts/finetune.py: the recipe flags both programs take)
from minibert.compare import compare_pretraining  # noqa: E402
from minibert.finetune import RECIPE_KEYS  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description="Does pretraining pay? Fine-tune the same recipe from a pretrained "
                                "run and from random weights; print a markdown table and write JSON.")
    p.add_argument("--pretrained", default="runs/pretrain", help="pretraining run directory (default %(default)s)")
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--train-per-class", type=int, nargs="+", default=[0], help="training-set sizes to compare "
                   "(at most N examples per class; 0: all), e.g. 0 32")
    p.add_argument("--tokenizer", default="", help="tokenizer.json (default: the pretraining run's, checked "
                   "against the fingerprint its checkpoint records)")
    add_recipe_args(p)
    args = p.parse_args(argv)
    try:
        compare_pretraining(args.pretrained, args.out, tuple(args.seeds), tuple(args.train_per_class),
                            tokenizer=args.tokenizer, **{k: getattr(args, k) for k in RECIPE_KEYS})
    except (ValueError, FloatingPointError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
