"""Which epoch a stage keeps, and when it stops: fastai's ``SaveModelCallback`` (keep the
weights of the epoch with the best monitored value) and ``EarlyStoppingCallback`` (stop after
``patience`` epochs without improvement), as plain data the :class:`~ulmfit.train.learner.
Learner` consults after every epoch.

The state (:class:`TrackState`) is plain numbers, saved in the epoch checkpoint beside the
best weights, so that a run killed and resumed keeps the same epoch an uninterrupted run does.
Torch-free: the Learner copies the weights, this module only decides.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ulmfit.config import KEEP_CHOICES
from ulmfit.errors import UserError


def monitor_mode(monitor: str) -> str:
    """``"min"`` for a loss, an error or a perplexity, ``"max"`` for anything else (accuracy,
    F1): fastai's rule (``np.less`` when the name holds "loss" or "error")."""
    lower = ("loss" in monitor) or ("error" in monitor) or monitor == "perplexity"
    return "min" if lower else "max"


@dataclass(frozen=True)
class Track:
    """What a stage watches: ``monitor`` (a key of the epoch records, such as ``valid_loss``
    or ``accuracy``); ``keep_best``: end the stage on the weights of its best epoch (else its
    last); ``patience``: stop after that many epochs in a row without improvement (``None``:
    run every epoch)."""

    monitor: str = "valid_loss"
    keep_best: bool = True
    patience: int | None = None

    def __post_init__(self) -> None:
        if self.patience is not None and self.patience < 1:
            raise UserError(f"patience must be 1 or more (or unset), got {self.patience}")

    @property
    def mode(self) -> str:
        return monitor_mode(self.monitor)

    def to_dict(self) -> dict:
        return asdict(self)


def track_of(keep: str, patience: int | None, monitor: str = "valid_loss") -> Track | None:
    """The Track of a task's settings; ``None`` for keep-last without patience (every epoch
    runs and the last is kept: the engine then does exactly what it did before tracking)."""
    if keep not in KEEP_CHOICES:
        raise UserError(f"keep must be one of {', '.join(KEEP_CHOICES)}, got {keep!r}")
    if keep == "last" and patience is None:
        return None
    return Track(monitor=monitor, keep_best=keep == "best", patience=patience)


@dataclass
class TrackState:
    """Where a tracked stage stands: the best value and its stage epoch (0-based; ``None``
    until a finite value was seen), the epochs since it, and whether the stage stopped."""

    best: float | None = None
    best_epoch: int | None = None
    wait: int = 0
    stopped: bool = False

    def update(self, track: Track, value: float, epoch: int) -> bool:
        """Record epoch ``epoch``'s ``value``; True when it is a new best. A NaN never is."""
        better = math.isfinite(value) and (
            self.best is None or (value < self.best if track.mode == "min" else value > self.best)
        )
        if better:
            self.best, self.best_epoch, self.wait = float(value), epoch, 0
        else:
            self.wait += 1
            if track.patience is not None and self.wait >= track.patience:
                self.stopped = True
        return better

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrackState:
        return cls(best=d["best"], best_epoch=d["best_epoch"], wait=d["wait"], stopped=d["stopped"])


def decision(
    track: Track | None, state: TrackState, stage: int, epochs_run: int, max_epochs: int
) -> dict:
    """What the report says about the stage's kept epoch (1-based, as the epoch lines print)
    and why, e.g. ``epoch 3 of 5 run (at most 10): best valid_loss 3.9100; stopped after 2
    epochs without improvement``."""
    out = {"stage": stage, "epochs_run": epochs_run, "max_epochs": max_epochs}
    ran = f"{epochs_run} run (at most {max_epochs})" if epochs_run < max_epochs else max_epochs
    if track is None:
        return {**out, "keep": "last", "monitor": None, "epoch": epochs_run,
                "reason": f"epoch {epochs_run} of {ran}: the last (keep last)"}  # fmt: skip
    best = state.best_epoch
    kept = best + 1 if track.keep_best and best is not None else epochs_run
    out.update(keep="best" if track.keep_best else "last", monitor=track.monitor, epoch=kept)
    out.update(mode=track.mode, value=state.best, patience=track.patience)
    out["stopped_early"] = state.stopped
    if best is None:
        why = f"the last: no finite {track.monitor}"
    elif track.keep_best:
        why = f"best {track.monitor} {state.best:.4f}"
    else:
        why = f"the last (keep last; best {track.monitor} {state.best:.4f} at epoch {best + 1})"
    if state.stopped:
        why += f"; stopped after {state.wait} epochs without improvement"
    out["reason"] = f"epoch {kept} of {ran}: {why}"
    return out


__all__ = ["KEEP_CHOICES", "Track", "TrackState", "decision", "monitor_mode", "track_of"]
