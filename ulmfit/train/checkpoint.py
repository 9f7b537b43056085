"""What lets an interrupted run continue exactly where it stopped.

- **RNG state** (:func:`rng_state`, :func:`set_rng_state`): torch (CPU and CUDA), Python and
  NumPy generators as tensors and plain types, so a checkpoint holding them loads with
  ``torch.load(weights_only=True)``.
- **Stage folders** (:class:`StageFolder`): a folder where one stage's unfinished work waits
  for the next attempt, and the *stamp* file that says which work it is (a key: a digest of
  everything the result depends on; or a settings record). All three resume mechanisms use it:
  the language model's ``DIR.partial`` (stamp ``run.json`` inside it, refused with the name of
  the setting when it differs: a user's unfinished run is never discarded silently), the
  classifier's ``.classifier-train`` (stamp ``stage_key`` inside it) and ``ulmfit fit``'s LM
  stage (stamp ``RUN/.lm.key`` beside ``RUN/lm.partial``); the last two continue when the key
  is the same and start over when it is not (:meth:`StageFolder.open`).
- **Result-neutral settings** (:data:`FREE_SETTINGS`): the one list of settings a resumed run
  may change, and that no stage key or run record holds.

Files are written with :func:`ulmfit.atomic.atomic_write`, folders built whole with
:func:`ulmfit.atomic.staged_folder`.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ulmfit.atomic import atomic_write, staged_folder

# Settings that do not change a trained result (where and how fast it runs, what it prints):
# a resumed run may use other values, and stage keys and run records leave them out.
FREE_SETTINGS = ("workers", "cache_dir", "device", "compile", "overwrite", "progress", "verbose")

# Settings added after runs were recorded, at the value that does what those runs did: left
# out of keys and run records at that value, so a finished stage or an unfinished run of an
# earlier version still matches (and another value changes the key). Fixed values, not the
# current defaults: a record without the setting always means this value.
ADDED_SETTINGS = {"keep": "last", "patience": None, "monitor": "valid_loss"}


def setting_of(settings: dict, name: str) -> object:
    """The value of ``name`` in a record made by :func:`result_settings` (an added setting
    left out is at its :data:`ADDED_SETTINGS` value), to name it in a message."""
    return settings.get(name, ADDED_SETTINGS.get(name))


def result_settings(settings: dict) -> dict:
    """``settings`` without the result-neutral ones (:data:`FREE_SETTINGS`), nor the added
    ones at the value that means what runs did before them (:data:`ADDED_SETTINGS`)."""
    return {
        k: v
        for k, v in settings.items()
        if k not in FREE_SETTINGS and not (k in ADDED_SETTINGS and ADDED_SETTINGS[k] == v)
    }


# --------------------------------------------------------------------------------------
# RNG state
# --------------------------------------------------------------------------------------


def rng_state() -> dict:
    """Every generator's state: torch (and each CUDA device's), Python's and NumPy's."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }


def set_rng_state(state: dict) -> None:
    """Put back what :func:`rng_state` returned (as saved, or as loaded from a checkpoint)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


# --------------------------------------------------------------------------------------
# Stage folders
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageFolder:
    """``path``: where a stage's unfinished work (checkpoint, logs) waits; ``stamp``: the
    file (inside ``path`` or beside it) that says which work that is."""

    path: Path
    stamp: Path

    def exists(self) -> bool:
        return self.path.exists() or self.path.is_symlink()

    def key(self) -> str | None:
        """The stamp's text, stripped; ``None`` when it cannot be read (absent, a folder)."""
        with contextlib.suppress(OSError):
            return self.stamp.read_text(encoding="utf-8").strip()
        return None

    def write_stamp(self, key: str) -> None:
        """Stamp the folder with ``key`` (its parent folder created if needed)."""
        self.stamp.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.stamp, lambda f: f.write(key), "w")

    def create(self, files: dict[str, str]) -> None:
        """The folder, holding ``files`` (name -> text; the stamp among them), in one rename:
        it appears whole or not at all. ``OSError`` when it cannot (it exists and is not empty,
        permissions); ``UserError`` when its parent folder cannot be created."""
        with staged_folder(self.path) as tmp:
            for name, text in files.items():
                atomic_write(tmp / name, lambda f, text=text: f.write(text), "w")
            os.rename(tmp, self.path)

    def open(self, key: str, needs: Path | None = None) -> Literal["resume", "replaced", "new"]:
        """``"resume"`` when the folder holds an unfinished attempt at the work ``key`` (its
        stamp says ``key``, and ``needs``, such as a checkpoint, is a file); otherwise the
        folder is removed (``"replaced"``; ``"new"`` when there was none) and stamped ``key``:
        an attempt at other work cannot be continued, and would mix into this one."""
        there = self.path.exists()
        if there and (needs is None or needs.is_file()) and self.key() == key:
            return "resume"
        if there:
            shutil.rmtree(self.path)
        self.write_stamp(key)
        return "replaced" if there else "new"


__all__ = [
    "ADDED_SETTINGS",
    "FREE_SETTINGS",
    "StageFolder",
    "result_settings",
    "setting_of",
    "rng_state",
    "set_rng_state",
]
