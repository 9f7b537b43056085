"""What differs between training a language model and a classifier: a :class:`Task` says how
to compute a training loss from a batch, what to sum during validation and what to do at the
start of an epoch; :class:`ulmfit.train.learner.Learner` does everything else."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


_F1 = ("f1_tp/", "f1_pred/", "f1_true/")  # per-class counts that macro_f1 is made of


def f1_counts(logits: Tensor, y: Tensor, kind: str) -> dict[str, float]:
    """Per class: true positives, predictions and true members, summable over batches.
    Single-label: the argmax; multi-label: a positive logit (probability above 0.5)."""
    if kind == "single":
        k = logits.size(-1)
        pred = logits.argmax(-1)
        counts = [torch.bincount(v, minlength=k) for v in (y[pred == y], pred, y)]
    else:
        pred, truth = logits > 0, y > 0
        counts = [(pred & truth).sum(0), pred.sum(0), truth.sum(0)]
    return {
        f"{name}{c}": float(n) for name, cs in zip(_F1, counts) for c, n in enumerate(cs.tolist())
    }


def macro_f1(sums: dict[str, float], kind: str) -> float:
    """Mean F1 over the classes (single-label: those the validation labels hold, as
    :func:`ulmfit.metrics.single_label_metrics`), 0 for a class with no prediction nor member."""
    tp, pred, true = ({k[len(n) :]: v for k, v in sums.items() if k.startswith(n)} for n in _F1)
    classes = [c for c in true if kind != "single" or true[c] > 0]
    f1 = [2 * tp[c] / (pred[c] + true[c]) if pred[c] + true[c] else 0.0 for c in classes]
    return sum(f1) / len(f1) if f1 else 0.0


@dataclass
class ClassifierTask:
    """Single-label classification on ``(x, y, idx)`` batches: cross-entropy and accuracy.

    ``loss_fn`` can be swapped (label smoothing, class weights); it must return the batch
    mean. A model that returns a tuple (fastai's classifier returns logits plus the encoder
    outputs) is read as its first element. ``f1`` (``"single"`` or ``"multi"``, the target's
    kind) adds ``macro_f1`` to the validation metrics, for a stage that tracks it.
    """

    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy
    alpha: float = 0.0  # AR on the kept encoder outputs (fastai's classifier learner: 2)
    beta: float = 0.0  # TAR on them (fastai: 1)
    f1: str | None = None

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
        if self.f1 is not None:
            out.update(f1_counts(logits, y, self.f1))
        return out

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        if self.f1 is None:
            return mean_metrics(sums)
        m = mean_metrics({k: v for k, v in sums.items() if not k.startswith(_F1)})
        return {**m, "macro_f1": macro_f1(sums, self.f1)}


__all__ = [
    "ClassifierTask",
    "LMTask",
    "StepOutput",
    "Task",
    "f1_counts",
    "macro_f1",
    "mean_metrics",
]
