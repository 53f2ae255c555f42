"""The GPU path's own checks: one GPU per process, NCCL in one process, no host sync per step.

The device tests run under MINIBERT_BACKEND=cupy (scripts/gpu_check.sh's suite stage) and skip
elsewhere; the check of GPUs per node is plain logic and runs on the host too.
"""
import time

import numpy as np
import pytest

from minibert import backend, distributed, zero
from minibert.optim import AdamW

on_device = pytest.mark.skipif(backend.name != "cupy", reason="runs under MINIBERT_BACKEND=cupy on a CUDA GPU")


def test_more_processes_than_gpus_on_a_node_are_refused_with_what_to_do():
    distributed.check_gpus_per_node(2, 2)  # one each: fine
    distributed.check_gpus_per_node(1, 8)
    with pytest.raises(RuntimeError, match=r"runs 4 processes .* sees 2 GPUs.*mpiexec -n 2"):
        distributed.check_gpus_per_node(4, 2, local_rank=3)
    with pytest.raises(RuntimeError, match=r"sees 0 GPUs"):
        distributed.check_gpus_per_node(1, 0)


def nccl_world():
    nccl = pytest.importorskip("cupy.cuda.nccl")
    if not getattr(nccl, "available", True):
        pytest.skip("CuPy was built without NCCL")
    return distributed.World(None, nccl.NcclCommunicator(1, nccl.get_unique_id(), 0))


def draw(seed):
    r = np.random.default_rng(seed)
    shapes = {"w": (300, 70), "b": (70,), "emb": (9, 4)}
    params = {k: backend.to_device(r.standard_normal(s)) for k, s in shapes.items()}
    grads = [{k: backend.to_device(r.standard_normal(s)) for k, s in shapes.items()} for _ in range(3)]
    return params, grads


@on_device
def test_gradient_sync_through_nccl_in_one_process_equals_the_plain_sum():
    """GradientSync's buckets through a real one-rank NCCL communicator: the sum is the gradients
    themselves, bucket boundaries included (a small bucket size cuts them into several)."""
    w = nccl_world()
    _, grads = draw(0)
    want = {k: backend.to_host(grads[1][k] + 0.5 * grads[0][k]) for k in grads[0]}  # before the sum adds into grads[1]
    sync = distributed.GradientSync(w, grads[1], 0.5, bucket_bytes=4096)
    for k in ("emb", "b"):
        sync.ready({k: grads[0][k]})
    mine = sync.send_rest(grads[0])
    summed = sync.wait()
    assert len(sync.buckets) >= 2
    for k in grads[0]:
        assert np.array_equal(backend.to_host(mine[k]), want[k]), k
        assert np.array_equal(backend.to_host(summed[k]), want[k]), k


@on_device
def test_sharded_adamw_through_nccl_in_one_process_equals_adamw():
    w = nccl_world()
    params, grads = draw(1)
    ref = {k: v.copy() for k, v in params.items()}
    ref_opt = AdamW(ref, lr=1e-2, weight_decay=0.1)
    p = {k: v.copy() for k, v in params.items()}
    opt = zero.ShardedAdamW(w, p, lr=1e-2, weight_decay=0.1)
    for g in grads:
        ref_opt.step(g)
        opt.step(opt.reduce_scatter(g))
    for k in ref:
        assert np.array_equal(backend.to_host(p[k]), backend.to_host(ref[k])), k


SPIN = r"""
extern "C" __global__ void spin(long long cycles) {
    long long t0 = clock64();
    while (clock64() - t0 < cycles) { }
}
"""


@on_device
def test_the_embedding_scatter_does_not_wait_for_the_device():
    """scatter_rows sorts its indices (CuPy's argsort): on CuPy 13 Thrust waited for the GPU there,
    once per step. Queue a kernel that spins for a while, then issue the scatter: the host must
    get control back long before the spin ends. A test that counts host reads cannot see this."""
    cp = backend.xp
    spin = cp.RawKernel(SPIN, "spin")
    rate = cp.cuda.Device().attributes["ClockRate"] * 1000  # cycles per second
    a = cp.zeros((1000, 64), cp.float32)
    idx = cp.asarray(np.random.default_rng(0).integers(0, 1000, 4096))
    vals = cp.ones((4096, 64), cp.float32)
    backend.scatter_add(a, idx, vals)  # compile and warm up
    cp.cuda.Device().synchronize()
    spin((1,), (1,), (np.int64(rate * 1.0),))  # about one second of device time
    t0 = time.perf_counter()
    backend.scatter_add(a, idx, vals)
    issued = time.perf_counter() - t0
    cp.cuda.Device().synchronize()
    waited = time.perf_counter() - t0
    assert waited > 0.5, f"the spin kernel did not run ({waited:.3f} s)"
    assert issued < 0.25, f"scatter_add waited {issued:.3f} s for the device (a host sync)"


@on_device
@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_16_bit_gemms_on_tensor_cores_are_the_rounded_products_summed_in_float32(fmt):
    """Under --precision bf16 / fp16 the GEMMs are cuBLAS's (backend.device_gemm): 16-bit
    operands, float32 sums, a float32 result. Each one (a linear layer's product, a transposed
    operand, matmul_pair, attention's batched product on a transposed view) equals the product
    of low()'s rounded operands computed in float64 to within float32 summation, 2 gamma_K |a| @ |b|."""
    cp, r = backend.xp, np.random.default_rng(0)

    def check(got, a, b):
        with backend.gemm_precision(fmt):
            la, lb = (backend.to_host(backend.low(x)).astype(np.float64) for x in (a, b))
        want = np.matmul(la, lb)  # (..., M, N)
        # 2u a sum, not u: tensor cores align and truncate in their float32 sums (Fasi et al. 2021)
        bound = 2 * (a.shape[-1] + 2) * 2.0 ** -24 * np.matmul(np.abs(la), np.abs(lb)) + 1e-30
        got = backend.to_host(got)
        assert got.dtype == np.float32
        assert np.all(np.abs(got - want) <= bound), float(np.max(np.abs(got - want) / bound))

    x = cp.asarray(r.standard_normal((96, 200)), cp.float32)  # (96, 200)
    w = cp.asarray(r.standard_normal((200, 72)), cp.float32)  # (200, 72)
    d = cp.asarray(r.standard_normal((96, 72)), cp.float32)  # (96, 72)
    q = cp.asarray(r.standard_normal((2, 3, 17, 8)), cp.float32)  # (B, A, T, D)
    k = cp.asarray(r.standard_normal((2, 3, 17, 8)), cp.float32)  # (B, A, T, D)
    with backend.gemm_precision(fmt):
        assert backend.device_gemm(x, w) is not None  # the cuBLAS path, not the emulation
        y = backend.matmul(x, w)  # (96, 200) @ (200, 72)
        dx, dw = backend.matmul_pair(d, w.T, x.T, d)  # (96, 72) @ (72, 200), (200, 96) @ (96, 72)
        s = backend.batched_matmul(q, k.transpose(0, 1, 3, 2))  # (2, 3, 17, 17)
    check(y, x, w)
    check(dx, d, w.T)
    check(dw, x.T, d)
    check(s, q, k.transpose(0, 1, 3, 2))
    if fmt == "fp16":  # past fp16's range the operand is inf, and so is the product
        big = cp.full((64, 4), 7e4, cp.float32)  # (64, 4)
        with backend.gemm_precision(fmt):
            assert bool(cp.all(cp.isinf(backend.matmul(big, cp.ones((4, 8), cp.float32)))))
