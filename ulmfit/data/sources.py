"""Read labelled or unlabelled text from tables, JSON Lines, Parquet, folders and plain-text corpora.

Everything is streamed in chunks of `chunk_rows` rows so that peak memory does not grow with the
size of the input: the same code reads a 1,000-row sample and a 50,000-review IMDb file. Every
mistake in the input (a missing file or column, bytes in the wrong encoding, a broken line) ends
in a one-line `UserError` that names the file, and the row and column where there is one, so that
a run never goes on with a silently wrong dataset.

Row numbers: `Batch.rows` and `ReadReport.skipped_empty` hold 0-based data-row indices (the
header is not a row), i.e. the index pandas would give the row; messages for people show the
1-based data-row number (index + 1).
"""

from __future__ import annotations

import codecs
import hashlib
import itertools
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ulmfit.data import dataset_folder
from ulmfit.data.reading import (
    decode_error,
    first_line,
    guarded,
    hash_file,
    open_text,
    text_encoding,
)
from ulmfit.errors import UserError

FORMATS = ("csv", "tsv", "jsonl", "parquet", "txt", "folder", "dataset")
CORPUS_MODES = ("auto", "lines", "wikitext")
FLD = "xxfld"  # fastai's field marker, put before each of several text columns
WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")

_SUFFIX_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "txt",
}
_MAX_LISTED = 10  # rows shown in a summary or message before "and N more"


@dataclass
class SourceSpec:
    """Where the texts (and labels) are, and how to read them."""

    path: Path  # file or folder
    text_cols: list[str] | None = None  # None -> "text" for tables; ignored for corpora/folders
    label_cols: list[str] | None = None  # None -> no labels (a folder gets them from subfolders)
    label_delim: str | None = None  # several labels in one column, e.g. " " for GoEmotions
    fmt: str | None = None  # None -> guessed from the suffix (see guess_format)
    encoding: str = "utf-8"
    corpus_mode: str = "auto"  # for .txt corpora: "lines", "wikitext" or "auto"

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.fmt in (None, "dataset") and dataset_folder.is_dataset_folder(self.path):
            # its texts and labels were read with the columns given to prepare: those are its
            # columns (what a command asks or defaults to is not asked of a folder)
            cols = dataset_folder.columns(self.path)
            self.text_cols, self.label_cols = cols["text_cols"], cols["label_cols"]
            self.label_delim, self.fmt = cols["label_delim"], "dataset"


@dataclass
class Batch:
    """One chunk of kept rows, in input order.

    `labels[i]` is the raw label of row i: a scalar with one label column (str for CSV/TSV and
    folders, the JSON/Parquet value otherwise), a tuple with several label columns, a list of
    str when `label_delim` splits the cell (or when a JSON value is a list), and None where the
    cell is empty. `labels` is None for an unlabelled source.
    """

    texts: list[str]
    labels: list | None
    rows: list[int]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class ReadReport:
    """What iter_source saw, so that callers can tell the user which rows were dropped and why."""

    rows_read: int = 0
    skipped_empty: list[int] = field(default_factory=list)  # 0-based rows with no text
    skipped_names: list[str] = field(default_factory=list)  # folder sources: their file names
    path: str = ""
    fmt: str = ""

    @property
    def rows_kept(self) -> int:
        return self.rows_read - len(self.skipped_empty)

    def summary(self) -> str:
        """A one-line account for people, e.g. "read 10 rows; skipped 3 rows with no text (rows 4, 9, 17)"."""
        head = f"read {_rows(self.rows_read)}" + (f" from {self.path}" if self.path else "")
        n = len(self.skipped_empty)
        if n == 0:
            return f"{head}; none skipped"
        names = self.skipped_names or [str(r + 1) for r in self.skipped_empty]
        what = "files" if self.skipped_names else "rows"
        return f"{head}; skipped {_rows(n)} with no text ({what} {_listing(names)})"


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _listing(items: list[str], limit: int = _MAX_LISTED) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


