"""The model directory: where a classifier or an ensemble is written and read (``RUN/model``).

What ``ulmfit fit`` publishes and ``ulmfit.load`` / ``predict`` / ``explain`` / ``serve`` open:

* a classifier directory: ``model.safetensors`` (the embedding stored once), ``vocab.json``
  and ``config.json`` (task ``"classifier"``, label kind, classes, architecture, the
  classifier's dropout and length settings, direction, tokenizer settings); nothing pickled.
  :func:`write_classifier_files` writes one, :func:`load_classifier` reads one back;
* an ensemble directory (``--direction both``): a ``config.json`` with task ``"ensemble"``,
  the label settings every member shares (classes, label kind, the multi-label thresholds
  tuned on the *averaged* validation probabilities), and one complete classifier directory
  per member (``fwd/``, ``bwd/``), so it can be copied and loaded as one self-contained
  folder (:func:`write_ensemble`, :func:`load_members`). Members' outputs are combined by
  averaging their probabilities (softmax for single-label, sigmoid per label for
  multi-label) or their values (regression); the average is handed on as logits (its log,
  or its logit) so that every metric and prediction function reads an ensemble exactly like
  a single model (:func:`mean_outputs`).

A config is data a user may have edited, copied from elsewhere or damaged. Read unchecked, a
``classes`` string predicts its characters as labels, and ``n_out: 1e12`` or ``n_hid: 1e9``
asks for terabytes before any error. :func:`check_classifier_config` refuses such a file
with one line naming the field; :func:`ulmfit.models.io.check_shapes` then compares the
shapes the config implies (a model built on PyTorch's ``meta`` device, which allocates
nothing) with the tensors actually stored, so that the real model is only built when both
agree.

Language-model directories (``RUN/lm``) and the safetensors reading they share with this
module are :mod:`ulmfit.models.io`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from ulmfit.errors import UserError
from ulmfit.models.awd_lstm import AWDLSTMConfig
from ulmfit.models.io import check_shapes, read_tensors, tokenizer_settings
from ulmfit.text.vocab import load_vocab
from ulmfit.version import __version__

MODEL_DIR = "model"  # a run folder's model directory
TASK = "classifier"
ENSEMBLE_TASK = "ensemble"
FORMAT_VERSION = 1
VALID_OUTPUTS = "valid_outputs.npz"  # rows, logits, labels of the validation documents
_EMB_DP = "encoder.module.encoder_dp.emb.weight"
_EMB = "encoder.module.encoder.weight"
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

# ----------------------------------------------------------------------------------------
# config.json of a classifier, checked
# ----------------------------------------------------------------------------------------

LABEL_KINDS = ("single", "multi", "float")
# far above any real model, far below an allocation that takes the machine down
MAX_SIZE = 1 << 20


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _str_list(config: dict, key: str, file: Path) -> list[str]:
    value = config.get(key)
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise UserError(f"{file}: '{key}' must be a list of strings, got {type(value).__name__}")
    if len(set(value)) != len(value):
        raise UserError(f"{file}: '{key}' lists a name twice")
    return value


def _size(value: object, name: str, file: Path, low: int = 1) -> int:
    if not _is_int(value) or not low <= value <= MAX_SIZE:
        raise UserError(
            f"{file}: {name} must be an integer from {low} to {MAX_SIZE:,}, got {value!r}"
        )
    return value


def _check_labels(config: dict, file: Path) -> None:
    kind = config.get("label_kind", "single")
    if kind not in LABEL_KINDS:
        raise UserError(f"{file}: label_kind must be one of {', '.join(LABEL_KINDS)}, got {kind!r}")
    n_out = _size(config.get("n_out"), "n_out", file)
    if kind == "float":
        targets = config.get("targets")
        if targets is not None and len(_str_list(config, "targets", file)) != n_out:
            raise UserError(f"{file}: {len(targets)} targets but n_out is {n_out}")
        return
    classes = _str_list(config, "classes", file)
    if len(classes) != n_out:
        raise UserError(f"{file}: {len(classes)} classes but n_out is {n_out}")
    if kind == "single" and n_out < 2:
        raise UserError(f"{file}: a single-label model needs at least 2 classes")
    if kind == "multi":
        thr = config.get("thresholds")
        if not isinstance(thr, dict):
            raise UserError(f"{file}: a multi-label model needs 'thresholds' (class -> 0..1)")
        bad = [c for c in classes if not (_is_number(thr.get(c)) and 0 <= thr[c] <= 1)]
        if bad:
            raise UserError(
                f"{file}: thresholds must be numbers in [0, 1] for every class ({bad[0]!r})"
            )


def check_classifier_config(config: object, file: Path) -> dict:
    """``config`` if it describes a classifier we can build; a one-line UserError naming the
    bad field otherwise (the shapes are checked against the weights by :func:`check_shapes`)."""
    if not isinstance(config, dict):
        raise UserError(f"{file}: expected a JSON object")
    _check_labels(config, file)
    arch = config.get("architecture")
    if not isinstance(arch, dict):
        raise UserError(f"{file}: 'architecture' must be an object")
    for key in ("emb_sz", "n_hid", "n_layers"):
        _size(arch.get(key), f"architecture.{key}", file)
    _size(config.get("vocab_size"), "vocab_size", file, low=2)
    clf = config.get("classifier")
    if not isinstance(clf, dict):
        raise UserError(f"{file}: 'classifier' must be an object (drop_mult, bptt, max_len)")
    if not _is_number(clf.get("drop_mult")) or not 0 <= clf["drop_mult"] < 2:
        raise UserError(f"{file}: classifier.drop_mult must be a number in [0, 2)")
    bptt = _size(clf.get("bptt"), "classifier.bptt", file)
    if clf.get("max_len") is not None and _size(clf["max_len"], "classifier.max_len", file) < bptt:
        raise UserError(f"{file}: classifier.max_len must be at least classifier.bptt")
    if config.get("direction", "fwd") not in ("fwd", "bwd"):
        raise UserError(f"{file}: direction must be fwd or bwd")
    return config


# ----------------------------------------------------------------------------------------
# A classifier directory
# ----------------------------------------------------------------------------------------


def write_classifier_files(
    folder: Path,
    model,
    vocab: list[str],
    classes: list[str],
    arch,
    settings: dict,
    meta: dict,
    *,
    kind: str = "single",
    n_out: int | None = None,
    extra: dict | None = None,
    direction: str = "fwd",
) -> dict:
    """Fill ``folder`` (empty, e.g. a staged directory) with the classifier's weights, vocab.json
    and config.json; ``settings`` is the training configuration as JSON (``drop_mult``, ``bptt``
    and ``max_len`` among it), repeated in config.json so the model can be rebuilt."""
    from safetensors.torch import save_file

    state = model.state_dict()
    state.pop(_EMB_DP, None)  # the same tensor as the embedding
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    config = {
        "format_version": FORMAT_VERSION,
        "task": TASK,
        "label_kind": kind,
        "classes": list(classes),
        "n_out": len(classes) if n_out is None else n_out,
        **(extra or {}),
        "architecture": {"name": "AWD_LSTM", **arch.to_dict()},
        "classifier": {
            "drop_mult": settings["drop_mult"],
            "bptt": settings["bptt"],
            "max_len": settings["max_len"],
            "lin_ftrs": [50],
        },
        "vocab_size": len(vocab),
        "direction": direction,
        "tokenizer": tokenizer_settings(),
        "ulmfit_version": __version__,
        "torch_version": torch.__version__,
        "config": settings,
        "meta": meta,
    }
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "vocab.json").write_text(json.dumps(list(vocab), ensure_ascii=False), "utf-8")
    (folder / "config.json").write_text(json.dumps(config, indent=1), "utf-8")
    return config


def model_dir_of(path: Path | str) -> Path:
    """A run folder (``RUN/model`` inside) or a classifier model directory itself."""
    path = Path(path)
    if (path / MODEL_DIR / "config.json").is_file():
        return path / MODEL_DIR
    return path


def _build(vocab_sz: int, n_out: int, arch: AWDLSTMConfig, clf: dict):
    """The classifier config.json describes (``clf``: its ``classifier`` settings)."""
    from ulmfit.models.classifier import TextClassifier

    return TextClassifier(
        vocab_sz, n_out, arch, drop_mult=clf["drop_mult"], bptt=clf["bptt"], max_len=clf["max_len"]
    )


def load_classifier(path: Path | str):
    """``(model, vocab, config)`` of an exported classifier (a run folder or its model dir).
    config.json is checked field by field and against the stored tensors' shapes before the
    model is built, so a damaged or edited directory is one line, never a traceback."""
    folder = model_dir_of(path)
    file = folder / "config.json"
    if not file.is_file():
        raise UserError(f"{path}: not a classifier run or model directory (no {file.name})")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{file}: cannot read ({e})") from None
    except ValueError as e:
        raise UserError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("task") != TASK:
        task = config.get("task") if isinstance(config, dict) else None
        raise UserError(f"{file}: task is {task!r}, expected {TASK!r}")
    check_classifier_config(config, file)
    vocab = load_vocab(folder / "vocab.json")
    if len(vocab) != config["vocab_size"]:
        raise UserError(
            f"{folder}: vocab.json has {len(vocab)} tokens, config.json {config['vocab_size']}"
        )
    try:
        arch = AWDLSTMConfig(**{k: v for k, v in config["architecture"].items() if k != "name"})
    except TypeError as e:
        raise UserError(f"{file}: bad architecture ({e})") from None
    c = config["classifier"]
    if problem := arch.drop_mult_problem(c["drop_mult"]):
        raise UserError(f"{file}: classifier.{problem}")
    with torch.device("meta"):  # the shapes config.json implies, allocating nothing
        expected = _build(len(vocab), config["n_out"], arch, c).state_dict()
    expected.pop(_EMB_DP, None)
    tensors = read_tensors(folder / "model.safetensors")
    check_shapes(expected, tensors, folder / "model.safetensors")
    model = _build(len(vocab), config["n_out"], arch, c)
    model.load_state_dict({**tensors, _EMB_DP: tensors[_EMB]}, strict=True)
    model.eval()
    return model, vocab, config


# ----------------------------------------------------------------------------------------
# An ensemble directory
# ----------------------------------------------------------------------------------------


def mean_outputs(kind: str, outputs: list[np.ndarray]) -> np.ndarray:
    """Average of the members' outputs ``(n, n_out)``, returned as logits of the mean
    probability (single-label: log-probabilities; multi-label: per-label logits). Computed in
    the members' own precision (float32), not through the float64 ``metrics.sigmoid`` /
    ``predict.softmax``: an ensemble's thresholds were tuned on exactly these numbers."""
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
    "LABEL_KINDS",
    "MAX_SIZE",
    "MODEL_DIR",
    "SHARED_KEYS",
    "VALID_OUTPUTS",
    "aligned_valid",
    "check_classifier_config",
    "load_classifier",
    "load_members",
    "mean_outputs",
    "model_dir_of",
    "read_valid_outputs",
    "write_classifier_files",
    "write_ensemble",
]
