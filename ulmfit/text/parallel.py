"""Tokenize a stream of text chunks on every core, in bounded memory, in a deterministic order.

Each worker keeps its own :class:`Tokenizer` (and so its own memo and local token ids) for the
whole run and sends back compact int32 arrays plus the token strings it met for the first time,
never lists of strings per document. The parent maps local ids to corpus-wide ids numbered in
order of first appearance in the corpus, which makes the result identical whatever the number
of workers. At most ``2 * workers`` chunks are in flight, so memory does not grow with the corpus.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import TypeVar

import numpy as np

import ulmfit.processes as processes
from ulmfit.errors import UserError
from ulmfit.text.tokenize import Tokenizer

T = TypeVar("T")
_WORKER: Tokenizer | None = None
_SENT = 0  # how many of the worker's local strings the parent already knows
_END = object()


def default_workers() -> int:
    """All cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _exit_with_parent(parent: int) -> None:
    """A worker whose parent died (killed, even by SIGKILL) ends too, even in the middle of a
    chunk: it would otherwise finish its work for nobody, holding its memory."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _init_worker(parent: int | None = None) -> None:
    global _WORKER, _SENT
    parent = os.getppid() if parent is None else parent
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
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


def _receive(tasks: Connection, inbox: queue.SimpleQueue) -> None:
    """Worker thread: take every task off the pipe at once, so that the parent never waits to
    hand over a chunk while this worker is busy; ``None`` when the parent closes the pipe."""
    try:
        while True:
            inbox.put(tasks.recv())
    except (EOFError, OSError):
        inbox.put(None)


def _send(results: Connection, outbox: queue.SimpleQueue) -> None:
    """Worker thread: send results in order while the next chunk is tokenized."""
    while (item := outbox.get()) is not None:
        try:
            results.send(item)
        except OSError:  # the parent is gone
            os._exit(1)
        except Exception:  # an exception that cannot be pickled: its text instead
            results.send(RuntimeError("".join(traceback.format_exception(item))))


def _serve(tasks: Connection, results: Connection, parent: int) -> None:
    """A worker's life: tokenize the chunks from ``tasks`` in the order they come and send each
    result (or the exception it raised) on ``results``; end when the parent closes ``tasks``."""
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    outbox: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_receive, args=(tasks, inbox), daemon=True).start()
    sender = threading.Thread(target=_send, args=(results, outbox), daemon=True)
    sender.start()
    try:
        _init_worker(parent)
        while (texts := inbox.get()) is not None:
            outbox.put(_encode_chunk(texts))
    except Exception as e:  # the parent raises it in place of the result
        e.add_note(f"(in tokenizer worker {os.getpid()}: {traceback.format_exc()})")
        outbox.put(e)
        while inbox.get() is not None:  # and stays until told: a worker that ends is dead
            pass
    outbox.put(None)
    sender.join()


class _Workers:
    """``n`` tokenizer processes, each fed through a pipe of its own.

    Why not a ``multiprocessing.Pool``: it silently replaces a worker that dies, and the result
    of the chunk the dead worker held never comes, so the parent waits forever. Here the parent
    holds no copy of a worker's end of its result pipe, so a dead worker is an end of file
    there, reported at once. Workers come from :func:`ulmfit.processes.context`: they do not
    re-run the caller's script and leave Ctrl-C to the parent.
    """

    def __init__(self, n: int) -> None:
        ctx = processes.context()
        self.procs: list = []
        self.tasks: list[Connection] = []
        self.results: list[Connection] = []
        try:
            for _ in range(n):
                task_r, task_w = ctx.Pipe(duplex=False)
                res_r, res_w = ctx.Pipe(duplex=False)
                self.tasks.append(task_w)
                self.results.append(res_r)
                args = (task_r, res_w, os.getpid())
                proc = ctx.Process(target=_serve, args=args, daemon=True, name="ulmfit-tokenize")
                try:
                    proc.start()
                finally:
                    task_r.close()
                    res_w.close()
                self.procs.append(proc)
        except BaseException:
            self.close(stop=True)
            raise

    def send(self, w: int, texts: list[str]) -> None:
        try:
            self.tasks[w].send(texts)
        except OSError:
            raise self._died(w) from None

    def recv(self, w: int) -> tuple[int, np.ndarray, np.ndarray, list[str]]:
        """Worker ``w``'s next result; raises as soon as any worker has died (a worker only
        ends early after its error is read, so an ended one is a dead one)."""
        sentinels = {proc.sentinel: k for k, proc in enumerate(self.procs)}
        ready = wait([self.results[w], *sentinels])
        if self.results[w] not in ready:
            raise self._died(sentinels[ready[0]])
        try:
            item = self.results[w].recv()
        except (EOFError, OSError):
            raise self._died(w) from None
        if isinstance(item, BaseException):
            raise item
        return item

    def _died(self, w: int) -> UserError:
        proc = self.procs[w]
        proc.join(timeout=5)
        code = proc.exitcode
        if code is not None and code < 0:
            how = f"killed by {signal.Signals(-code).name}"
            if code == -signal.SIGKILL:
                how += ", perhaps for want of memory: try fewer workers"
        else:
            how = f"exit code {code}"
        return UserError(f"a tokenizer worker (pid {proc.pid}) died ({how}); nothing was cached")

    def close(self, stop: bool) -> None:
        """End the workers: at the end of their input, or at once (``stop``) on an error."""
        for conn in self.tasks + self.results:
            conn.close()
        for proc in self.procs:
            if stop:
                proc.terminate()
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.exitcode is None:
                proc.kill()
                proc.join()

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(stop=exc_type is not None)


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
    with _Workers(workers) as pool:
        load = [0] * workers  # chunks in flight per worker
        pending: deque = deque()  # (batch, worker), oldest first
        it = iter(batches)
        exhausted = False
        while True:
            while not exhausted and len(pending) < 2 * workers:
                batch = next(it, _END)
                if batch is _END:
                    exhausted = True
                    break
                w = load.index(min(load))
                pool.send(w, batch.texts)
                load[w] += 1
                pending.append((batch, w))
            if not pending:
                break
            batch, w = pending.popleft()
            _, flat, lengths, new = pool.recv(w)  # a worker answers its chunks in order
            load[w] -= 1
            yield batch, Encoded(numberer.add(w, flat, new), lengths)
