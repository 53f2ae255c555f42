"""scripts/hf_pretrain.py trains transformers' BERT on a minibert run's data and recipe:
it starts from minibert's weights, and with dropout 0 in float64 its first steps' losses
are minibert's; scripts/plot_pretraining.py draws both runs' held-out curves."""
import importlib.util
import json
import os

import numpy as np
import pytest

from tests.test_train import write_corpus

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from minibert import backend, heldout, rundir, train  # noqa: E402
from minibert.tokenizer_files import load_tokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(minibert run, hf_pretrain run) of STEPS steps, float64, dropout 0, a loss logged every step."""
    tmp = tmp_path_factory.mktemp("hf")
    corpus = str(write_corpus(tmp / "corpus.txt"))
    mb, hf = str(tmp / "mb"), str(tmp / "hf")
    torch.set_num_threads(1)
    pretrain = load_script("pretrain")
    assert pretrain.main(["--corpus", corpus, "--out", mb, "--vocab-size", "600", "--steps", str(STEPS),
                          "--batch-size", "8", "--seq-len", "32", "--max-predictions", "5", "--warmup", "2",
                          "--lr", "3e-3", "--log-every", "1", "--eval-every", "2", "--eval-batches", "2",
                          "--fill-mask-examples", "0", "--backend", "numpy", "--dtype", "float64", "--num-layers",
                          "1", "--hidden-size", "32", "--num-heads", "2", "--intermediate-size", "64",
                          "--dropout", "0", "--attention-dropout", "0"]) == 0
    assert load_script("hf_pretrain").main(["--like", mb, "--out", hf, "--threads", "1", "--seconds", "600"]) == 0
    return mb, hf


def records(run_dir):
    with open(os.path.join(run_dir, rundir.METRICS_FILE)) as f:
        return [json.loads(l) for l in f if l.strip()]


def test_starts_from_minibert_weights(runs):
    mb_dir, _ = runs
    hf = load_script("hf_pretrain")
    backend.use("numpy")
    tc, config = hf.read_run(mb_dir)
    tok = load_tokenizer(tc.tokenizer)
    mb = train.build_model(tc, tok, config.to_dict())
    train_data, held = train.build_data(tc, tok, *train.load_documents(tc))
    eval_set = held.eval_batches(tc.batch_size, tc.eval_batches)
    model = hf.hf_model(config, "BertForPreTraining", "sdpa")
    hf.load_into_torch(model, mb)
    model.eval()
    # torch's own forward on the first training batch: the same loss as minibert's
    _, batch = next(train_data.batches(tc.batch_size))
    with torch.no_grad():
        torch_loss = float(model(**hf.torch_batch(batch, nsp=True)).loss)
    assert torch_loss == pytest.approx(float(mb.forward(batch, train=False)[0]["loss"]), abs=1e-10)
    # and the weights carried back give minibert's own held-out evaluation
    ev_mb = heldout.evaluate(mb, eval_set)
    back = hf.to_minibert(model, train.build_model(tc, tok, config.to_dict()),
                          "BertForPreTraining")
    ev_back = heldout.evaluate(back, eval_set)
    for k in ("mlm_loss", "mlm_acc", "nsp_acc", "nsp_loss"):
        assert ev_back[k] == pytest.approx(ev_mb[k], abs=1e-6)


def test_first_steps_give_minibert_losses(runs):
    mb_dir, hf_dir = runs
    mb = {r["step"]: r for r in records(mb_dir) if "loss" in r}
    hf = {r["step"]: r for r in records(hf_dir) if "loss" in r}
    assert sorted(hf) == list(range(1, STEPS + 1))
    for s in hf:
        for k in ("loss", "mlm_loss", "nsp_loss", "grad_norm", "lr"):
            assert hf[s][k] == pytest.approx(mb[s][k], abs=1e-8), (s, k)
        assert hf[s]["mlm_acc"] == mb[s]["mlm_acc"] and hf[s]["nsp_acc"] == mb[s]["nsp_acc"]


def test_metrics_have_eval_records(runs):
    mb_dir, hf_dir = runs
    ev_hf = [r for r in records(hf_dir) if "eval_mlm_acc" in r]
    ev_mb = [r for r in records(mb_dir) if "eval_mlm_acc" in r]
    assert [r["step"] for r in ev_hf] == [2, STEPS]
    for a, b in zip(ev_hf, ev_mb):
        assert {"elapsed_s", "eval_mlm_loss", "eval_nsp_acc"} <= set(a)
        assert a["eval_mlm_loss"] == pytest.approx(b["eval_mlm_loss"], abs=1e-8)
    assert np.all(np.diff([r["elapsed_s"] for r in records(hf_dir)]) >= 0)


def test_plot_writes_png(runs, tmp_path):
    pytest.importorskip("matplotlib")
    mb_dir, hf_dir = runs
    out = tmp_path / "curves.png"
    assert load_script("plot_pretraining").main([f"{mb_dir}:minibert", f"{hf_dir}:transformers",
                                                 "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
