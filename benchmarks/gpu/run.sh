#!/usr/bin/env bash
# The GPU measurement in one run on the device machine (one H200; torch 2.11 with CUDA and
# Triton, Python 3.12; no megatron-core, TransformerEngine or mamba_ssm; no network), in under
# 8 minutes:
#   1. install the wheels carried in .whl/ (benchmarks/gpu/fetch_wheels.sh) into /tmp, without
#      touching the machine's torch, and check what the run needs;
#   2. tests   the tests marked `gpu`                          -> gpu_tests.json (+ JUnit XML)
#   3. slice   the Nano-width slice (benchmarks/gpu_slice.py)   -> gpu_slice.json
#   4. nvfp4   NVFP4 emulation against BF16 per linear at Nano's shapes -> gpu_nvfp4_emulation.json
# Results and the log go to $OUT (the device tool's return folder) or benchmarks/results.
# Each stage has its own time limit (40 + 250 + 140 + 45 s: under 8 minutes), so a failing or hanging
# one leaves the others' results; pytest is interrupted with SIGINT and still writes its XML.
#   device run: carry [".whl"], command "bash benchmarks/gpu/run.sh", timeout_s 600
#   a rerun of some stages only: bash benchmarks/gpu/run.sh slice nvfp4
#   a rerun of some tests only:  GPU_TESTS="tests/a.py::test_x tests/b.py" bash benchmarks/gpu/run.sh tests
# NEMOTRON_GPU_REHEARSAL=1 runs the same stages on a CPU machine (tiny benchmark settings; the
# gpu tests are then collected and deselected), to check the script before GPU time is spent.
set -uo pipefail
rehearsal="${NEMOTRON_GPU_REHEARSAL:-0}"
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests slice nvfp4)
for name in "${stages[@]}"; do
  case "$name" in tests|slice|nvfp4) ;; *) echo "unknown stage '$name' (tests, slice, nvfp4)" >&2; exit 2 ;; esac
done
wants() { [[ " ${stages[*]} " == *" $1 "* ]]; }

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
results="${OUT:-benchmarks/results}"
mkdir -p "$results"
log_name=gpu_run.log
[ ${#stages[@]} -lt 3 ] && log_name="gpu_run_$(IFS=_; echo "${stages[*]}").log"
exec > >(tee "$results/$log_name") 2>&1
site=/tmp/nemotron_site
export PYTHONUNBUFFERED=1 PYTHONPATH="$site:$PWD" RESULTS_DIR="$results"
export NEMOTRON_TRAIN_CACHE=/tmp/nemotron_cache
started=$SECONDS
stage() { echo "=== $(date +%T) (+$((SECONDS - started)) s) $*"; }
# SIGINT first (pytest then writes its report), SIGKILL 15 s later. The CPU rehearsal gets 4x.
scale=1
[ "$rehearsal" = 1 ] && scale=4
limit() { local seconds=$(($1 * scale)); shift; timeout -s INT -k 15 "$seconds" "$@"; }

stage "install (stages: ${stages[*]})"
limit 20 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl || exit 1
limit 20 python3 - <<'PY' || exit 1
import importlib.util, sysconfig
import torch, megatron.core, hydra, omegaconf
from nemotron_train.data.stdlib_corpus import stdlib_source_files
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      "| megatron-core", megatron.core.__version__, "| hydra", hydra.__version__,
      "| pytest-xdist", importlib.util.find_spec("xdist") is not None)
files = stdlib_source_files()
print(f"stdlib corpus: {len(files)} files under {sysconfig.get_paths()['stdlib']}")
assert len(files) > 100, "the stdlib corpus (the tiny recipe's and the slice's data) is missing here"
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

if wants tests; then
  stage "gpu tests"
  if [ -n "${GPU_TESTS:-}" ]; then
    read -ra gpu_tests <<< "$GPU_TESTS"
  else
    mapfile -t gpu_tests < <(grep -rl "mark.gpu" tests --include='test_*.py' | sort)
  fi
  # Three workers (the tests are mostly process start-up) where pytest-xdist is installed.
  workers=()
  python3 -c "import xdist" 2>/dev/null && workers=(-n 3 --dist load)
  rm -f "$results/gpu_tests.xml"
  OMP_NUM_THREADS=4 limit 250 python3 -m pytest -m gpu -q -p no:cacheprovider --timeout=200 -o addopts="-ra" \
    "${workers[@]}" --junitxml="$results/gpu_tests.xml" "${gpu_tests[@]}"
  echo "pytest exit status $?"
  [ -f "$results/gpu_tests.xml" ] && python3 benchmarks/gpu/summarize_tests.py "$results/gpu_tests.xml" "$results/gpu_tests.json"
fi

if wants slice; then
  stage "slice benchmark"
  OMP_NUM_THREADS=8 limit 140 python3 benchmarks/gpu_slice.py "${slice_args[@]}" --out "$results"
  echo "gpu_slice exit status $?"
fi

if wants nvfp4; then
  stage "NVFP4 emulation per linear"
  OMP_NUM_THREADS=8 limit 45 python3 benchmarks/nvfp4_emulation.py "${emulation_args[@]}" \
    --out "$results/gpu_nvfp4_emulation.json"
  echo "nvfp4_emulation exit status $?"
fi
stage "done"; ls -l "$results"
