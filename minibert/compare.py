"""Does pretraining pay? The same fine-tuning recipe on the same task from (a) a pretrained
run and (b) random weights of the same shape and tokenizer, over seeds and training-set
sizes; a markdown table of held-out accuracy and macro-F1 (scripts/compare_pretraining.py).

    result = compare_pretraining("runs/pretrain", "runs/compare", seeds=(0, 1), train_per_class=(0, 32))

Run directory OUT: one fine-tuning run per (initialisation, size, seed), results.json (the
returned dict), results.md (the table). The comparison holds OUT's lock (rundir.lock) while
it runs, and each fine-tuning run its own.
"""
import os

import numpy as np

from minibert import rundir
from minibert.atomic import atomic_write
from minibert.finetune import FinetuneConfig, finetune, log


def compare_pretraining(pretrained, out="runs/compare", seeds=(0,), train_per_class=(0,), **recipe):
    """Fine-tune from (a) the pretrained run and (b) random weights of the same shape, with
    the same recipe and seeds, on the default task unless recipe says otherwise; once with
    each training-set size in train_per_class (0: all training examples).
    Returns the results dict also written to OUT/results.json (and the table to results.md)."""
    with rundir.lock(out):
        return _compare(pretrained, out, seeds, train_per_class, recipe)


def _compare(pretrained, out, seeds, train_per_class, recipe):
    result = {"pretrained_run": pretrained, "seeds": list(seeds), "regimes": []}
    meta = rundir.read_meta(pretrained, "last", rundir.PRETRAINING_KIND)
    result["pretraining_step"] = meta.get("step")
    result["pretraining_steps_planned"] = meta.get("train", {}).get("steps")
    for n in train_per_class:
        regime = {"train_per_class": n, "runs": {"pretrained": [], "random": []}}
        for seed in seeds:
            for init in ("pretrained", "random"):
                fc = FinetuneConfig(init=pretrained, random_init=(init == "random"), seed=seed, train_per_class=n,
                                    out=os.path.join(out, f"{init}-n{n}-seed{seed}"), overwrite=True, **recipe)
                log(f"\n=== {init} initialisation, {n or 'all'} training examples per class, seed {seed} ===")
                _, _, res = finetune(fc)
                regime["runs"][init].append({"seed": seed, "acc": res["acc"], "macro_f1": res["macro_f1"],
                                             "loss": res["loss"], "train_examples": res["train_examples"],
                                             "examples": res["examples"], "elapsed_s": res["elapsed_s"]})
        for init, rs in regime["runs"].items():
            regime[init] = {m: float(np.mean([r[m] for r in rs])) for m in ("acc", "macro_f1")}
            regime[init].update({m + "_std": float(np.std([r[m] for r in rs])) for m in ("acc", "macro_f1")})
        regime["train_examples"] = regime["runs"]["pretrained"][0]["train_examples"]
        result["validation_examples"] = regime["runs"]["pretrained"][0]["examples"]
        result["regimes"].append(regime)
    fc = FinetuneConfig(init=pretrained, **recipe)
    result["recipe"] = {k: getattr(fc, k) for k in ("epochs", "lr", "warmup", "weight_decay", "batch_size",
                                                    "max_length", "num_classes", "train", "validation", "tokenizer")}
    table = results_table(result)
    rundir.write_json(os.path.join(out, rundir.RESULTS_FILE), result)
    atomic_write(os.path.join(out, "results.md"), table + "\n")
    log("\n" + table)
    return result


def results_table(result):
    """A markdown table of held-out accuracy and macro-F1, pretrained vs random init."""
    n = len(result["seeds"])
    fmt = (lambda r, m: f"{r[m]:.3f} ± {r[m + '_std']:.3f}") if n > 1 else (lambda r, m: f"{r[m]:.3f}")
    step, planned = result["pretraining_step"], result.get("pretraining_steps_planned")
    of = f" of {planned}" if planned and planned != step else ""
    lines = ["| training examples | initialisation | held-out accuracy | held-out macro-F1 |", "|---|---|---|---|"]
    for g in result["regimes"]:
        size = f"{g['train_examples']:,}" + (f" ({g['train_per_class']} per class)" if g["train_per_class"] else " (all)")
        lines.append(f"| {size} | (a) pretrained ({result['pretrained_run']}, step {step}{of}) | "
                     f"{fmt(g['pretrained'], 'acc')} | {fmt(g['pretrained'], 'macro_f1')} |")
        lines.append(f"| {size} | (b) random | {fmt(g['random'], 'acc')} | {fmt(g['random'], 'macro_f1')} |")
    seeds = f"mean ± std over seeds {result['seeds']}" if n > 1 else f"seed {result['seeds'][0]}"
    lines.append(f"\n{result['validation_examples']} held-out examples; {seeds}.")
    return "\n".join(lines)
