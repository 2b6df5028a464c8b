#!/usr/bin/env bash
# The GPU measurement in one run on the device machine (one H200; torch 2.11 with CUDA and
# Triton, Python 3.12; no megatron-core, TransformerEngine or mamba_ssm; no network), in under
# 8 minutes:
#   1. install the wheels carried in .whl/ (benchmarks/gpu/fetch_wheels.sh) into /tmp, without
#      touching the machine's torch;
#   2. the tests marked `gpu`                        -> gpu_tests.json (+ the JUnit XML)
#   3. the Nano-width slice (benchmarks/gpu_slice.py) -> gpu_slice.json
#   4. NVFP4 emulation against BF16 per linear at Nano's shapes -> gpu_nvfp4_emulation.json
# Results and the whole log go to $OUT (the device tool's return folder) or benchmarks/results.
# Each stage has its own time limit, so a failing or hanging one leaves the others' results.
#   device run: carry [".whl"], command "bash benchmarks/gpu/run.sh", timeout_s 600
# NEMOTRON_GPU_REHEARSAL=1 runs the same stages on a CPU machine (tiny benchmark settings; the
# gpu tests are then collected and deselected), to check the script before GPU time is spent.
set -uo pipefail
rehearsal="${NEMOTRON_GPU_REHEARSAL:-0}"

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
results="${OUT:-benchmarks/results}"
mkdir -p "$results"
exec > >(tee "$results/gpu_run.log") 2>&1
site=/tmp/nemotron_site
export PYTHONUNBUFFERED=1 PYTHONPATH="$site:$PWD" RESULTS_DIR="$results"
export NEMOTRON_TRAIN_CACHE=/tmp/nemotron_cache OMP_NUM_THREADS=8
stage() { echo "=== $(date +%T) $*"; }

stage "install"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl || exit 1
python3 - <<'PY' || exit 1
import torch, megatron.core, hydra, omegaconf
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      "| megatron-core", megatron.core.__version__, "| hydra", hydra.__version__)
PY
if [ "$rehearsal" = 1 ]; then
  slice_args=(--device cpu --warmup-steps 1 --timed-steps 1)
  emulation_args=(--device cpu --shapes small --rounds 1)
else
  python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 1
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  slice_args=(--device cuda)
  emulation_args=(--device cuda --shapes nano --rounds 20)
fi
date; nproc --all; uptime

stage "gpu tests"
mapfile -t gpu_test_files < <(grep -rl "mark.gpu" tests --include='test_*.py' | sort)
timeout 300 python3 -m pytest -m gpu -q -p no:cacheprovider --timeout=200 -o addopts="-ra" \
  --junitxml="$results/gpu_tests.xml" "${gpu_test_files[@]}"
echo "pytest exit status $?"
[ -f "$results/gpu_tests.xml" ] && python3 benchmarks/gpu/summarize_tests.py "$results/gpu_tests.xml" "$results/gpu_tests.json"

stage "slice benchmark"
timeout 170 python3 benchmarks/gpu_slice.py "${slice_args[@]}" --out "$results"
echo "gpu_slice exit status $?"

stage "NVFP4 emulation per linear"
timeout 60 python3 benchmarks/nvfp4_emulation.py "${emulation_args[@]}" \
  --out "$results/gpu_nvfp4_emulation.json"
echo "nvfp4_emulation exit status $?"
stage "done"; ls -l "$results"
