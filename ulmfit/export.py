"""Writing dataset folders (``ulmfit prepare FILES --export DIR``), and cutting one for a
dry run, so that a machine with PyTorch but no spaCy trains from a folder made elsewhere.

The folder is the tokenize stage's cache entry (token ids numbered by first appearance, the
full token strings and their counts, rows, inputs, encoded labels) plus the texts and the
raw labels, the columns and the tokenizer settings, and a manifest of every file's SHA-256
(see :mod:`ulmfit.data.dataset_folder` for the layout and the reading). The texts are kept
although training never tokenizes them again: the linear baselines of ``fit`` and
``baseline`` read texts, and the raw labels go through the same label rules and checks as
the original file's, so a run on the folder equals a run on the files.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from ulmfit.atomic import check_output_dir, write_output_dir
from ulmfit.cache import file_sha256
from ulmfit.data import dataset_folder as folder_format
from ulmfit.data.sources import SourceSpec, iter_source
from ulmfit.errors import UserError
from ulmfit.prepare import PrepareConfig, tokenize_stage, tokenizer_of


def _columns(specs: list[SourceSpec], labelled: bool) -> dict:
    """The columns every input was read with (one set: a folder has one layout)."""
    cols = {(tuple(s.text_cols or ()), tuple(s.label_cols or ()), s.label_delim) for s in specs}
    if len(cols) > 1:
        raise UserError("the inputs are read with different columns; export them separately")
    spec = specs[0]
    return {
        "text_cols": spec.text_cols,
        "label_cols": spec.label_cols if labelled else None,
        "label_delim": spec.label_delim if labelled else None,
        "class_folders": labelled and not spec.label_cols,
    }


def _write_texts(tmp: Path, specs: list[SourceSpec], cfg: PrepareConfig, labelled: bool) -> None:
    """``texts.jsonl`` (and ``labels.jsonl``: the raw labels) of the kept documents, in the
    order of the tokens; a file that changed since it was tokenized is refused."""
    rows: list[int] = []
    with (
        open(tmp / folder_format.TEXTS, "w", encoding="utf-8") as texts,
        open(tmp / folder_format.RAW_LABELS, "w", encoding="utf-8") as labels,
    ):
        for spec in specs:
            for batch in iter_source(spec, chunk_rows=cfg.chunk_docs):
                rows.extend(batch.rows)
                texts.writelines(json.dumps(t, ensure_ascii=False) + "\n" for t in batch.texts)
                if labelled:
                    labels.writelines(
                        json.dumps(v, ensure_ascii=False) + "\n" for v in batch.labels
                    )
    if not labelled:
        (tmp / folder_format.RAW_LABELS).unlink()
    if not np.array_equal(np.load(tmp / "rows.npy"), np.asarray(rows, dtype=np.int64)):
        where = ", ".join(str(s.path) for s in specs)
        raise UserError(f"{where}: changed while it was read; try again")


def _finish(tmp: Path, manifest: dict) -> None:
    """Every file's size and SHA-256 into ``manifest.json`` (written last)."""
    manifest["files"] = {
        p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(tmp.iterdir())
        if p.is_file()
    }
    text = json.dumps(manifest, indent=1, ensure_ascii=False)
    (tmp / folder_format.MANIFEST).write_text(text, encoding="utf-8")


