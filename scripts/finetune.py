"""Fine-tune a pretrained minibert on labelled data, or predict with a fine-tuned one.

    python scripts/finetune.py                                  # the default task, from runs/pretrain
    python scripts/finetune.py --train train.csv --validation dev.csv --out runs/task
    python scripts/finetune.py --task tag --out runs/tag             # the default tagging task
    python scripts/finetune.py --task qa --out runs/qa               # the default QA task
    python scripts/finetune.py --task choice --out runs/choice       # the default multiple-choice task
    python scripts/finetune.py --recompute --out runs/finetune       # the same numbers in less memory
    python scripts/finetune.py --precision bf16 --out runs/finetune  # 16-bit GEMM operands (docs/internals.md)
    python scripts/finetune.py --task tag --train train.conll --validation dev.conll --out runs/tag
    python scripts/finetune.py --task qa --train train-v1.1.json --validation dev-v1.1.json --out runs/qa
    python scripts/finetune.py --task choice --train train.csv --validation val.csv --out runs/choice
    python scripts/finetune.py --model runs/finetune --predict "Create a new socket object."
    python scripts/finetune.py --model runs/tag --predict "Guido van Rossum wrote Python"
    python scripts/finetune.py --model runs/qa --question "Who wrote it?" --context "Guido wrote it."

The flags are the fields of minibert.finetune.FinetuneConfig; the work is
minibert.finetune.finetune, or minibert.finetune.predict_with_run with --predict,
--predict-file, --question/--context or --context/--endings.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minibert import backend  # noqa: E402
from minibert.finetune import RECIPE_KEYS, TASKS, FinetuneConfig, finetune, predict_with_run  # noqa: E402
from minibert.mixed_precision import PRECISIONS  # noqa: E402
from minibert.optim import OPTIMIZERS  # noqa: E402


def add_recipe_args(p, d=None):
    """The recipe flags (RECIPE_KEYS), shared with scripts/compare_pretraining.py."""
    d = d or FinetuneConfig()
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup", type=float, default=d.warmup, help="fraction of all steps (default %(default)s)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--grad-clip", type=float, default=d.grad_clip)
    p.add_argument("--optimizer", default=d.optimizer, choices=list(OPTIMIZERS), help="lamb: AdamW's moments with "
                   "a per-tensor trust ratio (optim.LAMB), for large batches")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--max-length", type=int, default=d.max_length)
    p.add_argument("--num-classes", type=int, default=d.num_classes, help="default task: how many packages")
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--backend", default=os.environ.get("MINIBERT_BACKEND", d.backend), choices=["numpy", "cupy"])
    p.add_argument("--dtype", default=d.dtype, choices=["float32", "float64"])


def build_parser():
    p = argparse.ArgumentParser(description="Fine-tune a pretrained minibert on sequence classification (or "
                                "regression), token tagging, extractive question answering or multiple choice, "
                                "or predict with a fine-tuned one. With no arguments: the default task "
                                "(stdlib package of a docstring) from runs/pretrain; --task tag, qa or choice "
                                "with no --train: their default tasks.")
    d = FinetuneConfig()
    p.add_argument("--task", default=d.task, choices=list(TASKS), help="seq: a label per text (or pair); tag: a "
                   "tag per word (CoNLL or JSON lines); qa: an answer span (SQuAD JSON); choice: the right ending "
                   "(SWAG CSV or JSON lines) (default %(default)s)")
    p.add_argument("--from", dest="init", default=d.init, help="pretraining run directory (default %(default)s), "
                   "or a Hugging Face BERT directory (recognised by its config.json and weights; --hf to insist)")
    p.add_argument("--checkpoint", dest="init_checkpoint", default=d.init_checkpoint, choices=["last", "best"])
    p.add_argument("--random-init", action="store_true", help="same shape and tokenizer, random weights")
    p.add_argument("--hf", action="store_true", help="--from is a Hugging Face BERT directory")
    p.add_argument("--tokenizer", default="", help="tokenizer.json or BERT vocab.txt (default: the pretraining "
                   "run's; with --hf, the directory's vocab.txt or tokenizer.json)")
    p.add_argument("--train", default="", help="seq: CSV, TSV or JSON lines; tag: CoNLL or JSON lines; qa: SQuAD "
                   "v1.1/v2.0 JSON; choice: SWAG CSV/TSV or JSON lines (default: each task's embedded task)")
    p.add_argument("--validation", default="", help="a separate validation file")
    p.add_argument("--valid-fraction", type=float, default=d.valid_fraction)
    p.add_argument("--text-column", default=d.text_column)
    p.add_argument("--pair-column", default=d.pair_column)
    p.add_argument("--label-column", default=d.label_column)
    p.add_argument("--regression", action="store_true", help="numeric labels, one output, MSE loss")
    p.add_argument("--train-per-class", type=int, default=0, help="at most N training examples per class "
                   "(a smaller labelled task; 0: all)")
    p.add_argument("--scheme", default=d.scheme, choices=["IOB2", "IOB1", "BIOES"], help="tag: the tag scheme")
    p.add_argument("--version-2", dest="version_2", action="store_true", default=None,
                   help="qa: SQuAD v2.0, unanswerable questions (default: as the training file says)")
    p.add_argument("--doc-stride", type=int, default=d.doc_stride, help="qa: tokens of overlap between windows")
    p.add_argument("--max-question-length", type=int, default=d.max_question_length, help="qa: question tokens kept")
    p.add_argument("--null-threshold", type=float, default=d.null_threshold,
                   help="qa v2.0: answer nothing when null score - best span score exceeds this")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--dropout", type=float, default=None, help="default: the pretrained config's")
    p.add_argument("--out", default=d.out)
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint "
                   "(after its latest epoch), with the same settings")
    p.add_argument("--recompute", action="store_true", help="activation recomputation: keep only each encoder "
                   "layer's input and rerun the layer in the backward (less memory, one more forward; the same numbers)")
    p.add_argument("--precision", default=d.precision, choices=list(PRECISIONS), help="mixed precision: fp32, or "
                   "bf16 / fp16 GEMM operands with float32 accumulation and master weights; fp16 adds dynamic loss "
                   "scaling (on the host the 16-bit rounding is emulated: the numbers, not the speed)")
    add_recipe_args(p, d)
    p.set_defaults(max_length=None)  # 128, or QA_MAX_LENGTH for --task qa
    g = p.add_argument_group("prediction (no training)")
    g.add_argument("--predict", nargs="+", metavar="TEXT", help="texts to classify or sentences to tag with "
                   "--model; a QA run: QUESTION CONTEXT; a choice run: CONTEXT ENDING ENDING ...")
    g.add_argument("--pair", nargs="+", metavar="TEXT", help="second segments for --predict, one per text")
    g.add_argument("--predict-file", help="CSV/TSV/JSON lines to classify (a CoNLL/JSON-lines file to tag); "
                   "with labels (tags), also scored")
    g.add_argument("--question", help="a QA run: the question about --context")
    g.add_argument("--context", help="a QA run: the passage to answer from; a choice run: the context")
    g.add_argument("--endings", nargs="+", metavar="TEXT", help="a choice run: the endings to choose from")
    g.add_argument("--model", default=None, help="with --predict/--predict-file: the fine-tuning run to predict "
                   "with (default: --out); without them: the model to fine-tune, as --from")
    g.add_argument("--top-k", type=int, default=3)
    return p


QA_MAX_LENGTH = 384  # --task qa's default --max-length, as run_qa.py's


def config_from_args(args):
    if args.max_length is None:
        args.max_length = QA_MAX_LENGTH if args.task == "qa" else FinetuneConfig().max_length
    kw = {k: getattr(args, k) for k in ("task", "init", "init_checkpoint", "random_init", "hf", "tokenizer", "train",
                                        "validation", "valid_fraction", "text_column", "pair_column",
                                        "label_column", "regression", "scheme", "version_2", "doc_stride",
                                        "max_question_length", "null_threshold", "train_per_class", "seed",
                                        "dropout", "out", "overwrite", "resume", "recompute", "precision",
                                        *RECIPE_KEYS)}
    return FinetuneConfig(**kw)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.predict or args.predict_file or args.question or args.endings:
            if args.pair and not args.predict:
                raise ValueError("--pair goes with --predict")
            backend.use(args.backend)
            predict_with_run(args.model or args.out, args.predict, args.pair, args.predict_file, args.question,
                             args.context, args.endings, top_k=args.top_k)
        else:
            if args.model:  # the model to fine-tune: a pretraining run or a Hugging Face BERT directory
                args.init = args.model
            finetune(config_from_args(args))
    except (ValueError, FloatingPointError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
