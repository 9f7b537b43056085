"""A content-addressed store: each pipeline stage's output is a folder named by a hash of its inputs.

Why a folder per key: a stage writes several files (arrays, vocabulary, metadata) that must
appear together or not at all. The folder is built under a temporary name and renamed into
place in one step, so an interrupted run leaves no half entry; every file's size and SHA-256 go
into ``manifest.json``, so a truncated or corrupted entry is detected and rebuilt, never used.
A lock file per key makes a second process preparing the same data wait for the first and
then reuse its result instead of computing it twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ulmfit.atomic import atomic_write, staged_folder
from ulmfit.errors import UserError

MANIFEST = "manifest.json"
_BLOCK = 1 << 20


def default_root() -> Path:
    """``$ULMFIT_CACHE``, else ``$XDG_CACHE_HOME/ulmfit``, else ``~/.cache/ulmfit``."""
    env = os.environ.get("ULMFIT_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "ulmfit"


def key_of(settings: Any) -> str:
    """Stable hash of a JSON-able description of everything that changes a stage's output."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


class Cache:
    """Entries live at ``root/stage/key/``; see the module docstring for the guarantees."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser() if root else default_root()

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def load(self, stage: str, key: str, verify: bool = True) -> Path | None:
        """The entry's folder if it exists and is intact, else None.

        A damaged entry is left alone here: only ``build``, holding the key's lock, replaces
        it, so that a reader can never delete an entry another process has just rebuilt.
        """
        entry = self.path(stage, key)
        manifest = entry / MANIFEST
        if not manifest.exists():
            return None
        if verify and not self._intact(entry):
            return None
        return entry

    def manifest(self, entry: Path) -> dict:
        return json.loads((entry / MANIFEST).read_text())

    def build(
        self, stage: str, key: str, write: Callable[[Path], dict[str, Any]], verify: bool = True
    ) -> tuple[Path, bool]:
        """Return ``(entry, built)``: the intact entry, computing it with ``write(tmp_dir)`` if needed.

        ``write`` fills the folder it is given and returns metadata kept in the manifest.
        """
        found = self.load(stage, key, verify)
        if found:
            return found, False
        with self._lock(stage, key):
            found = self.load(stage, key, verify)  # another process may have built it meanwhile
            if found:
                return found, False
            self._sweep(stage, key)
            final = self.path(stage, key)
            with staged_folder(final, prefix=f".tmp-{key}") as tmp:  # the name _sweep knows
                meta = write(tmp)
                files = {
                    p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)}
                    for p in sorted(tmp.iterdir())
                    if p.is_file()
                }
                manifest = {"stage": stage, "key": key, "files": files, "meta": meta}
                atomic_write(tmp / MANIFEST, lambda f: json.dump(manifest, f), "w")
                if final.exists():  # a damaged (or manifest-less) entry: replace it
                    self._discard(final)
                os.rename(tmp, final)
            return final, True

    def _intact(self, entry: Path) -> bool:
        try:
            manifest = self.manifest(entry)
            for name, info in manifest["files"].items():
                p = entry / name
                if p.stat().st_size != info["size"] or file_sha256(p) != info["sha256"]:
                    return False
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return True

    def _discard(self, entry: Path) -> None:
        trash = entry.parent / f".trash-{entry.name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(entry, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def _sweep(self, stage: str, key: str) -> None:
        """Remove what killed builders left (``.tmp-*`` and ``.trash-*`` folders; ``kill -9``
        runs no cleanup). Such a folder only exists while its builder holds its key's lock, so
        it is an orphan if that lock is free: ours is held by us, another key's is tried
        without waiting and skipped when busy. No process ids are compared (they are reused,
        and mean nothing for a cache shared between machines)."""
        folder = self.root / stage
        for leftover in folder.glob(".t*-*"):
            owner = _owner_key(leftover.name)
            if owner is None or not leftover.is_dir():
                continue
            if owner == key:
                shutil.rmtree(leftover, ignore_errors=True)
                continue
            with self._lock(stage, owner, wait=False) as free:
                if free:
                    shutil.rmtree(leftover, ignore_errors=True)

    @contextmanager
    def _lock(self, stage: str, key: str, wait: bool = True) -> Iterator[bool]:
        """Hold the key's lock; with ``wait=False`` give up at once if it is busy (yields
        whether the lock is held)."""
        folder = self.root / stage
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create cache folder {folder}: {e.strerror}") from None
        with open(folder / f".{key}.lock", "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def _owner_key(name: str) -> str | None:
    """The key of a ``.tmp-{key}-{pid}-{hex}`` or ``.trash-{key}-{hex}`` folder, else None."""
    if name.startswith(".tmp-"):
        parts = name[len(".tmp-") :].rsplit("-", 2)
        return parts[0] if len(parts) == 3 else None
    if name.startswith(".trash-"):
        parts = name[len(".trash-") :].rsplit("-", 1)
        return parts[0] if len(parts) == 2 else None
    return None
