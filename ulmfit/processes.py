"""Worker processes that library code can start from any caller: a script without an
``if __name__ == "__main__":`` guard, a script piped to ``python -``, a notebook, a terminal.

multiprocessing's ``spawn`` (and ``forkserver``) children first re-run the parent's main module,
as ``__mp_main__``, so that functions defined there can be found. For a library's own workers
that is harmful: an unguarded script runs its whole body again in every worker (which then
waits on a lock the parent holds, or tries to start workers of its own), and a script read from
standard input has no file to re-run, so every worker dies as it starts. Library workers run
only library functions, so the children of :func:`context` are launched with ``__main__``
hidden from ``multiprocessing.spawn.get_preparation_data``: they import nothing of the caller's
script. (The price: a target or argument defined in ``__main__`` cannot be sent to them.)

They also start with SIGINT blocked. Ctrl-C in a terminal goes to the whole foreground process
group; the parent alone should act on it (it stops its workers), instead of every worker
printing its own KeyboardInterrupt traceback. A signal mask, unlike a Python handler set in the
child, is in place from the first instruction of the child, so there is no window at start-up.
"""

from __future__ import annotations

import signal
import sys
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing import context as mp_context
from multiprocessing import resource_tracker

_LAUNCH = threading.Lock()  # one launch at a time: the main-module swap is process-wide


@contextmanager
def _launching() -> Iterator[None]:
    """While a child is launched: no main module to re-run, SIGINT blocked (the child inherits
    this thread's signal mask through fork and exec)."""
    with _LAUNCH:
        # The resource tracker's own launch unblocks SIGINT in this thread: start it before.
        resource_tracker.ensure_running()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")  # no __file__, no __spec__
        try:
            yield
        finally:
            if main is None:
                del sys.modules["__main__"]
            else:
                sys.modules["__main__"] = main
            # a Ctrl-C that came meanwhile is delivered here, not lost
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)


class WorkerProcess(mp_context.SpawnProcess):
    """A spawned process that does not re-run the caller's main module and ignores Ctrl-C."""

    @staticmethod
    def _Popen(process_obj):  # noqa: N802 (multiprocessing's name)
        with _launching():
            return mp_context.SpawnProcess._Popen(process_obj)


class WorkerContext(mp_context.SpawnContext):
    """The spawn context, with :class:`WorkerProcess` as its ``Process`` (so also for a
    ``Pool``, a ``ProcessPoolExecutor(mp_context=...)`` or a DataLoader built on it)."""

    Process = WorkerProcess


_CONTEXT = WorkerContext()


def context() -> WorkerContext:
    """The multiprocessing context for every worker process ulmfit starts."""
    return _CONTEXT
