"""Learning-rate and momentum schedules as pure functions of ``(step, total_steps)``.

Each schedule returns ``(lr_mult, beta1)``: the learning rate as a fraction of ``lr_max`` and
Adam's ``beta1`` (fastai's "momentum"). A multiplier rather than an absolute rate because
with discriminative learning rates every parameter group has its own ``lr_max``; both
schedules here are linear in ``lr_max``, so one multiplier serves all groups.

* :func:`one_cycle` is fastai's ``fit_one_cycle``: cosine warm-up from ``lr_max/div`` to
  ``lr_max`` over ``pct_start`` of the steps, then cosine annealing to ``lr_max/div_final``,
  with momentum moving the opposite way (high lr, low momentum) -- ``moms[0] -> moms[1] ->
  moms[2]``. ULMFiT in fastai uses ``moms=(0.8, 0.7, 0.8)``.
* :func:`stlr` is the ULMFiT paper's slanted triangular learning rate (Howard & Ruder 2018,
  eq. 3): a short linear increase over ``cut_frac`` of the steps, a long linear decay, lowest
  rate ``lr_max/ratio``. The paper keeps Adam's beta1 fixed (0.7), so momentum is constant.

Like fastai, step ``k`` of ``n`` is at position ``k / n``: the first step uses the start
values exactly and the end values are reached in the limit (``step == total_steps``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

from ulmfit.config import TrainConfig

ScheduleName = Literal["one_cycle", "stlr"]

# fastai / ULMFiT defaults: those of TrainConfig
MOMS: tuple[float, float, float] = TrainConfig.moms


def cos_anneal(start: float, end: float, pct: float) -> float:
    """Half a cosine from ``start`` (pct=0) to ``end`` (pct=1): flat at both ends, so the
    rate changes slowly right after warm-up and right before the end of training."""
    return start + (1 + math.cos(math.pi * (1 - pct))) * (end - start) / 2


def _position(step: int, total_steps: int) -> float:
    if total_steps < 1:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not 0 <= step <= total_steps:
        raise ValueError(f"step must be in [0, {total_steps}], got {step}")
    return step / total_steps


def _two_phase(pct: float, pct_start: float, start: float, middle: float, end: float) -> float:
    """fastai's ``combined_cos``: cosine ``start -> middle`` over ``pct_start``, then
    ``middle -> end`` over the rest."""
    if pct_start <= 0:
        return cos_anneal(middle, end, pct)
    if pct < pct_start:
        return cos_anneal(start, middle, pct / pct_start)
    if pct_start >= 1:
        return middle
    return cos_anneal(middle, end, (pct - pct_start) / (1 - pct_start))


def one_cycle(
    step: int,
    total_steps: int,
    *,
    div: float = TrainConfig.div,
    div_final: float = TrainConfig.div_final,
    pct_start: float = TrainConfig.pct_start,
    moms: tuple[float, float, float] = MOMS,
) -> tuple[float, float]:
    """fastai's one-cycle policy at ``step`` of ``total_steps``: ``(lr / lr_max, beta1)``."""
    pct = _position(step, total_steps)
    lr_mult = _two_phase(pct, pct_start, 1.0 / div, 1.0, 1.0 / div_final)
    beta1 = _two_phase(pct, pct_start, *moms)
    return lr_mult, beta1


def stlr(
    step: int,
    total_steps: int,
    *,
    cut_frac: float = TrainConfig.cut_frac,
    ratio: float = TrainConfig.ratio,
    mom: float = MOMS[1],
) -> tuple[float, float]:
    """ULMFiT's slanted triangular learning rate at ``step``: ``(lr / lr_max, beta1)``.

    Computed on the fraction of training done, so the peak is at ``cut_frac`` exactly and the
    rate returns to ``1/ratio`` at the end; this equals the paper's formula whenever
    ``total_steps * cut_frac`` is a whole number (the paper floors it).
    """
    if not 0 < cut_frac < 1:
        raise ValueError(f"cut_frac must be in (0, 1), got {cut_frac}")
    pct = _position(step, total_steps)
    p = pct / cut_frac if pct < cut_frac else 1 - (pct - cut_frac) / (1 - cut_frac)
    return (1 + p * (ratio - 1)) / ratio, mom


@dataclass(frozen=True)
class Schedule:
    """A schedule with its settings bound, as stored in checkpoints (so a resumed run can
    check that it continues the same schedule)."""

    name: ScheduleName = "one_cycle"
    div: float = TrainConfig.div
    div_final: float = TrainConfig.div_final
    pct_start: float = TrainConfig.pct_start
    moms: tuple[float, float, float] = MOMS
    cut_frac: float = TrainConfig.cut_frac
    ratio: float = TrainConfig.ratio

    def __post_init__(self) -> None:
        if self.name not in ("one_cycle", "stlr"):
            raise ValueError(f"unknown schedule {self.name!r}; use 'one_cycle' or 'stlr'")

    def __call__(self, step: int, total_steps: int) -> tuple[float, float]:
        if self.name == "stlr":
            return stlr(
                step, total_steps, cut_frac=self.cut_frac, ratio=self.ratio, mom=self.moms[1]
            )
        return one_cycle(
            step,
            total_steps,
            div=self.div,
            div_final=self.div_final,
            pct_start=self.pct_start,
            moms=self.moms,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["moms"] = list(self.moms)
        return d
