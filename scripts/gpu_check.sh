#!/usr/bin/env bash
# The GPU checks of minibert's CuPy path, as one script on a CUDA machine with
# CuPy >= 14, and PyTorch with CUDA for the comparison (both sides on the GPU). The default
# stages fit one short call: their limits add up to 480 s (GPU time is lent in minutes).
#
#   suite       the whole suite under MINIBERT_BACKEND=cupy (on several workers when
#               pytest-xdist is installed): the fused kernels against their plain twins,
#               the test that counts device-to-host reads per step, exact resume
#   bench_base  scripts/bench.py --backend cupy on the base preset (L=12, H=768, T=128,
#               V=30522), B = 64, once per precision (fp32, bf16, fp16; PRECISIONS="..." to
#               choose) against PyTorch eager and sdpa (--compare-torch --torch-attn
#               sdpa,eager), in bf16 / fp16 under autocast (fp16 with GradScaler); TF32 off
#               on both sides. minibert's 16-bit GEMMs are cuBLAS's (16-bit operands,
#               float32 sums); its activations stay float32
#   pretrain    the default pretraining job on cupy (scripts/pretrain.py, 2,700 steps of 64 on the
#               tiny preset on the embedded corpus)
# Opt-in stages (STAGES="..."), outside the 480 s:
#   kernels     only the three kernel test files, quickly
#   profile     scripts/profile_step.py --profile-ops: each op's device time (CUDA events)
#   trace       scripts/profile_step.py --profile-kernels: every CUDA kernel (needs torch)
#   bench_tf32  bench_base with cuBLAS TF32 on both sides (the opt-in --tf32)
#   pretrain_bf16  the default job with --precision bf16, to compare its held-out accuracy
#
#   bash scripts/gpu_check.sh                               # the default stages; logs in $OUT
#   STAGES="kernels bench_base" bash scripts/gpu_check.sh   # only these
#
# $OUT (default /tmp/gpu_check) gets one log per stage (NAME.log) and summary.txt; a caller
# that collects a folder passes its own OUT. Each stage has its own time limit and the
# script goes on after a failing stage; the last lines are one table: stage, exit status
# (124 = its limit), seconds, and the figure that stage is for. Run from the repository
# root; the package is used from the tree (PYTHONPATH), nothing is installed.
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
STAGES=${STAGES:-suite bench_base pretrain}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
declare -A RC SECS

stage() {  # stage NAME SECONDS command...: run it with a limit, log to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    case " $STAGES " in *" $name "*) ;; *) return ;; esac
    echo "=== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    RC[$name]=$?
    SECS[$name]=$((SECONDS - t0))
    tail -n 25 "$OUT/$name.log"
    echo "=== $name: exit ${RC[$name]} after ${SECS[$name]} s"
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

WORKERS=()
$PY -c "import xdist" 2>/dev/null && WORKERS=(-n 8 --dist loadfile)
stage suite 200 env MINIBERT_BACKEND=cupy $PY -m pytest -p no:cacheprovider -rs --maxfail=25 --timeout 120 \
    --durations=15 "${WORKERS[@]}"
stage kernels 90 env MINIBERT_BACKEND=cupy $PY -m pytest -p no:cacheprovider \
    tests/test_kernels.py tests/test_rng.py tests/test_layers.py

TORCH_CUDA=$($PY -c "import torch, transformers; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
COMPARE=()
[ "$TORCH_CUDA" = 1 ] && COMPARE=(--compare-torch --torch-attn sdpa,eager)
MODEL=(--backend cupy --preset base -V 30522 -B 64)
BENCH=($PY scripts/bench.py "${MODEL[@]}" --steps 10 --warmup 3)
# one bench per precision (each about 40 s); the stage's log holds them all
bench_precisions() {
    local p
    for p in ${PRECISIONS:-fp32 bf16 fp16}; do
        echo "--- precision $p"; "$@" --precision "$p" || return
    done
}
export -f bench_precisions
export PY
stage bench_base 160 bash -c 'bench_precisions "$@"' bench_precisions "${BENCH[@]}" "${COMPARE[@]}"
stage profile 60 $PY scripts/profile_step.py "${MODEL[@]}" --steps 5 --warmup 2 --profile-ops
[ "$TORCH_CUDA" = 1 ] && stage trace 120 $PY scripts/profile_step.py "${MODEL[@]}" --steps 3 --warmup 2 \
    --profile-kernels "${COMPARE[@]}"

rm -rf /tmp/gpu_check_pretrain
stage pretrain 120 env MINIBERT_BACKEND=cupy $PY scripts/pretrain.py --backend cupy --out /tmp/gpu_check_pretrain
cp /tmp/gpu_check_pretrain/metrics.jsonl "$OUT/pretrain_metrics.jsonl" 2>/dev/null

stage bench_tf32 120 "${BENCH[@]}" "${COMPARE[@]}" --tf32
rm -rf /tmp/gpu_check_pretrain_bf16
stage pretrain_bf16 150 env MINIBERT_BACKEND=cupy $PY scripts/pretrain.py --backend cupy --precision bf16 \
    --out /tmp/gpu_check_pretrain_bf16

{
    echo "=== summary (exit status per stage; 124 = its time limit)"
    printf '%-11s %-8s %-6s %s\n' stage exit seconds figure
    for name in $STAGES; do
        fig=""
        case $name in
            suite) fig=$(grep -E "[0-9]+ (passed|failed)" "$OUT/suite.log" 2>/dev/null | tail -n 1) ;;
            kernels) fig=$(grep -E "[0-9]+ (passed|failed)" "$OUT/kernels.log" 2>/dev/null | tail -n 1) ;;
            bench_base|bench_tf32) fig=$(grep -E "^base +minibert" "$OUT/$name.log" 2>/dev/null | awk '{print $3 " ms, x" $(NF-3)}' | paste -sd ';' -) ;;
            pretrain|pretrain_bf16) fig=$(grep -E "^done:" "$OUT/$name.log" 2>/dev/null | tail -n 1) ;;
        esac
        printf '%-11s %-8s %-6s %s\n' "$name" "${RC[$name]:-not run}" "${SECS[$name]:--}" "$fig"
    done
} | tee "$OUT/summary.txt"
