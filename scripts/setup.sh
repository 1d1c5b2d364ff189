#!/usr/bin/env bash
# Installs everything DMD Copying Lab needs into the current Python environment.
#   bash scripts/setup.sh            # the app + engine
#   bash scripts/setup.sh --browser  # plus Debian's chromium, for the browser tests
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    # A CUDA machine: let pip pick the CUDA build within requirements.txt's range.
    "$PY" -m pip install -q "torch>=2.2,<2.15"
  else
    # CPU machine: this pinned build is a CPU wheel (a plain `torch` would pull a multi-GB CUDA build).
    "$PY" -m pip install -q torch==2.13.0
  fi
fi
"$PY" -m pip install -q -r requirements.txt
if [[ "${1:-}" == "--browser" ]] && ! command -v chromium >/dev/null 2>&1; then
  SUDO=""; [[ "$(id -u)" != "0" ]] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium
fi
