"""optim.LAMB and its ZeRO-1 form (zero.ShardedAdamW(optimizer="lamb")), and --optimizer lamb.

The reference is a plain NumPy transcription of You et al. 2019, Algorithm 2, with the
conventions optim.LAMB's docstring names (bias correction, decay inside the update, trust 1
for a zero norm and for no-decay tensors unless trust_all), written here independently of the
code under test; torch_optimizer.Lamb where installed. Then the state round trip, resume, a
refused AdamW state, sharded (ZeRO-1) in one process (bitwise) and on 2 and 3 processes under
mpiexec (to the rounding of norms summed in parts), and an interrupted --optimizer lamb
pretraining run and fine-tuning run that resume bitwise.
"""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from minibert import backend, distributed, zero
from minibert import finetune as finetune_module
from minibert.checkpoint import load_checkpoint
from minibert.finetune import FinetuneConfig, finetune
from minibert.optim import LAMB, AdamW
from minibert.rundir import CLASSIFICATION_KIND, read_meta
from minibert.tokenizer import SPECIAL_TOKENS, BPETokenizer
from minibert.train import pretrain
from test_finetune import fake_pretraining_run, synthetic_rows
from test_recipe import params as run_params, recipe_tc, run_interrupted_then_resumed
from test_train import SMALL, write_corpus

# a 2-D tensor, 1-D ones (no decay by default), and a zero matrix: ||p|| = 0 at step 1, trust 1
SHAPES = {"w": (6, 5), "b": (5,), "ln": (4,), "emb": (7, 3), "zero": (3, 4)}
KW = dict(lr=2e-2, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.1)


def draw(seed, steps):
    r = np.random.default_rng(seed)
    params = {k: r.standard_normal(s) for k, s in SHAPES.items()}
    params["zero"][...] = 0.0
    grads = [{k: r.standard_normal(s) * r.uniform(0.1, 3.0) for k, s in SHAPES.items()} for _ in range(steps)]
    return params, grads


def reference_lamb(params, grads, lr, betas, eps, weight_decay, trust_all=False, trust=True):
    """Algorithm 2 with bias correction, in float64, one tensor at a time (trust False: the
    ratio always 1, i.e. Adam with the decay inside the update, to show the test can fail)."""
    b1, b2 = betas
    p = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, g in enumerate(grads, start=1):
        for k in p:
            decayed = p[k].ndim >= 2
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            m_hat, v_hat = m[k] / (1 - b1 ** t), v[k] / (1 - b2 ** t)
            r = m_hat / (np.sqrt(v_hat) + eps) + (weight_decay * p[k] if decayed else 0.0)
            pn, rn = np.sqrt(np.sum(p[k] ** 2)), np.sqrt(np.sum(r ** 2))
            ratio = pn / rn if trust and (decayed or trust_all) and pn > 0 and rn > 0 else 1.0
            p[k] = p[k] - lr * ratio * r
    return p


def dev(d):
    return {k: backend.to_device(v.copy()) for k, v in d.items()}


def host(d):
    return {k: backend.to_host(v) for k, v in d.items()}


def run_lamb(params, grads, **kw):
    p = dev(params)
    opt = LAMB(p, **{**KW, **kw})
    for g in grads:
        opt.step(dev(g))
    return host(p), opt


@pytest.mark.parametrize("trust_all", [False, True])
def test_lamb_equals_the_papers_equations(trust_all):
    params, grads = draw(0, 20)
    got, _ = run_lamb(params, grads, trust_all=trust_all)
    ref = reference_lamb(params, grads, trust_all=trust_all, **KW)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-12, atol=1e-14, err_msg=k)
    # the check can fail: without the trust ratio the decayed tensors differ; the no-decay
    # ones take exactly that plain step unless trust_all
    adam = reference_lamb(params, grads, **KW, trust=False)
    assert not np.allclose(got["w"], adam["w"], rtol=1e-3) and not np.allclose(got["emb"], adam["emb"], rtol=1e-3)
    assert np.allclose(got["b"], adam["b"], rtol=1e-12) != trust_all
    # the zero tensor moved (trust 1 at step 1, then the ratio of its own norms)
    assert np.abs(got["zero"]).max() > 0