# ---------------------------------------------------------------------------------------------
# Public entry points


def guess_format(path: Path) -> str:
    """The reader to use: a folder, or the file suffix (a trailing .gz is looked through)."""
    path = Path(path)
    if path.is_dir():
        return "dataset" if dataset_folder.is_dataset_folder(path) else "folder"
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    fmt = _SUFFIX_FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise UserError(
            f"{path}: cannot tell the format from the name; use one of .csv, .tsv, .jsonl, "
            f".parquet, .txt (optionally .gz) or a folder, or give the format ({', '.join(FORMATS)})"
        )
    return fmt


def iter_source(
    spec: SourceSpec, chunk_rows: int = 2000, report: ReadReport | None = None
) -> Iterator[Batch]:
    """Yield the kept rows of `spec` in input order, `chunk_rows` input rows at a time.

    Rows whose text is empty or whitespace only are dropped and listed in `report`; labels are
    passed on raw (see Batch) so that labels.encode_labels can check them with row numbers.
    Raises UserError for input that cannot be read as asked, and when no row has any text.
    The path and settings are checked at the call; the file is read as the batches are taken.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    report = report if report is not None else ReadReport()
    fmt = _check_spec(spec)
    report.path, report.fmt = str(spec.path), fmt
    return _iter_checked(spec, fmt, chunk_rows, report)


def _iter_checked(
    spec: SourceSpec, fmt: str, chunk_rows: int, report: ReadReport
) -> Iterator[Batch]:
    readers: dict[str, Callable[[SourceSpec, int, ReadReport], Iterator[Batch]]] = {
        "csv": _iter_delimited,
        "tsv": _iter_delimited,
        "jsonl": _iter_jsonl,
        "parquet": _iter_parquet,
        "txt": _iter_corpus,
        "folder": _iter_folder,
        "dataset": _iter_dataset,
    }
    yield from readers[fmt](spec, chunk_rows, report)
    if report.rows_read == 0:
        raise UserError(f"{spec.path}: no data rows (the file is empty or has only a header)")
    if report.rows_kept == 0:
        raise UserError(
            f"{spec.path}: all {report.rows_read} rows have no text"
            + (f" in column(s) {', '.join(_text_cols(spec))}" if fmt in _TABLES else "")
        )


def file_fingerprint(spec: SourceSpec) -> str:
    """SHA-256 (hex) of the input bytes, the key that tells a cached run its input is unchanged.

    Files are hashed as stored (a .gz file by its compressed bytes); a folder by the sorted
    relative paths of the .txt files that iter_source would read, each followed by its bytes.
    """
    path = spec.path
    fmt = _check_spec(spec)
    if fmt == "dataset":
        return dataset_folder.fingerprint(path)
    digest = hashlib.sha256()
    if fmt != "folder":
        hash_file(digest, path)
        return digest.hexdigest()
    for rel, file in _folder_files(path):
        name = rel.encode("utf-8")
        digest.update(len(name).to_bytes(8, "little") + name)
        digest.update(file.stat().st_size.to_bytes(8, "little"))
        hash_file(digest, file)
    return digest.hexdigest()


def join_fields(fields: list[str]) -> str:
    """Several text columns as one text, exactly like fastai v2's _join_texts(mark_fields=True)."""
    if len(fields) == 1:
        return fields[0]
    text = f"{FLD} 1 " + fields[0]
    for i in range(1, len(fields)):
        text += f" {FLD} {i + 1} " + fields[i]
    return text


def frame_texts(frame: Any, text_cols: list[str] | None = None) -> list[str]:
    """The text of every row of a pandas DataFrame, in row order, from ``text_cols``
    (default ``text``) joined as a file's columns are (empty where a row has no text)."""
    spec = SourceSpec(path=Path("DataFrame"), text_cols=list(text_cols) if text_cols else None)
    _check_columns(spec, frame.columns)
    cols = _text_cols(spec)
    values = {c: frame[c].tolist() for c in cols}
    return [
        join_fields([_field_text(spec, values[c][i], i, c) for c in cols])
        for i in range(len(frame))
    ]


