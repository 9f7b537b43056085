"""Which device a model runs on, checked once, before any work, with a one-line error.

PyTorch accepts any well-formed device string and fails only when the first tensor moves
there (an ``AssertionError`` from a CPU build asked for CUDA, a ``RuntimeError`` for an
unknown type), often after minutes of tokenizing or training. Every command resolves its
``--device`` here instead, so a machine without the device is told so at once.
"""

from __future__ import annotations

from ulmfit.errors import UserError

SUPPORTED = ("cpu", "cuda", "mps")


def resolve_device(device: str | None) -> str:
    """``device`` if this machine has it; ``None`` (or ``"auto"``): ``cuda`` where a GPU is
    available, else ``cpu``."""
    import torch

    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(
            f"--device {device}: not a device name (one of cpu, cuda, cuda:N, mps)"
        ) from None
    if d.type not in SUPPORTED:
        raise UserError(f"--device {device}: {d.type} is not supported (cpu, cuda, cuda:N, mps)")
    if d.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build of PyTorch" if torch.version.cuda is None else "no GPU found"
            raise UserError(f"--device {device}: CUDA is not available here ({build}); use cpu")
        count = torch.cuda.device_count()
        if d.index is not None and d.index >= count:
            raise UserError(f"--device {device}: this machine has {count} GPU(s) (cuda:0 ..)")
    if d.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device}: Apple's MPS is not available here; use cpu")
    return device


__all__ = ["SUPPORTED", "resolve_device"]
