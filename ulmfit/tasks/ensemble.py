"""Forward + backward classifiers as one model: the ULMFiT paper's bidirectional ensemble.

An ensemble directory (``RUN/model`` of ``ulmfit fit --direction both``) holds a
``config.json`` with task ``"ensemble"``, the label settings every member shares (classes,
label kind, the multi-label thresholds tuned on the *averaged* validation probabilities), and
one complete classifier directory per member (``fwd/``, ``bwd/``), so it can be copied and
loaded as one self-contained folder. Members' outputs are combined by averaging their
probabilities (softmax for single-label, sigmoid per label for multi-label) or their values
(regression); the average is handed on as logits (its log, or its logit) so that every
metric and prediction function reads an ensemble exactly like a single model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from ulmfit.errors import UserError

ENSEMBLE_TASK = "ensemble"
FORMAT_VERSION = 1
_EPS = 1e-7
# what every member must agree on, and what the ensemble's config repeats for readers
SHARED_KEYS = (
    "label_kind",
    "classes",
    "n_out",
    "label_cols",
    "label_delim",
    "text_cols",
    "targets",
)


def mean_outputs(kind: str, outputs: list[np.ndarray]) -> np.ndarray:
    """Average of the members' outputs ``(n, n_out)``, returned as logits of the mean
    probability (single-label: log-probabilities; multi-label: per-label logits)."""
    if len(outputs) == 1:
        return outputs[0]
    if kind == "float":
        return np.mean(outputs, axis=0)
    if kind == "multi":
        p = np.mean([1.0 / (1.0 + np.exp(-o)) for o in outputs], axis=0)
        p = np.clip(p, _EPS, 1 - _EPS)
        return np.log(p) - np.log1p(-p)
    probs = []
    for o in outputs:
        e = np.exp(o - o.max(axis=1, keepdims=True))
        probs.append(e / e.sum(axis=1, keepdims=True))
    return np.log(np.clip(np.mean(probs, axis=0), _EPS, None))


def _read_config(file: Path) -> dict:
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"{file}: cannot read ({e.strerror})") from None
    except ValueError as e:
        raise UserError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise UserError(f"{file}: expected a JSON object")
    return config


def load_members(run: Path | str) -> tuple[dict, list[tuple]]:
    """``(config, [(model, vocab, member_config), ...])`` of a classifier or an ensemble
    (a run folder or a model directory). For a single classifier the config is its own."""
    from ulmfit.tasks.classifier import load_classifier, model_dir_of

    folder = model_dir_of(run)
    file = folder / "config.json"
    if not file.is_file():
        raise UserError(f"{run}: not a classifier run or model directory (no {file.name})")
    config = _read_config(file)
    if config.get("task") != ENSEMBLE_TASK:
        model, vocab, config = load_classifier(folder)
        return config, [(model, vocab, config)]
    names = config.get("members")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise UserError(f"{file}: 'members' must be a list of member folder names")
    members = []
    for name in names:
        if Path(name).name != name or name in ("", ".", ".."):
            raise UserError(f"{file}: member {name!r} is not a folder name inside {folder}")
        model, vocab, mconfig = load_classifier(folder / name)
        for key in ("label_kind", "classes", "n_out"):
            if mconfig.get(key) != config.get(key):
                raise UserError(f"{folder / name}: its {key} differs from the ensemble's")
        members.append((model, vocab, mconfig))
    return config, members


def _link_tree(src: Path, dst: Path) -> None:
    """``dst`` as a copy of the folder ``src``, by hard links where the file system allows
    (no second copy of the weights on disk)."""
    dst.mkdir()
    for f in src.iterdir():
        if f.is_dir():
            _link_tree(f, dst / f.name)
            continue
        try:
            os.link(f, dst / f.name)
        except OSError:
            shutil.copy2(f, dst / f.name)


def write_ensemble(folder: Path, members: dict[str, Path], extra: dict | None = None) -> dict:
    """Fill ``folder`` (empty, e.g. a staged directory) with one sub-folder per member (hard
    links of the classifier directories in ``members``, name -> path) and the ensemble's
    config.json. ``extra`` adds settings (the tuned thresholds of a multi-label ensemble)."""
    from ulmfit import __version__

    configs = {n: _read_config(Path(p) / "config.json") for n, p in members.items()}
    first = next(iter(configs.values()))
    for name, c in configs.items():
        for key in ("label_kind", "classes", "n_out"):
            if c.get(key) != first.get(key):
                raise UserError(f"{members[name]}: its {key} differs from the other member's")
    for name, path in members.items():
        _link_tree(Path(path), folder / name)
    config = {
        "format_version": FORMAT_VERSION,
        "task": ENSEMBLE_TASK,
        "members": list(members),
        "directions": [configs[n].get("direction", "fwd") for n in members],
        **{k: first[k] for k in SHARED_KEYS if k in first},
        **(extra or {}),
        "combine": "mean of the members' probabilities (regression: of their outputs)",
        "ulmfit_version": __version__,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=1), "utf-8")
    return config


def read_valid_outputs(report_dir: Path) -> dict[str, np.ndarray]:
    """The validation rows, logits and labels a classifier stage saved in its report."""
    from ulmfit.tasks.classifier import VALID_OUTPUTS

    file = Path(report_dir) / VALID_OUTPUTS
    try:
        with np.load(file) as z:
            return {k: z[k] for k in ("rows", "logits", "labels")}
    except (OSError, KeyError, ValueError) as e:
        raise UserError(f"{file}: cannot read the validation outputs ({e})") from None


def aligned_valid(reports: list[Path]) -> tuple[list[np.ndarray], np.ndarray]:
    """Each member's validation logits, in the order of the first member's rows, and the
    labels. The members must have scored the same validation rows."""
    outs = [read_valid_outputs(r) for r in reports]
    rows = outs[0]["rows"]
    order = np.argsort(rows, kind="stable")
    logits = []
    for r, o in zip(reports, outs):
        if not np.array_equal(np.sort(o["rows"]), rows[order]):
            raise UserError(f"{r}: validated on other rows than {reports[0]}")
        mine = np.argsort(o["rows"], kind="stable")
        # member row k (sorted) -> position of that row in the first member's order
        aligned = np.empty_like(o["logits"])
        aligned[order] = o["logits"][mine]
        logits.append(aligned)
    return logits, outs[0]["labels"]


__all__ = [
    "ENSEMBLE_TASK",
    "aligned_valid",
    "load_members",
    "mean_outputs",
    "read_valid_outputs",
    "write_ensemble",
]
