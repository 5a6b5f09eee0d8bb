#!/usr/bin/env bash
# Set up hmmlvd in ./.venv: torch first (torch==2.13.0, which is a local CPU wheel on the project's
# machines, so a CPU machine never pulls GBs of CUDA wheels), then the package and its dev tools.
# Usage: bash scripts/setup.sh [extra,...]    (default extras: dev; e.g. "dev,gpu" on CUDA)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${pip[@]}" install "torch==2.13.0" ||
    "${pip[@]}" install torch --index-url https://download.pytorch.org/whl/cpu
fi
"${pip[@]}" install -e ".[${extras}]"
echo "hmmlvd is set up in .venv (torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'))"
