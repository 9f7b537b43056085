"""Sources -> tokens -> numbers, each stage cached on disk under a hash of all it depends on.

Stage ``tokens``: read the inputs in chunks, tokenize on every core, write one flat int32 array
of corpus-wide token ids (numbered by first appearance), document offsets, the token strings
and their counts, and the checked labels. Stage ``numbers``: build the vocabulary from the
counts and write the corpus as uint16 ids (memory-mapped by readers). A second run over
unchanged inputs and settings only hashes the input files and checks the stored entry.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
import time
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ulmfit.cache import Cache
from ulmfit.data import dataset_folder
from ulmfit.data.sources import ReadReport, SourceSpec, file_fingerprint, guess_format, iter_source
from ulmfit.errors import UserError
from ulmfit.text.vocab import VocabConfig, build_vocab, id_dtype, load_vocab, save_vocab

# Bump when a stage's output for the same inputs changes (part of the cache keys).
TOKENS_VERSION = 1
NUMBERS_VERSION = 1


@dataclass
class PrepareConfig:
    """Every setting of ``prepare``; the ones that change the output are in the cache keys."""

    workers: int = 0  # 0 = all cores
    chunk_docs: int = 1000  # documents per task sent to a worker
    vocab: VocabConfig = field(default_factory=VocabConfig)
    label_kind: str | None = None  # None = inferred (single / multi / float)
    cache_dir: Path | None = None  # None = $ULMFIT_CACHE or ~/.cache/ulmfit
    progress: bool | None = None  # None = only when stderr is a terminal


@dataclass
class Prepared:
    """A numericalized corpus: ``ids[offsets[i]:offsets[i+1]]`` is document i (xxbos first)."""

    path: Path
    ids: np.ndarray  # memory-mapped, uint16 when the vocabulary fits
    offsets: np.ndarray  # int64, n_docs + 1
    vocab: list[str]
    rows: np.ndarray  # each document's 0-based row in its input
    sources: np.ndarray  # each document's input (index into meta["inputs"])
    labels: np.ndarray | None
    label_kind: str
    classes: list[str]
    meta: dict
    cached: bool = False

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def doc(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    @classmethod
    def load(cls, entry: Path, cached: bool = False) -> Prepared:
        manifest = json.loads((entry / "manifest.json").read_text())
        meta = manifest["meta"]
        labels = np.load(entry / "labels.npy") if (entry / "labels.npy").exists() else None
        return cls(
            path=entry,
            ids=np.load(entry / "ids.npy", mmap_mode="r"),
            # per-document arrays mapped too: a corpus of many GB has tens of millions of docs
            offsets=np.load(entry / "offsets.npy", mmap_mode="r"),
            vocab=load_vocab(entry / "vocab.json"),
            rows=np.load(entry / "rows.npy", mmap_mode="r"),
            sources=np.load(entry / "sources.npy", mmap_mode="r"),
            labels=labels,
            label_kind=meta["label_kind"],
            classes=meta["classes"],
            meta=meta,
            cached=cached,
        )

    def summary(self) -> dict:
        """The figures ``ulmfit prepare --json`` prints."""
        m = self.meta
        out = {
            "docs": m["docs"],
            "tokens": m["tokens"],
            "vocab_size": m["vocab_size"],
            "unk_rate": m["unk_rate"],
            "label_kind": self.label_kind,
            "classes": self.classes,
            "inputs": m["inputs"],
            "cache": str(self.path),
            "cached": self.cached,
        }
        if self.labels is not None and self.label_kind == "single":
            counts = np.bincount(self.labels, minlength=len(self.classes))
            out["class_counts"] = dict(zip(self.classes, counts.tolist()))
        return out


def _spec_settings(spec: SourceSpec) -> dict:
    """What, besides its bytes, decides how an input is read."""
    return {
        "fmt": spec.fmt or guess_format(spec.path),
        "text_cols": spec.text_cols,
        "label_cols": spec.label_cols,
        "label_delim": spec.label_delim,
        "encoding": spec.encoding,
        "corpus_mode": spec.corpus_mode,
    }


def _tokenizer_settings() -> dict:
    from importlib.metadata import version

    from ulmfit.text.rules import DEFAULT_RULES, SPECIAL_TOKENS

    return {
        "rules": [r.__name__ for r in DEFAULT_RULES],
        "special_tokens": SPECIAL_TOKENS,
        "spacy": version("spacy"),
        "lang": "en",
    }


def is_dataset(spec: SourceSpec) -> bool:
    """Whether ``spec`` is a dataset folder (``prepare --export``): tokens, no tokenizing."""
    return (spec.fmt or guess_format(spec.path)) == "dataset"


def tokenizer_of(specs: list[SourceSpec]) -> dict:
    """The tokenizer settings of the tokens: those stored in the dataset folders when every
    input is one (no spaCy needed, nor installed), else this machine's, which a folder's must
    match in everything but the spaCy version to be mixed with text tokenized here."""
    stored = [dataset_folder.manifest(s.path)["tokenizer"] for s in specs if is_dataset(s)]
    here = stored[0] if len(stored) == len(specs) else _tokenizer_settings()
    for spec, settings in zip([s for s in specs if is_dataset(s)], stored):
        if {**settings, "spacy": None} != {**here, "spacy": None}:
            raise UserError(
                f"{spec.path}: tokenized with other rules or special tokens than the other "
                "inputs; prepare them separately"
            )
    return here


def tokens_key(specs: list[SourceSpec], cfg: PrepareConfig) -> str:
    from ulmfit.cache import key_of

    return key_of(
        {
            "stage": "tokens",
            "version": TOKENS_VERSION,
            "tokenizer": tokenizer_of(specs),
            "label_kind": cfg.label_kind,
            "inputs": [[file_fingerprint(s), _spec_settings(s)] for s in specs],
        }
    )


def _input_size(path: Path) -> int:
    """Bytes of text to expect (a .gz file's stored size of its content), for the ETA."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*.txt"))
    size = path.stat().st_size
    if path.suffix == ".gz" and size >= 4:
        with open(path, "rb") as f:
            f.seek(-4, 2)
            isize = int.from_bytes(f.read(4), "little")
        size = isize + (1 << 32) * (size * 4 // (1 << 32))  # ISIZE is stored mod 2**32
    return size


def _progress(cfg: PrepareConfig, specs: list[SourceSpec]):
    from tqdm import tqdm

    show = sys.stderr.isatty() if cfg.progress is None else cfg.progress
    return tqdm(total=None, unit="doc", desc="tokenize", disable=not show, dynamic_ncols=True)


_NPY_CHUNK = 1 << 22  # items per read when turning a raw file into .npy


def _raw_to_npy(raw: Path, dtype, path: Path, cumulative: bool = False) -> None:
    """``raw`` (native-endian ``dtype`` items, as written) as the ``.npy`` file ``path``, a
    chunk at a time; ``cumulative``: instead, the running sums with a leading 0 (document
    lengths -> offsets). ``raw`` is removed."""
    dtype = np.dtype(dtype)
    n = raw.stat().st_size // dtype.itemsize
    shape = (n + 1,) if cumulative else (n,)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    with open(raw, "rb") as src, open(path, "wb") as out:
        np.lib.format.write_array_header_1_0(out, header)
        total = 0
        if cumulative:
            out.write(np.zeros(1, dtype=dtype).tobytes())
        while chunk := src.read(dtype.itemsize * _NPY_CHUNK):
            values = np.frombuffer(chunk, dtype=dtype)
            if cumulative:
                values = np.cumsum(values) + total
                total = int(values[-1])
            out.write(values.tobytes())
    raw.unlink()


def _share_file(src: Path, dst: Path) -> None:
    """``dst`` with ``src``'s bytes: a hard link (cache entries are never modified), or a
    streamed copy where links are not possible."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _label_kind(specs: list[SourceSpec], cfg: PrepareConfig) -> str:
    """The one kind of labels every input has ("none" when unlabelled)."""
    from ulmfit.data.labels import infer_label_kind

    kinds = [infer_label_kind(s, cfg.label_kind) for s in specs]
    labelled = [k != "none" for k in kinds]
    if any(labelled) and not all(labelled):
        raise UserError("some inputs have labels and some do not; prepare them separately")
    if len(set(kinds)) > 1:
        raise UserError(f"the inputs have different kinds of labels: {', '.join(kinds)}")
    return kinds[0] if specs else "none"


def _dataset_encoded(spec: SourceSpec, k: int, cfg: PrepareConfig, report: ReadReport, numberer):
    """The batches of a dataset folder with its tokens numbered as if its texts were
    tokenized here: its strings are numbered by first appearance too, so each chunk's new
    strings are the next ones of its list (exactly what a tokenizing worker sends)."""
    from ulmfit.text.parallel import Encoded

    ids, offsets, strings = dataset_folder.tokens(spec.path)
    doc = sent = 0
    for b in iter_source(spec, chunk_rows=cfg.chunk_docs, report=report):
        b.source = k
        local = np.asarray(ids[offsets[doc] : offsets[doc + len(b)]], dtype=np.int64)
        top = int(local.max()) + 1 if len(local) else sent
        new, sent = strings[sent:top], max(sent, top)
        lengths = np.diff(offsets[doc : doc + len(b) + 1])
        yield b, Encoded(numberer.add(-1 - k, local, new), lengths)
        doc += len(b)


def _encoded(specs: list[SourceSpec], cfg: PrepareConfig, reports: list, workers: int, numberer):
    """``(batch, Encoded)`` of every input in order: text tokenized on ``workers`` processes
    (a run of text inputs at a time), dataset folders' tokens taken as they are."""
    from ulmfit.text.parallel import encode_chunks

    k = 0
    while k < len(specs):
        if is_dataset(specs[k]):
            yield from _dataset_encoded(specs[k], k, cfg, reports[k], numberer)
            k += 1
            continue
        run = list(itertools.takewhile(lambda j: not is_dataset(specs[j]), range(k, len(specs))))

        def batches(run=run):
            for j in run:
                for b in iter_source(specs[j], chunk_rows=cfg.chunk_docs, report=reports[j]):
                    b.source = j
                    yield b

        # closed here, not whenever it is collected: an error stops the workers at once
        with closing(encode_chunks(batches(), workers, numberer)) as encoded:
            yield from encoded
        k = run[-1] + 1


def _write_labels(tmp: Path, specs: list[SourceSpec], kind: str, raw_labels: list) -> list[str]:
    """Check and encode the labels of every document into ``labels.npy``; their classes."""
    from ulmfit.data.labels import encode_labels

    spec = specs[0]
    where = str(spec.path) if len(specs) == 1 else ", ".join(str(s.path) for s in specs)
    cols = (
        spec.label_cols
        if spec.label_cols and len(spec.label_cols) > 1
        else (spec.label_cols[0] if spec.label_cols else "folder")
    )
    rows_all = np.load(tmp / "rows.npy")
    ls = encode_labels(raw_labels, kind, rows_all.tolist(), where, cols)
    np.save(tmp / "labels.npy", ls.values)
    return list(ls.classes)


def _write_tokens(tmp: Path, specs: list[SourceSpec], cfg: PrepareConfig) -> dict:
    from ulmfit.text.parallel import CorpusNumberer, default_workers

    t0 = time.perf_counter()
    workers = cfg.workers or default_workers()
    numberer = CorpusNumberer()
    reports = [ReadReport() for _ in specs]
    kind = _label_kind(specs, cfg)
    total_bytes = sum(_input_size(s.path) for s in specs)
    raw_labels: list = []
    done_chars = 0
    n_tokens = n_docs = 0
    # Every per-document array goes to disk as it comes (a corpus of many GB has tens of
    # millions of documents): memory stays flat whatever the number of documents.
    with (
        open(tmp / "ids.i32", "wb") as out,
        open(tmp / "lengths.raw", "wb") as lengths,
        open(tmp / "rows.raw", "wb") as rows,
        open(tmp / "sources.raw", "wb") as sources,
        _progress(cfg, specs) as bar,
        closing(_encoded(specs, cfg, reports, workers, numberer)) as encoded,
    ):
        for batch, enc in encoded:
            out.write(enc.ids.tobytes())
            n_tokens += len(enc.ids)
            n_docs += len(enc.lengths)
            lengths.write(np.asarray(enc.lengths, dtype=np.int64).tobytes())
            rows.write(np.asarray(batch.rows, dtype=np.int64).tobytes())
            sources.write(np.full(len(batch.rows), batch.source, dtype=np.int32).tobytes())
            if batch.labels is not None:
                raw_labels.extend(batch.labels)
            done_chars += sum(len(t) for t in batch.texts)
            bar.update(len(batch.texts))
            if done_chars:
                bar.total = max(bar.n, int(bar.n * total_bytes / done_chars))
    _raw_to_npy(tmp / "lengths.raw", np.int64, tmp / "offsets.npy", cumulative=True)
    _raw_to_npy(tmp / "rows.raw", np.int64, tmp / "rows.npy")
    _raw_to_npy(tmp / "sources.raw", np.int32, tmp / "sources.npy")
    (tmp / "strings.json").write_text(json.dumps(numberer.itos, ensure_ascii=False))
    np.save(tmp / "counts.npy", numberer.counts[: len(numberer.itos)])
    classes = _write_labels(tmp, specs, kind, raw_labels) if kind != "none" else []
    return {
        "docs": n_docs,
        "tokens": int(n_tokens),
        "label_kind": kind,
        "classes": classes,
        "inputs": [
            {
                "path": str(s.path),
                "rows_read": r.rows_read,
                "skipped_empty": len(r.skipped_empty),
                "report": r.summary(),
            }
            for s, r in zip(specs, reports)
        ],
        "workers": workers,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _write_numbers(tmp: Path, tok_entry: Path, cfg: PrepareConfig) -> dict:
    tok_meta = json.loads((tok_entry / "manifest.json").read_text())["meta"]
    strings = json.loads((tok_entry / "strings.json").read_text())
    counts = np.load(tok_entry / "counts.npy")
    vocab = build_vocab(strings, counts, cfg.vocab)
    if len(vocab) > np.iinfo(np.int32).max:
        raise UserError("vocabulary too large")
    stoi = {t: i for i, t in enumerate(vocab)}
    remap = np.fromiter((stoi.get(s, 0) for s in strings), dtype=np.int64, count=len(strings))
    dtype = id_dtype(len(vocab))
    n = int(tok_meta["tokens"])
    step = 1 << 22  # 4M tokens at a time: memory stays flat whatever the corpus size
    n_unk = 0
    # Plain reads and writes rather than memory maps, so that the pages of the corpus are not
    # counted in this process's resident memory.
    with open(tok_entry / "ids.i32", "rb") as src, open(tmp / "ids.npy", "wb") as out:
        header = {
            "descr": np.lib.format.dtype_to_descr(dtype),
            "fortran_order": False,
            "shape": (n,),
        }
        np.lib.format.write_array_header_1_0(out, header)
        while chunk := src.read(4 * step):
            ids = remap[np.frombuffer(chunk, dtype=np.int32)]
            n_unk += int(np.count_nonzero(ids == 0))
            out.write(ids.astype(dtype).tobytes())
    save_vocab(vocab, tmp / "vocab.json")
    for name in ("offsets.npy", "rows.npy", "sources.npy", "labels.npy"):
        if (tok_entry / name).exists():
            _share_file(tok_entry / name, tmp / name)
    return {
        **tok_meta,
        "vocab_size": len(vocab),
        "vocab": asdict(cfg.vocab),
        "unk_rate": round(n_unk / max(1, n), 6),
        "tokens_entry": tok_entry.name,
    }


def _tokens(specs: list[SourceSpec], cfg: PrepareConfig, tkey: str) -> tuple[Path, bool]:
    """The tokens entry: a dataset folder given alone is one (nothing is copied or
    tokenized); other inputs are tokenized into the cache."""
    if len(specs) == 1 and is_dataset(specs[0]):
        meta = dataset_folder.manifest(specs[0].path)["meta"]
        if cfg.label_kind in (None, meta["label_kind"]):
            return specs[0].path, False
    cache = Cache(cfg.cache_dir)
    return cache.build("tokens", tkey, lambda tmp: _write_tokens(tmp, specs, cfg))


def tokenize_stage(specs: list[SourceSpec], cfg: PrepareConfig) -> tuple[Path, bool]:
    """The cached tokens of ``specs`` (entry folder, whether it was computed now)."""
    if not specs:
        raise UserError("no input given")
    return _tokens(specs, cfg, tokens_key(specs, cfg))


def prepare(specs: list[SourceSpec], cfg: PrepareConfig | None = None) -> Prepared:
    """Tokenize, numericalize and cache ``specs``; a repeat call with the same inputs is a lookup."""
    from ulmfit.cache import key_of

    cfg = cfg or PrepareConfig()
    if not specs:
        raise UserError("no input given")
    t0 = time.perf_counter()
    cache = Cache(cfg.cache_dir)
    tkey = tokens_key(specs, cfg)
    nkey = key_of(
        {"stage": "numbers", "version": NUMBERS_VERSION, "tokens": tkey, "vocab": asdict(cfg.vocab)}
    )
    entry = cache.load("numbers", nkey)
    if entry is not None:
        data = Prepared.load(entry, cached=True)
    else:
        tok_entry, _ = _tokens(specs, cfg, tkey)
        entry, built = cache.build("numbers", nkey, lambda tmp: _write_numbers(tmp, tok_entry, cfg))
        data = Prepared.load(entry, cached=not built)
    _current_paths(data.meta, specs)
    data.meta["seconds"] = round(time.perf_counter() - t0, 3)
    return data


def _current_paths(meta: dict, specs: list[SourceSpec]) -> None:
    """Entries are keyed by content, so a copy of a file reuses the original's entry: report
    the paths the user gave this time, not the ones stored with the entry."""
    for info, spec in zip(meta["inputs"], specs):
        info["report"] = info["report"].replace(info["path"], str(spec.path))
        info["path"] = str(spec.path)


def write_tokens_jsonl(
    specs: list[SourceSpec], cfg: PrepareConfig, out: Path, overwrite: bool = False
) -> dict:
    """One JSON list of tokens per input row, in input order (rows with no text: ``["xxbos"]``).
    ``out`` is checked before tokenizing (never an input, an existing file only with
    ``overwrite``) and written atomically."""
    from ulmfit.atomic import check_output, write_output

    if len(specs) != 1:
        raise UserError("tokenize takes one input")
    inputs = [s.path for s in specs]
    out = check_output(out, inputs=inputs, overwrite=overwrite)
    t0 = time.perf_counter()
    entry, built = tokenize_stage(specs, cfg)
    meta = json.loads((entry / "manifest.json").read_text())["meta"]
    strings = json.loads((entry / "strings.json").read_text())
    offsets = np.load(entry / "offsets.npy")
    rows = np.load(entry / "rows.npy")
    ids = np.memmap(entry / "ids.i32", dtype=np.int32, mode="r") if meta["tokens"] else []
    n_rows = meta["inputs"][0]["rows_read"]
    doc_of_row = np.full(n_rows, -1, dtype=np.int64)
    doc_of_row[rows] = np.arange(len(rows))
    empty = json.dumps(["xxbos"])

    def write(f) -> None:
        for d in doc_of_row:
            if d < 0:
                f.write(empty + "\n")
            else:
                toks = [strings[i] for i in ids[offsets[d] : offsets[d + 1]]]
                f.write(json.dumps(toks, ensure_ascii=False) + "\n")

    write_output(out, write, inputs=inputs, overwrite=overwrite)
    return {
        "rows": int(n_rows),
        "docs": meta["docs"],
        "tokens": meta["tokens"],
        "skipped_empty": sum(i["skipped_empty"] for i in meta["inputs"]),
        "out": str(out),
        "cached": not built,
        "seconds": round(time.perf_counter() - t0, 3),
    }
