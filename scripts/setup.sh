#!/usr/bin/env bash
# Creates .venv (once) and installs ulmfit into it. Sourced by main.sh and test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# CPU PyTorch first: a plain `torch` requirement would otherwise pull a multi-GB CUDA build.
pip_install() {  # pip, without the noise of this machine's local package folders
  .venv/bin/pip install -q "$@" 2> >(grep -v "^WARNING: Location" >&2)
}
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  pip_install "torch==2.13.0" || pip_install torch --index-url https://download.pytorch.org/whl/cpu
fi
pip_install -e ".${ULMFIT_EXTRAS:-}"
.venv/bin/python -c "import ulmfit, spacy, torch" # fail here, clearly, if the install did not work
