"""The figures and tables of a run's report: loss curves, the lr-find plot, the confusion
matrix and the per-class table.

Every figure is drawn with matplotlib's object API (a ``Figure`` on its own Agg canvas): no
pyplot, so no global figure registry, no backend switch and nothing left open in a process
that trains, serves or plots from several threads. Figures are written through
:func:`ulmfit.atomic.atomic_write` (whole or not at all). NumPy and matplotlib only: no
torch, so a report can be drawn where the model cannot be loaded.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ulmfit.atomic import atomic_write


def _figure(width: float, height: float, dpi: int = 100):
    """A figure with its Agg canvas (what ``savefig`` draws on) and one set of axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def plot_losses(steps: list[dict], epochs: list[dict], path: Path | str) -> Path:
    """Training loss per step (raw and smoothed) and validation loss per epoch, from the
    records of a run's ``steps.jsonl`` and ``metrics.jsonl`` logs, as a PNG at ``path``."""
    path = Path(path)
    fig, ax = _figure(7, 4)
    if steps:
        xs = [r["global_step"] for r in steps]
        ys = [r["loss"] for r in steps]
        ax.plot(xs, ys, color="tab:blue", alpha=0.3, lw=0.8, label="train (step)")
        avg, smooth = 0.0, []
        for i, y in enumerate(ys):
            avg = 0.98 * avg + 0.02 * y
            smooth.append(avg / (1 - 0.98 ** (i + 1)))
        ax.plot(xs, smooth, color="tab:blue", lw=1.5, label="train (smoothed)")
    valid = [(r["global_step"], r["valid_loss"]) for r in epochs if "valid_loss" in r]
    if valid:
        ax.plot(*zip(*valid), "o-", color="tab:orange", label="valid (epoch)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if steps or valid:
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    return path


def plot_lr_find(path: Path, lrs: np.ndarray, losses: np.ndarray, marks: dict[str, float]) -> None:
    """The learning-rate finder's smoothed loss against the rate (log scale), with the
    suggested rates of ``marks`` (name -> rate) marked and labelled."""
    fig, ax = _figure(6, 4)
    ax.plot(lrs, losses)
    for (name, lr), color in zip(marks.items(), ("tab:red", "tab:green")):
        ax.plot([lr], [np.interp(np.log(lr), np.log(lrs), losses)], "o", c=color, label=name)
        ax.annotate(f"{lr:.1e}", (lr, np.interp(np.log(lr), np.log(lrs), losses)), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png"))


def write_per_class(file: Path, per_class: dict) -> None:
    """The per-class table (class, precision, recall, f1, support) as CSV."""
    with open(file, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["class", "precision", "recall", "f1", "support"])
        for c, v in per_class.items():
            w.writerow(
                [c, f"{v['precision']:.4f}", f"{v['recall']:.4f}", f"{v['f1']:.4f}"]
                + [v["support"]]
            )


def plot_confusion(file: Path, confusion: list[list[int]], classes: list[str]) -> None:
    """The confusion matrix (rows: true class, columns: predicted) as a PNG, with the counts
    written in the cells up to 30 classes."""
    cm = np.asarray(confusion)
    k = len(classes)
    fig, ax = _figure(1.2 + 0.6 * k, 1.0 + 0.6 * k)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), classes, rotation=90)
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(file, dpi=80)


def write_report_files(folder: Path, m: dict, prefix: str = "") -> None:
    """``per_class.csv`` and ``confusion.png`` for metrics ``m`` (neither for a numeric
    target; no confusion matrix for multi-label)."""
    if "per_class" not in m:
        return
    write_per_class(folder / f"{prefix}per_class.csv", m["per_class"])
    if "confusion" in m:
        plot_confusion(folder / f"{prefix}confusion.png", m["confusion"], m["classes"])


__all__ = ["plot_confusion", "plot_losses", "plot_lr_find", "write_per_class", "write_report_files"]
