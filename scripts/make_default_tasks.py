"""Write the default tagging, QA and multiple-choice tasks as files, to read or to fine-tune on.

    python scripts/make_default_tasks.py --out data/default_tasks
    python scripts/make_default_tasks.py --out data/default_tasks --heldout-fraction 0.1

The tasks are built from the standard library's functions (minibert.default_tasks; the
rules are in docs/finetuning.md) and split by document as pretraining splits the corpus, so
--heldout-fraction must be the pretraining run's (its config.json's train.heldout_fraction,
0.05 by default). Written: tags.train.conll, tags.heldout.conll ("word tag" lines, a blank
line between sentences), qa.train.json, qa.heldout.json (SQuAD v1.1) and choice.train.jsonl,
choice.heldout.jsonl (JSON lines {"context", "endings", "label"}).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minibert.default_tasks import write_default_tasks  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory to write the six files to")
    p.add_argument("--heldout-fraction", type=float, default=0.05,
                   help="the pretraining run's held-out fraction of documents (default 0.05)")
    args = p.parse_args(argv)
    if not 0.0 <= args.heldout_fraction < 1.0:
        print(f"error: --heldout-fraction must be in [0, 1), got {args.heldout_fraction}", file=sys.stderr)
        return 1
    for name, n in write_default_tasks(args.out, args.heldout_fraction).items():
        unit = {"tags": "sentences", "qa": "questions", "choice": "examples"}[name.split(".")[0]]
        print(f"{os.path.join(args.out, name)}: {n:,} {unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
