#!/usr/bin/env bash
# Creates bench/.venv-fastai: fastai 2.8 (text only) for the tokenization benchmark.
# fastai is NOT a dependency of the ulmfit package; it lives only in this benchmark environment.
# fastai is installed with --no-deps so that torchvision is not pulled in (fastai.text never imports it).
# Usage (from anywhere):  bash bench/setup_fastai_env.sh   [PYTHON=python3.11 to choose the interpreter]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-fastai"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --disable-pip-version-check)

"${pip[@]}" 'torch==2.13.0'
"${pip[@]}" --no-deps 'fastai==2.8.12'
"${pip[@]}" fastcore fasttransform fastprogress fastdownload plum-dispatch \
    'spacy==3.8.18' pandas scikit-learn matplotlib psutil

"$venv/bin/python" - <<'PY'
import fastai, spacy, torch
from fastai.text.all import tokenize_texts  # noqa: F401
print(f"ok: fastai {fastai.__version__}, spacy {spacy.__version__}, torch {torch.__version__}")
PY
