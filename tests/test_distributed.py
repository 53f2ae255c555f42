"""Data-parallel pretraining (minibert/distributed.py) with real processes under mpiexec:
1, 2 and 3 processes on the same global batches give the same run (losses and final
parameters, float32 and float64, with gradient accumulation), resume across process counts,
kill -9 of one rank, ZeRO-1. Every run is the tiny test model for 20 steps: seconds each.
The ZeRO-1 hand-off (reduce-scatter, clip, step on the shard) is also checked on small
drawn tensors, against optim.AdamW on the summed gradients, bitwise.

Skipped when mpi4py (the `mpi` extra) is not installed. The learning rate is constant
(--min-lr = --lr, no warmup), so a run of 10 steps resumed with --steps 20 continues the
same schedule as a run of 20."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from minibert import backend, distributed, zero
from minibert.checkpoint import load_checkpoint
from minibert.optim import AdamW, clip_grad_norm
from minibert.tokenizer import SPECIAL_TOKENS, BPETokenizer

from test_train import SMALL_ARGS, write_corpus

pytest.importorskip("mpi4py")
MPIEXEC = shutil.which("mpiexec") or os.path.join(os.path.dirname(sys.executable), "mpiexec")
if not os.path.exists(MPIEXEC):
    pytest.skip("no mpiexec next to the interpreter (pip install -e '.[mpi]')", allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1")  # N ranks on 2 cores: one BLAS thread each


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("dp")
    corpus = str(write_corpus(d / "corpus.txt"))
    tok = str(d / "tokenizer.json")
    BPETokenizer.train_from_files(corpus, 600, special_tokens=SPECIAL_TOKENS, progress=False).save(tok)
    return corpus, tok


def run(n, out, data, *extra, steps=20, check=True):
    if backend.name == "cupy" and n > _gpus():
        pytest.skip(f"NCCL needs a GPU per process: {n} processes, {_gpus()} GPUs")
    corpus, tok = data
    args = [sys.executable, os.path.join(ROOT, "scripts", "pretrain.py"), "--corpus", corpus, "--tokenizer", tok,
            "--out", str(out), "--seq-len", "32", "--batch-size", "8", "--max-predictions", "5", "--warmup", "0",
            "--lr", "3e-3", "--min-lr", "3e-3", "--log-every", "1", "--eval-every", "1000", "--eval-batches", "2",
            "--fill-mask-examples", "0", "--backend", backend.name, "--steps", str(steps), *SMALL_ARGS, *extra]
    if n > 1:
        args = [MPIEXEC, "-n", str(n), *args]
    r = subprocess.run(args, capture_output=True, text=True, timeout=120, env=ENV)
    if check:
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def _gpus():
    return backend.xp.cuda.runtime.getDeviceCount() if backend.name == "cupy" else 0


def losses(out):
    return [r["loss"] for r in map(json.loads, open(os.path.join(out, "metrics.jsonl"))) if "loss" in r]


def params(out):
    return load_checkpoint(str(out), "last")[0]


def rel_diff(a, b):
    """||a - b|| / ||b|| over all parameters together. Not per tensor: the key part of the
    attention's b_qkv has a gradient that is exactly 0 in exact arithmetic (softmax ignores
    a shift shared by all keys), so its float gradient is rounding noise, which Adam scales
    to steps of size lr; that tensor alone differs by ~1e-6 of its own tiny norm."""
    num = sum(np.sum((a[k].astype(np.float64) - b[k]) ** 2) for k in a)
    return float(np.sqrt(num / sum(np.sum(b[k].astype(np.float64) ** 2) for k in b)))


def assert_close_runs(a, b, tol):
    la, lb = losses(a), losses(b)
    assert len(la) == len(lb) == 20
    np.testing.assert_allclose(la, lb, rtol=tol, atol=0)
    assert rel_diff(params(a), params(b)) < tol


@pytest.mark.parametrize("dtype,accum,tol", [("float32", 1, 1e-6), ("float64", 2, 1e-12)])
def test_one_two_three_processes_give_one_run(tmp_path, data, dtype, accum, tol):
    flags = ["--dtype", dtype, "--accum", str(accum)]
    run(1, tmp_path / "n1", data, *flags)
    for n in (2, 3):
        r = run(n, tmp_path / f"n{n}", data, *flags)
        # each rank says who it is, once; rank 0 alone logs
        assert sorted(l.split(" (")[0] for l in r.stdout.splitlines() if l.startswith("data parallel: rank")) == \
            [f"data parallel: rank {i} of {n}" for i in range(n)]
        assert r.stdout.count("done: 20 steps") == 1
        assert_close_runs(tmp_path / f"n{n}", tmp_path / "n1", tol)
        recs = [json.loads(l) for l in open(tmp_path / f"n{n}" / "metrics.jsonl")]
        assert {"comm_ms_per_step", "comm_span_ms_per_step", "comm_overlapped_ms_per_step"} <= set(recs[0])
        # evaluation split over ranks and summed: the single-process figures
        ev = [x for x in recs if "eval_mlm_loss" in x][-1]
        ev1 = [json.loads(l) for l in open(tmp_path / "n1" / "metrics.jsonl") if "eval_mlm_loss" in l][-1]
        assert ev["eval_mlm_positions"] == ev1["eval_mlm_positions"] and ev["eval_pairs"] == ev1["eval_pairs"]
        assert ev["eval_mlm_loss"] == pytest.approx(ev1["eval_mlm_loss"], rel=1e-5)


@pytest.mark.parametrize("flags,tol", [
    (["--mlm-prob", "0.4", "--whole-word-mask", "--schedule", "one-cycle", "--beta2", "0.98", "--eps", "1e-8",
      "--dropout", "0", "--attention-dropout", "0"], 1e-6),
    (["--objective", "mlm", "--norm", "pre", "--whole-word-mask", "--schedule", "cosine"], 1e-6),
    # 16-bit operands: a float32 last-bit difference (the ranks sum dW in another order) now
    # and then moves an operand to the next 16-bit value, 2^-11 (fp16) or 2^-8 (bf16) away
    (["--precision", "fp16"], 1e-4),
    (["--precision", "fp16", "--zero", "1", "--optimizer", "lamb"], 1e-4),
    (["--precision", "bf16", "--objective", "mlm"], 1e-3),
], ids=["pairs-recipe", "mlm-pre-ln", "fp16", "fp16-zero1-lamb", "bf16-mlm"])
def test_recipe_options_on_two_processes_give_one_run(tmp_path, data, flags, tol):
    """The recipe's options (test_recipe.py) split over ranks as today's: 2 processes = 1."""
    run(1, tmp_path / "n1", data, *flags)
    run(2, tmp_path / "n2", data, *flags)
    assert_close_runs(tmp_path / "n2", tmp_path / "n1", tol)


def test_the_checker_fails_on_a_different_run(tmp_path, data):
    """The comparison can fail: another seed's run differs far beyond the tolerance."""
    run(1, tmp_path / "a", data, steps=20)
    run(1, tmp_path / "b", data, "--seed", "1", steps=20)
    with pytest.raises(AssertionError):
        assert_close_runs(tmp_path / "a", tmp_path / "b", 1e-6)