def test_lamb_differs_from_adamw_and_keeps_the_dtype():
    params, grads = draw(1, 3)
    got, _ = run_lamb(params, grads)
    p = dev(params)
    a = AdamW(p, **KW)
    for g in grads:
        a.step(dev(g))
    assert not np.allclose(got["w"], backend.to_host(p["w"]))
    p32 = {k: backend.to_device(v.astype(np.float32)) for k, v in params.items()}
    opt = LAMB(p32, **KW)
    opt.step({k: backend.to_device(v.astype(np.float32)) for k, v in grads[0].items()})
    assert all(x.dtype == np.float32 for x in p32.values())
    ref = reference_lamb(params, grads[:1], **KW)
    for k in ref:
        np.testing.assert_allclose(backend.to_host(p32[k]), ref[k], rtol=2e-5, atol=2e-6, err_msg=k)


def test_against_torch_optimizer_lamb():
    """torch_optimizer.Lamb (where installed; not a dependency) differs in three conventions:
    its bias correction (debias, off by default) scales the step size and leaves eps and the
    decay outside it, it clamps ||p|| at 10, and it trusts and decays every tensor. With
    betas (0, 0) both bias corrections are exactly 1 (m = g, v = g^2), with every ||p|| under
    10 its clamp is the identity, and with trust_all and no no_decay tensors our rule is its
    rule: then the trust ratio, the decay inside r and trust 1 for the zero tensor must agree.
    The moments themselves are checked against the paper's equations above."""
    torch_optimizer = pytest.importorskip("torch_optimizer")
    import torch
    kw = dict(KW, betas=(0.0, 0.0))
    params, grads = draw(2, 10)
    params = {k: v * 0.3 for k, v in params.items()}  # every ||p|| < 10 (checked): its clamp never binds
    assert all(np.sqrt(np.sum(v ** 2)) < 10 for v in params.values())
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    topt = torch_optimizer.Lamb(list(tp.values()), lr=kw["lr"], betas=kw["betas"], eps=kw["eps"],
                                weight_decay=kw["weight_decay"])
    for g in grads:
        for k, t in tp.items():
            t.grad = torch.tensor(g[k])
        topt.step()
    got, _ = run_lamb(params, grads, trust_all=True, no_decay=lambda k, p: False, **{"betas": kw["betas"]})
    for k in tp:
        np.testing.assert_allclose(got[k], tp[k].detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=k)


def test_state_round_trip_resume_and_refusals():
    params, grads = draw(3, 8)
    whole, _ = run_lamb(params, grads)
    part, opt = run_lamb(params, grads[:5])
    tensors, meta = opt.state_dict()
    assert meta["optimizer"] == "lamb" and meta["t"] == 5 and sorted(meta["no_decay"]) == ["b", "ln"]
    p = dev(part)
    opt2 = LAMB(p, **KW)
    opt2.load_state_dict(tensors, meta)
    t2, m2 = opt2.state_dict()
    assert m2 == meta and all(np.array_equal(t2[k], tensors[k]) for k in tensors)  # bitwise round trip
    for g in grads[5:]:
        opt2.step(dev(g))
    assert all(np.array_equal(backend.to_host(p[k]), whole[k]) for k in whole), "resume is not exact"
    # either optimizer refuses the other's state, saying which it is
    with pytest.raises(ValueError, match="lamb's.*adamw"):
        AdamW(dev(params), **KW).load_state_dict(tensors, meta)
    adam_tensors, adam_meta = AdamW(dev(params), **KW).state_dict()
    with pytest.raises(ValueError, match="adamw's.*lamb"):
        LAMB(dev(params), **KW).load_state_dict(adam_tensors, adam_meta)
    legacy = {k: v for k, v in adam_meta.items() if k != "optimizer"}  # written before the field: AdamW's
    with pytest.raises(ValueError, match="adamw's"):
        LAMB(dev(params), **KW).load_state_dict(adam_tensors, legacy)
    AdamW(dev(params), **KW).load_state_dict(adam_tensors, legacy)
    with pytest.raises(ValueError, match="trust_all"):
        LAMB(dev(params), trust_all=True, **KW).load_state_dict(tensors, meta)


