"""Reading a dataset folder (``ulmfit prepare --export DIR``): a prepared dataset that trains
anywhere, on a machine without spaCy too.

Why a folder: tokenizing needs spaCy and many cores; training needs a GPU. The folder carries
everything the training commands would otherwise compute from the text files: the token ids
and document offsets of the tokenize stage with its *full* token strings (``ids.i32``,
``offsets.npy``, ``strings.json``, ``counts.npy``: no vocabulary cut, so fine-tuning onto a
pretrained vocabulary loses nothing), each document's input row and input (``rows.npy``,
``sources.npy``), the texts and the *raw* labels (``texts.jsonl``, ``labels.jsonl``: the same
label rules and checks apply as to the original file, and the linear baselines need the
texts), the encoded labels of ``prepare`` (``labels.npy``), and ``manifest.json``: the text
and label columns, the tokenizer settings and every file's size and SHA-256.

The folder is checked against its manifest when it is first read in a process (and again
when a file's size or time changes): a missing or changed file is one ``UserError``, never a
silently different dataset. Numpy and the stdlib only: nothing here needs spaCy or PyTorch.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ulmfit.cache import file_sha256
from ulmfit.errors import UserError

FORMAT = "ulmfit-dataset"
VERSION = 1
MANIFEST = "manifest.json"
TEXTS = "texts.jsonl"
RAW_LABELS = "labels.jsonl"
# The tokenize stage's files, as the cache keeps them (read by prepare and read_token_corpus).
TOKEN_FILES = ("ids.i32", "offsets.npy", "rows.npy", "sources.npy", "strings.json", "counts.npy")
_checked: dict[Path, tuple] = {}  # folder -> the file stats it was last verified with


def is_dataset_folder(path: Path | str) -> bool:
    """Whether ``path`` is a folder written by ``ulmfit prepare --export``."""
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _stats(folder: Path, names) -> tuple:
    out = []
    for name in names:
        st = (folder / name).stat()
        out.append((name, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


def manifest(folder: Path | str) -> dict:
    """The folder's manifest after checking every file it lists (size and SHA-256)."""
    folder = Path(folder)
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = data["files"]
        if not {"columns", "meta", "tokenizer"} <= set(data) or not isinstance(files, dict):
            raise KeyError("files")
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{folder}: not a readable dataset folder ({MANIFEST})") from None
    if data.get("version") != VERSION:
        raise UserError(
            f"{folder}: dataset folder version {data.get('version')}, expected {VERSION}"
        )
    key = folder.resolve()
    names = [MANIFEST, *sorted(files)]
    for name in files:
        if not (folder / name).is_file():
            raise UserError(f"{folder}: {name} is missing; export the dataset folder again")
    stats = _stats(folder, names)
    if _checked.get(key) == stats:
        return data
    for name in sorted(files):
        info = files[name]
        path = folder / name
        if path.stat().st_size != info["size"] or file_sha256(path) != info["sha256"]:
            raise UserError(
                f"{folder}: {name} has changed (its SHA-256 differs from {MANIFEST}); "
                "export the dataset folder again"
            )
    _checked[key] = stats
    return data


def fingerprint(folder: Path | str) -> str:
    """SHA-256 of the manifest, which holds every file's: the folder's content key."""
    manifest(folder)
    return file_sha256(Path(folder) / MANIFEST)


def columns(folder: Path | str) -> dict:
    """``text_cols``, ``label_cols`` and ``label_delim`` the inputs were read with."""
    return manifest(folder)["columns"]


def class_folders(folder: Path | str) -> bool:
    """Whether the labels came from a folder per class (no label column)."""
    return bool(columns(folder).get("class_folders"))


def rows_read(folder: Path | str) -> tuple[int, list[int]]:
    """(rows the inputs had, the 0-based rows skipped for having no text, input by input)."""
    meta = manifest(folder)["meta"]
    rows = np.load(Path(folder) / "rows.npy")
    sources = np.load(Path(folder) / "sources.npy")
    total, skipped = 0, []
    for k, info in enumerate(meta["inputs"]):
        kept = np.zeros(info["rows_read"], dtype=bool)
        kept[rows[sources == k]] = True
        skipped.extend(np.flatnonzero(~kept).tolist())
        total += info["rows_read"]
    return total, skipped


def _raw_label(value: Any, several: bool) -> Any:
    """A label as the source reader gave it (several columns: a tuple; JSON made it a list)."""
    return tuple(value) if several and isinstance(value, list) else value


def iter_docs(
    folder: Path | str, chunk_rows: int
) -> Iterator[tuple[list[str], list | None, list[int]]]:
    """``(texts, raw labels or None, rows)`` of the kept documents, ``chunk_rows`` at a time."""
    folder = Path(folder)
    data = manifest(folder)
    several = len(data["columns"].get("label_cols") or []) > 1
    rows = np.load(folder / "rows.npy", mmap_mode="r")  # tens of millions in a corpus
    labelled = RAW_LABELS in data["files"]
    with open(folder / TEXTS, encoding="utf-8") as texts, _open_or_none(folder / RAW_LABELS, labelled) as labels:  # fmt: skip
        start = 0
        while start < len(rows):
            chunk = [
                json.loads(texts.readline()) for _ in range(min(chunk_rows, len(rows) - start))
            ]
            raw = (
                [_raw_label(json.loads(labels.readline()), several) for _ in chunk]
                if labels
                else None
            )
            yield chunk, raw, rows[start : start + len(chunk)].tolist()
            start += len(chunk)


def _open_or_none(path: Path, wanted: bool):
    return open(path, encoding="utf-8") if wanted else contextlib.nullcontext()


def tokens(folder: Path | str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(flat int32 ids into the strings, int64 offsets, the token strings) of the documents."""
    folder = Path(folder)
    meta = manifest(folder)["meta"]
    ids = (
        np.memmap(folder / "ids.i32", dtype=np.int32, mode="r")
        if meta["tokens"]
        else np.zeros(0, dtype=np.int32)
    )
    strings = json.loads((folder / "strings.json").read_text(encoding="utf-8"))
    return ids, np.load(folder / "offsets.npy"), strings


__all__ = [
    "FORMAT",
    "MANIFEST",
    "TOKEN_FILES",
    "class_folders",
    "columns",
    "fingerprint",
    "is_dataset_folder",
    "iter_docs",
    "manifest",
    "rows_read",
    "tokens",
]
