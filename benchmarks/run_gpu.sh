#!/usr/bin/env bash
# The GPU checks, for a machine with a CUDA GPU and a torch that sees it (torch is not
# installed here; optree comes from wheels in .whl/ when that machine has no network). Each part
# fits in a 10-minute command:
#   bash benchmarks/run_gpu.sh OUTDIR tests     # pytest -m cuda  -> OUTDIR/cuda_tests.log
#   bash benchmarks/run_gpu.sh OUTDIR adamw     # bench_speed.py --device cuda, AdamW rows
#   bash benchmarks/run_gpu.sh OUTDIR sgd       #   -> OUTDIR/speed_cuda_sgd.{json,md,log}
#   bash benchmarks/run_gpu.sh OUTDIR chain     #   (and the identity-transform cost)
# then, anywhere:
#   python benchmarks/bench_speed.py --merge speed_cuda_{adamw,sgd,chain}.json \
#       --out benchmarks/results/speed_cuda
#   python benchmarks/plot_speed.py benchmarks/results/speed_cuda.json \
#       benchmarks/results/speed_cuda.png
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: run_gpu.sh OUTDIR tests|adamw|sgd|chain}
PART=${2:?usage: run_gpu.sh OUTDIR tests|adamw|sgd|chain}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if ! $PY -c 'import optree' 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --target /tmp/fo-site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/fo-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$(pwd)${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
$PY -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"
print("torch", torch.__version__, torch.cuda.get_device_name())' || exit 1
if [ "$PART" = tests ]; then
    $PY -m pytest -m cuda -q -p no:cacheprovider -rfE tests 2>&1 | tee "$OUT/cuda_tests.log"
    exit "${PIPESTATUS[0]}"
fi
extra=()
[ "$PART" = chain ] || extra=(--no-identity)
$PY benchmarks/bench_speed.py --device cuda --algos "$PART" "${extra[@]}" \
    --out "$OUT/speed_cuda_$PART" 2>&1 | tee "$OUT/speed_cuda_$PART.log"
