import csv
import os
from pathlib import Path

# The test models are tiny: more than one torch thread per process only adds contention
# (several times slower on a busy 2-core machine). Set before any test module imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"
FIXTURES = SHARED / "fixtures"


def need(path: Path) -> Path:
    """Skip, with the path in the message, when the shared data is absent (e.g. a clone without ../shared)."""
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (tests read real data from ../shared)")
    return path


def trec_rows(n: int, start: int = 0) -> list[dict]:
    """Rows ``start`` .. ``start + n`` of the real TREC-6 training file (label, text)."""
    with open(need(DATA / "trec6" / "train.csv"), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))[start : start + n]


def write_csv(path, rows: list[dict], fields=None) -> str:
    """``rows`` as a CSV file with a header (``fields``, default the first row's keys)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(fields or rows[0]))
        w.writeheader()
        w.writerows(rows)
    return str(path)


def tiny_lms(folder, texts: list[str]) -> list[str]:
    """Tiny forward and backward language models (emb 8, hidden 16, 2 layers) over the
    vocabulary of ``texts``, saved as ``folder/pre_fwd`` and ``folder/pre_bwd``: pretrained
    models small enough that a whole ``fit`` dry run takes seconds. Returns the vocabulary."""
    import torch

    from ulmfit.config import AWDLSTMConfig
    from ulmfit.corpus import tokenize_texts
    from ulmfit.models.awd_lstm import LanguageModel
    from ulmfit.models.io import save_model_dir
    from ulmfit.text.rules import SPECIAL_TOKENS

    vocab = list(SPECIAL_TOKENS)
    vocab += [t for t in tokenize_texts(texts).vocab if t not in vocab]
    for direction, seed in (("fwd", 0), ("bwd", 1)):
        torch.manual_seed(seed)
        lm = LanguageModel(len(vocab), AWDLSTMConfig(emb_sz=8, n_hid=16, n_layers=2))
        save_model_dir(Path(folder) / f"pre_{direction}", lm, vocab, direction=direction)
    return vocab