# ---------------------------------------------------------------------------------------------
# Checks shared by every reader

_TABLES = ("csv", "tsv", "jsonl", "parquet")


def _check_spec(spec: SourceSpec) -> str:
    """Fail early, with the path, on a missing input or settings that cannot work together."""
    path = spec.path
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    fmt = spec.fmt or guess_format(path)
    if fmt not in FORMATS:
        raise UserError(f"{path}: unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    if (fmt in ("folder", "dataset")) != path.is_dir():
        kind = "a folder" if path.is_dir() else "a file"
        raise UserError(f"{path}: is {kind}, which cannot be read as format {fmt!r}")
    if fmt == "dataset" and not dataset_folder.is_dataset_folder(path):
        raise UserError(f"{path}: not a dataset folder (written by ulmfit prepare --export)")
    if spec.corpus_mode not in CORPUS_MODES:
        raise UserError(
            f"{path}: unknown corpus mode {spec.corpus_mode!r} (known: {', '.join(CORPUS_MODES)})"
        )
    try:
        codecs.lookup(spec.encoding)
    except LookupError:
        raise UserError(f"{path}: unknown encoding {spec.encoding!r}") from None
    if spec.label_delim is not None and fmt in _TABLES:
        if spec.label_delim == "":
            raise UserError(f"{path}: the label delimiter is empty")
        if spec.label_cols is None or len(spec.label_cols) != 1:
            raise UserError(
                f"{path}: a label delimiter needs exactly one label column, got {spec.label_cols}"
            )
    if fmt in _TABLES and spec.text_cols is not None and len(spec.text_cols) == 0:
        raise UserError(f"{path}: no text column given")
    return fmt


def _text_cols(spec: SourceSpec) -> list[str]:
    return list(spec.text_cols) if spec.text_cols else ["text"]


def _needed_cols(spec: SourceSpec) -> list[str]:
    """Text then label columns, each once, in the order given."""
    return list(dict.fromkeys(_text_cols(spec) + list(spec.label_cols or [])))


def _check_columns(spec: SourceSpec, present: Iterable[str], where: str = "") -> None:
    present = [str(c) for c in present]
    for col in _needed_cols(spec):
        if col not in present:
            raise UserError(
                f"{spec.path}: no column {_excerpt(col)!r}{where} (columns: {_names(present)})"
            )


_SHOWN_NAMES = 20  # column names listed in an error message
_SHOWN_CHARS = 40  # characters shown of each


def _excerpt(text: str, limit: int = _SHOWN_CHARS) -> str:
    """``text`` on one line and cut to about ``limit`` characters: a file with no line break
    (or the wrong separator) makes one "column name" of the whole file."""
    if not text.isprintable():
        text = repr(text)[1:-1]
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _names(names: list[str]) -> str:
    """The columns of a file for an error message: the first few, each cut short."""
    shown = ", ".join(_excerpt(n) for n in names[:_SHOWN_NAMES])
    more = len(names) - _SHOWN_NAMES
    return (shown + (f", ... ({more:,} more)" if more > 0 else "")) or "none"


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _field_text(spec: SourceSpec, value: Any, row: int, col: str) -> str:
    """A text cell as str: missing -> "", numbers as written; nested JSON values are refused."""
    if _is_missing(value):
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple, bytes)):
        raise UserError(
            f"{spec.path}: row {row + 1}, column {col!r}: the text is a {type(value).__name__}, "
            "not a string"
        )
    return str(value)


def _raw_label(spec: SourceSpec, values: list[Any]) -> Any:
    """The raw label of a row: one value, a tuple for several columns, a list when delimited."""
    if len(values) > 1:
        return tuple(None if _is_missing(v) else v for v in values)
    value = values[0]
    if _is_missing(value):
        return None
    if spec.label_delim is not None and isinstance(value, str):
        parts = [p.strip() for p in value.split(spec.label_delim)]
        parts = [p for p in parts if p]
        return parts or None
    return value


