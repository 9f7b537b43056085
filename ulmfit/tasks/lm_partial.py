"""The language model's training folder ``DIR.partial``: resumable until the model directory
is published.

It sits next to the target ``DIR`` and holds ``run.json`` (the command, the settings that
change the weights, content hashes of the data and of the pretrained model: its stamp, see
:class:`ulmfit.train.checkpoint.StageFolder`), ``before.json`` (fine-tuning: held-out metrics
of the untrained model, measured once) and ``train/`` (the engine's checkpoint and logs). A
``--resume`` must repeat what ``run.json`` holds, else a UserError names the first setting
that differs; without ``--resume`` an existing ``DIR.partial`` is an error, never deleted.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ulmfit.errors import UserError
from ulmfit.train.checkpoint import StageFolder, result_settings, setting_of

PARTIAL_SUFFIX = ".partial"
RUN_FILE = "run.json"  # the settings a --resume must repeat
BEFORE_FILE = "before.json"  # fine-tuning: held-out metrics of the untrained model
LR_FIND_SUFFIX = ".lr_find.png"
_RUN_FORMAT = 1
_WHAT_DIFFERS = {
    "format": "it was written by another version of ulmfit",
    "data": "the training data differ (other files or contents, text columns, or vocabulary "
    "settings)",
    "valid": "the --valid corpus differs",
    "pretrained": "the --pretrained model (or its --vocab) differs",
}


def partial_dir(out_dir: Path | str) -> Path:
    """``DIR.partial`` next to the target ``DIR``: where a run keeps its run.json, checkpoint
    and logs until the model directory is published."""
    p = Path(out_dir)
    if p.name in ("", ".", ".."):
        p = Path(os.path.abspath(p))
    return p.with_name(p.name + PARTIAL_SUFFIX)


def lr_find_plot_path(out_dir: Path | str) -> Path:
    """Default plot of ``--lr-find``: ``DIR.lr_find.png`` next to the target ``DIR``."""
    p = partial_dir(out_dir)
    return p.with_name(p.name[: -len(PARTIAL_SUFFIX)] + LR_FIND_SUFFIX)


def _folder(partial: Path) -> StageFolder:
    return StageFolder(partial, partial / RUN_FILE)


def run_settings(command: str, settings: dict) -> dict:
    """The run record of ``command`` with the config ``settings`` (JSON-able): what a resumed
    run must repeat (the result-neutral settings left out)."""
    return {"format": _RUN_FORMAT, "command": command, "config": result_settings(settings)}


def _show(v: object) -> str:
    return "unset" if v is None else json.dumps(v)


def check_same(partial: Path, old: dict, new: dict, keys: Sequence[str]) -> None:
    """UserError naming the first setting of ``keys`` where ``new`` differs from ``old``. A
    result-neutral setting that an older run recorded is not compared."""
    new = json.loads(json.dumps(new))  # tuples -> lists, as stored
    for key in keys:
        a, b = old.get(key), new.get(key)
        if key == "config" and isinstance(a, dict) and isinstance(b, dict):
            a, b = result_settings(a), result_settings(b)
        if a == b:
            continue
        if key == "config" and isinstance(a, dict) and isinstance(b, dict):
            k = next(k for k in [*b, *a] if a.get(k) != b.get(k))
            there, now = (_show(setting_of(d, k)) for d in (a, b))
            what = f"--{k.replace('_', '-')} was {there} there, now {now}"
        elif key == "command":
            what = f"it is an unfinished {_show(a)} run, this is {_show(b)}"
        else:
            what = _WHAT_DIFFERS.get(key, f"{key} differs")
        raise UserError(
            f"cannot resume {partial}: {what}; repeat the original settings with --resume, "
            f"or remove {partial} to start over"
        )


def _read_run(partial: Path) -> dict:
    file = partial / RUN_FILE
    if not partial.is_dir():
        raise UserError(f"{partial}: exists and is not a folder; remove it to start over")
    try:
        run = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(
            f"{partial}: no {RUN_FILE}, not a ulmfit training folder; remove it to start over"
        ) from None
    except (OSError, ValueError) as e:
        raise UserError(f"{file}: cannot read ({e}); remove {partial} to start over") from None
    if not isinstance(run, dict):
        raise UserError(f"{file}: expected a JSON object; remove {partial} to start over")
    return run


def open_partial(
    out_dir: Path, run: dict, resume: bool, verbose: bool = True
) -> tuple[Path, dict | None]:
    """Before any heavy work: ``(DIR.partial, its run.json)`` to resume, or ``(DIR.partial,
    None)`` to start fresh. An unfinished run is never discarded silently."""
    partial = partial_dir(out_dir)
    exists = _folder(partial).exists()
    if not resume:
        if exists:
            raise UserError(
                f"{partial}: an unfinished training run for --out {out_dir} is there; pass "
                "--resume to continue it, or remove that folder to start over"
            )
        return partial, None
    if not exists:
        if verbose:
            msg = f"--resume: no unfinished run in {partial}; starting fresh"
            print(msg, file=sys.stderr, flush=True)
        return partial, None
    previous = _read_run(partial)
    check_same(partial, previous, run, ("format", "command", "config"))
    return partial, previous


def create_partial(partial: Path, run: dict, before: dict | None = None) -> None:
    """``DIR.partial`` with its run.json (and before.json), created in one rename."""
    files = {RUN_FILE: run, **({BEFORE_FILE: before} if before is not None else {})}
    try:
        _folder(partial).create({name: json.dumps(obj, indent=1) for name, obj in files.items()})
    except OSError as e:
        raise UserError(f"{partial}: cannot create the training folder: {e}") from None


__all__ = [
    "BEFORE_FILE",
    "PARTIAL_SUFFIX",
    "RUN_FILE",
    "check_same",
    "create_partial",
    "lr_find_plot_path",
    "open_partial",
    "partial_dir",
    "run_settings",
]
