#!/bin/bash
# The GPU measurements of docs/PERFORMANCE.md in one run, on a CUDA machine that has torch
# but neither Ray nor a package index. Beside the code it needs .whl/ (wheels for what the
# machine lacks: ../shared/device/wheels.sh, or `pip download pydantic captum pytest`) and
# data/zheng2018-d1.parquet (jobs/prepare_data.py). Logs go to $OUT (default gpu-logs/).
#
#     OUT=gpu-logs bash bench/gpu_checks.sh [STEP ...]
# default: tests cv_throughput nca_throughput cv_triton cv_baselines, in this order
set -u
STEPS=${*:-tests cv_throughput nca_throughput cv_triton cv_baselines}
OUT=${OUT:-gpu-logs}
mkdir -p "$OUT"
if ! python3 -c "import pydantic, captum" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD/platform:$PWD/bench PYTHONUNBUFFERED=1
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
DATA=data/zheng2018-d1.parquet
CV=(python3 jobs/cross_validate.py --data "$DATA" --config configs/paper.yaml --folds 5 --holdout 0.2 --device cuda)

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, show its tail
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - start)) s: $*" | tee -a "$OUT/steps.txt"
  grep -v "^[0-9:]* epoch " "$OUT/$name.log" | tail -n 30
  return $rc
}

wanted() { [[ " $STEPS " == *" $1 "* ]]; }
# At most 10 minutes in all (the limits add up to 590 s).
wanted tests && step tests 120 python3 -m pytest -q -p no:cacheprovider tests/test_batched.py tests/test_nca.py tests/test_triton.py tests/test_components.py
wanted cv_throughput && step cv_throughput 110 python3 bench/cv_throughput.py --device cuda --folds 5 --epochs 3 --data "$DATA" --skip compiled
wanted nca_throughput && step nca_throughput 60 python3 bench/nca_throughput.py --device cuda --triton
wanted cv_triton && step cv_triton 100 "${CV[@]}" --kernel triton --json "$OUT/cv_triton.json"
wanted cv_baselines && step cv_baselines 200 "${CV[@]}" --baselines gradcam eigencam --json "$OUT/cv_baselines.json"
# Not in the default run (named to run): torch.compile on CUDA against the CUDA graph (compile: auto
# does not compile on CUDA, unmeasured), and the torch path's CV in bf16 and fp32.
wanted cv_compile && step cv_compile 300 python3 bench/cv_throughput.py --device cuda --folds 5 --epochs 3 --data "$DATA" --skip sequential grouped evaluation
wanted cv_bf16 && step cv_bf16 240 "${CV[@]}" --precision bf16 --json "$OUT/cv_bf16.json"
wanted cv_fp32 && step cv_fp32 240 "${CV[@]}" --json "$OUT/cv_fp32.json"
exit 0
