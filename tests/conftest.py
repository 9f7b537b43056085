from pathlib import Path

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
