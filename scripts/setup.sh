#!/usr/bin/env bash
# Creates .venv (once) and installs ulmfit into it. Sourced by main.sh and test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# CPU PyTorch first: a plain `torch` requirement would otherwise pull a multi-GB CUDA build.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q "torch==2.13.0" \
    || .venv/bin/pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi
.venv/bin/pip install -q -e ".${ULMFIT_EXTRAS:-}" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import ulmfit, spacy, torch" # fail here, clearly, if the install did not work
