"""Held-out MLM loss, accuracy and perplexity, and NSP accuracy of a pretrained minibert.

    python scripts/evaluate.py --model runs/pretrain                 # the run's own held-out split
    python scripts/evaluate.py --model runs/pretrain --corpus more.txt   # every document of a corpus

The work is minibert.train.evaluate_run.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minibert import backend  # noqa: E402
from minibert.train import evaluate_run  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a pretraining run directory")
    p.add_argument("--checkpoint", default="last", choices=["last", "best"])
    p.add_argument("--corpus", nargs="+", default=None, help="evaluate on all documents of these files instead")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-batches", type=int, default=None, help="default: all held-out instances")
    p.add_argument("--backend", default=os.environ.get("MINIBERT_BACKEND", "numpy"), choices=["numpy", "cupy"])
    args = p.parse_args(argv)
    try:
        backend.use(args.backend)
        ev = evaluate_run(args.model, args.checkpoint, args.corpus, args.batch_size, args.max_batches)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"held-out MLM loss {ev['mlm_loss']:.4f} | MLM accuracy {ev['mlm_acc']:.4f} | perplexity "
          f"{ev['perplexity']:.2f} | NSP accuracy {ev['nsp_acc']:.4f} "
          f"({ev['mlm_positions']:,} masked positions, {ev['pairs']:,} pairs)")
    print(json.dumps(ev))
    return 0


if __name__ == "__main__":
    sys.exit(main())
