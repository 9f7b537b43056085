"""Turn the raw label values that sources.iter_source yields into arrays, checking them first.

Three kinds of target:
- "single": one class per row (strings, or numbers used as class names); int64 codes [n].
- "multi": any number of classes per row, either several labels in one column (split by
  SourceSpec.label_delim, or a JSON list) or several 0/1 columns; one-hot uint8 [n, n_classes].
- "float": a numeric target (regression) in one or several columns; float32 [n] or [n, k].

A missing label is an error, never a skipped row: dropping rows quietly would change the
dataset behind the user's back, so the message lists the rows to fix instead. Every message is
one line that names the file, the 1-based data row and the column.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ulmfit.data import dataset_folder
from ulmfit.data.sources import ReadReport, SourceSpec, folder_classes, guess_format, iter_source
from ulmfit.errors import UserError

KINDS = ("single", "multi", "float")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_MAX_LISTED = 5  # rows listed in a message before "and N more"
_BINARY = {"0": 0, "1": 1, "0.0": 0, "1.0": 1}


@dataclass
class LabelSet:
    """Encoded labels and the class names their codes or columns stand for."""

    kind: str  # "single" | "multi" | "float"
    classes: list[str]  # class names (empty for float); see encode_labels for the order
    values: (
        np.ndarray
    )  # single: int64 [n]; multi: uint8 [n, n_classes]; float: float32 [n] or [n, k]
    cols: list[str] = field(default_factory=list)  # the label column(s) they came from

    def __len__(self) -> int:
        return len(self.values)


def infer_label_kind(spec: SourceSpec, kind: str | None = None, raw: list | None = None) -> str:
    """The kind of target `spec` describes: "single", "multi", "float", or "none" if unlabelled.

    `kind` forces the answer (checked against the columns). Otherwise: a label delimiter means
    "multi"; several label columns mean "multi" when every value is 0/1 (the column names are
    the classes) and "float" otherwise; one column, or a folder of class subfolders, "single".
    Several columns need their values: pass the raw labels already read as `raw`, or the source
    is read once more (label columns only matter, but the whole file is streamed).
    """
    cols = list(spec.label_cols or [])
    if kind is not None:
        if kind not in KINDS:
            raise UserError(f"{spec.path}: unknown label kind {kind!r} (known: {', '.join(KINDS)})")
        if kind == "single" and len(cols) > 1:
            raise UserError(
                f"{spec.path}: a single-label target needs one label column, got {', '.join(cols)}"
            )
        return kind
    if not cols:
        return "single" if _folder_has_classes(spec) else "none"
    if spec.label_delim is not None:
        return "multi"
    if len(cols) == 1:
        return "single"
    if raw is None:
        raw = [label for batch in iter_source(spec, report=ReadReport()) for label in batch.labels]
    binary = all(v is not None and _binary(v) is not None for row in raw for v in row)
    return "multi" if binary else "float"


def encode_labels(
    raw: list,
    kind: str,
    rows: list[int],
    path: str,
    col: str | Sequence[str],
    classes: list[str] | None = None,
) -> LabelSet:
    """Check and encode the raw labels of the kept rows (`rows[i]` is raw[i]'s 0-based row).

    `col` is the label column, or the list of them for several columns. `classes` fixes the
    class list (e.g. the training classes at test time): a label outside it is an error.
    Without it, classes are sorted: numerically when every name is a number ("2" before
    "10"), as strings otherwise; for several 0/1 columns they are the column names in the
    given order, as in fastai's MultiCategoryBlock(encoded=True).
    Errors (UserError): a missing label; labels of mixed types (numbers and words, or JSON
    numbers and strings); a non-numeric float target; a 0/1 column holding anything else;
    a label not in `classes`.
    """
    if len(raw) != len(rows):
        raise ValueError(f"{len(raw)} labels but {len(rows)} row indices")
    cols = [col] if isinstance(col, str) else list(col)
    where = _Where(str(path), cols, rows)
    if kind == "single":
        return _encode_single(raw, where, classes)
    if kind == "multi":
        if len(cols) > 1:
            return _encode_columns(raw, where, classes)
        return _encode_multi(raw, where, classes)
    if kind == "float":
        return _encode_float(raw, where)
    raise ValueError(f"unknown label kind {kind!r} (known: {', '.join(KINDS)})")


# ---------------------------------------------------------------------------------------------
# Messages


@dataclass
class _Where:
    """The file, columns and row indices, to say where in the input a bad label is."""

    path: str
    cols: list[str]
    rows: list[int]

    def at(self, i: int, col: str | None = None) -> str:
        name = col if col is not None else self.cols[0]
        return f"{self.path}: row {self.rows[i] + 1}, column {name!r}"

    def missing(self, idx: list[int], col: str | None = None) -> UserError:
        name = col if col is not None else ", ".join(self.cols)
        shown = ", ".join(str(self.rows[i] + 1) for i in idx[:_MAX_LISTED])
        more = f" and {len(idx) - _MAX_LISTED} more" if len(idx) > _MAX_LISTED else ""
        noun = "row has" if len(idx) == 1 else "rows have"
        return UserError(
            f"{self.path}: {len(idx)} {noun} no label in column {name!r} "
            f"(rows {shown}{more}); fill them in or remove those rows"
        )


def _folder_has_classes(spec: SourceSpec) -> bool:
    if not spec.path.is_dir():
        return False
    fmt = spec.fmt or guess_format(spec.path)
    if fmt == "dataset":  # exported from a folder per class
        return dataset_folder.class_folders(spec.path)
    return fmt == "folder" and bool(folder_classes(spec.path))


# ---------------------------------------------------------------------------------------------
# Value types and class names


def _value_type(value: Any) -> str:
    """ "number" / "word" for text cells, "json number" / "bool" for typed (JSON, Parquet) ones."""
    if isinstance(value, str):
        return "number" if _NUMBER.match(value.strip()) else "word"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return "json number"
    return type(value).__name__


_TYPE_WORDS = {
    "number": "numbers",
    "word": "words",
    "json number": "numbers (not quoted)",
    "bool": "true/false values",
}


def _check_one_type(values: list[Any], owners: list[int], where: _Where) -> None:
    """Refuse a label column whose values are of more than one type, naming the first value of
    the rarer type (the majority is taken to be what the user meant)."""
    first_of: dict[str, int] = {}
    counts: dict[str, int] = {}
    for j, value in enumerate(values):
        t = _value_type(value)
        first_of.setdefault(t, j)
        counts[t] = counts.get(t, 0) + 1
    if len(counts) <= 1:
        return
    major = max(counts, key=lambda t: (counts[t], -first_of[t]))
    odd = min((t for t in counts if t != major), key=lambda t: first_of[t])
    j = first_of[odd]
    raise UserError(
        f"{where.at(owners[j])}: label {values[j]!r} is one of {counts[odd]} "
        f"{_TYPE_WORDS.get(odd, odd)} among {counts[major]} {_TYPE_WORDS.get(major, major)}; "
        "labels of one column must be of one type"
    )


def _class_name(value: Any) -> str:
    """The class name of a label value: stripped text; a whole number without ".0"."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _sorted_classes(names: set[str]) -> list[str]:
    if names and all(_NUMBER.match(n) for n in names):
        return sorted(names, key=lambda n: (float(n), n))
    return sorted(names)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def _codes(names: list[str], owners: list[int], classes: list[str], where: _Where) -> list[int]:
    index = {c: k for k, c in enumerate(classes)}
    codes = []
    for name, i in zip(names, owners, strict=True):
        if name not in index:
            shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
            raise UserError(
                f"{where.at(i)}: label {name!r} is not one of the {len(classes)} known classes "
                f"({shown})"
            )
        codes.append(index[name])
    return codes


# ---------------------------------------------------------------------------------------------
# The encoders


def _encode_single(raw: list, where: _Where, classes: list[str] | None) -> LabelSet:
    raw = [_only_label(v, i, where) for i, v in enumerate(raw)]
    missing = [i for i, v in enumerate(raw) if _is_missing(v)]
    if missing:
        raise where.missing(missing)
    _check_one_type(raw, list(range(len(raw))), where)
    names = [_class_name(v) for v in raw]
    classes = list(classes) if classes is not None else _sorted_classes(set(names))
    codes = _codes(names, list(range(len(raw))), classes, where)
    return LabelSet("single", classes, np.asarray(codes, dtype=np.int64), where.cols)


def _only_label(value: Any, i: int, where: _Where) -> Any:
    """A split or JSON list of exactly one label is that label; more (or none) is an error."""
    if not isinstance(value, (list, tuple)):
        return value
    if len(value) != 1:
        raise UserError(
            f"{where.at(i)}: {len(value)} labels where one was expected; "
            "for several labels per row use the multi-label kind"
        )
    return value[0]


def _encode_multi(raw: list, where: _Where, classes: list[str] | None) -> LabelSet:
    """Several labels per row in one column: lists (split or JSON) or a lone label."""
    missing = [i for i, v in enumerate(raw) if _is_missing(v)]
    if missing:
        raise where.missing(missing)
    flat: list[Any] = []
    owners: list[int] = []
    for i, value in enumerate(raw):
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if _is_missing(item):
                continue  # an empty piece, e.g. from a trailing delimiter
            flat.append(item)
            owners.append(i)
    _check_one_type(flat, owners, where)
    names = [_class_name(v) for v in flat]
    classes = list(classes) if classes is not None else _sorted_classes(set(names))
    codes = _codes(names, owners, classes, where)
    values = np.zeros((len(raw), len(classes)), dtype=np.uint8)
    values[np.asarray(owners, dtype=np.int64), np.asarray(codes, dtype=np.int64)] = 1
    return LabelSet("multi", classes, values, where.cols)


def _binary(value: Any) -> int | None:
    """0 or 1 for the spellings of a 0/1 cell (0, 1, 0.0, 1.0, "0", "1", true, false), else None."""
    if isinstance(value, str):
        return _BINARY.get(value.strip())
    if isinstance(value, (bool, int, float, np.integer, np.floating)) and value in (0, 1):
        return int(value)
    return None


def _columns_of(raw: list, where: _Where) -> list[list[Any]]:
    """Per-column value lists from per-row tuples, with missing cells reported per column."""
    k = len(where.cols)
    for i, value in enumerate(raw):
        if not isinstance(value, (list, tuple)) or len(value) != k:
            raise ValueError(f"row {where.rows[i] + 1}: expected {k} label values, got {value!r}")
    columns = [[row[c] for row in raw] for c in range(k)]
    for c, values in enumerate(columns):
        missing = [i for i, v in enumerate(values) if _is_missing(v)]
        if missing:
            raise where.missing(missing, where.cols[c])
    return columns


def _encode_columns(raw: list, where: _Where, classes: list[str] | None) -> LabelSet:
    """Several 0/1 columns, one per class; the classes are the column names, in order."""
    if classes is not None and list(classes) != where.cols:
        raise UserError(
            f"{where.path}: the label columns ({', '.join(where.cols)}) are not the known "
            f"classes ({', '.join(classes)})"
        )
    columns = _columns_of(raw, where)
    values = np.zeros((len(raw), len(columns)), dtype=np.uint8)
    for c, col_values in enumerate(columns):
        for i, value in enumerate(col_values):
            bit = _binary(value)
            if bit is None:
                raise UserError(
                    f"{where.at(i, where.cols[c])}: {value!r} in a 0/1 label column "
                    "(only 0 and 1 are allowed)"
                )
            values[i, c] = bit
    return LabelSet("multi", list(where.cols), values, where.cols)


def _to_float(value: Any, i: int, col: str, where: _Where) -> float:
    number: float | None = None
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        number = float(value)
    elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        number = float(value)
    if number is None or not math.isfinite(number):
        raise UserError(f"{where.at(i, col)}: {value!r} is not a number (the target is numeric)")
    return number


def _encode_float(raw: list, where: _Where) -> LabelSet:
    """A numeric target: one column -> [n], several -> [n, k]."""
    if len(where.cols) > 1:
        columns = _columns_of(raw, where)
    else:
        columns = [raw]
        missing = [i for i, v in enumerate(raw) if _is_missing(v)]
        if missing:
            raise where.missing(missing)
    values = np.empty((len(raw), len(columns)), dtype=np.float32)
    for c, col_values in enumerate(columns):
        for i, value in enumerate(col_values):
            values[i, c] = _to_float(value, i, where.cols[c], where)
    if len(columns) == 1:
        values = values[:, 0]
    return LabelSet("float", [], values, where.cols)


# A label column with this many classes, most of them a single row, is an ID or a text column
# given as the label by mistake: a classifier of it trains for minutes and learns nothing.
ID_LIKE_MIN_CLASSES = 100


def check_training_labels(
    kind: str, classes: list[str], values: np.ndarray, path: str, col: str = "label"
) -> None:
    """Whether training rows with these labels can train a classifier (one rule for the
    baselines and ULMFiT): two classes at least (single-label), some row with a label and not
    every row with the one label (multi-label), two rows at least (regression), and not a
    column of (nearly) unique values."""
    values = np.asarray(values)
    if kind == "float":
        if len(values) < 2:
            raise UserError(f"{path}: a regression needs at least two training rows")
        return
    if kind == "multi":
        if not len(classes) or not values.any():
            raise UserError(f"{path}: no training row has a label")
        if len(classes) < 2 and values.all():
            raise UserError(
                f"{path}: every training row has the same single label ({classes[0]!r}); "
                "a classifier needs at least two classes"
            )
        return
    if len(classes) < 2:
        only = classes[0] if classes else "none"
        raise UserError(
            f"{path}: every training row has the same class ({only!r}); a classifier needs "
            "at least two classes"
        )
    singles = int((np.bincount(values, minlength=len(classes)) == 1).sum())
    if len(classes) >= ID_LIKE_MIN_CLASSES and singles > len(classes) / 2:
        raise UserError(
            f"{path}: the label column {col!r} has {len(classes):,} distinct values in "
            f"{len(values):,} rows ({singles:,} of them on one row only): it looks like an ID "
            "or a text, not a class; choose the label column with --label-col"
        )
