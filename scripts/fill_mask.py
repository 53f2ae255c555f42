"""Fill in [MASK] tokens with a pretrained minibert, like the fill-mask pipelines people know.

    python scripts/fill_mask.py --model runs/pretrain "Return the [MASK] of the list."
    python scripts/fill_mask.py --model bert-base-uncased "The quick brown [MASK] jumps over the lazy dog."

--model is a minibert pretraining run or a Hugging Face BERT directory (config.json,
model.safetensors, vocab.txt). Probabilities are the softmax over the whole vocabulary;
special tokens are left out of the list unless --show-special, with which the list is
exactly that of transformers' fill-mask pipeline.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minibert import backend  # noqa: E402
from minibert.inference import fill_mask, load_pretrained  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a pretraining run directory (holds last.json, tokenizer.json), "
                   "or a Hugging Face BERT directory (config.json, model.safetensors, vocab.txt)")
    p.add_argument("--checkpoint", default="last", choices=["last", "best"])
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--show-special", action="store_true", help="rank special tokens too, as the pipeline does")
    p.add_argument("--backend", default=os.environ.get("MINIBERT_BACKEND", "numpy"), choices=["numpy", "cupy"])
    p.add_argument("texts", nargs="+", help='texts with one or more "[MASK]"')
    args = p.parse_args(argv)
    try:
        backend.use(args.backend)
        model, tok = load_pretrained(args.model, args.checkpoint)
        for text in args.texts:
            print(text)
            preds_per_mask = fill_mask(model, tok, text, top_k=args.top_k, skip_special=not args.show_special)
            for k, preds in enumerate(preds_per_mask):
                print(f"  [MASK] #{k + 1}:")
                for token, prob in preds:
                    print(f"    {prob:6.3f}  {token!r}")
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
