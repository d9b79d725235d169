#!/usr/bin/env bash
# Run THERE, on a lent GPU machine, as one call (prepared by tests/device_prepare.sh here):
#   run(command="bash tests/device_check.sh", carry=[".whl", ".data"], timeout_s=600)
# Each stage has its own time box, so one slow stage cannot eat the others; logs go to $OUT.
# Stages: install; the CUDA-relevant tests; a capped run-all on CUDA; `harness bench` on CUDA
# (the write-ups' loop vs the harness loop) and `bench --repeats 8`. DEVICE=cpu runs the same
# here, as a check of the script itself.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/harness-device-out}; mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}
export PYTHONUNBUFFERED=1 HARNESS_JOBS=1
stage() {  # stage NAME SECONDS COMMAND...
  local name=$1 secs=$2; shift 2
  echo "=== $name (at most ${secs}s)"
  local t0=$SECONDS
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 15 "$OUT/$name.log"; echo
  echo "=== $name: exit $rc after $((SECONDS - t0))s"
}
if [ -d .whl ]; then
  stage install 120 python3 -m pip install -q --no-index --find-links .whl --no-build-isolation -e . "tomli-w>=1.0" || exit 1
fi
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
DATA=.data/cifar-10-batches-py
[ -d "$DATA" ] || DATA=""
WORK=$(mktemp -d); ln -s "$PWD/experiments" "$WORK/experiments"
stage tests 170 python3 -m pytest -q -x -p no:cacheprovider tests/test_runner.py tests/test_bench.py tests/test_fidelity.py
stage run-all 80 bash -c "cd $WORK && python3 -m harness.cli run-all --device $DEVICE --epochs 1 --max-train-images 2000 --no-progress ${DATA:+--data-dir $PWD/$DATA} && python3 -m harness.cli report"
stage bench 70 python3 -m harness.cli bench --device "$DEVICE" --no-suite --steps 300 ${DATA:+--data-dir "$DATA"}
stage bench-repeats 110 python3 -m harness.cli bench --device "$DEVICE" --repeats 8 --steps 100
cp "$WORK"/reports/report.html "$OUT"/ 2>/dev/null || true
