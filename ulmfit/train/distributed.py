"""Data-parallel training across processes, GPUs and machines, launched by ``torchrun``.

``torchrun`` starts one process per GPU (or several CPU processes) and tells each one its
place through the environment: ``RANK`` (0 .. WORLD_SIZE-1, over all machines),
``LOCAL_RANK`` (on this machine: which GPU) and ``WORLD_SIZE``, plus ``MASTER_ADDR`` /
``MASTER_PORT`` for the rendezvous. :func:`init` reads them and joins the process group
(NCCL on CUDA, gloo on CPU); without them nothing happens and every helper here is a no-op
for a single process, so the same code runs under ``python`` and under ``torchrun``.

The division of labour (see also :mod:`ulmfit.train.learner`):

* every rank builds the same model (DDP broadcasts rank 0's weights anyway), reads the data
  (the tokenization cache is locked, so one process tokenizes and the others reuse it) and
  trains on its own shard of each batch; gradients are averaged by PyTorch's
  ``DistributedDataParallel``;
* metric sums are all-reduced, so every rank computes the same numbers;
* only rank 0 (:func:`is_main`) touches the file system for outputs: checkpoints, logs,
  plots, reports, published model folders; decisions that depend on files (resume or not)
  are taken on rank 0 and broadcast (:func:`on_main`), so ranks never disagree even when the
  machines do not share a file system.
"""

from __future__ import annotations

import atexit
import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ulmfit.errors import UserError

T = TypeVar("T")

# Long enough for rank 0 to evaluate and publish a model while the others wait at a barrier
# (NCCL's default of 10 minutes is not); override with ULMFIT_DIST_TIMEOUT_MIN.
_DEFAULT_TIMEOUT_MIN = 120


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its
    machine, and the ``device`` it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


_INFO: DistInfo | None = None


def env_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment; ``(0, 1, 0)`` without."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise UserError(f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {e}") from None
    return rank, max(world, 1), local


def device_for(device: str | None, local_rank: int | None = None) -> torch.device:
    """The device of this process: ``device`` (default: cuda if available, else cpu), with
    a bare ``cuda`` meaning GPU ``LOCAL_RANK`` when launched by torchrun."""
    from ulmfit.devices import resolve_device

    d = torch.device(resolve_device(device))
    if d.type == "cuda" and d.index is None:
        if local_rank is None:
            local_rank = env_world()[2] if env_world()[1] > 1 else 0
        d = torch.device("cuda", local_rank)
    return d


def init(device: str | None = None) -> DistInfo:
    """Join torchrun's process group once (later calls return the same info). Single-process
    runs get ``DistInfo(0, 1, 0, device)`` and no process group."""
    global _INFO
    if _INFO is not None:
        return _INFO
    rank, world, local = env_world()
    d = device_for(device, local)
    if world > 1 and not dist.is_initialized():
        if d.type == "cuda":
            torch.cuda.set_device(d)
        _join_group(d)
    _INFO = DistInfo(rank=rank, world_size=world, local_rank=local, device=str(d))
    return _INFO


def _join_group(d: torch.device) -> None:
    """Create the world group, such that :func:`cleanup` can free it again.

    ``torch.distributed.nn`` binds ``group.WORLD`` as a default argument of its functions
    when it is first imported, and ``DistributedDataParallel`` imports it (through
    ``torch._dynamo``). Imported after the group exists, it would keep the group alive to
    the end of the process, and with it gloo's worker threads: such a thread drops its last
    reference to a finished collective (whose tensors are Python objects) whenever it gets
    to it, and when that happens after the interpreter began to shut down, taking the GIL
    ends the thread inside a C++ destructor, which aborts the process ("terminate called
    without an active exception", exit -6) after its work was done. Imported here first,
    the defaults are ``None``."""
    import torch.distributed.nn  # noqa: F401 -- before the group exists, see above

    minutes = float(os.environ.get("ULMFIT_DIST_TIMEOUT_MIN", _DEFAULT_TIMEOUT_MIN))
    dist.init_process_group(
        backend="nccl" if d.type == "cuda" else "gloo",
        timeout=datetime.timedelta(minutes=minutes),
        **({"device_id": d} if d.type == "cuda" else {}),
    )
    atexit.register(cleanup)


def info() -> DistInfo:
    """This process's place; single process (rank 0 of 1) when :func:`init` was not called
    and no process group exists."""
    if _INFO is not None:
        return _INFO
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), env_world()[2])
    return DistInfo()


def world_size() -> int:
    return info().world_size


def rank() -> int:
    return info().rank


def is_main() -> bool:
    """Whether this process writes files and prints (rank 0, or the only process)."""
    return info().rank == 0


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every rank (no-op for one process)."""
    if _active():
        dist.barrier()


def all_reduce_sums(values: dict[str, float]) -> dict[str, float]:
    """Sum per-key floats over all ranks. Ranks may hold different keys (a rank that had no
    batch has none): the objects are gathered, so nothing needs to line up."""
    if not _active():
        return dict(values)
    gathered: list[dict[str, float] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {k: float(v) for k, v in values.items()})
    out: dict[str, float] = {}
    for part in gathered:
        for k, v in (part or {}).items():
            out[k] = out.get(k, 0.0) + v
    return out


def all_reduce_tensor(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks of a tensor on this rank's device; returned for chaining."""
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (pickled; for small objects and checkpoints)."""
    if not _active():
        return obj
    box = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and give its result to every rank. A :class:`UserError` on
    rank 0 is raised on every rank (so none waits forever in a later collective)."""
    if not _active():
        return fn()
    payload: Any = None
    if dist.get_rank() == 0:
        try:
            payload = ("ok", fn())
        except UserError as e:
            payload = ("error", str(e))
            broadcast(payload)
            raise
    payload = broadcast(payload)
    if payload[0] == "error":
        raise UserError(payload[1])
    return payload[1]


def cleanup() -> None:
    """Leave the process group (registered at exit by :func:`init`, so it runs before the
    interpreter shuts down). With the last reference to the group gone, this also joins the
    backend's threads, which must not outlive the interpreter (see :func:`_join_group`)."""
    global _INFO
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _INFO = None


__all__ = [
    "DistInfo",
    "all_reduce_sums",
    "all_reduce_tensor",
    "barrier",
    "broadcast",
    "cleanup",
    "device_for",
    "env_world",
    "info",
    "init",
    "is_main",
    "on_main",
    "rank",
    "world_size",
]
