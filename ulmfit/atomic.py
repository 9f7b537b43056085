"""Files written whole or not at all, and output paths checked before any work.

``atomic_write`` is the one way this package writes a file in place: the bytes go to a temp
file with a unique name beside the target (so two writers, or a user's own ``F.tmp``, never
collide), are flushed to disk, and the temp is renamed over the target; on any error or
Ctrl-C the temp is removed and the target is left as it was. A reader, or a resume after
SIGKILL or power loss, sees the old file or the new one, never half of one.

``write_output`` is how a command writes its ``--out FILE``: ``check_output`` first (also
called by the commands before their heavy work, so a bad path costs nothing), then
``atomic_write``. Stdlib only: the commands that use it must not wait for torch.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ulmfit.errors import UserError


def atomic_write(path: Path | str, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call ``write(f)`` on a fresh temp file beside ``path`` (``mode`` "w": UTF-8 text, no
    newline translation; "wb": bytes), fsync it, then rename it to ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    text = "b" not in mode
    try:
        # "x": never opens (and truncates) a file that is already there
        with open(tmp, "x" if text else "xb", **({"encoding": "utf-8", "newline": ""} if text else {})) as f:  # fmt: skip
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def is_within(path: Path | str, other: Path | str) -> bool:
    """Whether ``path`` is ``other`` (the same file, through links too) or, when ``other``
    is a folder, anything inside it. ``path`` need not exist."""
    path, other = Path(path), Path(other)
    with contextlib.suppress(OSError):
        if os.path.samefile(path, other):
            return True
    try:
        resolved = path.parent.resolve() / path.name
        target = other.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return False
    return resolved == target or (target.is_dir() and target in resolved.parents)


def check_output(
    path: Path | str,
    *,
    inputs: Iterable[Path | str] = (),
    overwrite: bool = False,
    flag: str = "--out",
) -> Path:
    """``path`` if a command may write its output file there: not a folder, in a folder that
    exists and can be written, not one of the command's ``inputs`` (nor inside an input
    folder), and not an existing file unless ``overwrite``. Otherwise a UserError of one
    line: an output must never destroy an input or a file the user did not offer."""
    path = Path(path)
    shown = f"{flag} {path}"
    if path.is_dir():
        raise UserError(f"{shown}: is a folder; give the name of a file to write")
    parent = path.parent
    if not parent.exists():
        raise UserError(f"{shown}: cannot write into {parent}: no such folder")
    if not parent.is_dir():
        raise UserError(f"{shown}: {parent} is not a folder")
    for src in inputs:
        if src is not None and is_within(path, src):
            raise UserError(f"{shown}: would overwrite the input {src}; choose another file")
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise UserError(f"{shown}: exists and is not a regular file; choose another file")
        if not overwrite:
            raise UserError(f"{shown}: exists; pass --overwrite to replace it, or choose another file")  # fmt: skip
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{shown}: cannot write in the folder {parent} (permission denied)")
    return path


def write_output(
    path: Path | str,
    write: Callable[[Any], None],
    *,
    inputs: Iterable[Path | str] = (),
    overwrite: bool = False,
    mode: str = "w",
    flag: str = "--out",
) -> Path:
    """``check_output`` then ``atomic_write``; a failure to write (disk full, read-only file
    system, permissions) is a UserError naming the file, and nothing is left behind."""
    path = check_output(path, inputs=inputs, overwrite=overwrite, flag=flag)
    try:
        atomic_write(path, write, mode)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write ({e.strerror or e})") from None
    return path


def check_output_dir(
    path: Path | str,
    *,
    inputs: Iterable[Path | str] = (),
    overwrite: bool = False,
    flag: str = "--out",
    replaceable: Callable[[Path], bool] = lambda p: False,
) -> Path:
    """``path`` if a command may write its output folder there (the rules of
    ``check_output``, for a folder): in a folder that exists and can be written, neither an
    input nor holding one, and an existing non-empty folder only with ``overwrite`` and only
    when ``replaceable(path)`` says it is one this command wrote (never a user's folder)."""
    path = Path(path)
    shown = f"{flag} {path}"
    parent = path.parent
    if not parent.is_dir():
        raise UserError(f"{shown}: cannot write into {parent}: no such folder")
    for src in inputs:
        if src is not None and (is_within(path, src) or is_within(src, path)):
            raise UserError(f"{shown}: would overwrite the input {src}; choose another folder")
    if path.exists() or path.is_symlink():
        if not path.is_dir() or path.is_symlink():
            raise UserError(f"{shown}: exists and is not a folder; choose another folder")
        if any(path.iterdir()):
            if not overwrite:
                raise UserError(f"{shown}: exists; pass --overwrite to replace it, or choose another folder")  # fmt: skip
            if not replaceable(path):
                raise UserError(f"{shown}: exists and was not written by this command; refusing to replace it even with --overwrite")  # fmt: skip
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{shown}: cannot write in the folder {parent} (permission denied)")
    return path


def _synced(folder: Path) -> None:
    """Every file in ``folder`` (not below) on disk before the folder is renamed into place."""
    for p in folder.iterdir():
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def write_output_dir(
    path: Path | str,
    write: Callable[[Path], None],
    *,
    inputs: Iterable[Path | str] = (),
    overwrite: bool = False,
    flag: str = "--out",
    replaceable: Callable[[Path], bool] = lambda p: False,
) -> Path:
    """``check_output_dir``, then ``write(tmp)`` into a fresh folder beside ``path``, which
    is synced and renamed to ``path`` (a folder being replaced is moved aside first, and put
    back if the rename fails). On any error or Ctrl-C the new folder is removed and ``path``
    is as it was: a reader sees the old folder or the new one, never half of one."""
    path = check_output_dir(path, inputs=inputs, overwrite=overwrite, flag=flag, replaceable=replaceable)  # fmt: skip
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.old")
    try:
        tmp.mkdir()
        write(tmp)
        _synced(tmp)
        check_output_dir(path, inputs=inputs, overwrite=overwrite, flag=flag, replaceable=replaceable)  # fmt: skip
        if path.exists():
            os.rename(path, old)
        try:
            os.rename(tmp, path)
        except OSError:
            if old.exists():
                os.rename(old, path)
            raise
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write ({e.strerror or e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return path


__all__ = [
    "atomic_write",
    "check_output",
    "check_output_dir",
    "is_within",
    "write_output",
    "write_output_dir",
]