def _batch_from_columns(
    spec: SourceSpec, columns: dict[str, list[Any]], first_row: int, report: ReadReport
) -> Batch | None:
    """Build a Batch from column lists of one chunk, dropping (and reporting) rows with no text."""
    text_cols = _text_cols(spec)
    label_cols = spec.label_cols
    n = len(columns[text_cols[0]])
    texts: list[str] = []
    labels: list[Any] | None = [] if label_cols else None
    rows: list[int] = []
    for i in range(n):
        row = first_row + i
        fields = [_field_text(spec, columns[c][i], row, c) for c in text_cols]
        if all(not f.strip() for f in fields):
            report.skipped_empty.append(row)
            continue
        texts.append(join_fields(fields))
        rows.append(row)
        if labels is not None:
            labels.append(_raw_label(spec, [columns[c][i] for c in label_cols]))
    report.rows_read += n
    return Batch(texts, labels, rows) if texts else None


# ---------------------------------------------------------------------------------------------
# CSV / TSV (pandas, in chunks)


def _iter_delimited(spec: SourceSpec, chunk_rows: int, report: ReadReport) -> Iterator[Batch]:
    """CSV/TSV through pandas' C parser, `chunk_rows` rows at a time, all cells read as strings.

    Quoting follows pandas' defaults for both (RFC-4180 style, as written by csv / to_csv).
    Blank lines are not rows (as for pd.read_csv), so row indices match pandas' index.
    """
    import pandas as pd

    fmt = spec.fmt or guess_format(spec.path)
    options: dict[str, Any] = dict(
        sep="\t" if fmt == "tsv" else ",",
        dtype=str,
        keep_default_na=False,
        na_values=[""],
        encoding=spec.encoding,
        compression="gzip" if spec.path.suffix.lower() == ".gz" else None,
    )

    def extra(err: BaseException) -> UserError | None:
        if isinstance(err, pd.errors.EmptyDataError):
            return UserError(f"{spec.path}: the file is empty (no header row)")
        if isinstance(err, pd.errors.ParserError | ValueError):
            return UserError(f"{spec.path}: cannot parse as {fmt.upper()}: {first_line(err)}")
        return None

    def batches() -> Iterator[Batch]:
        header = pd.read_csv(spec.path, nrows=0, **options).columns
        _check_columns(spec, header)
        cols = _needed_cols(spec)
        first = 0
        # No usecols: with it pandas silently drops the extra fields of a row that has too many.
        with pd.read_csv(spec.path, chunksize=chunk_rows, **options) as reader:
            for chunk in reader:
                if not isinstance(chunk.index, pd.RangeIndex):
                    raise _implicit_index_error(spec, fmt, len(header))
                columns = {c: chunk[c].to_numpy(dtype=object, na_value=None).tolist() for c in cols}
                batch = _batch_from_columns(spec, columns, first, report)
                first += len(chunk)
                if batch is not None:
                    yield batch

    yield from guarded(spec.path, spec.encoding, batches(), extra)


def _implicit_index_error(spec: SourceSpec, fmt: str, n_cols: int) -> UserError:
    """pandas takes a first data row with one field more than the header as "the first column
    is the index" and shifts every column by one; refuse that instead of reading it wrongly."""
    sep = "tab" if fmt == "tsv" else "comma"
    return UserError(
        f"{spec.path}: row 1 has more fields than the {n_cols} columns of the header; "
        f"quote texts that contain a {sep}, or remove the {sep} at the end of the lines"
    )


# ---------------------------------------------------------------------------------------------
# JSON Lines (one object per line, parsed line by line)


