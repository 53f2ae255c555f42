"""The pretraining recipe's options (TrainConfig fields, scripts/pretrain.py flags): --mlm-prob,
--whole-word-mask, --objective mlm, --norm pre, --schedule / --peak-at, --beta1/--beta2/--eps and
--budget-minutes, --precision. For each: an interrupted and resumed run is bitwise the uninterrupted one,
fill-mask works on its checkpoint, a post-LN one exports to transformers (a pre-LN one refuses,
saying why), and its settings are checked on --resume; N processes equal one (test at the end).
"""
import dataclasses
import json
import os
import signal

import numpy as np
import pytest

from minibert import train
from minibert.checkpoint import load_checkpoint
from minibert.inference import fill_mask, load_pretrained
from minibert.instances import PretrainingData
from minibert.interop import export_run
from minibert.heldout import heldout_batches
from minibert.train import TrainConfig, pretrain, train_max_predictions
from test_train import SMALL, small_tc, write_corpus

# each option against today's recipe (model overrides in the second slot)
OPTIONS = {
    "mlm-prob": (dict(mlm_prob=0.4), {}),
    "whole-word-mask": (dict(whole_word_mask=True), {}),
    "objective-mlm": (dict(objective="mlm"), {}),
    "norm-pre": (dict(), {"norm": "pre"}),
    "one-cycle-betas": (dict(schedule="one-cycle", peak_at=0.3, beta1=0.8, beta2=0.98, eps=1e-8), {}),
    "cosine": (dict(schedule="cosine", warmup=3), {}),
    "dropout-0": (dict(), {"dropout": 0.0, "attention_dropout": 0.0}),
    "precision-bf16": (dict(precision="bf16"), {}),
    "precision-fp16": (dict(precision="fp16"), {}),  # the loss scaler's state resumes too
    "precision-fp16-lamb": (dict(precision="fp16", optimizer="lamb"), {}),
}
STEPS = 20


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return str(write_corpus(tmp_path_factory.mktemp("recipe") / "corpus.txt"))


def recipe_tc(out, corpus, **kw):
    return small_tc(out, corpus, **{"steps": STEPS, "save_every": 5, "eval_every": 10, "log_every": 5, **kw})


def interrupt_at(monkeypatch, at):
    """Ctrl-C during step `at` (the run finishes it, saves, raises KeyboardInterrupt)."""
    real = train.lr_for

    def lr_for(tc, step):
        if step == at:
            signal.raise_signal(signal.SIGINT)
        return real(tc, step)
    monkeypatch.setattr(train, "lr_for", lr_for)


def run_interrupted_then_resumed(tc, overrides, monkeypatch, at=7):
    with monkeypatch.context() as m:
        interrupt_at(m, at)
        with pytest.raises(KeyboardInterrupt):
            pretrain(tc, dict(overrides))
    assert json.load(open(os.path.join(tc.out, "last.json")))["meta"]["step"] == at + 1
    return pretrain(dataclasses.replace(tc, resume=True), dict(overrides))


def params(out):
    return load_checkpoint(str(out), "last")[0]


@pytest.mark.parametrize("name", list(OPTIONS))
def test_option_resumes_exactly_fills_masks_and_exports(tmp_path, corpus, monkeypatch, name):
    kw, model_kw = OPTIONS[name]
    overrides = dict(SMALL, **model_kw)
    full = recipe_tc(tmp_path / "full", corpus, **kw)
    model, tok, ev, _ = pretrain(full, dict(overrides))
    run_interrupted_then_resumed(recipe_tc(tmp_path / "part", corpus, **kw), overrides, monkeypatch)
    a, b = params(full.out), params(tmp_path / "part")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), "resume is not exact"
    # the run records the option, and --resume with another value is refused
    saved = json.load(open(os.path.join(full.out, "config.json")))
    for k, v in kw.items():
        assert saved["train"][k] == v
    for k, v in model_kw.items():
        assert saved["model"][k] == v
    changed = {"beta2": 0.95} if "beta2" in kw else {"mlm_prob": 0.25}
    with pytest.raises(ValueError, match="settings differ"):
        pretrain(dataclasses.replace(full, resume=True, steps=STEPS + 5, **changed), dict(overrides))
    # fill-mask on the checkpoint
    m2, t2 = load_pretrained(full.out)
    (preds,) = fill_mask(m2, t2, "The parser [MASK] the buffer.", top_k=3)
    assert len(preds) == 3 and all(0 < p <= 1 for _, p in preds)
    assert type(m2).__name__ == ("BertForMaskedLM" if kw.get("objective") == "mlm" else "BertForPreTraining")
    # Hugging Face export: every post-LN option; pre-LN refuses and writes nothing
    if model_kw.get("norm") == "pre":
        with pytest.raises(ValueError, match="pre-LN.*post-LN only"):
            export_run(full.out, str(tmp_path / "hf"))
        assert not os.path.exists(tmp_path / "hf" / "model.safetensors")
    else:
        pytest.importorskip("transformers")
        assert export_run(full.out, str(tmp_path / "hf")) == type(m2).__name__


