"""Batches moved to the training device, the next one copied while the current one trains."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor


def _map_tensors(batch: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(batch, Tensor):
        return fn(batch)
    if isinstance(batch, tuple | list):
        return type(batch)(_map_tensors(b, fn) for b in batch)
    return batch


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` (a tensor, or tuples and lists of them) with its tensors on ``device``."""
    return _map_tensors(batch, lambda t: t.to(device, non_blocking=True))


def device_batches(batches: Iterable[Any], device: torch.device) -> Iterator[Any]:
    """``batches`` moved to ``device``. On CUDA the next batch is pinned and copied on a side
    stream while the current one trains, so the GPU never waits for a host-to-device copy;
    elsewhere each batch is moved when it is reached."""
    if device.type != "cuda":
        for batch in batches:
            yield to_device(batch, device)
        return
    side = torch.cuda.Stream(device)

    def send(t: Tensor) -> Tensor:
        if t.device.type != "cpu":
            return t.to(device, non_blocking=True)
        return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)

    def stage(batch: Any) -> Any:
        with torch.cuda.stream(side):
            return _map_tensors(batch, send)

    main = torch.cuda.current_stream(device)

    def hand_over(t: Tensor) -> Tensor:
        t.record_stream(main)  # its memory is not reused while main still reads it
        return t

    it = iter(batches)
    try:
        ahead = stage(next(it))
    except StopIteration:
        return
    while True:
        main.wait_stream(side)  # the copy of ``ahead`` is done before main uses it
        current = _map_tensors(ahead, hand_over)
        try:
            ahead = stage(next(it))
        except StopIteration:
            yield current
            return
        yield current


def _item(v: float | Tensor) -> float:
    return float(v.item()) if isinstance(v, Tensor) else float(v)


__all__ = ["device_batches", "to_device"]