def export_dataset(
    specs: list[SourceSpec], cfg: PrepareConfig, out: Path | str, overwrite: bool = False
) -> dict:
    """Tokenize ``specs`` (through the cache) and write the dataset folder ``out``
    atomically: checked before any work (never an input nor a folder holding one; an
    existing folder only with ``overwrite``, and only a dataset folder)."""
    inputs = [s.path for s in specs]
    opts = dict(inputs=inputs, overwrite=overwrite, flag="--export")
    out = check_output_dir(out, replaceable=folder_format.is_dataset_folder, **opts)
    t0 = time.perf_counter()
    entry, built = tokenize_stage(specs, cfg)
    meta = json.loads((entry / folder_format.MANIFEST).read_text(encoding="utf-8"))["meta"]
    labelled = meta["label_kind"] != "none"
    manifest = {
        "format": folder_format.FORMAT,
        "version": folder_format.VERSION,
        "columns": _columns(specs, labelled),
        "tokenizer": tokenizer_of(specs),
        "meta": meta,
    }

    def write(tmp: Path) -> None:
        for name in (*folder_format.TOKEN_FILES, "labels.npy"):
            if (entry / name).exists():
                shutil.copyfile(entry / name, tmp / name)
        _write_texts(tmp, specs, cfg, labelled)
        _finish(tmp, manifest)

    write_output_dir(out, write, replaceable=folder_format.is_dataset_folder, **opts)
    size = sum(p.stat().st_size for p in Path(out).iterdir())
    return {
        "out": str(out),
        "docs": meta["docs"],
        "tokens": meta["tokens"],
        "label_kind": meta["label_kind"],
        "classes": meta["classes"],
        "inputs": meta["inputs"],
        "bytes": size,
        "cached": not built,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _first_appearance(local: np.ndarray, strings: list[str]) -> tuple[np.ndarray, list[str]]:
    """``local`` (ids into ``strings``) renumbered in order of first appearance, as the
    tokenize stage numbers a corpus, and the strings in that order."""
    used, first = np.unique(local, return_index=True)
    order = used[np.argsort(first, kind="stable")]
    table = np.zeros(len(strings), dtype=np.int64)
    table[order] = np.arange(len(order))
    return table[local], [strings[i] for i in order]


def _write_token_files(folder: Path, local: np.ndarray, offsets: np.ndarray, strings: list) -> None:
    """The tokenize stage's files for documents ``local[offsets[i]:offsets[i+1]]`` (ids into
    ``strings``), rows 0, 1, ... of one input."""
    n = len(offsets) - 1
    local.astype(np.int32).tofile(folder / "ids.i32")
    np.save(folder / "offsets.npy", np.asarray(offsets, dtype=np.int64))
    np.save(folder / "rows.npy", np.arange(n, dtype=np.int64))
    np.save(folder / "sources.npy", np.zeros(n, dtype=np.int32))
    np.save(folder / "counts.npy", np.bincount(local, minlength=len(strings)).astype(np.int64))
    text = json.dumps(strings, ensure_ascii=False)
    (folder / "strings.json").write_text(text, encoding="utf-8")


def head_dataset(spec: SourceSpec, n: int, folder: Path) -> SourceSpec:
    """The first ``n`` documents of a dataset folder as a dataset folder of their own, text
    only (for ``--dry-run``: what ``head_specs`` makes of a text file, without tokenizing)."""
    ids, offsets, strings = folder_format.tokens(spec.path)
    n = min(n, len(offsets) - 1)
    local, kept = _first_appearance(np.asarray(ids[: offsets[n]], dtype=np.int64), strings)
    folder.mkdir(parents=True)
    _write_token_files(folder, local, offsets[: n + 1], kept)
    texts = next(folder_format.iter_docs(spec.path, n))[0]
    lines = "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in texts)
    (folder / folder_format.TEXTS).write_text(lines, encoding="utf-8")
    report = f"read {n} rows from {folder}; none skipped"
    inputs = [{"path": str(folder), "rows_read": n, "skipped_empty": 0, "report": report}]
    meta = {"docs": n, "tokens": int(offsets[n]), "label_kind": "none", "classes": []}
    manifest = {
        "format": folder_format.FORMAT,
        "version": folder_format.VERSION,
        "columns": {"text_cols": ["text"], "label_cols": None, "label_delim": None},
        "tokenizer": folder_format.manifest(spec.path)["tokenizer"],
        "meta": {**meta, "inputs": inputs},
    }
    _finish(folder, manifest)
    return SourceSpec(path=folder)


def texts_tokens(spec: SourceSpec, texts: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(ids, offsets, strings)`` of ``texts``, documents of the dataset folder ``spec``,
    taken from its tokens (what ``tokenize_texts(texts)`` gives, without tokenizing: the
    same text always has the same tokens)."""
    ids, offsets, strings = folder_format.tokens(spec.path)
    wanted = set(texts)
    doc_of: dict[str, int] = {}
    doc = 0
    for chunk, _, _ in folder_format.iter_docs(spec.path, 1000):
        for t in chunk:
            if t in wanted:
                doc_of.setdefault(t, doc)
            doc += 1
    docs = [doc_of[t] for t in texts]
    parts = [np.asarray(ids[offsets[d] : offsets[d + 1]], dtype=np.int64) for d in docs]
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    local, kept = _first_appearance(flat, strings)
    lengths = [len(p) for p in parts]
    return local, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), kept


__all__ = ["export_dataset", "head_dataset", "texts_tokens"]