def test_resume_on_same_and_other_process_counts(tmp_path, data):
    flags = ["--save-every", "10"]
    run(1, tmp_path / "ref1", data, *flags)
    run(2, tmp_path / "ref2", data, *flags)
    # same N: bitwise
    run(2, tmp_path / "same", data, *flags, steps=10)
    run(2, tmp_path / "same", data, *flags, "--resume")
    a, b = params(tmp_path / "same"), params(tmp_path / "ref2")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # 2 -> 1 and 1 -> 2: the same run to round-off
    run(2, tmp_path / "two_one", data, *flags, steps=10)
    run(1, tmp_path / "two_one", data, *flags, "--resume")
    assert_close_runs(tmp_path / "two_one", tmp_path / "ref1", 1e-6)
    run(1, tmp_path / "one_two", data, *flags, steps=10)
    run(2, tmp_path / "one_two", data, *flags, "--resume")
    assert_close_runs(tmp_path / "one_two", tmp_path / "ref1", 1e-6)


def test_zero1_equals_unsharded_and_halves_optimizer_memory(tmp_path, data):
    run(2, tmp_path / "plain", data)
    run(2, tmp_path / "zero", data, "--zero", "1")
    assert_close_runs(tmp_path / "zero", tmp_path / "plain", 1e-6)
    plain = json.loads(open(tmp_path / "plain" / "metrics.jsonl").readline())["optimizer_state_bytes"]
    sharded = json.loads(open(tmp_path / "zero" / "metrics.jsonl").readline())["optimizer_state_bytes"]
    assert abs(sharded - plain / 2) <= 8  # rank 0 holds half the moments (to one element of padding)
    # the checkpoint keeps the unsharded format: one process resumes a ZeRO-1 run
    run(2, tmp_path / "zero_then_one", data, "--zero", "1", "--save-every", "10", steps=10)
    run(1, tmp_path / "zero_then_one", data, "--save-every", "10", "--resume")
    assert_close_runs(tmp_path / "zero_then_one", tmp_path / "plain", 1e-6)


