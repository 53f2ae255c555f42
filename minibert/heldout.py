"""The held-out evaluation of a pretraining model: MLM loss, accuracy and perplexity over the
labelled positions of held-out batches, NSP accuracy over their pairs, split over the ranks
of a data-parallel job and summed. Every run is scored this way (train.py at its eval
steps, scripts/evaluate.py on a saved run, scripts/hf_pretrain.py on transformers' weights),
on pairs masked at 15% whatever the training recipe, so the figures compare."""
import math

import numpy as np  # host side: the batches

from minibert import distributed


def evaluate(model, batches, w=None):
    """Held-out MLM loss (mean over labelled positions), accuracy, perplexity; NSP accuracy.
    w: a distributed.World whose ranks each evaluate their rows of every batch; the sums
    are added over ranks, so every rank returns the single-process figures."""
    w = w or distributed.World()
    mlm_loss_sum, mlm_correct, mlm_count, nsp_loss_sum, nsp_correct, nsp_count = 0.0, 0, 0, 0.0, 0, 0
    for batch in batches:
        batch = {k: v[w.rows(len(batch["input_ids"]))] for k, v in batch.items()}
        if len(batch["input_ids"]) == 0:  # a last batch shorter than the number of ranks
            continue
        out = model.predict(batch)
        mlm_loss_sum += float(out["mlm_loss"]) * out["mlm_count"]
        mlm_correct += int(out["mlm_correct"])
        mlm_count += out["mlm_count"]
        if "nsp_loss" in out:  # an MLM-only model (BertForMaskedLM) has no NSP figures
            nsp_loss_sum += float(out["nsp_loss"]) * out["nsp_count"]
            nsp_correct += int(out["nsp_correct"])
            nsp_count += out["nsp_count"]
    sums = w.sum_host([mlm_loss_sum, mlm_correct, mlm_count, nsp_loss_sum, nsp_correct, nsp_count])
    mlm_loss_sum, nsp_loss_sum = float(sums[0]), float(sums[3])
    mlm_correct, mlm_count, nsp_correct, nsp_count = (int(x) for x in sums[[1, 2, 4, 5]])
    mlm_loss = mlm_loss_sum / max(mlm_count, 1)
    ev = {"mlm_loss": mlm_loss, "mlm_acc": mlm_correct / max(mlm_count, 1),
          "perplexity": math.exp(min(mlm_loss, 50.0)), "nsp_loss": nsp_loss_sum / max(nsp_count, 1),
          "nsp_acc": nsp_correct / max(nsp_count, 1), "loss": mlm_loss + nsp_loss_sum / max(nsp_count, 1),
          "mlm_positions": mlm_count, "pairs": nsp_count}
    if not nsp_count:  # MLM alone: no NSP figures to report
        del ev["nsp_loss"], ev["nsp_acc"]
    return ev


def heldout_batches(tc, held):
    """The held-out batches of a run. MLM alone (--objective mlm) sees the same pairs as one
    segment (token types all 0, as it was trained): the same positions are predicted."""
    batches = held.eval_batches(tc.batch_size, tc.eval_batches)  # None: all
    if tc.objective == "mlm":
        batches = [dict(b, token_type_ids=np.zeros_like(b["token_type_ids"])) for b in batches]
    return batches


def nsp_text(ev):
    """The NSP part of an evaluation log line ("" for an MLM-only model)."""
    return f" | nsp acc {ev['nsp_acc']:.3f}" if "nsp_acc" in ev else ""
