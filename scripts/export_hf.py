"""Export a minibert run to a directory Hugging Face transformers loads.

    python scripts/export_hf.py --model runs/pretrain --out hf-export
    python -c "import transformers; transformers.BertForPreTraining.from_pretrained('hf-export')"

A pretraining run becomes BertForPreTraining (BertForMaskedLM for an MLM-only run); a
fine-tuned run BertForSequenceClassification or BertForTokenClassification with its label
names, BertForQuestionAnswering or BertForMultipleChoice; the tokenizer goes
with it (vocab.txt for WordPiece, vocab.json + merges.txt for byte-level BPE). The work is
minibert.interop.export_run.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minibert.interop import export_run  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a minibert run directory (pretraining, or fine-tuned for any task)")
    p.add_argument("--checkpoint", default="last", choices=["last", "best"])
    p.add_argument("--out", required=True, help="the directory to write (config.json, model.safetensors, tokenizer)")
    args = p.parse_args(argv)
    try:
        kind = export_run(args.model, args.out, args.checkpoint)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: load it with transformers.{kind}.from_pretrained({args.out!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
