#!/usr/bin/env bash
# Issue 14's checks that need a GPU, as one command for the device tool (see its README), sized for a
# 15-minute device budget: capture overhead and peak memory per family on model-sized random-weight
# pipelines at their native 1024² (SD 1.5 at 512²), ours vs bare vs attention-map-diffusers.
#
# Here, once:    echo /.whl/ >> .git/info/exclude
#                pip download --no-deps -d .whl diffusers==0.42.1 attention-map-diffusers==1.0.0 importlib_metadata
# Then:          run(command="bash bench/gpu_checks.sh", carry=[".whl"], timeout_s=560)
#                run(command="bash bench/gpu_checks.sh flux2", carry=[".whl"], timeout_s=400)  # FLUX.2, a second call
#                run(command="bash bench/gpu_checks.sh toyworld", carry=[".whl"], timeout_s=560)  # a larger toy
#                transformer trained from scratch for issue 14's adherence; its folder (24 MB) comes back under $OUT:
#                judge it here with bench/label_accuracy.py --model FOLDER --n 120 --children 0 --yolo-train 0
# The device has torch and transformers of its own and no diffusers; nothing else of ours needs more.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "carry .whl (see the header)"; exit 2; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
out=${OUT:-/tmp/gpu-checks}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/machine.txt"
python3 -c "import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__)" \
  | tee -a "$out/machine.txt"
run() {  # one family: at most $1 seconds, the rest of its arguments to bench_capture.py
  local limit=$1; shift
  timeout "$limit" python3 bench/bench_capture.py --device cuda --model-sized --steps 4 --n 3 --reps 2 \
    --refine-power 1 --peers amd "$@" 2>&1 | tee -a "$out/capture.log"
}
if [ "${1:-}" = toyworld ]; then  # 8 joint blocks of width 192 (the shipped model: 4 of 128), the same world and seed
  set -o pipefail
  timeout 520 python3 -m diffugen.toyworld.train --arch mmdit --device cuda --mmdit-layers 8 --mmdit-heads 6 \
    --steps 7500 --batch 64 --lr 5e-4 --state /tmp/toyworld-state --out "$out/model-mmdit-8x192" --save-every 1000 \
    2>&1 | tee "$out/train.log"
  exit 0
fi
if [ "${1:-}" = flux2 ]; then  # [klein] Base 4B (7.6B parameters with its encoder), then [dev] (55B: ~103 GiB in bf16)
  run 150 --model builtin:tiny-flux2 --size 1024
  run 240 --model builtin:tiny-flux2-dev --size 1024
  exit 0
fi
run 90 --model builtin:tiny --size 512
run 120 --model builtin:tiny-sdxl --size 1024
run 120 --model builtin:tiny-sd3 --size 1024
run 150 --model builtin:tiny-flux --size 1024
