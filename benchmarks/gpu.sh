#!/usr/bin/env bash
# Everything a borrowed GPU measures, in one short run (under 6 minutes on one H100/H200, data
# unpacking included).  Needs, in an ignored folder .gpu/ of the checkout: cifar10-jpg.tar.xz and
# unpack-cifar10 (from ../shared).  Writes $OUT/e2e.json (or ./e2e.json) and prints the tables.
#   bash benchmarks/gpu.sh            # speed: smoke checks, a profile of the two main steps, then bench_e2e
#                                     # at ipc 1, 10, 50, 5 experiments together at ipc 1 and 10, the evaluation
#   bash benchmarks/gpu.sh accuracy   # the DSA and Table 3 presets and the precisions' accuracy, CIFAR-10 ipc 1
#   bash benchmarks/gpu.sh seed       # the seed's own multi-level.py (its code in .gpu/seed), seconds per iteration
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-.}
PY=${PY:-python3}
[ -d data/cifar-10-batches-py ] || (cd .gpu && $PY unpack-cifar10 ../data cifar10-jpg.tar.xz > /dev/null)
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
if [ "${1:-}" = "accuracy" ]; then  # --scale cpu: 200 iterations, 1 experiment, 10 networks
    for preset in dsa table3; do
        timeout "${ROW_TIMEOUT:-150}" $PY -m gradmatch reproduce $preset --dataset CIFAR10 --ipc 1 --scale cpu \
            --device cuda --data_path data --save_path "result/gpu_$preset" --quiet > /dev/null
        cat "result/gpu_$preset/table.md"
    done
    timeout 90 $PY benchmarks/precision_accuracy.py --device cuda --data data --ipc 1 --iterations 200 \
        --num_eval 10 --precisions fp32,tf32,bf16 --bf16 native
    exit 0
fi
if [ "${1:-}" = "seed" ]; then  # the seed's multi-level.py, its per-iteration time from its own log lines
    $PY .gpu/run_seed.py --ipc 10 --Iteration 10 --dis_metric improved 2>&1 | grep -E "iter = |Error|error"
    exit 0
fi
timeout 90 $PY benchmarks/gpu_smoke.py
timeout 60 $PY benchmarks/profile_steps.py --device cuda --rows 12
$PY benchmarks/bench_e2e.py --device cuda --data_path data --ipcs 1,10,50 --iterations 3 \
    --engines textbook,auto,fast --precisions tf32,bf16 --precision_ipcs 10 --eval_methods auto,batched,sequential \
    --out "$OUT/e2e.json"
