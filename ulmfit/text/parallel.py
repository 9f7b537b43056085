"""Tokenize a stream of text chunks on every core, in bounded memory, in a deterministic order.

Each worker keeps its own :class:`Tokenizer` (and so its own memo and local token ids) for the
whole run and sends back compact int32 arrays plus the token strings it met for the first time,
never lists of strings per document. The parent maps local ids to corpus-wide ids numbered in
order of first appearance in the corpus, which makes the result identical whatever the number
of workers. At most ``2 * workers`` chunks are in flight, so memory does not grow with the corpus.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from ulmfit.text.tokenize import Tokenizer

T = TypeVar("T")
_WORKER: Tokenizer | None = None
_SENT = 0  # how many of the worker's local strings the parent already knows


def default_workers() -> int:
    """All cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _exit_with_parent(parent: int) -> None:
    """A worker whose parent died (killed, even by SIGKILL) ends too: it would otherwise wait
    for tasks forever, holding its memory."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _init_worker() -> None:
    global _WORKER, _SENT
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    # spaCy's thinc imports PyTorch when it can find it (about 180 MB per process); a
    # tokenizing worker never needs it, so it is kept out of the worker's imports.
    if "torch" not in sys.modules:
        sys.modules["torch"] = None  # type: ignore[assignment]
    _WORKER, _SENT = Tokenizer(), 0


def _encode_chunk(texts: list[str]) -> tuple[int, np.ndarray, np.ndarray, list[str]]:
    """Runs in a worker: local ids of a chunk, plus the strings new since the last chunk."""
    global _SENT
    if _WORKER is None:
        _init_worker()
    flat, lengths = _WORKER.encode_flat(texts)
    new = _WORKER.itos_[_SENT:]
    _SENT = len(_WORKER.itos_)
    return os.getpid(), flat, lengths, new


@dataclass
class Encoded:
    """One chunk's result in corpus-wide ids (``ids`` flat, ``lengths`` per document)."""

    ids: np.ndarray
    lengths: np.ndarray


class CorpusNumberer:
    """Corpus-wide token numbering in order of first appearance, plus running counts."""

    def __init__(self) -> None:
        self.itos: list[str] = []
        self.stoi: dict[str, int] = {}
        self.counts = np.zeros(1024, dtype=np.int64)
        self._maps: dict[int, np.ndarray] = {}  # worker -> local id -> corpus id (-1 unknown)

    def add(self, worker: int, local: np.ndarray, new: list[str]) -> np.ndarray:
        m = self._maps.get(worker, np.zeros(0, dtype=np.int64))
        known = np.fromiter((self.stoi.get(s, -1) for s in new), dtype=np.int64, count=len(new))
        m = np.concatenate([m, known])
        ids = m[local]
        missing = ids < 0
        if missing.any():
            # number the new tokens by their first position in this chunk
            lids, first = np.unique(local[missing], return_index=True)
            for lid in lids[np.argsort(first, kind="stable")]:
                s = new[lid - (len(m) - len(new))]
                gid = self.stoi[s] = len(self.itos)
                self.itos.append(s)
                m[lid] = gid
            ids = m[local]
        self._maps[worker] = m
        if len(self.itos) > len(self.counts):
            grown = np.zeros(max(len(self.itos), 2 * len(self.counts)), dtype=np.int64)
            grown[: len(self.counts)] = self.counts
            self.counts = grown
        self.counts[: len(self.itos)] += np.bincount(ids, minlength=len(self.itos))
        return ids.astype(np.int32)


def encode_chunks(
    batches: Iterable[T], workers: int, numberer: CorpusNumberer
) -> Iterator[tuple[T, Encoded]]:
    """Encode batches (anything with a ``.texts`` list) in order, on ``workers`` processes.

    ``workers=1`` runs in this process, which is what tests and small inputs want.
    """
    if workers <= 1:
        tok, sent = Tokenizer(), 0
        for batch in batches:
            flat, lengths = tok.encode_flat(batch.texts)
            new, sent = tok.itos_[sent:], len(tok.itos_)
            yield batch, Encoded(numberer.add(0, flat, new), lengths)
        return
    # Fresh worker processes (not forks of this one): they do not carry the parent's pandas
    # and reading buffers, which would otherwise count once more per worker.
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker) as pool:
        pending: deque = deque()
        it = iter(batches)
        exhausted = False
        while True:
            while not exhausted and len(pending) < 2 * workers:
                try:
                    batch = next(it)
                except StopIteration:
                    exhausted = True
                    break
                pending.append((batch, pool.apply_async(_encode_chunk, (batch.texts,))))
            if not pending:
                break
            batch, result = pending.popleft()
            pid, flat, lengths, new = result.get()
            yield batch, Encoded(numberer.add(pid, flat, new), lengths)
