"""Pretrain BERT with MLM + NSP. No arguments: the whole default job on the embedded corpus
(trains the tokenizer, pretrains the tiny preset on CPU, evaluates, shows fill-mask examples).

    python scripts/pretrain.py [--preset tiny|mini|small|base] [--backend numpy|cupy] ...
    python scripts/pretrain.py --out runs/pretrain --resume      # continue after an interruption
    mpiexec -n 2 python scripts/pretrain.py --out runs/dp        # data parallel: the same run on 2 processes

The flags are the fields of minibert.train.TrainConfig, plus BertConfig fields that override
the preset's; the work is minibert.train.pretrain.
"""
import argparse
import os
import sys
from dataclasses import fields

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minibert import distributed  # noqa: E402
from minibert.inference import fill_mask, mask_examples  # noqa: E402
from minibert.model import PRESETS  # noqa: E402
from minibert.mixed_precision import PRECISIONS  # noqa: E402
from minibert.optim import OPTIMIZERS, SCHEDULES  # noqa: E402
from minibert.train import OBJECTIVES, TrainConfig, log, pretrain  # noqa: E402

# BertConfig fields a flag may set instead of the preset's value
MODEL_INT_FLAGS = ("num_layers", "hidden_size", "num_heads", "intermediate_size", "max_position")
MODEL_FLOAT_FLAGS = ("dropout", "attention_dropout")


def build_parser():
    p = argparse.ArgumentParser(description="Pretrain BERT (MLM + NSP) with minibert. With no arguments: the "
                                "whole default job on the embedded corpus (tiny preset, CPU, about 7 minutes on 2 cores).")
    d = TrainConfig()
    p.add_argument("--preset", default=d.preset, choices=sorted(PRESETS))
    p.add_argument("--backend", default=os.environ.get("MINIBERT_BACKEND", d.backend), choices=["numpy", "cupy"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    for name in ("seed", "steps", "batch_size", "accum", "seq_len", "length_window", "max_predictions", "warmup",
                 "save_every", "eval_every", "eval_batches", "log_every", "vocab_size", "fill_mask_examples"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("lr", "min_lr", "weight_decay", "grad_clip", "short_seq_prob", "heldout_fraction", "beta1", "beta2",
                 "eps"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    p.add_argument("--objective", default=d.objective, choices=list(OBJECTIVES), help="mlm+nsp: BERT's pairs with "
                   "next sentence prediction (exports to transformers' BertForPreTraining); mlm: masked LM alone on "
                   "full-sentence blocks packed across documents (RoBERTa), saved as a BertForMaskedLM")
    p.add_argument("--mlm-prob", type=float, default=d.mlm_prob, help="training masking rate (evaluation always "
                   "masks 15%%); the cap on predictions per sequence scales with it")
    p.add_argument("--whole-word-mask", action="store_true", help="mask a chosen word with all of its tokens")
    p.add_argument("--recompute", action="store_true", help="activation recomputation: keep only each encoder "
                   "layer's input and rerun the layer in the backward (less memory, one more forward; the same numbers)")
    p.add_argument("--precision", default=d.precision, choices=list(PRECISIONS), help="mixed precision: fp32, or "
                   "bf16 / fp16 GEMM operands with float32 accumulation and float32 master weights; fp16 adds dynamic "
                   "loss scaling (on the host the 16-bit rounding is emulated: the numbers, not the speed)")
    p.add_argument("--schedule", default=d.schedule, choices=list(SCHEDULES), help="learning rate: linear or cosine "
                   "decay after --warmup steps; one-cycle: up to the peak at --peak-at of the run, then down")
    p.add_argument("--optimizer", default=d.optimizer, choices=list(OPTIMIZERS), help="adamw, or lamb: AdamW's "
                   "moments with a per-tensor trust ratio ||p|| / ||r|| (You et al. 2019; optim.LAMB)")
    p.add_argument("--peak-at", type=float, default=d.peak_at, help="one-cycle: where the peak lies, as a fraction")
    p.add_argument("--budget-minutes", type=float, default=d.budget_minutes, help="fit the whole job into this "
                   "many minutes: the step count (replacing --steps) is fixed once from the measured step time "
                   "and recorded, so --resume stays exact")
    p.add_argument("--corpus", nargs="+", default=[], help="text files, directories or globs "
                   "(default: the docstrings of this Python's standard library)")
    p.add_argument("--tokenizer", default="", help="a saved tokenizer.json, or a BERT vocab.txt or directory "
                   "(WordPiece) (default: train a byte-level BPE one)")
    p.add_argument("--init-from", default=d.init_from, help="continue pretraining a checkpoint: a Hugging Face "
                   "BERT directory (config.json, model.safetensors, vocab.txt) or a minibert pretraining run; its "
                   "shape, weights, heads (MLM + NSP, or MLM alone) and tokenizer")
    p.add_argument("--out", default=d.out, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--zero", type=int, default=d.zero, choices=[0, 1], help="1: shard the AdamW moments over the "
                   "processes of mpiexec -n N (ZeRO stage 1); the checkpoints do not change")
    # model shape overrides (default: the preset's)
    for name in MODEL_INT_FLAGS:
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    for name in MODEL_FLOAT_FLAGS:
        p.add_argument("--" + name.replace("_", "-"), type=float, default=None)
    p.add_argument("--hidden-act", default=None, choices=["gelu", "gelu_tanh"])
    p.add_argument("--norm", default=None, choices=["post", "pre"], help="post: BERT's layer norm after each "
                   "residual (the default; exports to transformers); pre: before attention and the feed-forward, "
                   "inside the residual, plus a final one (minibert checkpoints only)")
    return p


def config_from_args(args):
    """(TrainConfig, BertConfig overrides) of parsed arguments."""
    tc = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)})
    overrides = {k: getattr(args, k) for k in (*MODEL_INT_FLAGS, *MODEL_FLOAT_FLAGS, "hidden_act", "norm")
                 if getattr(args, k) is not None}
    overrides["dtype"] = args.dtype
    return tc, overrides


def main(argv=None):
    tc, overrides = config_from_args(build_parser().parse_args(argv))
    try:
        model, tok, ev, heldout_docs = pretrain(tc, overrides)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FloatingPointError, FileNotFoundError, RuntimeError) as e:  # RuntimeError: RunDirLocked
        print(f"error: {e}", file=sys.stderr)
        return 1
    if tc.fill_mask_examples and distributed.world().rank == 0:  # under mpiexec: rank 0 alone
        log("\nfill-mask on held-out sentences (top 5):")
        for text, answer in mask_examples(heldout_docs, tok, tc.fill_mask_examples, seed=tc.seed):
            (preds,) = fill_mask(model, tok, text, top_k=5)
            shown = ", ".join(f"{t!r} {p:.2f}" for t, p in preds)
            log(f"  {text}\n    answer {answer!r} | predicted {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
