"""Plot a run's loss and accuracy curves from OUT/metrics.jsonl to a PNG (needs matplotlib:
pip install -e ".[plot]").

    python scripts/plot_metrics.py runs/pretrain            # writes runs/pretrain/metrics.png
"""
import argparse
import json
import os
import sys


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/metrics.png)")
    args = p.parse_args(argv)
    path = os.path.join(args.run_dir, "metrics.jsonl")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print('error: matplotlib is not installed: pip install -e ".[plot]"', file=sys.stderr)
        return 1
    if not os.path.exists(path):
        print(f"error: {path} not found", file=sys.stderr)
        return 1
    with open(path) as f:
        recs = [json.loads(l) for l in f if l.strip()]
    train = [r for r in recs if "loss" in r]
    ev = [r for r in recs if "eval_loss" in r]
    if not train:
        print(f"error: {path} holds no training records yet", file=sys.stderr)
        return 1
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [r["step"] for r in train]
    ax1.plot(steps, [r["mlm_loss"] for r in train], label="train MLM loss")
    ax1.plot(steps, [r["nsp_loss"] for r in train], label="train NSP loss")
    if ev:
        ax1.plot([r["step"] for r in ev], [r["eval_mlm_loss"] for r in ev], "o-", label="held-out MLM loss")
    ax1.set_xlabel("step"), ax1.set_ylabel("cross-entropy"), ax1.legend(), ax1.grid(alpha=0.3)
    ax2.plot(steps, [r["mlm_acc"] for r in train], label="train MLM accuracy")
    ax2.plot(steps, [r["nsp_acc"] for r in train], label="train NSP accuracy")
    if ev:
        ax2.plot([r["step"] for r in ev], [r["eval_mlm_acc"] for r in ev], "o-", label="held-out MLM accuracy")
        ax2.plot([r["step"] for r in ev], [r["eval_nsp_acc"] for r in ev], "o-", label="held-out NSP accuracy")
    ax2.set_xlabel("step"), ax2.set_ylabel("accuracy"), ax2.set_ylim(0, 1), ax2.legend(), ax2.grid(alpha=0.3)
    fig.suptitle(f"minibert pretraining: {args.run_dir}")
    fig.tight_layout()
    out = args.out or os.path.join(args.run_dir, "metrics.png")
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
