"""Look inside: where each attention head of a model looks, for one text.

    python scripts/attention.py --model runs/pretrain "Return the number of items in the list."
    python scripts/attention.py --model bert-base-uncased --layer 2 --head 0,3 "The quick brown fox jumps."

--model is a minibert pretraining run or a Hugging Face BERT directory. Writes a PNG (one
heatmap per layer and head, tokens on both axes; needs matplotlib, the `plot` extra) and
prints one line per head: its most-attended pattern (previous token, next token, itself,
[CLS], [SEP], or broad) and the key each query attends to most. The probabilities are those
the forward pass keeps for its backward (minibert.inference.attention_maps).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minibert import backend  # noqa: E402
from minibert.inference import attention_maps, attention_summary, load_pretrained, plot_attention  # noqa: E402


def int_list(text):
    """ "0,3" -> [0, 3]"""
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a pretraining run directory or a Hugging Face BERT directory")
    p.add_argument("--checkpoint", default="last", choices=["last", "best"])
    p.add_argument("--pair", default=None, help="a second segment (token type 1), as in NSP")
    p.add_argument("--layer", type=int_list, default=None, help="layers to show, e.g. 2 or 0,11 (default: all)")
    p.add_argument("--head", type=int_list, default=None, help="heads to show, e.g. 0,3 (default: all)")
    p.add_argument("--out", default="attention.png", help="the PNG to write (default %(default)s)")
    p.add_argument("--no-plot", action="store_true", help="print the summary only (no matplotlib needed)")
    p.add_argument("--backend", default=os.environ.get("MINIBERT_BACKEND", "numpy"), choices=["numpy", "cupy"])
    p.add_argument("text")
    args = p.parse_args(argv)
    try:
        backend.use(args.backend)
        model, tok = load_pretrained(args.model, args.checkpoint)
        tokens, probs = attention_maps(model, tok, args.text, args.pair)
        L, A = probs.shape[:2]
        for name, chosen, n in (("--layer", args.layer, L), ("--head", args.head, A)):
            if chosen and not all(0 <= i < n for i in chosen):
                raise ValueError(f"{name} {chosen}: the model has {n} ({name[2:]}s 0 to {n - 1})")
        print(f"{len(tokens)} tokens: {' '.join(t.strip() or repr(t) for t in tokens)}")
        print(attention_summary(tokens, probs, args.layer, args.head))
        if not args.no_plot:
            try:
                plot_attention(tokens, probs, args.out, args.layer, args.head, title=f"{args.model}: {args.text}")
            except ImportError:
                raise RuntimeError('the picture needs matplotlib: pip install -e ".[plot]" (or pass --no-plot)') from None
            print(f"wrote {args.out}")
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
