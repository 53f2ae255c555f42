"""What the training loops report: a window of figures between log lines, the log line, and
metrics.jsonl. Pretraining (train.py) and fine-tuning (finetune.py) share all three.

    window = MetricsWindow()
    each step:      window.add(loss=out["loss"], correct=out["correct"], count=out["count"], tokens=n)
                    window.step()
    each interval:  rec = {"step": step, "loss": window.mean("loss"), **window.speed(), ...}
                    print(log_line(step, total, loss=rec["loss"], ..., left=seconds))
                    metrics.write(rec); window.reset()

One log line per interval, e.g.

    step  120/3500 | loss 5.213 | mlm_acc 0.182 | lr 4.0e-04 | norm 0.93 | 312 ms | 6,540 tok/s | left 9:02

and the same figures as one JSON line in OUT/metrics.jsonl.
"""
import json
import os
import time

from minibert.atomic import atomic_write


class MetricsWindow:
    """Sums of per-step figures since the last reset, and the time the window has been open.

    Sums may be device scalars (CuPy): adding them costs no host sync; mean() and ratio()
    convert once, at the log line."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.sums = {}
        self.steps = 0
        self.tokens = 0
        self.t0 = time.time()

    def add(self, tokens=0, **figures):
        """Add figures of one step or micro-batch; tokens counts the non-padding tokens seen
        (attention_mask summed), so tok/s is real tokens per second. scripts/bench.py's
        pos/s counts every B x T position, padding included: a different figure."""
        for k, v in figures.items():
            self.sums[k] = self.sums.get(k, 0) + v
        self.tokens += int(tokens)

    def step(self):
        """One optimizer step is done: means are over steps."""
        self.steps += 1

    def mean(self, name):
        """The per-step mean of a figure."""
        return float(self.sums.get(name, 0.0)) / max(self.steps, 1)

    def ratio(self, num, den):
        """sum(num) / sum(den), e.g. correct predictions over predictions (0 when den is 0)."""
        return int(self.sums.get(num, 0)) / max(int(self.sums.get(den, 0)), 1)

    def speed(self):
        """{"ms_per_step", "tokens_per_s"} over the window."""
        dt = max(time.time() - self.t0, 1e-9)
        return {"ms_per_step": 1000 * dt / max(self.steps, 1), "tokens_per_s": self.tokens / dt}


def fmt_time(s):
    """Seconds as m:ss, or h:mm:ss from an hour up."""
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


# how each named figure is shown; any other figure: "name 0.123"
_FORMATS = {
    "lr": lambda v: f"lr {v:.1e}",
    "grad_norm": lambda v: f"norm {v:.2f}",
    "ms_per_step": lambda v: f"{v:.0f} ms",
    "tokens_per_s": lambda v: f"{v:,.0f} tok/s",
    "left": lambda v: f"left {fmt_time(v)}",
}


def log_line(step, total=None, prefix="", **figures):
    """The house log line: "[prefix | ]step S/TOTAL | name value | ... | 312 ms | 6,540 tok/s".

    Figures are shown in the order given; lr, grad_norm, ms_per_step, tokens_per_s and left
    (seconds) have their own formats, the rest three decimals."""
    head = f"step {step:>{len(str(total))}}/{total}" if total is not None else f"step {step}"
    parts = ([prefix] if prefix else []) + [head]
    parts += [_FORMATS[k](v) if k in _FORMATS else f"{k} {v:.3f}" for k, v in figures.items()]
    return " | ".join(parts)


class MetricsFile:
    """OUT/metrics.jsonl, one JSON object per line. A new run starts it afresh; a resumed run
    (resume_step given) keeps the lines up to that step and drops those past it, which the
    interrupted run wrote after its last checkpoint and the resumed run will write again,
    and a last line cut short by a kill (rewritten atomically, so a kill now loses nothing)."""

    def __init__(self, path, resume_step=None):
        self.path = path
        if resume_step is not None and os.path.exists(path):
            with open(path) as f:
                keep = [l.rstrip("\n") for l in f if _step_of(l) is not None and _step_of(l) <= resume_step]
            atomic_write(path, "".join(l + "\n" for l in keep))
        elif resume_step is None and os.path.exists(path):
            os.remove(path)

    def write(self, rec):
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")


def _step_of(line):
    """The step of a metrics.jsonl line; None for a blank line or one cut short by a kill."""
    try:
        return json.loads(line).get("step", 0) if line.strip() else None
    except json.JSONDecodeError:
        return None
