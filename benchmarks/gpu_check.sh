#!/usr/bin/env bash
# The one prepared device check of issue 15: on a GPU machine, under 8 minutes, run
#   1. CUDA against the CPU on one checkpoint: training, float64 HVPs and Lanczos (benchmarks/device_check.py),
#   2. the side-by-side scale benchmark on the fashion-cnn model (benchmarks/spectrum_scale.py, 1,000 images),
#   3. one full Fashion-MNIST pair of the fashion-cnn preset on 10k clean + 10k attack images, spectra included.
#
#   bash benchmarks/gpu_check.sh                       # --device cuda, the sizes above
#   bash benchmarks/gpu_check.sh --device cpu --quick  # the CPU rehearsal (tests/test_gpu_check.py): small
#                                                      # models and data, one torch thread, about a minute
# Output: each step's report and wall time on stdout; the pair's store in $OUT (default: a temporary folder).
# Exit status: that of the first failing step.
set -euo pipefail

DEVICE=cuda
QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --device=*) DEVICE="${1#*=}"; shift ;;
    --quick) QUICK=1; shift ;;
    *) echo "usage: $0 [--device cuda|cpu] [--quick]" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
PYTHON="${PYTHON:-python}"
[ "$DEVICE" = cpu ] && export OMP_NUM_THREADS=1  # two spin-waiting threads on a shared 2-core VM run 3x slower

if [ "$QUICK" = 1 ]; then
  AGREE=(--quick)
  SCALE=(--quick --ks 1,4 --budget 20)
  PAIR=(--set data.n_train=100 --set attack.n_attack=100 --set data.n_test=100 --set 'model.channels=[4,8]'
        --set 'model.widths=[16]' --set train.max_epochs=3 --set spectrum.k=2 --set spectrum.max_steps=60
        --set spectrum.slq_vectors=1 --set spectrum.slq_steps=4 --set spectrum.trace_samples=3)
else
  AGREE=()
  SCALE=(--samples 1000)
  PAIR=(--set data.n_train=10000 --set attack.n_attack=10000)
fi

step() {  # step NAME SECONDS COMMAND...: run it under a time limit, print its wall time
  local name="$1" limit="$2"; shift 2
  echo "== $name"
  local start=$SECONDS
  timeout "$limit" "$@"
  echo "== $name: ok in $((SECONDS - start)) s"
}

echo "gpu_check: device $DEVICE, quick $QUICK, output $OUT"
step "1. $DEVICE vs cpu on one checkpoint" 120 "$PYTHON" benchmarks/device_check.py --device "$DEVICE" "${AGREE[@]}"
step "2. scale benchmark on the CNN" 200 "$PYTHON" benchmarks/spectrum_scale.py --device "$DEVICE" "${SCALE[@]}"
step "3. one fashion-cnn pair" 300 "$PYTHON" -m lossland run --preset fashion-cnn "${PAIR[@]}" --device "$DEVICE" \
  --store "$OUT/store.duckdb" --quiet
echo "gpu_check: all steps passed in $SECONDS s"
