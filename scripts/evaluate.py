"""Held-out MLM loss, accuracy and perplexity, and NSP accuracy of a pretrained minibert.

    python scripts/evaluate.py --model runs/pretrain                 # the run's own held-out split
    python scripts/evaluate.py --model runs/pretrain --corpus more.txt   # every document of a corpus
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minibert import backend  # noqa: E402
from minibert.inference import load_pretrained  # noqa: E402
from minibert.train import TrainConfig, evaluate, load_documents  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a pretraining run directory")
    p.add_argument("--checkpoint", default="last", choices=["last", "best"])
    p.add_argument("--corpus", nargs="+", default=None, help="evaluate on all documents of these files instead")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-batches", type=int, default=None, help="default: all held-out instances")
    p.add_argument("--backend", default=os.environ.get("MINIBERT_BACKEND", "numpy"), choices=["numpy", "cupy"])
    args = p.parse_args(argv)
    from minibert.data import PretrainingData, TokenizedCorpus, read_documents
    try:
        backend.use(args.backend)
        model, tok = load_pretrained(args.model, args.checkpoint)
        with open(os.path.join(args.model, "config.json")) as f:
            tc = TrainConfig(**json.load(f)["train"])
        docs = read_documents(args.corpus) if args.corpus else load_documents(tc)[1]
        data = PretrainingData(TokenizedCorpus.build(docs, tok), tok, max_seq_len=tc.seq_len,
                               max_predictions=tc.max_predictions, short_seq_prob=tc.short_seq_prob, seed=tc.seed)
        ev = evaluate(model, data.eval_batches(args.batch_size, args.max_batches))
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
