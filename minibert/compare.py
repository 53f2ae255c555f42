"""Does pretraining pay? The same fine-tuning recipe on the same task from (a) a pretrained
run and (b) random weights of the same shape and tokenizer, over seeds and training-set
sizes; a markdown table of the held-out scores (scripts/compare_pretraining.py).

    result = compare_pretraining("runs/pretrain", "runs/compare", seeds=(0, 1), train_per_class=(0, 32))
    result = compare_pretraining("runs/pretrain", "runs/compare_tag", task="tag", train_examples=(0, 500))

Tasks and their held-out scores: seq, the default package task (accuracy, macro-F1; sizes:
at most N examples per class); tag, qa and choice, the default tasks of default_tasks.py,
split as the pretraining run split its corpus (entity F1 and token accuracy; SQuAD exact
match and F1; accuracy; sizes: N training examples drawn with the stream [seed, 2], the same
for both arms).

Run directory OUT: one fine-tuning run per (initialisation, size, seed), results.json (the
returned dict), results.md (the table). The comparison holds OUT's lock (rundir.lock) while
it runs, and each fine-tuning run its own.
"""
import os

import numpy as np

from minibert import rundir
from minibert.atomic import atomic_write
from minibert.default_tasks import default_choice_task, default_qa_task, default_tag_task
from minibert.finetune import FinetuneConfig, finetune, log

# the held-out scores each task's table shows (two, choice's one): (results key, column name)
SCORES = {"seq": (("acc", "accuracy"), ("macro_f1", "macro-F1")),
          "tag": (("entity_f1", "entity F1"), ("token_acc", "token accuracy")),
          "qa": (("exact_match", "exact match"), ("f1", "F1")),
          "choice": (("acc", "accuracy"),)}
DEFAULT_TASKS = {"tag": default_tag_task, "qa": default_qa_task, "choice": default_choice_task}


def compare_pretraining(pretrained, out="runs/compare", seeds=(0,), train_per_class=(0,), task="seq",
                        train_examples=(0,), **recipe):
    """Fine-tune from (a) the pretrained run and (b) random weights of the same shape, with
    the same recipe and seeds, on the task's default data unless recipe says otherwise
    (train=, validation=); once with each training-set size: seq, each of train_per_class
    (at most N per class); tag, qa and choice, each of train_examples (N drawn examples); 0: all.
    Returns the results dict also written to OUT/results.json (and the table to results.md)."""
    if task not in SCORES:
        raise ValueError(f"--task must be one of {sorted(SCORES)}, got {task!r}")
    with rundir.lock(out):
        return _compare(pretrained, out, seeds, train_per_class if task == "seq" else train_examples, task, recipe)


def _default_data(task, pretrained, recipe):
    """(train, validation) of a tag, qa or choice comparison: recipe's, else the default task split
    with the pretraining run's heldout_fraction."""
    if recipe.get("train"):
        return recipe.pop("train"), recipe.pop("validation", "")
    recipe.pop("validation", None)
    return DEFAULT_TASKS[task](rundir.run_heldout_fraction(pretrained))


def _drawn(train, n, seed):
    """n training examples drawn with the stream [seed, 2], in their order (all when n is 0)."""
    if n and isinstance(train, str):
        raise ValueError(f"a training-set size ({n}) draws from examples in memory, not from the file {train}")
    if not n or n >= len(train):
        return train
    keep = np.random.default_rng([int(seed), 2]).choice(len(train), size=n, replace=False)
    return [train[i] for i in sorted(keep.tolist())]


