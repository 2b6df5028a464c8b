#!/usr/bin/env bash
# Create (or reuse) a virtual environment with this package installed.
#   launch/setup_venv.sh [EXTRAS] [VENV_DIR]     e.g. launch/setup_venv.sh dev
# Finds a Python >= 3.12 (PYTHON=..., python3.12, python3, pyenv's 3.12.x).
# Reinstalls only when pyproject.toml or the extras change. Used by the
# Makefile, CI, and container-less cluster jobs (a venv on shared storage).
set -euo pipefail

extras="${1:-}"
venv="${2:-.venv}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

is_python312() {
  "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1
}

find_python() {
  local candidates=("${PYTHON:-}" python3.12 python3)
  if command -v pyenv >/dev/null 2>&1; then
    candidates+=("$(pyenv root)"/versions/3.1[2-9]*/bin/python3)
  fi
  for candidate in "${candidates[@]}"; do
    if [ -n "$candidate" ] && is_python312 "$candidate"; then
      command -v "$candidate" || echo "$candidate"
      return 0
    fi
  done
  echo "error: no Python >= 3.12 found; set PYTHON=/path/to/python3.12" >&2
  return 1
}

if [ ! -x "$venv/bin/python" ]; then
  python="$(find_python)"
  echo "[setup] creating $venv with $python" >&2
  "$python" -m venv "$venv"
fi

spec="$repo"
[ -n "$extras" ] && spec="${repo}[$extras]"
stamp="$venv/.nemotron-train-installed"
want="$(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1) extras=$extras"
if [ ! -f "$stamp" ] || ! grep -qxF "$want" "$stamp"; then
  echo "[setup] installing nemotron-train${extras:+[$extras]} into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e "$spec"
  echo "$want" >"$stamp"
fi
