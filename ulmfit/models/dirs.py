"""What a classifier model directory's ``config.json`` must hold, checked before anything is
built from it.

A config is data a user may have edited, copied from elsewhere or damaged. Read unchecked, a
``classes`` string predicts its characters as labels, and ``n_out: 1e12`` or ``n_hid: 1e9``
asks for terabytes before any error. :func:`check_classifier_config` refuses such a file
with one line naming the field; :func:`check_shapes` then compares the shapes the config
implies (a model built on PyTorch's ``meta`` device, which allocates nothing) with the
tensors actually stored, so that the real model is only built when both agree.
"""

from __future__ import annotations

from pathlib import Path

from ulmfit.errors import UserError

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


def check_shapes(expected: dict, tensors: dict, file: Path) -> None:
    """The stored ``tensors`` are exactly the ``expected`` names and shapes (a model's
    ``state_dict()`` built on the meta device gives them without allocating)."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        what = "; ".join(
            part
            for part in (
                f"missing {', '.join(missing[:3])}" if missing else "",
                f"unexpected {', '.join(unexpected[:3])}" if unexpected else "",
            )
            if part
        )
        raise UserError(f"{file}: tensors do not match config.json ({what})")
    for name, t in expected.items():
        if tuple(tensors[name].shape) != tuple(t.shape):
            raise UserError(
                f"{file}: {name} has shape {tuple(tensors[name].shape)}, but config.json "
                f"implies {tuple(t.shape)}"
            )
        if tensors[name].is_floating_point() != t.is_floating_point():
            kind = "a floating-point" if t.is_floating_point() else "an integer"
            raise UserError(f"{file}: {name} should be {kind} tensor")


__all__ = ["LABEL_KINDS", "MAX_SIZE", "check_classifier_config", "check_shapes"]