def check_sharded_lamb(w):
    """On each rank of w: zero.ShardedAdamW(optimizer="lamb") stepping on reduce_scatter's shard
    of every rank's local gradients equals optim.LAMB on their sum (to the rounding of the
    norms summed in parts: a tensor cut between ranks), its state is LAMB's whole format, and
    it resumes from it."""
    n_steps = 6
    params, grads = draw(4, n_steps * w.size)
    local = [grads[s * w.size:(s + 1) * w.size] for s in range(n_steps)]  # per step, every rank's
    summed = [{k: sum(g[k] for g in step) for k in SHAPES} for step in local]
    ref, ref_opt = run_lamb(params, summed)
    p = dev(params)
    opt = zero.ShardedAdamW(w, p, optimizer="lamb", **KW)
    cut = [k for k, (a, b) in opt.own.items() if (a, b) != (0, int(np.prod(SHAPES[k])))]
    for s in range(n_steps):
        opt.step(opt.reduce_scatter(dev(local[s][w.rank])))
    for k in ref:
        np.testing.assert_allclose(backend.to_host(p[k]), ref[k], rtol=1e-12, atol=1e-14, err_msg=k)
    if w.size == 1:  # one rank: the same sums in the same order, so bitwise
        assert all(np.array_equal(backend.to_host(p[k]), ref[k]) for k in ref) and not cut
    tensors, meta = opt.state_dict()
    ref_tensors, ref_meta = ref_opt.state_dict()
    assert meta["optimizer"] == "lamb" and meta["no_decay"] == ref_meta["no_decay"]
    if w.rank == 0:
        for k in ref_tensors:
            np.testing.assert_allclose(tensors[k], ref_tensors[k], rtol=1e-10, atol=1e-14, err_msg=k)
    with pytest.raises(ValueError, match="lamb's"):
        zero.ShardedAdamW(w, dev(params), **KW).load_state_dict(ref_tensors, ref_meta)
    p2 = dev(params)
    opt2 = zero.ShardedAdamW(w, p2, optimizer="lamb", **KW)
    opt2.load_state_dict(ref_tensors, ref_meta)  # an unsharded LAMB state resumes sharded
    assert opt2.t == n_steps
    return cut


def test_sharded_lamb_one_process_is_lamb():
    check_sharded_lamb(distributed.World())
    with pytest.raises(ValueError, match="choose from"):
        zero.ShardedAdamW(distributed.World(), dev(draw(0, 1)[0]), optimizer="sgd")


MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")