def test_budget_fixes_the_steps_once_and_resumes_exactly(tmp_path, corpus, monkeypatch):
    """--budget-minutes replaces --steps by a count fixed before the first step and recorded;
    the resumed run keeps that count (whatever the clock says then) and ends bitwise where a
    plain run of that many steps ends."""
    tc = recipe_tc(tmp_path / "budget", corpus, budget_minutes=0.1, steps=10**6, save_every=50)
    run_interrupted_then_resumed(tc, SMALL, monkeypatch, at=12)
    steps = json.load(open(os.path.join(tc.out, "config.json")))["train"]["steps"]
    assert 20 < steps < 10**6  # 6 s on a model this small: hundreds of steps
    assert json.load(open(os.path.join(tc.out, "last.json")))["meta"]["step"] == steps
    plain = recipe_tc(tmp_path / "plain", corpus, steps=steps, save_every=50)
    pretrain(plain, dict(SMALL))
    a, b = params(tc.out), params(plain.out)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_evaluation_masks_15_percent_whatever_the_training_rate(tmp_path, corpus):
    """--mlm-prob and --whole-word-mask change training only: the held-out batches are those of
    today's recipe; the training cap on predictions scales with the rate."""
    assert train_max_predictions(TrainConfig(mlm_prob=0.15)) == 20 and train_max_predictions(TrainConfig()) == 40
    assert train_max_predictions(TrainConfig(mlm_prob=0.4)) == 54
    assert train_max_predictions(TrainConfig(mlm_prob=0.1)) == 20  # never below the evaluation's cap
    base = recipe_tc(tmp_path / "a", corpus, tokenizer="")
    tok = train.get_tokenizer(base, train.load_documents(base)[0])
    evals = []
    for kw in ({"mlm_prob": 0.15}, {"mlm_prob": 0.4, "whole_word_mask": True}):
        tc = dataclasses.replace(base, **kw)
        tr, held = train.build_data(tc, tok, *train.load_documents(tc))
        evals.append(heldout_batches(tc, held))
        assert isinstance(held, PretrainingData) and held.masked_lm_prob == 0.15 and held.max_predictions == 5
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(*evals) for k in x)
    # MLM alone: the same held-out positions, as one segment
    tc = dataclasses.replace(base, objective="mlm")
    mlm = heldout_batches(tc, train.build_data(tc, tok, *train.load_documents(tc))[1])
    for x, y in zip(mlm, evals[0]):
        assert np.array_equal(x["labels"], y["labels"]) and not x["token_type_ids"].any()


def test_bad_settings_are_refused(tmp_path, corpus):
    for kw, msg in [(dict(objective="nsp"), "objective"), (dict(mlm_prob=1.5), "mlm-prob"),
                    (dict(schedule="step"), "schedule"), (dict(peak_at=2.0), "peak-at"),
                    (dict(budget_minutes=-1.0), "budget")]:
        with pytest.raises(ValueError, match=msg):
            pretrain(recipe_tc(tmp_path / "bad", corpus, **kw), dict(SMALL))
    with pytest.raises(ValueError, match="norm"):
        pretrain(recipe_tc(tmp_path / "bad2", corpus), dict(SMALL, norm="middle"))


def test_a_run_saved_before_the_options_existed_resumes(tmp_path, corpus, monkeypatch):
    """A checkpoint whose meta predates the new fields (no "norm" in its config, no objective,
    mlm_prob, ... in its settings) resumes exactly with the settings it computed with (BERT's:
    train.LEGACY_SETTINGS), and is refused with today's defaults, which differ."""
    legacy = dict(mlm_prob=0.15, beta2=0.999)
    tc = recipe_tc(tmp_path / "full", corpus, **legacy)
    pretrain(tc, dict(SMALL))
    part = recipe_tc(tmp_path / "old", corpus, **legacy)
    with monkeypatch.context() as m:
        interrupt_at(m, 7)
        with pytest.raises(KeyboardInterrupt):
            pretrain(part, dict(SMALL))
    record = os.path.join(part.out, "last.json")
    rec = json.load(open(record))
    del rec["meta"]["config"]["norm"]
    for k in ("objective", "mlm_prob", "whole_word_mask", "schedule", "peak_at", "beta1", "beta2", "eps",
              "budget_minutes"):
        del rec["meta"]["train"][k]
    json.dump(rec, open(record, "w"))
    with pytest.raises(ValueError, match="settings differ.*mlm_prob"):
        pretrain(dataclasses.replace(part, resume=True, mlm_prob=0.3, beta2=0.98), dict(SMALL))
    pretrain(dataclasses.replace(part, resume=True), dict(SMALL))
    a, b = params(tc.out), params(part.out)
    assert all(np.array_equal(a[k], b[k]) for k in a)
