#!/usr/bin/env bash
# The GPU checks, for a machine with a CUDA GPU and a torch that sees it (torch is not
# installed here; optree comes from wheels in .whl/ when that machine has no network).
#   bash benchmarks/run_gpu.sh OUTDIR lease     # all of it in at most 8 minutes (a lent machine's
#                                               # 15 minutes hold one start and one such call):
#                                               # the tests, the functional API's rows, the
#                                               # kernels a step launches (launches.py), the
#                                               # speed suite's AdamW and chain rows without
#                                               # their compilations
#   bash benchmarks/run_gpu.sh OUTDIR tests     # pytest -m cuda  -> OUTDIR/cuda_tests.log
#   bash benchmarks/run_gpu.sh OUTDIR adamw     # bench_speed.py --device cuda, AdamW rows
#   bash benchmarks/run_gpu.sh OUTDIR sgd       #   -> OUTDIR/speed_cuda_sgd.{json,md,log}
#   bash benchmarks/run_gpu.sh OUTDIR chain     #   (and the identity-transform cost)
#   bash benchmarks/run_gpu.sh OUTDIR functional  # bench_functional.py --device cuda, eager
# (each part but lease fits in a 10-minute command), then, anywhere:
#   python benchmarks/bench_speed.py --merge speed_cuda_{adamw,sgd,chain}.json \
#       --out benchmarks/results/speed_cuda --note "what was left out, the commit"
#   python benchmarks/plot_speed.py benchmarks/results/speed_cuda.json \
#       benchmarks/results/speed_cuda.png
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: run_gpu.sh OUTDIR lease|tests|adamw|sgd|chain|functional}
PART=${2:?usage: run_gpu.sh OUTDIR lease|tests|adamw|sgd|chain|functional}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if ! $PY -c 'import optree' 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --target /tmp/fo-site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/fo-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$(pwd)${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
$PY -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"
print("torch", torch.__version__, torch.cuda.get_device_name())' || exit 1
case "$PART" in
tests)
    $PY -m pytest -m cuda -q -p no:cacheprovider -rfE tests 2>&1 | tee "$OUT/cuda_tests.log"
    exit "${PIPESTATUS[0]}" ;;
functional)
    $PY benchmarks/bench_functional.py --device cuda --compiled "" \
        --out "$OUT/functional_cuda" 2>&1 | tee "$OUT/functional_cuda.log"
    exit "${PIPESTATUS[0]}" ;;
lease)  # each step under its own limit; at most 8 files come back from a lent machine
    xdist=$($PY -c 'import xdist' 2>/dev/null && echo "-n 8")
    timeout 150 $PY -m pytest -m cuda -q -p no:cacheprovider -rfE $xdist tests \
        > "$OUT/cuda_tests.log" 2>&1
    echo "tests: exit $?"; tail -3 "$OUT/cuda_tests.log"
    timeout 220 $PY benchmarks/bench_functional.py --device cuda --repeats 5 --compiled "" \
        --out "$OUT/functional_cuda" > "$OUT/functional_cuda.log" 2>&1
    echo "functional: exit $?"
    timeout 60 $PY benchmarks/launches.py --device cuda --algos adamw,sgd,rmsprop,nadam,chain \
        --out "$OUT/launches_cuda.md" > /dev/null 2>&1
    echo "launches: exit $?"
    for algo in adamw chain; do
        timeout 50 $PY benchmarks/bench_speed.py --device cuda --algos $algo --no-identity \
            --repeats 7 --skip "torch compiled,ours flat compiled" \
            --out "$OUT/speed_cuda_$algo" >> "$OUT/speed_cuda.log" 2>&1
        echo "speed $algo: exit $?"
    done
    rm -f "$OUT"/speed_cuda_*.md "$OUT"/*.png
    exit 0 ;;
esac
extra=()
[ "$PART" = chain ] || extra=(--no-identity)
$PY benchmarks/bench_speed.py --device cuda --algos "$PART" "${extra[@]}" \
    --out "$OUT/speed_cuda_$PART" 2>&1 | tee "$OUT/speed_cuda_$PART.log"
