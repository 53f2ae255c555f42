#!/usr/bin/env bash
# The GPU checks of minibert's CuPy path, as one script on a CUDA machine with
# CuPy, and PyTorch with CUDA for the comparison (both sides on the GPU):
#
#   suite       the whole suite under MINIBERT_BACKEND=cupy (on several workers when
#               pytest-xdist is installed): the fused kernels against their plain twins
#               (tests/test_kernels.py, tests/test_rng.py, tests/test_layers.py), the test that
#               counts device-to-host reads per training step
#               (tests/test_train.py::test_steps_read_nothing_back_from_the_device), exact resume
#   kernels     only the three kernel files of the suite, quickly
#   bench_base  scripts/bench.py --backend cupy --compare-torch on the base preset (L=12,
#               H=768, T=128, V=30522) with a batch of 64: pos/s, MFU against a measured cuBLAS
#               float32 peak, device memory; TF32 off on both sides; PyTorch with its sdpa and
#               its eager attention, both in the same run
#   profile     scripts/profile_step.py --profile-ops on the same model: the device time of each
#               op (CUDA events), and the host's time to issue the step beside the device's
#   trace       scripts/profile_step.py --profile-kernels: every CUDA kernel of minibert's step and of
#               PyTorch's (both attentions), from torch.profiler's CUPTI trace (needs torch)
#   pretrain    the default pretraining job on cupy (scripts/pretrain.py, 3,500 steps of the
#               tiny preset on the embedded corpus)
#   bench_tf32  bench_base with cuBLAS TF32 on both sides (the opt-in --tf32)
#
#   bash scripts/gpu_check.sh                          # the default stages; logs in $OUT (default /tmp/gpu_check)
#   STAGES="kernels bench_base" bash scripts/gpu_check.sh   # only these
#
# Each stage has its own time limit (seconds; the default stages' add up to 12 minutes) and the script
# goes on after a failing stage; the last lines say which stages passed. Run from the
# repository root; the package is used from the tree (PYTHONPATH), nothing is installed.
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
STAGES=${STAGES:-suite bench_base profile trace pretrain bench_tf32}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
declare -A RC

stage() {  # stage NAME SECONDS command...: run it with a limit, log to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    case " $STAGES " in *" $name "*) ;; *) return ;; esac
    echo "=== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    RC[$name]=$?
    tail -n 25 "$OUT/$name.log"
    echo "=== $name: exit ${RC[$name]} after $((SECONDS - t0)) s"
}

if ! $PY -c "import cupy, sys; sys.exit(cupy.cuda.runtime.getDeviceCount() < 1)" 2>/dev/null; then
    echo "gpu_check.sh: $PY cannot import CuPy or it sees no CUDA GPU; nothing to check here." >&2
    echo "Install CuPy for your CUDA version (pip install -e '.[cuda12]' or '.[cuda13]') on a machine with a GPU." >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
$PY -c "import cupy, numpy; print('cupy', cupy.__version__, '| numpy', numpy.__version__)"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>/dev/null \
    || echo "torch: not installed (the bench stages run without --compare-torch)"

stage kernels 90 env MINIBERT_BACKEND=cupy $PY -m pytest -p no:cacheprovider \
    tests/test_kernels.py tests/test_rng.py tests/test_layers.py

WORKERS=()
$PY -c "import xdist" 2>/dev/null && WORKERS=(-n 8 --dist loadfile)
stage suite 150 env MINIBERT_BACKEND=cupy $PY -m pytest -p no:cacheprovider -rs --maxfail=25 --timeout 120 \
    --durations=15 "${WORKERS[@]}"

TORCH_CUDA=$($PY -c "import torch, transformers; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
COMPARE=()
[ "$TORCH_CUDA" = 1 ] && COMPARE=(--compare-torch --torch-attn sdpa,eager)
MODEL=(--backend cupy --preset base -V 30522 -B 64)
BENCH=($PY scripts/bench.py "${MODEL[@]}" --steps 10 --warmup 3)
stage bench_base 120 "${BENCH[@]}" "${COMPARE[@]}"
stage profile 60 $PY scripts/profile_step.py "${MODEL[@]}" --steps 5 --warmup 2 --profile-ops
[ "$TORCH_CUDA" = 1 ] && stage trace 120 $PY scripts/profile_step.py "${MODEL[@]}" --steps 3 --warmup 2 \
    --profile-kernels "${COMPARE[@]}"

rm -rf /tmp/gpu_check_pretrain
stage pretrain 150 env MINIBERT_BACKEND=cupy $PY scripts/pretrain.py --backend cupy --out /tmp/gpu_check_pretrain
cp /tmp/gpu_check_pretrain/metrics.jsonl "$OUT/pretrain_metrics.jsonl" 2>/dev/null

stage bench_tf32 120 "${BENCH[@]}" "${COMPARE[@]}" --tf32

echo "=== summary (exit status per stage; 124 = its time limit)"
for name in $STAGES; do
    echo "$name ${RC[$name]:-not run}"
done
