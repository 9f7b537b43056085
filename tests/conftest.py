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