def _compare(pretrained, out, seeds, sizes, task, recipe):
    if task != "seq":
        train, validation = _default_data(task, pretrained, recipe)
    scores = [k for k, _ in SCORES[task]]
    size_key = "train_per_class" if task == "seq" else "train_examples_drawn"
    result = {"pretrained_run": pretrained, "task": task, "seeds": list(seeds), "regimes": []}
    meta = rundir.read_meta(pretrained, "last", rundir.PRETRAINING_KIND)
    result["pretraining_step"] = meta.get("step")
    result["pretraining_steps_planned"] = meta.get("train", {}).get("steps")
    for n in sizes:
        regime = {size_key: n, "runs": {"pretrained": [], "random": []}}
        for seed in seeds:
            for init in ("pretrained", "random"):
                run_out = os.path.join(out, f"{init}-n{n}-seed{seed}")
                if task == "seq":
                    fc = FinetuneConfig(init=pretrained, random_init=(init == "random"), seed=seed,
                                        train_per_class=n, out=run_out, overwrite=True, **recipe)
                    what = "per class"
                else:
                    fc = FinetuneConfig(task=task, init=pretrained, random_init=(init == "random"), seed=seed,
                                        train=_drawn(train, n, seed), validation=validation, out=run_out,
                                        overwrite=True, **recipe)
                    what = "drawn"
                log(f"\n=== {init} initialisation, {n or 'all'} training examples {what}, seed {seed} ===")
                _, _, res = finetune(fc)
                regime["runs"][init].append({"seed": seed, **{m: res[m] for m in scores},
                                             "loss": res["loss"], "train_examples": res["train_examples"],
                                             "examples": res["validation_examples"], "elapsed_s": res["elapsed_s"]})
        for init, rs in regime["runs"].items():
            regime[init] = {m: float(np.mean([r[m] for r in rs])) for m in scores}
            regime[init].update({m + "_std": float(np.std([r[m] for r in rs])) for m in scores})
        regime["train_examples"] = regime["runs"]["pretrained"][0]["train_examples"]
        result["validation_examples"] = regime["runs"]["pretrained"][0]["examples"]
        result["regimes"].append(regime)
    fc = FinetuneConfig(init=pretrained, **recipe)
    result["recipe"] = {k: getattr(fc, k) for k in ("epochs", "lr", "warmup", "weight_decay", "batch_size",
                                                    "max_length", "num_classes", "train", "validation", "tokenizer")}
    if task != "seq":  # the data were lists in memory: named by what they are
        result["recipe"].update(train=f"{task} default task, training split" if isinstance(train, list) else train,
                                validation=f"{task} default task, held-out split"
                                if isinstance(validation, list) else validation)
    table = results_table(result)
    rundir.write_json(os.path.join(out, rundir.RESULTS_FILE), result)
    atomic_write(os.path.join(out, "results.md"), table + "\n")
    log("\n" + table)
    return result


def results_table(result):
    """A markdown table of the task's held-out scores, pretrained vs random init."""
    task = result.get("task", "seq")
    scores = SCORES[task]
    n = len(result["seeds"])
    digits = 2 if task == "qa" else 3  # SQuAD's scores are percentages
    fmt = (lambda r, m: f"{r[m]:.{digits}f} ± {r[m + '_std']:.{digits}f}") if n > 1 else \
        (lambda r, m: f"{r[m]:.{digits}f}")
    step, planned = result["pretraining_step"], result.get("pretraining_steps_planned")
    of = f" of {planned}" if planned and planned != step else ""
    lines = ["| training examples | initialisation | " + " | ".join(f"held-out {name}" for _, name in scores) + " |",
             "|---|---|" + "---|" * len(scores)]
    for g in result["regimes"]:
        if task == "seq":
            n_size, unit = g["train_per_class"], " per class"
        else:
            n_size, unit = g["train_examples_drawn"], " drawn"
        size = f"{g['train_examples']:,}" + (f" ({n_size}{unit})" if n_size else " (all)")
        for init, name in (("pretrained", f"(a) pretrained ({result['pretrained_run']}, step {step}{of})"),
                           ("random", "(b) random")):
            lines.append(f"| {size} | {name} | " + " | ".join(fmt(g[init], m) for m, _ in scores) + " |")
    seeds = f"mean ± std over seeds {result['seeds']}" if n > 1 else f"seed {result['seeds'][0]}"
    unit = {"seq": "examples", "tag": "sentences", "qa": "questions", "choice": "examples"}[task]
    lines.append(f"\n{result['validation_examples']} held-out {unit}; {seeds}.")
    return "\n".join(lines)