def test_kill_9_of_one_rank_ends_the_job_then_resume(tmp_path, data):
    if backend.name == "cupy" and _gpus() < 2:
        pytest.skip("NCCL needs a GPU per process")
    out = tmp_path / "run"
    corpus, tok = data
    steps = 200
    args = [MPIEXEC, "-n", "2", sys.executable, os.path.join(ROOT, "scripts", "pretrain.py"), "--corpus", corpus,
            "--tokenizer", tok, "--out", str(out), "--seq-len", "32", "--batch-size", "8", "--max-predictions", "5",
            "--warmup", "0", "--lr", "3e-3", "--min-lr", "3e-3", "--log-every", "1", "--eval-every", "1000",
            "--eval-batches", "2", "--fill-mask-examples", "0", "--backend", backend.name, "--steps", str(steps),
            "--save-every", "5", *SMALL_ARGS]
    log = open(tmp_path / "log.txt", "w")
    p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=ENV)
    try:
        deadline = time.time() + 60
        while not (out / "last.json").exists() and time.time() < deadline:
            time.sleep(0.05)
        assert (out / "last.json").exists(), open(tmp_path / "log.txt").read()
        pids = {int(l.split("pid ")[1].split(",")[0]) for l in open(tmp_path / "log.txt")
                if l.startswith("data parallel: rank")}
        victim = [int(l.split("pid ")[1].split(",")[0]) for l in open(tmp_path / "log.txt")
                  if l.startswith("data parallel: rank 1 ")][0]
        os.kill(victim, signal.SIGKILL)
        t0 = time.time()
        p.wait(timeout=30)
        assert time.time() - t0 < 10  # the whole job ended within seconds
        assert p.returncode != 0
        time.sleep(0.5)
        for pid in pids:  # nothing left hanging
            assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    finally:
        if p.poll() is None:
            p.kill()
    saved = json.loads((out / "last.json").read_text())["meta"]["step"]
    assert saved < steps  # it was stopped mid-run
    run(2, out, data, "--save-every", "5", "--resume", steps=steps)
    assert [r["step"] for r in map(json.loads, open(out / "metrics.jsonl")) if "loss" in r] == list(range(1, steps + 1))
    run(2, tmp_path / "ref", data, "--save-every", "5", steps=steps)
    a, b = params(out), params(tmp_path / "ref")
    assert all(np.array_equal(a[k], b[k]) for k in a)  # nothing lost, bitwise


def test_batch_slices_and_single_process_world():
    """Rows are cut in consecutive near-equal runs that cover the batch; one process is the identity."""
    class W(distributed.World):
        def __init__(self, size, rank):
            super().__init__()
            self.size, self.rank = size, rank
    for B in (3, 8, 13):
        for n in (1, 2, 3):
            rows = [W(n, r).rows(B) for r in range(n)]
            assert [i for s in rows for i in range(B)[s]] == list(range(B))
            assert max(s.stop - s.start for s in rows) - min(s.stop - s.start for s in rows) <= 1
    w = distributed.world()
    assert w.size == 1 and w.rank == 0 and list(w.sum_host([1.5, 2.0])) == [1.5, 2.0]


# ----------------------------------------------------------------------------------------
# the ZeRO-1 hand-off: ShardedAdamW.step updates from the gradients it is given

SHAPES = {"w": (5, 7), "b": (7,), "ln": (3,), "emb": (9, 4)}  # 81 elements: on 2 ranks "b" is cut
KW = dict(lr=1e-2, weight_decay=0.1, no_decay=lambda name, p: p.ndim == 2)  # not the default rule: 1-D decays


def draw(seed, n_grads, n_ranks):
    """float64 params and, per step, every rank's local gradients (random, never ones)."""
    r = np.random.default_rng(seed)
    params = {k: backend.to_device(r.standard_normal(s)) for k, s in SHAPES.items()}
    grads = [[{k: backend.to_device(r.standard_normal(s) * r.uniform(0.1, 3.0)) for k, s in SHAPES.items()}
              for _ in range(n_ranks)] for _ in range(n_grads)]
    return params, grads


def equal(a, b):
    """Every array of dict a bitwise equal to b's."""
    return all(np.array_equal(backend.to_host(a[k]), backend.to_host(b[k])) for k in b)


def plain_run(params, grads, steps):
    """optim.AdamW on the gradients summed over ranks (added here in rank order)."""
    p = {k: v.copy() for k, v in params.items()}
    opt = AdamW(p, **KW)
    for s in range(steps):
        opt.step({k: sum(g[k] for g in grads[s]) for k in p})
    return p, opt


def sharded(w, params):
    p = {k: v.copy() for k, v in params.items()}
    return p, zero.ShardedAdamW(w, p, **KW)


