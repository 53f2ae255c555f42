"""--budget-minutes: how many pretraining steps fit a time budget, measured once before the
first step (train.py records the count in the run, so --resume takes the same steps; the
budget fixes the schedule, never the clock). How the probe measures, and how far it can be
off: budget_steps, and docs/pretraining.md, "The budget is an estimate"."""
import time

import numpy as np  # host side: batch lengths and the fit

from minibert import distributed, philox
from minibert.heldout import evaluate
from minibert.optim import AdamW

BUDGET_PROBE = 16  # timed steps


def budget_steps(tc, model, train_data, eval_set, t_start, w):
    """(steps, seconds a step, seconds an evaluation): the number of steps that fit
    --budget-minutes, fixed once before the first step, and the times it was planned from.

    A step's time grows with its batch's padded length, and the first step of each new
    length also pays for fresh memory, so the probe takes BUDGET_PROBE batches of the first
    epoch at evenly spaced quantiles of their lengths, steps through them twice on a
    throwaway copy of the model with a fresh optimizer, fits the second pass's times as a
    line in the batch length and averages it over every batch of the epoch (quantile
    midpoints alone miss the long, costly tail); then one held-out evaluation. It is an
    estimate: a job can end some tens of seconds before or after its budget, and later on a
    machine that gets busier. Then steps = (budget - the time since t_start - the
    final evaluation and save) / (a step + its share of the evaluations). The count is
    recorded in the run (config.json, checkpoints), so a resumed run takes the same steps:
    the budget fixes the schedule, never the clock."""
    probe = type(model)(model.config, params={k: v.copy() for k, v in model.params.items()})
    opt = AdamW(probe.params, lr=0.0)
    dp = distributed.DataParallel(w, opt)
    if hasattr(train_data, "batch_rows"):  # NSP pairs: lengths vary from batch to batch
        longest = np.asarray(train_data.epoch(0).lengths)[train_data.batch_rows(0, tc.batch_size)].max(axis=1)
        by_length = np.argsort(longest, kind="stable")  # (n_batches,) batch indices, shortest first
        picks = by_length[((np.arange(BUDGET_PROBE) + 0.5) * len(by_length) / BUDGET_PROBE).astype(int)]
    else:  # packed blocks: every batch is as long as the next
        longest, picks = None, np.arange(BUDGET_PROBE)
    times = []
    for index in [*picks, *picks]:
        batches = train_data.batches(tc.batch_size, start=(0, int(index)))
        t0 = time.perf_counter()
        grads = None
        for micro in range(tc.accum):
            batch, counts, first_row = dp.slice(next(batches)[1])
            _, cache = probe.forward(batch, train=True, rng=philox.rng((tc.seed, 0, micro), first_row),
                                     global_counts=counts)
            grads = dp.backward(probe, cache, grads, 1.0 / tc.accum, last=micro == tc.accum - 1)
        grads = dp.reduce(grads)
        dp.clip_grad_norm(grads, tc.grad_clip)
        opt.step(grads, lr=0.0)
        float(grads[next(iter(grads))].ravel()[0])  # wait for the device
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    evaluate(probe, eval_set, w)
    eval_s = time.perf_counter() - t0
    second = np.array(times[len(picks):])  # (BUDGET_PROBE,) the second pass
    step_s = float(np.mean(second))
    if longest is not None:  # a step's time is near linear in its length: fit, then average over every batch
        slope, intercept = np.polyfit(longest[picks].astype(np.float64), second, 1)
        step_s = max(float(intercept + slope * longest.mean()), step_s / 2)
    spent_s = time.time() - t_start  # setting up and this probe
    left = tc.budget_minutes * 60.0 - spent_s - 2 * eval_s - 1.0
    steps = int(left / (step_s + eval_s / tc.eval_every))
    steps = int(w.sum_host([steps if w.rank == 0 else 0])[0])  # rank 0's count on every rank
    if steps < 1:
        raise ValueError(f"--budget-minutes {tc.budget_minutes}: {spent_s:.0f} s went to setting up and a step takes "
                         f"{step_s * 1000:.0f} ms: no step fits")
    return steps, step_s, eval_s


BUDGET_PROBE = 16  # timed steps
