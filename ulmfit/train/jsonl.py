"""The training logs: one JSON record per line, appended as training goes, so a process killed
mid-write leaves at most one torn last line, which readers skip."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

from ulmfit.atomic import atomic_write


def read_jsonl(path: Path) -> list[dict]:
    """Records of a jsonl log; a torn last line (process killed mid-write) is skipped."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rec = json.loads(line)
            if isinstance(rec, dict):
                out.append(rec)
    return out


def trim_jsonl(path: Path, keep: Callable[[dict], bool]) -> list[dict]:
    """Drop the records a restarted run will write again (and any torn line)."""
    if not path.exists():
        return []
    kept = [r for r in read_jsonl(path) if keep(r)]
    text = "".join(json.dumps(r) + "\n" for r in kept)
    atomic_write(path, lambda f: f.write(text), "w")
    return kept


__all__ = ["read_jsonl", "trim_jsonl"]
