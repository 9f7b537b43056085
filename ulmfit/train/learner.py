"""The fit loop: one-cycle / STLR training with discriminative rates, clipping, AMP, logs,
atomic per-epoch checkpoints and exact resume.

What differs between a language model and a classifier lives in a :class:`Task` (how to
compute a training loss from a batch, what to sum during validation, what to do at the
start of an epoch); the :class:`Learner` owns everything else. The loop is deliberately
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
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ulmfit.atomic import atomic_write as _atomic_write  # the shared one
from ulmfit.config import AmpMode, TrainConfig
from ulmfit.errors import UserError
from ulmfit.report import plot_losses
from ulmfit.train import distributed, optim
from ulmfit.train.schedules import Schedule, ScheduleName

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
STEPS = "steps.jsonl"
LOSS_PLOT = "loss.png"
_FORMAT = 1
_RANK_SEED_STRIDE = 1_000_003  # rank r seeds epoch e with seed + e + r * stride


# --------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------


class StepOutput(NamedTuple):
    """What a training step returns: ``loss`` is backpropagated; ``n`` (tokens, documents)
    weights the epoch's mean; ``extras`` are logged, and ``extras["loss"]``, when present, is
    the loss reported instead of ``loss`` (e.g. without the AR/TAR penalty, like fastai)."""

    loss: Tensor
    n: int
    extras: dict[str, float | Tensor]


class Task(Protocol):
    """The problem-specific part of training.

    ``eval_step`` returns *sums* over the batch plus the count ``"n"`` (so batches of any size
    combine exactly); ``summarize`` turns the totals into metrics and must include ``"loss"``.
    """

    def begin_epoch(self, model: nn.Module, training: bool) -> None: ...

    def train_step(self, model: nn.Module, batch: Sequence[Any]) -> StepOutput: ...

    def eval_step(self, model: nn.Module, batch: Sequence[Any]) -> dict[str, float | Tensor]: ...

    def summarize(self, sums: dict[str, float]) -> dict[str, float]: ...


def mean_metrics(sums: dict[str, float]) -> dict[str, float]:
    """Divide every summed metric by the count ``"n"``."""
    n = max(sums.get("n", 0.0), 1.0)
    return {k: v / n for k, v in sums.items() if k != "n"}


@dataclass
class LMTask:
    """Next-token prediction on ``(x, y)`` stream batches, with AWD-LSTM's AR/TAR penalties.

    The model's hidden state runs on from batch to batch within an epoch (the stream is
    contiguous) and is reset at the start of every epoch and of validation. Reported loss,
    accuracy and perplexity are per token, without the regularisers.
    """

    alpha: float = 2.0
    beta: float = 1.0

    def begin_epoch(self, model: nn.Module, training: bool) -> None:
        model.reset()

    def train_step(self, model: nn.Module, batch: Sequence[Any]) -> StepOutput:
        from ulmfit.models.awd_lstm import ar_tar_loss

        x, y = batch[0], batch[1]
        logits = model(x)
        ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))
        loss = ce
        if self.alpha or self.beta:
            loss = ce + ar_tar_loss(model.raw_out, model.out, self.alpha, self.beta)
        return StepOutput(loss, y.numel(), {"loss": ce.detach()})

    def eval_step(self, model: nn.Module, batch: Sequence[Any]) -> dict[str, float | Tensor]:
        x, y = batch[0], batch[1]
        logits = model(x)
        logits, y = logits.reshape(-1, logits.size(-1)), y.reshape(-1)
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        correct = (logits.argmax(-1) == y).sum()
        return {"loss": loss, "accuracy": correct, "n": y.numel()}

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        m = mean_metrics(sums)
        m["perplexity"] = math.exp(min(m["loss"], 700.0))
        return m


@dataclass
class ClassifierTask:
    """Single-label classification on ``(x, y, idx)`` batches: cross-entropy and accuracy.

    ``loss_fn`` can be swapped (label smoothing, class weights); it must return the batch
    mean. A model that returns a tuple (fastai's classifier returns logits plus the encoder
    outputs) is read as its first element.
    """

    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy
    alpha: float = 0.0  # AR on the kept encoder outputs (fastai's classifier learner: 2)
    beta: float = 0.0  # TAR on them (fastai: 1)

    def begin_epoch(self, model: nn.Module, training: bool) -> None:
        pass

    @staticmethod
    def _logits(out: Tensor | tuple) -> Tensor:
        return out[0] if isinstance(out, tuple | list) else out

    def train_step(self, model: nn.Module, batch: Sequence[Any]) -> StepOutput:
        x, y = batch[0], batch[1]
        ce = self.loss_fn(self._logits(model(x)).float(), y)
        loss = ce
        out, mask = getattr(model, "out", None), getattr(model, "out_mask", None)
        if (self.alpha or self.beta) and out is not None and mask is not None:
            from ulmfit.models.classifier import masked_ar_tar

            loss = ce + masked_ar_tar(out, mask, self.alpha, self.beta)
        return StepOutput(loss, len(y), {"loss": ce.detach()})

    def eval_step(self, model: nn.Module, batch: Sequence[Any]) -> dict[str, float | Tensor]:
        x, y = batch[0], batch[1]
        logits = self._logits(model(x)).float()
        out: dict[str, float | Tensor] = {"loss": self.loss_fn(logits, y) * len(y), "n": len(y)}
        if y.dtype == torch.int64 and logits.dim() == 2:
            out["accuracy"] = (logits.argmax(-1) == y).sum()
        return out

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        return mean_metrics(sums)


# --------------------------------------------------------------------------------------
# Mixed precision
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AmpPlan:
    """Autocast dtype (``None``: full precision) and whether a GradScaler is needed (fp16 only:
    bf16 has fp32's exponent range, so its gradients do not underflow)."""

    dtype: torch.dtype | None
    use_scaler: bool


def amp_plan(device_type: str, mode: AmpMode, bf16_supported: bool | None = None) -> AmpPlan:
    """Choose mixed precision for a device. Only CUDA gets autocast; on CPU it is slower."""
    if mode not in ("auto", "bf16", "fp16", "off"):
        raise UserError(f"amp must be one of auto, bf16, fp16, off; got {mode!r}")
    if device_type != "cuda" or mode == "off":
        return AmpPlan(None, False)
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    if mode == "fp16" or (mode == "auto" and not bf16_supported):
        return AmpPlan(torch.float16, True)
    return AmpPlan(torch.bfloat16, False)


# --------------------------------------------------------------------------------------
# Files: jsonl logs, atomic writes
# --------------------------------------------------------------------------------------


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


def _trim_jsonl(path: Path, keep: Callable[[dict], bool]) -> list[dict]:
    """Drop the records a restarted run will write again (and any torn line)."""
    if not path.exists():
        return []
    kept = [r for r in read_jsonl(path) if keep(r)]
    text = "".join(json.dumps(r) + "\n" for r in kept)
    _atomic_write(path, lambda f: f.write(text), "w")
    return kept


# --------------------------------------------------------------------------------------
# RNG state (saved in checkpoints; tensors and plain types only, so weights_only loading works)
# --------------------------------------------------------------------------------------


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


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

    def to_dict(self) -> dict:
        return {
            "epochs": self.epochs,
            "lrs": list(self.lrs),
            "wd": self.wd,
            "schedule": self.schedule.to_dict(),
        }


def _map_tensors(batch: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(batch, Tensor):
        return fn(batch)
    if isinstance(batch, tuple | list):
        return type(batch)(_map_tensors(b, fn) for b in batch)
    return batch


def _to_device(batch: Any, device: torch.device) -> Any:
    return _map_tensors(batch, lambda t: t.to(device, non_blocking=True))


def device_batches(batches: Iterable[Any], device: torch.device) -> Iterator[Any]:
    """``batches`` moved to ``device``. On CUDA the next batch is pinned and copied on a side
    stream while the current one trains, so the GPU never waits for a host-to-device copy;
    elsewhere each batch is moved when it is reached."""
    if device.type != "cuda":
        for batch in batches:
            yield _to_device(batch, device)
        return
    side = torch.cuda.Stream(device)

    def send(t: Tensor) -> Tensor:
        if t.device.type != "cpu":
            return t.to(device, non_blocking=True)
        return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)

    def stage(batch: Any) -> Any:
        with torch.cuda.stream(side):
            return _map_tensors(batch, send)

    main = torch.cuda.current_stream(device)

    def hand_over(t: Tensor) -> Tensor:
        t.record_stream(main)  # its memory is not reused while main still reads it
        return t

    it = iter(batches)
    try:
        ahead = stage(next(it))
    except StopIteration:
        return
    while True:
        main.wait_stream(side)  # the copy of ``ahead`` is done before main uses it
        current = _map_tensors(ahead, hand_over)
        try:
            ahead = stage(next(it))
        except StopIteration:
            yield current
            return
        yield current


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
        self.amp = amp_plan(self.device.type, config.amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp.use_scaler)
        self.out_dir = Path(out_dir)
        self.frozen_idx = 0
        self._c = _Counters()

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

    # -- one optimizer step ---------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp.dtype)

    def _train_step(self, batch: Any) -> tuple[float, int, float | None, dict]:
        """Forward, backward, clip, step. Returns (reported loss, n, grad norm, extras)."""
        batch = _to_device(batch, self.device)
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
        resume: bool = False,
    ) -> Learner:
        """Train ``epochs`` epochs under the one-cycle (or STLR) schedule; returns ``self``.

        ``lr_max``: a float, ``slice(lo, hi)`` (discriminative, geometric over groups) or one
        rate per group. ``None`` arguments take ``self.config``'s values. With ``resume``,
        continue from ``out_dir/checkpoint.pt`` if it belongs to this call (see module doc).
        """
        c = self.config
        if epochs < 1:
            raise UserError(f"epochs must be at least 1, got {epochs}")
        plan = FitPlan(
            epochs=epochs,
            lrs=optim.discriminative_lrs(lr_max, len(self.groups)),
            wd=c.wd if wd is None else wd,
            schedule=Schedule(
                name=schedule,
                div=c.div if div is None else div,
                div_final=c.div_final if div_final is None else div_final,
                pct_start=c.pct_start if pct_start is None else pct_start,
                moms=tuple(c.moms if moms is None else moms),
                cut_frac=c.cut_frac,
                ratio=c.ratio,
            ),
        )
        stage = self._c.stage
        self._c.stage += 1
        start = 0
        ckpt = None
        if resume:  # rank 0 reads, every rank gets the same checkpoint
            path = self.out_dir / CHECKPOINT
            ckpt = distributed.on_main(
                lambda: self._read_checkpoint(path) if path.exists() else None
            )
        if ckpt is not None:
            if ckpt["stage"] > stage:
                self._say(f"stage {stage}: finished in the checkpoint, skipped")
                return self
            if ckpt["stage"] == stage:
                if ckpt["plan"] != plan.to_dict():
                    raise UserError(
                        f"cannot resume: {self.out_dir / CHECKPOINT} was written by a fit with "
                        f"{ckpt['plan']}, this call has {plan.to_dict()}"
                    )
                self._restore(ckpt)
                start = ckpt["stage_epoch"]
                self._say(f"resumed from {self.out_dir / CHECKPOINT} at epoch {start}/{epochs}")
        if self.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self._trim_logs(stage, start)
        first_epoch = self._c.epoch - start  # learner epoch of this stage's epoch 0
        for e in range(start, epochs):
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
            self._c.epoch = first_epoch + e + 1
            self._c.history.append(rec)
            if self.main:  # the other ranks hold the same state: one writer is enough
                with open(self.out_dir / METRICS, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                self.save_checkpoint(
                    self.out_dir / CHECKPOINT, stage=stage, stage_epoch=e + 1, plan=plan
                )
                if c.plot:
                    logs = [read_jsonl(self.out_dir / f) for f in (STEPS, METRICS)]
                    plot_losses(*logs, self.out_dir / LOSS_PLOT)
            self._say(self._summary(rec, epochs))
        return self

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
                loss, n, grad_norm, extras = self._train_step(batch)
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
            "rng": _rng_state(),
            "stage": stage,
            "stage_epoch": stage_epoch,
            "epoch": self._c.epoch,
            "global_step": self._c.global_step,
            "plan": plan.to_dict(),
            "frozen_idx": self.frozen_idx,
            "config": asdict(self.config),
        }
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
        _set_rng_state(ckpt["rng"])
        self._c.stage = ckpt["stage"] + 1
        self._c.epoch = ckpt["epoch"]
        self._c.global_step = ckpt["global_step"]

    def load_checkpoint(self, path: str | os.PathLike) -> dict:
        """Load a checkpoint's model, optimizer, scaler, RNG and frozen state; returns it."""
        ckpt = self._read_checkpoint(Path(path))
        self._restore(ckpt)
        return ckpt

    def _trim_logs(self, stage: int, epoch: int) -> None:
        """Forget log records from (stage, epoch) on: they are about to be written (again)."""

        def keep(r: dict) -> bool:
            return (r.get("stage", 0), r.get("epoch", 0)) < (stage, epoch)

        def trim() -> list[dict]:
            _trim_jsonl(self.out_dir / STEPS, keep)
            return _trim_jsonl(self.out_dir / METRICS, keep)

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

    def lr_find(self, **kwargs: Any) -> Any:
        """fastai's learning-rate range test; see :func:`ulmfit.train.lr_find.lr_find`."""
        from ulmfit.train.lr_find import lr_find

        return lr_find(self, **kwargs)


__all__ = [
    "AmpPlan",
    "ClassifierTask",
    "FitPlan",
    "LMTask",
    "Learner",
    "StepOutput",
    "Task",
    "amp_plan",
    "mean_metrics",
    "read_jsonl",
]