@pytest.mark.parametrize("n", [2, 3])
def test_sharded_lamb_on_n_processes_equals_lamb(n):
    pytest.importorskip("mpi4py")
    if not os.path.exists(MPIEXEC):
        pytest.skip("no mpiexec next to the interpreter (pip install -e '.[mpi]')")
    if backend.name == "cupy":
        pytest.skip("the ranks' check runs on host arrays")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    r = subprocess.run([MPIEXEC, "-n", str(n), sys.executable, os.path.abspath(__file__), "sharded"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0 and r.stdout.count("sharded LAMB checked") == n, r.stdout[-2000:] + r.stderr[-3000:]
    assert "cut ['" in r.stdout  # some tensor is split between two ranks: the summed norms were needed


def test_zero1_lamb_pretraining_equals_unsharded(tmp_path):
    """scripts/pretrain.py --optimizer lamb on 2 processes: --zero 1 gives the unsharded run
    (to float32 rounding), and one process resumes its checkpoint (test_distributed's launcher)."""
    pytest.importorskip("mpi4py")
    import test_distributed as td  # here: its module skips itself without mpiexec
    corpus = str(write_corpus(tmp_path / "corpus.txt"))
    tok = str(tmp_path / "tokenizer.json")
    BPETokenizer.train_from_files(corpus, 600, special_tokens=SPECIAL_TOKENS, progress=False).save(tok)
    data = (corpus, tok)
    td.run(2, tmp_path / "plain", data, "--optimizer", "lamb")
    td.run(2, tmp_path / "zero", data, "--optimizer", "lamb", "--zero", "1")
    td.assert_close_runs(tmp_path / "zero", tmp_path / "plain", 1e-6)
    td.run(2, tmp_path / "zero_then_one", data, "--optimizer", "lamb", "--zero", "1", "--save-every", "10", steps=10)
    td.run(1, tmp_path / "zero_then_one", data, "--optimizer", "lamb", "--save-every", "10", "--resume")
    td.assert_close_runs(tmp_path / "zero_then_one", tmp_path / "plain", 1e-6)
    # --resume with the default optimizer (AdamW) on LAMB's run is refused
    r = td.run(1, tmp_path / "zero_then_one", data, "--steps", "25", "--resume", check=False)
    assert r.returncode != 0 and "optimizer" in r.stdout + r.stderr


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return str(write_corpus(tmp_path_factory.mktemp("lamb") / "corpus.txt"))


def test_pretraining_with_lamb_resumes_exactly(tmp_path, corpus, monkeypatch):
    full = recipe_tc(tmp_path / "full", corpus, optimizer="lamb")
    pretrain(full, dict(SMALL))
    run_interrupted_then_resumed(recipe_tc(tmp_path / "part", corpus, optimizer="lamb"), SMALL, monkeypatch)
    a, b = run_params(full.out), run_params(tmp_path / "part")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), "resume is not exact"
    adam = recipe_tc(tmp_path / "adam", corpus)  # the flag reaches the optimizer: AdamW ends elsewhere
    pretrain(adam, dict(SMALL))
    c = run_params(adam.out)
    assert not all(np.array_equal(a[k], c[k]) for k in a)
    with pytest.raises(ValueError, match="settings differ"):  # --resume with the other optimizer
        pretrain(dataclasses.replace(full, resume=True, steps=full.steps + 5, optimizer="adamw"), dict(SMALL))
    with pytest.raises(ValueError, match="choose from"):
        pretrain(dataclasses.replace(full, out=str(tmp_path / "bad"), optimizer="sgd"), dict(SMALL))


def test_finetuning_with_lamb_resumes_exactly(tmp_path, monkeypatch):
    """--optimizer lamb in fine-tuning: interrupted in its second epoch and resumed, it ends
    bitwise where the uninterrupted run does; it is recorded, and resuming it with AdamW is
    refused; an unknown name is refused with the choices."""
    text = " ".join(["the cat sat on the mat", "a dog ran to the park", "good great fine", "bad awful poor"] * 20)
    tok = BPETokenizer.train_from_iterator([text], 300, special_tokens=SPECIAL_TOKENS, progress=False)
    init = fake_pretraining_run(tmp_path / "pt", tok)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(64, 4)))
    fc = FinetuneConfig(init=init, train=str(data), epochs=2, lr=1e-2, batch_size=16, max_length=32,
                        dropout=0.1, log_every=2, optimizer="lamb", out=str(tmp_path / "full"))
    finetune(fc)
    per_epoch = read_meta(fc.out, "last", CLASSIFICATION_KIND)["step"] // fc.epochs
    part = dataclasses.replace(fc, out=str(tmp_path / "part"))
    real_lr_at = finetune_module.lr_at

    def interrupt_in_epoch_2(step, *args):
        if step == per_epoch + 1:
            raise KeyboardInterrupt
        return real_lr_at(step, *args)
    with monkeypatch.context() as m:
        m.setattr(finetune_module, "lr_at", interrupt_in_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            finetune(part)
    with pytest.raises(ValueError, match="settings differ.*optimizer"):
        finetune(dataclasses.replace(part, resume=True, optimizer="adamw"))
    finetune(dataclasses.replace(part, resume=True))
    a, b = load_checkpoint(fc.out, "last")[0], load_checkpoint(part.out, "last")[0]
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), "resume is not exact"
    assert read_meta(fc.out, "last", CLASSIFICATION_KIND)["optim"]["optimizer"] == "lamb"
    with pytest.raises(ValueError, match="choose from"):
        finetune(dataclasses.replace(fc, out=str(tmp_path / "bad"), optimizer="sgd"))


if __name__ == "__main__" and sys.argv[1:] == ["sharded"]:  # each rank of the test above
    w = distributed.init("numpy")
    with w.abort_on_error():
        cut = check_sharded_lamb(w)
    print(f"rank {w.rank}: cut {cut}; sharded LAMB checked", flush=True)
