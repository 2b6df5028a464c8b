#!/usr/bin/env bash
# Download into .whl/ (git-ignored) the Python packages nemotron-train needs that the GPU
# machine's image lacks, for `benchmarks/gpu/run.sh` to install there without a network.
#   benchmarks/gpu/fetch_wheels.sh [PYTHON]      (PYTHON: an interpreter with pip; default .venv's)
# The image has torch 2.11 (CUDA), numpy, packaging, einops, tokenizers, psutil, PyYAML and
# pytest; it lacks megatron-core, hydra-core, omegaconf and antlr4-python3-runtime. The versions
# are the ones installed in this checkout's .venv. megatron-core's wheel is platform-specific
# (a compiled dataset helper: cp312, manylinux_2_24/2_28 x86_64), so it is fetched for the
# device's CPython 3.12 on x86-64 Linux; antlr4-python3-runtime 4.9.3 is published as an sdist
# only and is built here into a pure-Python wheel. Nothing that would replace torch is fetched.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${1:-$repo/.venv/bin/python}"
dest="$repo/.whl"
limit_bytes=$((48 * 1024 * 1024))  # the device call carries 64 MiB in all, the checkout included

version() { "$python" -c "import importlib.metadata as m; print(m.version('$1'))"; }

rm -rf "$dest" && mkdir -p "$dest"
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --abi cp312 --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d "$dest" \
  "megatron-core==$(version megatron-core)" "hydra-core==$(version hydra-core)" \
  "omegaconf==$(version omegaconf)"
"$python" -m pip wheel --quiet --no-deps -w "$dest" "antlr4-python3-runtime==$(version antlr4-python3-runtime)"

ls -l "$dest"
total=$(du -cb "$dest"/*.whl | tail -1 | cut -f1)
echo "[fetch_wheels] $(ls "$dest"/*.whl | wc -l) wheels, $total bytes in $dest"
if [ "$total" -gt "$limit_bytes" ]; then
  echo "[fetch_wheels] more than $limit_bytes bytes: they and the checkout would not fit the device call" >&2
  exit 1
fi