def _iter_jsonl(spec: SourceSpec, chunk_rows: int, report: ReadReport) -> Iterator[Batch]:
    """One JSON object per line; blank lines are not rows. A key absent from a row is a missing
    value there, but the first row must have every asked column (so a typo fails at once)."""
    cols = _needed_cols(spec)

    def batches() -> Iterator[Batch]:
        columns: dict[str, list[Any]] = {c: [] for c in cols}
        first = 0
        row = 0
        with open_text(spec.path, spec.encoding) as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                obj = _parse_json_line(spec.path, line, line_no)
                if row == 0:
                    _check_columns(spec, obj.keys(), where=" in the first row")
                for c in cols:
                    columns[c].append(obj.get(c))
                row += 1
                if row - first == chunk_rows:
                    batch = _batch_from_columns(spec, columns, first, report)
                    columns, first = {c: [] for c in cols}, row
                    if batch is not None:
                        yield batch
        if row > first:
            batch = _batch_from_columns(spec, columns, first, report)
            if batch is not None:
                yield batch

    yield from guarded(spec.path, spec.encoding, batches(), lambda err: None)


def _parse_json_line(path: Path, line: str, line_no: int) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(
            f"{path}: line {line_no} is not valid JSON ({err.msg} at column {err.colno}); "
            "expected JSON Lines, one object per line"
        ) from None
    if not isinstance(obj, dict):
        raise UserError(
            f"{path}: line {line_no} is a JSON {type(obj).__name__}, not an object; "
            "expected JSON Lines, one object per line"
        )
    return obj


# ---------------------------------------------------------------------------------------------
# Parquet (pyarrow record batches)


