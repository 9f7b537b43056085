"""The fit loop: one-cycle / STLR training with discriminative rates, clipping, AMP, logs,
atomic per-epoch checkpoints and exact resume.

What differs between a language model and a classifier lives in a
:class:`~ulmfit.train.tasks.Task` (how to compute a training loss from a batch, what to sum
during validation, what to do at the start of an epoch); the :class:`Learner` owns everything
else. The loop is deliberately
flat -- no callback system: each feature is a few visible lines in ``_train_epoch``.

Reproducibility and resume. Every epoch starts with ``torch.manual_seed(seed + epoch)`` and
``loader.set_epoch(epoch)`` (``epoch`` counts every epoch this learner has trained, across
``fit_one_cycle`` calls), so an epoch's dropout masks and data order depend only on its number.
A checkpoint written at the end of each epoch holds the model, optimizer, grad scaler and RNG
states, the counters, the schedule and the frozen state; ``fit_one_cycle(..., resume=True)``
reloads it and replays the remaining epochs exactly as the uninterrupted run would have. A
multi-stage script (freeze, fit, unfreeze, fit, ...) can be re-run as a whole with
``resume=True``: stages that the checkpoint shows as finished are skipped.

Files in ``out_dir``: ``checkpoint.pt`` (latest, replaced atomically), ``metrics.jsonl`` (one
line per epoch), ``steps.jsonl`` (one line per optimizer step), ``loss.png``.

Stop on validation. ``fit_one_cycle(..., track=Track(...))`` (:mod:`ulmfit.train.tracker`)
watches a validation metric after every epoch, as fastai's ``SaveModelCallback`` and
``EarlyStoppingCallback``: the stage stops after ``patience`` epochs without improvement and
ends on its best epoch's weights. The tracker's state and the best weights are part of the
epoch checkpoint (one atomic file, so they cannot disagree with it after a kill), and a
resumed stage that had stopped, or finished, ends on the same weights. Untracked (the
default) the loop and the checkpoint are exactly as before.

Several processes (``torchrun``, see :mod:`ulmfit.train.distributed`). The model is wrapped in
PyTorch's ``DistributedDataParallel`` for the training forward/backward; ``self.model`` stays
the plain module (``reset()``, ``state_dict``, freezing, validation). DDP registers its
gradient hooks for the parameters that require a gradient *when it is built*, so after a
freeze change the wrapper is rebuilt (at the start of the next epoch) instead of running with
``find_unused_parameters=True``, which would search the graph at every step and hide real bugs.
Each rank's loader yields its own shard of the global batch; the reported step loss and the
validation sums are reduced over ranks, so every rank logs and decides on the same numbers.
Only rank 0 writes files; on ``resume`` it reads the checkpoint and broadcasts it, so the
machines need not share a file system. Dropout masks differ between ranks (the epoch seed is
offset by the rank), as they would between the rows of one big batch.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

# the modules, not `from ulmfit.train import ...`: the package's __init__ imports this one
import ulmfit.train.distributed as distributed
import ulmfit.train.optim as optim
from ulmfit.atomic import atomic_write as _atomic_write  # the shared one
from ulmfit.config import TrainConfig
from ulmfit.errors import UserError
from ulmfit.precision import describe, resolve_precision
from ulmfit.report import plot_losses
from ulmfit.train.checkpoint import rng_state, set_rng_state
from ulmfit.train.jsonl import read_jsonl, trim_jsonl
from ulmfit.train.prefetch import device_batches, to_device
from ulmfit.train.schedules import Schedule, ScheduleName
from ulmfit.train.tasks import Task
from ulmfit.train.tracker import Track, TrackState, decision

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
STEPS = "steps.jsonl"
LOSS_PLOT = "loss.png"
_FORMAT = 1
_RANK_SEED_STRIDE = 1_000_003  # rank r seeds epoch e with seed + e + r * stride


# --------------------------------------------------------------------------------------
# The loss plot
# --------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------
# The learner
# --------------------------------------------------------------------------------------


class Loader(Protocol):
    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


@dataclass(frozen=True)
class FitPlan:
    """One ``fit_one_cycle`` call's settings: what a checkpoint must match to be resumed."""

    epochs: int
    lrs: list[float]
    wd: float
    schedule: Schedule
    track: Track | None = None

    def to_dict(self) -> dict:
        d = {
            "epochs": self.epochs,
            "lrs": list(self.lrs),
            "wd": self.wd,
            "schedule": self.schedule.to_dict(),
        }
        if self.track is not None:  # (an untracked plan reads as before tracking existed)
            d["track"] = self.track.to_dict()
        return d


