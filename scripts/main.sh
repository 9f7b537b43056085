#!/usr/bin/env bash
# The main job: the whole ULMFiT chain on TREC-6 from the pretrained wiki30k_fwd language model
# (LM fine-tuning on the training questions, then the classifier with gradual unfreezing), the
# test questions scored once, NB-SVM and TF-IDF + LR on the same files printed beside.
# Reads ../shared (data and model). Runs into runs/trec6; a repeat reuses every finished stage.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${ULMFIT_SHARED:-../shared}"
for f in data/trec6/train.csv data/trec6/test.csv models/wiki30k_fwd/lstm_fwd.pth \
    models/wiki30k_fwd/itos.pkl; do
    if [ ! -f "$SHARED/$f" ]; then
        echo "main.sh: $SHARED/$f not found: the main job needs the shared data and the" \
            "pretrained wiki30k_fwd model next to this repository (../shared)" >&2
        exit 2
    fi
done
bash scripts/setup.sh
exec .venv/bin/ulmfit fit --train "$SHARED/data/trec6/train.csv" \
    --test "$SHARED/data/trec6/test.csv" \
    --pretrained "$SHARED/models/wiki30k_fwd/lstm_fwd.pth" \
    --vocab "$SHARED/models/wiki30k_fwd/itos.pkl" \
    --keep-pretrained-vocab --lm-epochs 4 --lr 4e-2 --baseline --out runs/trec6 "$@"
