"""fastai's learning-rate range test (Smith 2015): train briefly while the learning rate grows
exponentially, watch where the loss falls fastest, then put everything back.

The rate goes from ``start_lr`` (1e-7) to ``end_lr`` (10) over ``num_it`` (100) optimizer
steps -- step ``i`` uses ``start_lr * (end_lr/start_lr) ** (i/num_it)`` -- cycling through the
training loader as often as needed. The loss is smoothed (exponential moving average, debiased,
beta 0.98) and the test stops early once the smoothed loss exceeds 4x its minimum.
All groups share the rate, frozen groups stay frozen, and clipping / AMP apply as in ``fit``.

Afterwards the model, optimizer, grad scaler and RNG states are restored, so the test leaves
no trace. The suggestion is fastai's default, the **valley** rule: the longest stretch over
which the smoothed loss keeps falling (longest decreasing subsequence), and a point about
half-way (1/3 + 1/6) into it. The steepest-slope and minimum/10 rates are returned as well.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import ulmfit.train.optim as optim  # the module, not the package (whose __init__ imports this one)
from ulmfit.errors import UserError
from ulmfit.report import plot_lr_find
from ulmfit.train.checkpoint import rng_state, set_rng_state
from ulmfit.train.learner import Learner

LR_FIND_PLOT = "lr_find.png"


@dataclass(frozen=True)
class LRFindResult:
    """The test's data and suggestions. ``losses`` are smoothed (what the rules and the plot
    use); ``suggestion`` is the valley rule's rate."""

    lrs: list[float]
    losses: list[float]
    raw_losses: list[float]
    suggestion: float
    steep: float
    minimum: float
    plot: Path | None


def valley(lrs: np.ndarray, losses: np.ndarray) -> int:
    """Index of the valley rule's rate (fastai's default suggestion).

    ``run[i]`` is the length of the longest strictly decreasing subsequence of losses ending
    at ``i``; the longest such run is the "valley", and the rate 1/3 + 1/6 of the way into it
    is steep enough to learn fast but well before the loss turns up.
    """
    n = len(losses)
    run = np.ones(n, dtype=np.int64)
    for i in range(1, n):
        lower = losses[:i] > losses[i]
        if lower.any():
            run[i] = max(run[i], int(run[:i][lower].max()) + 1)
    end = int(np.argmax(run))
    start = end - int(run[end])
    third = (end - start) / 3
    return int(min(max(start + int(third) + int(third / 2), 0), n - 1))


def steepest(lrs: np.ndarray, losses: np.ndarray) -> int:
    """Index where the smoothed loss falls fastest per unit of log learning rate."""
    if len(losses) < 2:
        return 0
    slope = np.diff(losses) / np.diff(np.log(lrs))
    return int(np.argmin(slope))


def lr_find(
    learner: Learner,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_it: int = 100,
    stop_div: bool = True,
    skip_start: int | None = None,
    skip_end: int = 5,
    plot: str | os.PathLike | bool = True,
) -> LRFindResult:
    """Run the range test on ``learner`` and restore it; see the module docstring.

    ``skip_start`` (default ``num_it // 10``) and ``skip_end`` points are left out of the
    suggestions and the plot, as in fastai (the first are noisy, the last are divergence);
    when too few points remain they are all used. ``plot``: ``True`` writes
    ``out_dir/lr_find.png``, a path writes there, ``False`` writes nothing.
    """
    if not 0 < start_lr < end_lr:
        raise UserError(f"need 0 < start_lr < end_lr, got {start_lr}, {end_lr}")
    if num_it < 2:
        raise UserError(f"num_it must be at least 2, got {num_it}")
    if len(learner.train_loader) < 1:
        raise UserError("the training loader yields no batches")
    lrs, raw, smooth = _sweep(learner, start_lr, end_lr, num_it, stop_div)

    lr_arr, loss_arr = np.asarray(lrs), np.asarray(smooth)
    finite = np.isfinite(loss_arr)
    cut = int(np.argmin(finite)) if not finite.all() else len(loss_arr)  # up to the first NaN
    a = num_it // 10 if skip_start is None else skip_start
    b = cut - skip_end
    if b - a < 3:
        a, b = 0, cut
    if b < 1:
        raise UserError("lr_find: the loss was not finite from the first step")
    sel_lr, sel_loss = lr_arr[a:b], loss_arr[a:b]
    suggestion = float(sel_lr[valley(sel_lr, sel_loss)])
    steep = float(sel_lr[steepest(sel_lr, sel_loss)])
    minimum = float(sel_lr[int(np.argmin(sel_loss))]) / 10

    path: Path | None = None
    if plot:
        path = Path(plot) if not isinstance(plot, bool) else learner.out_dir / LR_FIND_PLOT
        plot_lr_find(path, sel_lr, sel_loss, {"valley": suggestion, "steep": steep})
    return LRFindResult(lrs, smooth, raw, suggestion, steep, minimum, path)


def _sweep(
    learner: Learner, start_lr: float, end_lr: float, num_it: int, stop_div: bool
) -> tuple[list[float], list[float], list[float]]:
    """The test itself: (rates, raw losses, smoothed losses), one per step; the model,
    optimizer, grad scaler and RNG states are put back afterwards, whatever happens."""
    model, loader, task = learner.model, learner.train_loader, learner.task
    saved_model = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    saved_opt = copy.deepcopy(learner.opt.state_dict())
    saved_scaler = copy.deepcopy(learner.scaler.state_dict())
    saved_rng = rng_state()
    was_training = model.training

    beta = learner.config.smooth_beta
    lrs: list[float] = []
    raw: list[float] = []
    smooth: list[float] = []
    avg, best = 0.0, math.inf
    n_groups = len(learner.groups)
    try:
        torch.manual_seed(learner.config.seed)
        model.train()
        task.begin_epoch(model, training=True)
        it, pass_no, done = 0, 0, False
        while not done:
            loader.set_epoch(learner.epoch + pass_no)
            for batch in loader:
                lr = start_lr * (end_lr / start_lr) ** (it / num_it)
                optim.set_hypers(learner.opt, [lr] * n_groups)
                loss = learner.train_step(batch)[0]
                avg = beta * avg + (1 - beta) * loss
                s = avg / (1 - beta ** (it + 1))
                lrs.append(lr)
                raw.append(loss)
                smooth.append(s)
                best = min(best, s)
                it += 1
                if it >= num_it or (stop_div and (s > 4 * best or not math.isfinite(s))):
                    done = True
                    break
            pass_no += 1
    finally:
        model.load_state_dict(saved_model)
        learner.opt.load_state_dict(saved_opt)
        learner.scaler.load_state_dict(saved_scaler)
        set_rng_state(saved_rng)
        model.train(was_training)
        task.begin_epoch(model, training=was_training)
    return lrs, raw, smooth
