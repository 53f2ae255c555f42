"""Held-out MLM accuracy and loss against wall-clock seconds, one line per run directory
(minibert's scripts/pretrain.py runs and scripts/hf_pretrain.py runs alike: both write
metrics.jsonl with eval records), and a vertical line at the 600 s mark. Needs matplotlib.

    python scripts/plot_pretraining.py runs/mb:minibert runs/hf:transformers \
        --machine "2-vCPU AVX-512 Xeon" --out docs/pretraining-wallclock.png

An eval record's time is its elapsed_s; minibert's eval records have none, so they take the
elapsed_s of the training record of the nearest step (training records are written just
before the evaluation at the same step, so at an eval step it is the time the eval began).
The figure's footer names the machine (--machine), the command and the date.
"""
import argparse
import datetime
import json
import os
import sys

MARK_S = 600  # the ten-minute mark


def eval_points(run_dir):
    """[(seconds, eval_mlm_acc, eval_mlm_loss)] of a run's eval records, in step order."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        recs = [json.loads(l) for l in f if l.strip()]
    timed = [r for r in recs if "loss" in r and "elapsed_s" in r]  # training records
    points = []
    for r in recs:
        if "eval_mlm_acc" not in r:
            continue
        t = r.get("elapsed_s")
        if t is None:
            if not timed:
                raise ValueError(f"{run_dir}: eval record at step {r['step']} has no elapsed_s and no training "
                                 "record has one")
            t = min(timed, key=lambda x: abs(x["step"] - r["step"]))["elapsed_s"]
        points.append((float(t), r["eval_mlm_acc"], r["eval_mlm_loss"]))
    return points


def parse_run(arg):
    """RUN_DIR[:LABEL] -> (run_dir, label); the label defaults to the directory's name."""
    run_dir, _, label = arg.rpartition(":") if not os.path.isdir(arg) else (arg, "", "")
    return run_dir, label or os.path.basename(os.path.normpath(run_dir))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="RUN_DIR[:LABEL]")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--machine", default="", help="the machine the runs ran on, for the footer")
    p.add_argument("--date", default=datetime.date.today().isoformat(), help="for the footer (default: today)")
    args = p.parse_args(argv)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print('error: matplotlib is not installed: pip install -e ".[plot]"', file=sys.stderr)
        return 1
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2))
    for arg in args.runs:
        run_dir, label = parse_run(arg)
        try:
            points = eval_points(run_dir)
        except (OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        if not points:
            print(f"error: {run_dir}/metrics.jsonl holds no eval records", file=sys.stderr)
            return 1
        t, acc, loss = zip(*points)
        ax_acc.plot(t, acc, "o-", ms=3, label=label)
        ax_loss.plot(t, loss, "o-", ms=3, label=label)
    for ax, name in ((ax_acc, "held-out MLM accuracy"), (ax_loss, "held-out MLM loss")):
        ax.axvline(MARK_S, color="grey", ls="--", lw=1)
        ax.set_xlabel("wall-clock seconds (setup and evaluations included)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    ax_acc.legend(loc="lower right")  # the 600 s mark leaves the lower right empty
    command = "python scripts/plot_pretraining.py " + " ".join(argv if argv is not None else sys.argv[1:])
    fig.text(0.01, 0.01, " | ".join(x for x in (args.machine, args.date, command) if x), fontsize=7, color="grey")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