def _item(v: float | Tensor) -> float:
    return float(v.item()) if isinstance(v, Tensor) else float(v)


@dataclass
class _Counters:
    """Position in the whole learner's life; restored from checkpoints."""

    stage: int = 0  # index of the fit_one_cycle call being run
    epoch: int = 0  # epochs trained, all stages together (seeds and data order use it)
    global_step: int = 0  # optimizer steps, all stages together
    history: list[dict] = field(default_factory=list)


class _CallView:
    """What a :class:`Task` sees under DDP or torch.compile: calls go through the wrapper (so
    gradients are averaged, or the compiled graph runs), attributes such as ``raw_out`` or
    ``out_mask`` come from the module itself."""

    def __init__(self, wrapper: Callable[..., Any], module: nn.Module) -> None:
        self._wrapper, self._module = wrapper, module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrapper(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


class Learner:
    """Trains ``model`` on ``train_loader`` with a :class:`Task`, logging to ``out_dir``.

    ``layer_groups`` defaults to ``model.layer_groups()`` (or one group). Loaders need
    ``__iter__``, ``__len__`` and ``set_epoch``; batches are tuples whose tensors are moved to
    the device. ``valid_loader`` may be ``None`` (no validation).
    """

    def __init__(
        self,
        model: nn.Module,
        train_loader: Loader,
        valid_loader: Loader | None,
        task: Task,
        layer_groups: Sequence[Sequence[nn.Module]] | None = None,
        out_dir: str | os.PathLike = "runs/train",
        config: TrainConfig = TrainConfig(),
    ) -> None:
        self.config = config
        self.dist = distributed.info()
        self.main = self.dist.rank == 0
        self.device = distributed.device_for(config.device, self.dist.local_rank)
        self.model = model.to(self.device)
        self._ddp: nn.Module | None = None
        self._ddp_key: tuple[bool, ...] | None = None
        self._compiled: tuple[nn.Module, Callable[..., Any]] | None = None
        self.train_loader, self.valid_loader, self.task = train_loader, valid_loader, task
        if layer_groups is None:
            layer_groups = model.layer_groups() if hasattr(model, "layer_groups") else [[model]]
        self.groups = optim.param_groups(layer_groups, model)
        self.opt = optim.make_optimizer(
            self.groups, beta1=config.moms[0], beta2=config.beta2, eps=config.eps, wd=config.wd
        )
        self.amp = resolve_precision(self.device.type, config.amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp.use_scaler)
        self.out_dir = Path(out_dir)
        self.frozen_idx = 0
        self._c = _Counters()
        self._track = TrackState()  # the running stage's (see fit_one_cycle's track)
        self._best: dict[str, Tensor] | None = None  # its best epoch's weights, on the CPU
        self._kept: dict | None = None

    # -- freezing ---------------------------------------------------------------------
    def freeze_to(self, n: int) -> None:
        """Train only groups ``[n:]`` (negative ``n`` counts from the end), fastai semantics."""
        self.frozen_idx = optim.freeze_to(self.groups, n)

    def freeze(self) -> None:
        """Train only the last layer group."""
        self.frozen_idx = optim.freeze(self.groups)

    def unfreeze(self) -> None:
        """Train all layer groups."""
        self.frozen_idx = optim.unfreeze(self.groups)

    def _net(self) -> Any:
        """The model to train through: the module itself, or (several processes) a DDP view,
        rebuilt when the set of trainable parameters changed (see module doc); compiled with
        ``torch.compile`` when the config asks (once per wrapper)."""
        inner: nn.Module = self.model
        if self.dist.enabled:
            key = tuple(p.requires_grad for p in self.model.parameters())
            if self._ddp is None or key != self._ddp_key:
                from torch.nn.parallel import DistributedDataParallel

                ids = [self.device] if self.device.type == "cuda" else None
                self._ddp = DistributedDataParallel(self.model, device_ids=ids)
                self._ddp_key = key
            inner = self._ddp
        if self.config.compile:
            if self._compiled is None or self._compiled[0] is not inner:
                self._compiled = (inner, torch.compile(inner))
            return _CallView(self._compiled[1], self.model)
        return inner if inner is self.model else _CallView(inner, self.model)

    @property
    def history(self) -> list[dict]:
        """The per-epoch records of this learner's runs (as in ``metrics.jsonl``)."""
        return list(self._c.history)

    @property
    def epoch(self) -> int:
        """Epochs trained so far, all ``fit_one_cycle`` calls together."""
        return self._c.epoch

    @property
    def kept(self) -> dict | None:
        """Which epoch the last ``fit_one_cycle`` call ended on and why (see
        :func:`ulmfit.train.tracker.decision`); ``None`` before any call finished."""
        return None if self._kept is None else dict(self._kept)

    # -- one optimizer step ---------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        return self.amp.autocast(self.device.type)

    def train_step(self, batch: Any) -> tuple[float, int, float | None, dict]:
        """Forward, backward, clip, step at the optimizer's current rates (the fit loop and
        :func:`~ulmfit.train.lr_find.lr_find` set them). Returns (reported loss, n, grad
        norm, extras)."""
        batch = to_device(batch, self.device)
        with self._autocast():
            out = self.task.train_step(self._net(), batch)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss).backward()
        grad_norm = None
        if self.config.clip is not None:
            self.scaler.unscale_(self.opt)
            params = [p for g in self.groups for p in g if p.grad is not None]
            grad_norm = float(nn.utils.clip_grad_norm_(params, self.config.clip))
        self.scaler.step(self.opt)
        self.scaler.update()
        extras = {k: _item(v) for k, v in out.extras.items()}
        reported = extras.pop("loss", None)
        if reported is None:
            reported = float(out.loss.detach().item())
        n = int(out.n)
        if self.dist.enabled:  # the global batch's loss, the same on every rank
            t = torch.tensor([reported * n, float(n)], dtype=torch.float64, device=self.device)
            s, n_all = distributed.all_reduce_tensor(t).tolist()
            reported, n = s / max(n_all, 1.0), int(n_all)
        return reported, n, grad_norm, extras

    # -- validation -------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, loader: Loader | None = None) -> dict[str, float]:
        """Metrics of the model on ``loader`` (default: the validation loader), eval mode."""
        loader = loader if loader is not None else self.valid_loader
        if loader is None:
            return {}
        self.model.eval()
        self.task.begin_epoch(self.model, training=False)
        sums: dict[str, float | Tensor] = {}
        for batch in device_batches(loader, self.device):
            with self._autocast():
                res = self.task.eval_step(self.model, batch)
            for k, v in res.items():
                v = v.detach().double() if isinstance(v, Tensor) else float(v)
                sums[k] = sums.get(k, 0.0) + v
        # each rank read its own shard: the totals are the sums over ranks
        totals = distributed.all_reduce_sums({k: _item(v) for k, v in sums.items()})
        return self.task.summarize(totals)

    # -- fitting ----------------------------------------------------------------------
    def fit_one_cycle(
        self,
        epochs: int,
        lr_max: optim.LrSpec,
        moms: tuple[float, float, float] | None = None,
        wd: float | None = None,
        schedule: ScheduleName = "one_cycle",
        *,
        pct_start: float | None = None,
        div: float | None = None,
        div_final: float | None = None,
        track: Track | None = None,
        resume: bool = False,
    ) -> Learner:
        """Train ``epochs`` epochs under the one-cycle (or STLR) schedule; returns ``self``.

        ``lr_max``: a float, ``slice(lo, hi)`` (discriminative, geometric over groups) or one
        rate per group. ``None`` arguments take ``self.config``'s values. With ``resume``,
        continue from ``out_dir/checkpoint.pt`` if it belongs to this call (see module doc).
        ``track``: watch a validation metric after every epoch, stop after ``patience`` epochs
        without improvement and end on the best epoch's weights (``epochs`` is then a
        maximum); the best weights travel in the checkpoint. ``None``: every epoch, the last
        kept. :attr:`kept` says which epoch the call ended on, and why.
        """
        if epochs < 1:
            raise UserError(f"epochs must be at least 1, got {epochs}")
        if track is not None and self.valid_loader is None:
            raise UserError(f"tracking {track.monitor} needs a validation set")
        c = self.config
        sched = Schedule(
            name=schedule,
            div=c.div if div is None else div,
            div_final=c.div_final if div_final is None else div_final,
            pct_start=c.pct_start if pct_start is None else pct_start,
            moms=tuple(c.moms if moms is None else moms),
            cut_frac=c.cut_frac,
            ratio=c.ratio,
        )
        lrs = optim.discriminative_lrs(lr_max, len(self.groups))
        plan = FitPlan(epochs, lrs, c.wd if wd is None else wd, sched, track)
        stage = self._c.stage
        self._c.stage += 1
        if stage == 0:
            self._say(f"training in {describe(self.amp.record())}")
        self._track, self._best, self._kept = TrackState(), None, None
        start = self._resume_point(stage, plan) if resume else 0
        if start is None:
            self._say(f"stage {stage}: finished in the checkpoint, skipped")
            return self
        if self.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self._trim_logs(stage, start)
        first_epoch = self._c.epoch - start  # learner epoch of this stage's epoch 0
        for e in range(start, epochs):
            if self._track.stopped:  # (a resumed stage that had stopped early)
                break
            t0 = time.perf_counter()
            train_loss = self._train_epoch(plan, stage, e, first_epoch + e)
            metrics = self.validate()
            rec = {
                "stage": stage,
                "epoch": e,
                "learner_epoch": first_epoch + e,
                "global_step": self._c.global_step,
                "train_loss": train_loss,
                **({"valid_loss": metrics.pop("loss")} if "loss" in metrics else {}),
                **metrics,
                "seconds": round(time.perf_counter() - t0, 3),
            }
            if track is not None:
                self._watch(track, rec, e)
            self._c.epoch = first_epoch + e + 1
            self._c.history.append(rec)
            if self.main:  # the other ranks hold the same state: one writer is enough
                self._log_epoch(rec, plan)
            self._say(self._summary(rec, epochs))
        self._end_stage(track, stage, epochs)
        return self

    def _watch(self, track: Track, rec: dict, e: int) -> None:
        """After epoch ``e``: the tracked value's new best (its weights copied when they are
        to be kept), or one more epoch without improvement."""
        if track.monitor not in rec:
            known = ", ".join(k for k in rec if k not in ("stage", "epoch", "learner_epoch"))
            raise UserError(f"cannot track {track.monitor!r}: the epoch records hold {known}")
        if self._track.update(track, float(rec[track.monitor]), e) and track.keep_best:
            self._best = {
                k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
            }
        if self._track.stopped:
            self._say(f"no improvement of {track.monitor} for {self._track.wait} epochs: stopped")

    def _end_stage(self, track: Track | None, stage: int, epochs: int) -> None:
        """The stage's decision (:attr:`kept`); the best epoch's weights put back."""
        run = len([r for r in self._c.history if r["stage"] == stage])
        self._kept = decision(track, self._track, stage, run, epochs)
        if track is not None and track.keep_best and self._best is not None:
            self.model.load_state_dict(self._best)
        if track is not None:
            self._say(f"stage {stage}: kept {self._kept['reason']}")

    def _resume_point(self, stage: int, plan: FitPlan) -> int | None:
        """The epoch of stage ``stage`` to start at, after restoring the checkpoint if it
        holds this stage (0 when it holds an earlier one, or none); ``None`` when the
        checkpoint shows the stage as finished. Rank 0 reads, every rank gets the same."""
        path = self.out_dir / CHECKPOINT
        ckpt = distributed.on_main(lambda: self._read_checkpoint(path) if path.exists() else None)
        if ckpt is None or ckpt["stage"] < stage:
            return 0
        if ckpt["stage"] > stage:
            return None
        if ckpt["plan"] != plan.to_dict():
            raise UserError(
                f"cannot resume: {path} was written by a fit with "
                f"{ckpt['plan']}, this call has {plan.to_dict()}"
            )
        self._restore(ckpt)
        start = ckpt["stage_epoch"]
        self._say(f"resumed from {path} at epoch {start}/{plan.epochs}")
        return start

    def _log_epoch(self, rec: dict, plan: FitPlan) -> None:
        """Rank 0, after an epoch: its metrics line, the checkpoint, the loss plot."""
        with open(self.out_dir / METRICS, "a") as f:
            f.write(json.dumps(rec) + "\n")
        self.save_checkpoint(
            self.out_dir / CHECKPOINT, stage=rec["stage"], stage_epoch=rec["epoch"] + 1, plan=plan
        )
        if self.config.plot:
            logs = [read_jsonl(self.out_dir / f) for f in (STEPS, METRICS)]
            plot_losses(*logs, self.out_dir / LOSS_PLOT)

    def _train_epoch(self, plan: FitPlan, stage: int, e: int, learner_epoch: int) -> float:
        """One epoch; returns the mean reported training loss, weighted by ``n``."""
        c, loader = self.config, self.train_loader
        loader.set_epoch(learner_epoch)
        torch.manual_seed(c.seed + learner_epoch + self.dist.rank * _RANK_SEED_STRIDE)
        self.model.train()
        self.task.begin_epoch(self.model, training=True)
        n_batches = len(loader)
        if n_batches < 1:
            raise UserError("the training loader yields no batches")
        total = plan.epochs * n_batches  # position i/n_batches within epoch e, as fastai
        batches = device_batches(loader, self.device)
        bar = self._bar(batches, n_batches, f"epoch {e + 1}/{plan.epochs}")
        loss_sum, n_sum, avg = 0.0, 0, 0.0
        logging = open(self.out_dir / STEPS, "a", buffering=1) if self.main else None
        with logging or contextlib.nullcontext() as log:
            for i, batch in enumerate(bar):
                if i >= n_batches:
                    raise ValueError(
                        f"the training loader yielded more than len() = {n_batches} batches"
                    )
                mult, beta1 = plan.schedule(e * n_batches + i, total)
                lrs = [lr * mult for lr in plan.lrs]
                optim.set_hypers(self.opt, lrs, beta1, plan.wd)
                loss, n, grad_norm, extras = self.train_step(batch)
                self._c.global_step += 1
                loss_sum += loss * n
                n_sum += n
                avg = c.smooth_beta * avg + (1 - c.smooth_beta) * loss
                smooth = avg / (1 - c.smooth_beta ** (i + 1))
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{smooth:.4f}", refresh=False)
                rec = {
                    "stage": stage,
                    "epoch": e,
                    "step": e * n_batches + i,
                    "global_step": self._c.global_step,
                    "loss": loss,
                    "lr": lrs[-1],
                    "mom": beta1,
                    **({"grad_norm": grad_norm} if grad_norm is not None else {}),
                    **extras,
                }
                if log is not None:
                    log.write(json.dumps(rec) + "\n")
        return loss_sum / max(n_sum, 1)

    # -- checkpoints ------------------------------------------------------------------
    def save_checkpoint(
        self, path: str | os.PathLike, *, stage: int, stage_epoch: int, plan: FitPlan
    ) -> Path:
        """Everything needed to continue exactly, written atomically."""
        state = {
            "format": _FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "stage": stage,
            "stage_epoch": stage_epoch,
            "epoch": self._c.epoch,
            "global_step": self._c.global_step,
            "plan": plan.to_dict(),
            "frozen_idx": self.frozen_idx,
            "config": asdict(self.config),
        }
        if plan.track is not None:  # the tracked stage's state and best weights
            state["track"] = self._track.to_dict()
            if self._best is not None:
                state["best_model"] = self._best
        path = Path(path)
        _atomic_write(path, lambda f: torch.save(state, f))
        return path

    @staticmethod
    def _read_checkpoint(path: Path) -> dict:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a foreign or damaged file: say which, not a pickle trace
            raise UserError(f"cannot read checkpoint {path}: {e}") from e
        if not isinstance(ckpt, dict) or ckpt.get("format") != _FORMAT:
            raise UserError(f"{path} is not a ulmfit training checkpoint (format {_FORMAT})")
        return ckpt

    def _restore(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.frozen_idx = optim.freeze_to(self.groups, ckpt["frozen_idx"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        self._c.stage = ckpt["stage"] + 1
        self._c.epoch = ckpt["epoch"]
        self._c.global_step = ckpt["global_step"]
        if "track" in ckpt:
            self._track = TrackState.from_dict(ckpt["track"])
            self._best = ckpt.get("best_model")

    def _trim_logs(self, stage: int, epoch: int) -> None:
        """Forget log records from (stage, epoch) on: they are about to be written (again)."""

        def keep(r: dict) -> bool:
            return (r.get("stage", 0), r.get("epoch", 0)) < (stage, epoch)

        def trim() -> list[dict]:
            trim_jsonl(self.out_dir / STEPS, keep)
            return trim_jsonl(self.out_dir / METRICS, keep)

        self._c.history = distributed.on_main(trim)

    # -- output -----------------------------------------------------------------------
    def _bar(self, it: Iterable, total: int, desc: str) -> Iterable:
        show = self.config.progress
        if show is None:
            show = sys.stderr.isatty()
        if not show or not self.main:
            return it
        from tqdm.auto import tqdm

        return tqdm(it, total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)

    def _say(self, msg: str) -> None:
        if self.config.verbose and self.main:
            print(msg, file=sys.stderr, flush=True)

    @staticmethod
    def _summary(rec: dict, epochs: int) -> str:
        skip = {"stage", "epoch", "learner_epoch", "global_step", "seconds"}
        parts = [f"epoch {rec['epoch'] + 1}/{epochs}"]
        parts += [f"{k} {v:.4f}" for k, v in rec.items() if k not in skip]
        parts.append(f"{rec['seconds']:.1f}s")
        return "  ".join(parts)


__all__ = ["FitPlan", "Learner"]