def check_zero1_hand_off(w):
    """On each rank of w: ShardedAdamW.step on reduce_scatter's shard is optim.AdamW's step
    on the summed gradients, bitwise (the sum of two addends does not depend on their order),
    and a wrong hand-off shows: whole local gradients are refused, an unreduced shard or the
    previous step's shard give other parameters. The custom no_decay is asked about the whole
    parameter, and the state's meta names what it said."""
    params, grads = draw(0, 3, w.size)
    ref, ref_opt = plain_run(params, grads, 2)
    p, opt = sharded(w, params)
    for s in range(2):
        opt.step(opt.reduce_scatter(grads[s][w.rank]))
    assert equal(p, ref), "the sharded run is not the plain one"
    tensors, meta = opt.state_dict()
    ref_tensors, ref_meta = ref_opt.state_dict()
    assert meta["no_decay"] == ref_meta["no_decay"] == ["emb", "w"]
    if w.rank == 0:
        assert equal(tensors, ref_tensors)
    p2, opt2 = sharded(w, params)  # the state round trip: the third step continues bitwise
    opt2.load_state_dict(tensors if w.rank == 0 else ref_tensors, meta)  # (rank 0 alone gets the tensors)
    ref3, _ = plain_run(params, grads, 3)
    for k in p2:  # in place: the optimizer holds views of them
        p2[k][...] = p[k]
    opt2.step(opt2.reduce_scatter(grads[2][w.rank]))
    assert equal(p2, ref3)
    with pytest.raises(ValueError):
        opt2.load_state_dict(ref_tensors, dict(meta, no_decay=["w"]))

    # the wrong hand-offs
    p, opt = sharded(w, params)
    with pytest.raises(ValueError):
        opt.step(grads[0][w.rank])  # whole, unreduced gradients: not this rank's shard
    with pytest.raises(ValueError):
        opt.reduce_scatter(opt.reduce_scatter(grads[0][w.rank]))  # a shard is not whole gradients
    unreduced = {k: grads[0][w.rank][k].reshape(-1)[a:b] for k, (a, b) in opt.own.items()}
    opt.step(unreduced)
    if w.size > 1:
        assert not equal(p, plain_run(params, grads, 1)[0])
    p, opt = sharded(w, params)
    stale = opt.reduce_scatter(grads[0][w.rank])
    opt.step(stale)
    opt.reduce_scatter(grads[1][w.rank])
    opt.step(stale)  # the previous step's shard, not the one just reduced
    assert not equal(p, ref)

    # DataParallel: reduce returns the shard, clip_grad_norm clips it on the global norm
    p, opt = sharded(w, params)
    dp = distributed.DataParallel(w, opt)
    summed = {k: sum(g[k] for g in grads[0]) for k in SHAPES}
    norm = clip_grad_norm(summed, 1.0)
    shard = dp.reduce({k: v.copy() for k, v in grads[0][w.rank].items()})
    assert float(dp.clip_grad_norm(shard, 1.0)) == pytest.approx(float(norm), rel=1e-13) and norm > 1.0
    for k, (a, b) in opt.own.items():
        np.testing.assert_allclose(backend.to_host(shard[k]), backend.to_host(summed[k].reshape(-1)[a:b]), rtol=1e-13)


def check_plain_hand_off(w):
    """Without sharding, reduce() waits for the sum the last backward started and returns it;
    gradients other than those that backward returned are refused."""
    class Model:  # a backward that reports its gradients as final, as the model's does
        def backward(self, cache, on_ready=None):
            if on_ready:
                on_ready(cache)
            return cache
    params, grads = draw(1, 1, w.size)
    dp = distributed.DataParallel(w, AdamW({k: v.copy() for k, v in params.items()}))
    local = dp.backward(Model(), {k: v.copy() for k, v in grads[0][w.rank].items()}, None, 1.0, last=True)
    assert equal(local, grads[0][w.rank])  # still this rank's
    with pytest.raises(ValueError):
        dp.reduce({k: v.copy() for k, v in local.items()})
    summed = dp.reduce(local)
    assert equal(summed, {k: sum(g[k] for g in grads[0]) for k in SHAPES})
    with pytest.raises(ValueError):
        dp.reduce(local)  # once: its sum has been taken


def test_zero1_steps_on_the_shard_it_is_given_one_process():
    """One process: the whole machinery with identity collectives (and --zero 1 without mpiexec)."""
    check_zero1_hand_off(distributed.World())


def test_zero1_and_plain_hand_offs_on_two_processes():
    if backend.name == "cupy":
        pytest.skip("the ranks' check runs on host arrays")
    r = subprocess.run([MPIEXEC, "-n", "2", sys.executable, os.path.abspath(__file__), "hand-offs"],
                       capture_output=True, text=True, timeout=120, env=ENV)
    assert r.returncode == 0 and r.stdout.count("hand-offs checked") == 2, r.stdout[-2000:] + r.stderr[-3000:]


if __name__ == "__main__" and sys.argv[1:] == ["hand-offs"]:  # each rank of the test above
    w = distributed.init("numpy")
    with w.abort_on_error():
        check_zero1_hand_off(w)
        check_plain_hand_off(w)
    print(f"rank {w.rank}: hand-offs checked", flush=True)
