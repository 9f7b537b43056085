"""Corpora between the text layer and the loaders: documents as flat ids plus offsets.

A corpus is one flat id array and ``offsets`` (int64, ``n_docs + 1``), the layout the loaders,
``prepare`` and the classifier share. Here live the operations on that layout that training,
evaluation and prediction all need -- tokenizing a few texts, reading the cached token strings
of ``prepare``, re-mapping ids between vocabularies, gathering, reversing and splitting
documents, cutting inputs for ``--dry-run`` -- in numpy only (no torch), so that a command that
only prepares or reads data never loads the training code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ulmfit.errors import UserError


@dataclass
class TokenCorpus:
    """Documents as flat ids into ``vocab`` (any vocabulary: the corpus's own strings, or a
    :class:`~ulmfit.prepare.Prepared`'s vocabulary). ``Prepared`` has the same three fields."""

    ids: np.ndarray
    offsets: np.ndarray  # int64, n_docs + 1
    vocab: list[str]
    rows: np.ndarray | None = None  # each document's 0-based input row, when known

    def __len__(self) -> int:
        return len(self.offsets) - 1


def head_texts(specs: list, n: int) -> list[str]:
    """The first ``n`` texts (rows with text) of the inputs, in order, reading no further."""
    from ulmfit.data.sources import iter_source

    texts: list[str] = []
    for spec in specs:
        for batch in iter_source(spec, chunk_rows=max(1, min(n, 1000))):
            texts.extend(batch.texts[: n - len(texts)])
            if len(texts) >= n:
                return texts
    return texts


def tokenize_texts(texts: Sequence[str]) -> TokenCorpus:
    """Tokenize a few texts in this process (fastai rules + spaCy), no cache."""
    from ulmfit.text.tokenize import Tokenizer

    tok = Tokenizer()
    stoi: dict[str, int] = {}
    flat: list[int] = []
    offsets = [0]
    for toks in tok.tokenize_batch(list(texts)):
        flat.extend(stoi.setdefault(t, len(stoi)) for t in toks)
        offsets.append(len(flat))
    return TokenCorpus(
        np.asarray(flat, dtype=np.int64), np.asarray(offsets, dtype=np.int64), list(stoi)
    )


def read_token_corpus(
    specs: list,
    *,
    limit_docs: int | None = None,
    workers: int = 0,
    cache_dir: Path | None = None,
    progress: bool | None = None,
) -> TokenCorpus:
    """The full token strings of the inputs (no vocabulary cut, so nothing the model knows is
    lost to the corpus's own min_freq). With ``limit_docs`` only that many rows are read and
    tokenized here; otherwise the cached, parallel tokenize stage of ``prepare`` is used."""
    if limit_docs is not None:
        if limit_docs < 1:
            raise UserError(f"--limit-docs must be 1 or more, got {limit_docs}")
        from ulmfit.export import texts_tokens
        from ulmfit.prepare import is_dataset

        if len(specs) == 1 and is_dataset(specs[0]):  # its tokens: no spaCy needed
            return TokenCorpus(*texts_tokens(specs[0], head_texts(specs, limit_docs)))
        return tokenize_texts(head_texts(specs, limit_docs))
    from ulmfit.config import PrepareConfig
    from ulmfit.prepare import tokenize_stage

    entry, _ = tokenize_stage(
        specs, PrepareConfig(workers=workers, cache_dir=cache_dir, progress=progress)
    )
    meta = json.loads((entry / "manifest.json").read_text())["meta"]
    strings = json.loads((entry / "strings.json").read_text(encoding="utf-8"))
    ids = (
        np.memmap(entry / "ids.i32", dtype=np.int32, mode="r")
        if meta["tokens"]
        else np.zeros(0, dtype=np.int32)
    )
    return TokenCorpus(ids, np.load(entry / "offsets.npy"), strings, np.load(entry / "rows.npy"))


def vocab_map(src: Sequence[str], dst: Sequence[str]) -> np.ndarray:
    """``table[i]`` = id in ``dst`` of ``src[i]`` (0 = xxunk when ``dst`` lacks it)."""
    stoi = {t: i for i, t in enumerate(dst)}
    return np.fromiter((stoi.get(t, 0) for t in src), dtype=np.int64, count=len(src))


def union_vocab(pretrained: Sequence[str], target: Sequence[str]) -> list[str]:
    """The pretrained vocabulary (same order, so its rows copy one to one) followed by the
    target tokens it lacks, in the target's order."""
    have = set(pretrained)
    return [*pretrained, *(t for t in target if t not in have)]


def reverse_docs(ids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Every document's tokens in reverse order (documents stay where they are)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    base = int(offsets[0])
    lengths = np.diff(offsets)
    n = int(lengths.sum())
    if n == 0:
        return np.asarray(ids[base:base], dtype=ids.dtype)
    starts = np.repeat(offsets[:-1], lengths)
    ends = np.repeat(offsets[1:], lengths)
    pos = np.arange(base, base + n, dtype=np.int64)
    return np.asarray(ids)[starts + ends - 1 - pos]


def gather_docs(
    ids: np.ndarray, offsets: np.ndarray, idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Documents ``idx`` (in that order) as a new contiguous ``(ids, offsets)`` pair."""
    offsets = np.asarray(offsets, dtype=np.int64)
    idx = np.asarray(idx, dtype=np.int64)
    starts, ends = offsets[idx], offsets[idx + 1]
    lengths = ends - starts
    new_off = np.zeros(len(idx) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_off[1:])
    total = int(new_off[-1])
    if total == 0:
        return np.zeros(0, dtype=ids.dtype), new_off
    src = np.repeat(starts - new_off[:-1], lengths) + np.arange(total, dtype=np.int64)
    return np.asarray(ids[src]), new_off


def split_docs(n_docs: int, valid_pct: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of document indices into (train, valid), both sorted; at least one
    document on each side when there are two or more and ``valid_pct > 0``."""
    if n_docs < 1:
        raise UserError("no documents to train on")
    n_valid = int(round(n_docs * valid_pct)) if valid_pct > 0 else 0
    if valid_pct > 0:
        if n_docs < 2:
            raise UserError("need at least two documents to hold some out for validation")
        n_valid = min(max(n_valid, 1), n_docs - 1)
    perm = np.random.default_rng(seed).permutation(n_docs)
    return np.sort(perm[n_valid:]), np.sort(perm[:n_valid])


def head_specs(specs: list, n_rows: int, folder: Path) -> list:
    """Each input cut to its first ``n_rows`` texts, written as JSON Lines into ``folder``
    (for ``--dry-run``: the real reading, tokenizing and caching code on little data)."""
    from ulmfit.data.sources import SourceSpec, iter_source
    from ulmfit.export import head_dataset
    from ulmfit.prepare import is_dataset

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k, spec in enumerate(specs):
        if is_dataset(spec):  # its tokens, cut: a dry run needs no spaCy either
            out.append(head_dataset(spec, n_rows, folder / f"head{k}"))
            continue
        texts: list[str] = []
        for batch in iter_source(spec, chunk_rows=n_rows):
            texts.extend(batch.texts[: n_rows - len(texts)])
            if len(texts) >= n_rows:
                break
        path = folder / f"head{k}.jsonl"
        path.write_text(
            "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts),
            encoding="utf-8",
        )
        out.append(SourceSpec(path=path, text_cols=["text"], fmt="jsonl"))
    return out


def corpus_folder(specs: list) -> tuple[list, list | None]:
    """A folder holding ``train.txt[.gz]`` (like ``wikipedia_en``) means its train split, with
    its ``valid.txt[.gz]`` for validation; other inputs are returned unchanged."""
    from dataclasses import replace

    out, valid = [], []
    for spec in specs:
        p = Path(spec.path)
        train = next((p / n for n in ("train.txt", "train.txt.gz") if (p / n).is_file()), None)
        if p.is_dir() and train is not None:
            out.append(replace(spec, path=train, fmt=None))
            v = next((p / n for n in ("valid.txt", "valid.txt.gz") if (p / n).is_file()), None)
            if v is not None:
                valid.append(replace(spec, path=v, fmt=None))
        else:
            out.append(spec)
    return out, (valid or None)


_STREAM_CHUNK = 1 << 24  # tokens copied at a time by train_stream: flat memory


def train_stream(
    data, idx: np.ndarray, backwards: bool, cache_dir: Path | None
) -> tuple[np.ndarray, np.ndarray]:
    """The training documents ``idx`` of a prepared corpus as a memory-mapped ``(ids,
    offsets)`` pair, never a copy in RAM, so a corpus larger than memory can be pretrained on.

    Every document in order, forwards: the prepared corpus itself. Otherwise (a held-out
    split, or a backward model) the documents are copied, reversed if asked, in chunks of
    ``_STREAM_CHUNK`` tokens into a cache entry keyed by the corpus entry, the documents and
    the direction (every rank of a torchrun job, and a resumed run, reuse it)."""
    from ulmfit.cache import Cache, key_of

    offsets = np.asarray(data.offsets, dtype=np.int64)
    idx = np.asarray(idx, dtype=np.int64)
    if not backwards and np.array_equal(idx, np.arange(len(offsets) - 1)):
        return data.ids, offsets
    digest = hashlib.sha256(idx.tobytes()).hexdigest()
    key = key_of({"v": 1, "data": data.path.name, "docs": digest, "backwards": backwards})
    lengths = offsets[idx + 1] - offsets[idx]
    new_off = np.zeros(len(idx) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_off[1:])
    total = int(new_off[-1])

    def write(tmp: Path) -> dict:
        np.save(tmp / "offsets.npy", new_off)
        if total == 0:
            np.save(tmp / "ids.npy", np.zeros(0, dtype=data.ids.dtype))
            return {"docs": len(idx), "tokens": 0}
        out = np.lib.format.open_memmap(
            tmp / "ids.npy", mode="w+", dtype=data.ids.dtype, shape=(total,)
        )
        a = 0
        while a < len(idx):
            b = int(np.searchsorted(new_off, new_off[a] + _STREAM_CHUNK, side="right")) - 1
            b = min(max(b, a + 1), len(idx))
            ids, off = gather_docs(data.ids, offsets, idx[a:b])
            if backwards:
                ids = reverse_docs(ids, off)
            out[new_off[a] : new_off[b]] = ids
            a = b
        out.flush()
        del out
        return {"docs": len(idx), "tokens": total}

    entry, _ = Cache(cache_dir).build("lm_train", key, write)
    return np.load(entry / "ids.npy", mmap_mode="r"), np.load(entry / "offsets.npy")


def concat_docs(docs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Separate documents as one contiguous ``(ids, offsets)`` pair, the loaders' layout."""
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum([len(d) for d in docs], out=offsets[1:])
    ids = np.concatenate(docs) if len(docs) else np.zeros(0, dtype=np.int64)
    return ids, offsets