def _iter_parquet(spec: SourceSpec, chunk_rows: int, report: ReadReport) -> Iterator[Batch]:
    """Only the needed columns, `chunk_rows` rows at a time, through ParquetFile.iter_batches."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(spec.path)
    except (pa.ArrowException, OSError) as err:
        raise UserError(f"{spec.path}: not a readable Parquet file ({first_line(err)})") from None
    _check_columns(spec, pf.schema_arrow.names)
    cols = _needed_cols(spec)
    first = 0
    for record_batch in pf.iter_batches(batch_size=chunk_rows, columns=cols):
        columns = {c: record_batch.column(c).to_pylist() for c in cols}
        batch = _batch_from_columns(spec, columns, first, report)
        first += record_batch.num_rows
        if batch is not None:
            yield batch


# ---------------------------------------------------------------------------------------------
# Folder per class (aclImdb style)


def _natural_key(name: str) -> tuple:
    """Sort "2.txt" before "10.txt"; ties fall back to the plain name, so the order is total."""
    parts = re.split(r"(\d+)", name)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


def _txt_files(folder: Path) -> list[Path]:
    files = [
        p for p in folder.iterdir() if p.suffix.lower() == ".txt" and not p.name.startswith(".")
    ]
    return sorted((p for p in files if p.is_file()), key=lambda p: _natural_key(p.name))


def _class_folders(root: Path) -> list[Path]:
    """Subfolders holding at least one .txt file, sorted; each is a class named after itself."""
    subs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted((p for p in subs if _txt_files(p)), key=lambda p: _natural_key(p.name))


def folder_classes(root: Path) -> list[str]:
    """The class names a folder source gives its documents (empty when it has no subfolders)."""
    return [p.name for p in _class_folders(Path(root))]


def _folder_files(root: Path) -> list[tuple[str, Path]]:
    """(relative posix path, file) of every document, in reading order.

    With class subfolders, only their .txt files are read (loose .txt files beside them, such
    as aclImdb's urls_*.txt, are not documents); without, the .txt files directly in `root`.
    """
    classes = _class_folders(root)
    if classes:
        return [(f"{c.name}/{f.name}", f) for c in classes for f in _txt_files(c)]
    files = [(f.name, f) for f in _txt_files(root)]
    if not files:
        raise UserError(f"{root}: no .txt files in the folder or in its subfolders")
    return files


def _iter_folder(spec: SourceSpec, chunk_rows: int, report: ReadReport) -> Iterator[Batch]:
    """Each .txt file is one document, read whole; its label is its subfolder's name, if any."""
    root = spec.path
    files = _folder_files(root)
    labelled = "/" in files[0][0]
    for start in range(0, len(files), chunk_rows):
        texts: list[str] = []
        labels: list[Any] | None = [] if labelled else None
        rows: list[int] = []
        for row, (rel, file) in enumerate(files[start : start + chunk_rows], start=start):
            text = _read_whole(file, spec.encoding)
            if not text.strip():
                report.skipped_empty.append(row)
                report.skipped_names.append(rel)
                continue
            texts.append(text)
            rows.append(row)
            if labels is not None:
                labels.append(rel.split("/", 1)[0])
        report.rows_read += min(chunk_rows, len(files) - start)
        if texts:
            yield Batch(texts, labels, rows)


def _read_whole(file: Path, encoding: str) -> str:
    data = file.read_bytes()
    try:
        return data.decode(text_encoding(encoding))
    except UnicodeDecodeError as err:
        raise decode_error(file, encoding, err) from None


def _iter_dataset(spec: SourceSpec, chunk_rows: int, report: ReadReport) -> Iterator[Batch]:
    """A dataset folder's documents as its inputs gave them: texts, raw labels and rows."""
    total, skipped = dataset_folder.rows_read(spec.path)
    for texts, labels, rows in dataset_folder.iter_docs(spec.path, chunk_rows):
        yield Batch(texts, labels, rows)
    report.rows_read += total
    report.skipped_empty.extend(skipped)


# ---------------------------------------------------------------------------------------------
# Plain-text corpora: one document per line, or WikiText-style articles


def _iter_corpus(spec: SourceSpec, chunk_rows: int, report: ReadReport) -> Iterator[Batch]:
    """Documents of a .txt corpus, streamed line by line, `chunk_rows` documents per batch."""

    def batches() -> Iterator[Batch]:
        with open_text(spec.path, spec.encoding) as f:
            lines = (line.rstrip("\r\n") for line in f)
            mode, lines = _corpus_mode(spec.corpus_mode, lines)
            docs = _wikitext_docs(lines) if mode == "wikitext" else _line_docs(lines)
            row = 0
            while chunk := list(itertools.islice(docs, chunk_rows)):
                report.rows_read += len(chunk)
                yield Batch(chunk, None, list(range(row, row + len(chunk))))
                row += len(chunk)

    yield from guarded(spec.path, spec.encoding, batches(), lambda err: None)


def _corpus_mode(mode: str, lines: Iterator[str]) -> tuple[str, Iterator[str]]:
    """Resolve "auto" by the first non-empty line; give back the lines including those peeked."""
    if mode != "auto":
        return mode, lines
    peeked: list[str] = []
    for line in lines:
        peeked.append(line)
        if line.strip():
            break
    found = "wikitext" if peeked and WIKITEXT_TITLE.match(peeked[-1]) else "lines"
    return found, itertools.chain(peeked, lines)


def _line_docs(lines: Iterable[str]) -> Iterator[str]:
    """One document per non-empty line; blank lines are separators, not documents."""
    return (line for line in lines if line.strip())


def _wikitext_docs(lines: Iterable[str]) -> Iterator[str]:
    """Articles that start at each ` = Title = ` line: the title line and what follows it up to
    the next title, joined with "\\n", without the blank lines at either end. Text before the
    first title is a document of its own unless it is blank."""
    doc: list[str] = []
    for line in lines:
        if WIKITEXT_TITLE.match(line) and doc:
            text = _strip_blank_ends(doc)
            if text:
                yield text
            doc = []
        doc.append(line)
    text = _strip_blank_ends(doc)
    if text:
        yield text


def _strip_blank_ends(lines: list[str]) -> str:
    start, end = 0, len(lines)
    while start < end and not lines[start].strip():
        start += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return "\n".join(lines[start:end])
