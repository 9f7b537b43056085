"""Mixed precision: which autocast dtype a run gets on its device, and why.

One rule for every command that runs a model (training, ``lm-eval``, ``evaluate``,
``predict``, ``explain``, ``serve``): ``--amp auto`` takes the fast path where it is measured
to keep accuracy, ``bf16``/``fp16`` ask for one, ``off`` runs in full precision. Weights and
optimizer state stay fp32 either way (``torch.autocast`` casts per op), and the losses are
computed on fp32 logits.

* CUDA: bf16 where the GPU has it, else fp16 with a GradScaler (fp16's narrow exponent range
  lets small gradients underflow; bf16 has fp32's range and needs none).
* CPU: bf16 where the CPU computes it natively: AMD's AVX512-BF16 (Zen 4 on) and Intel's
  AVX512-BF16 or AMX (Cooper Lake, Sapphire Rapids on), Arm's BF16 extension. On an AMD EPYC
  with AVX512-BF16 oneDNN's bf16 LSTM and matrix kernels trained the AWD-LSTM language model
  1.3x and predicted 2.2x faster than fp32, at the same accuracy (bench/RESULTS.md, issue 14).
  Without those units bf16 is emulated and slower, so ``auto`` keeps fp32.
  fp16 is refused: PyTorch's CPU LSTM has no fp16 kernel (oneDNN fails to build one).
* MPS: full precision (autocast there was never measured).

The plan's :meth:`Precision.record` goes into each run's config and report, so a result says
how it was computed.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ulmfit.errors import UserError

if TYPE_CHECKING:
    import torch

AMP_MODES = ("auto", "bf16", "fp16", "off")
# /proc/cpuinfo flags of native bf16 arithmetic (x86 "flags", Arm "Features"), best first
BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class Precision:
    """How a model runs: ``dtype`` of autocast (``None``: fp32, no autocast), whether the
    loss is scaled (fp16 only), the ``--amp`` mode asked for and why this was chosen."""

    asked: str
    dtype: torch.dtype | None
    use_scaler: bool
    reason: str

    @property
    def name(self) -> str:
        """``bf16``, ``fp16`` or ``fp32``."""
        if self.dtype is None:
            return "fp32"
        return str(self.dtype).removeprefix("torch.").replace("bfloat", "bf").replace("float", "fp")

    def autocast(self, device_type: str) -> contextlib.AbstractContextManager:
        """The context the model runs in: ``torch.autocast`` to ``dtype``, or nothing."""
        if self.dtype is None:
            return contextlib.nullcontext()
        import torch

        return torch.autocast(device_type, dtype=self.dtype)

    def record(self) -> dict[str, str]:
        """What a run's config and report say about its precision."""
        return {"amp": self.asked, "precision": self.name, "reason": self.reason}


def cpu_bf16_flag(cpuinfo: str | None = None) -> str | None:
    """The first flag of :data:`BF16_FLAGS` this CPU announces, or ``None`` (no native bf16,
    or no ``/proc/cpuinfo`` to read: not Linux). ``cpuinfo``: its text, for tests."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
    found: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            found.update(value.split())
            break  # every core lists the same flags
    return next((f for f in BF16_FLAGS if f in found), None)


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> tuple[bool, str]:
    """Whether bf16 is the fast path on this CPU, and why: a native bf16 flag and a PyTorch
    whose oneDNN has bf16 kernels."""
    import torch

    flag = cpu_bf16_flag()
    if flag is None:
        return False, "this CPU has no bf16 units (avx512_bf16, amx_bf16), bf16 would be emulated"
    onednn = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if not onednn:
        return False, f"this CPU has {flag}, but this PyTorch has no oneDNN bf16 kernels"
    return True, f"this CPU has {flag} (oneDNN bf16 kernels)"


def resolve_precision(
    device_type: str, mode: str, bf16: tuple[bool, str] | None = None
) -> Precision:
    """The precision ``mode`` (one of :data:`AMP_MODES`) gives on ``device_type`` (``cpu``,
    ``cuda``, ``mps``). ``bf16``: whether the device has bf16 and why (found out when
    ``None``; given by tests)."""
    import torch

    if mode not in AMP_MODES:
        raise UserError(f"--amp must be one of {', '.join(AMP_MODES)}; got {mode!r}")
    if mode == "off":
        return Precision(mode, None, False, "--amp off")
    if device_type == "cuda":
        if bf16 is None:
            ok = torch.cuda.is_bf16_supported()
            bf16 = ok, "this GPU has bf16" if ok else "this GPU has no bf16"
        if mode == "fp16" or (mode == "auto" and not bf16[0]):
            why = "--amp fp16" if mode == "fp16" else f"auto: {bf16[1]}, fp16 with loss scaling"
            return Precision(mode, torch.float16, True, why)
        why = "--amp bf16" if mode == "bf16" else f"auto: {bf16[1]}"
        return Precision(mode, torch.bfloat16, False, why)
    if device_type != "cpu":
        if mode == "auto":
            return Precision(mode, None, False, f"auto: full precision on {device_type}")
        raise UserError(f"--amp {mode} on {device_type}: not supported; use --amp off or auto")
    if mode == "fp16":
        raise UserError(
            "--amp fp16 is for GPUs: PyTorch's CPU LSTM has no fp16 kernel; "
            "use --amp bf16 (or auto) on a CPU"
        )
    has, why = bf16 if bf16 is not None else cpu_has_bf16()
    if mode == "bf16":
        note = "" if has else f" ({why}: slower than fp32)"
        return Precision(mode, torch.bfloat16, False, "--amp bf16" + note)
    if has:
        return Precision(mode, torch.bfloat16, False, f"auto: {why}")
    return Precision(mode, None, False, f"auto: {why}")


def precision_for(device: str, mode: str) -> Precision:
    """The precision ``mode`` gives on ``device`` (``cpu``, ``cuda:1``, ...): what a command
    checks before any work, so that a refused ``--amp`` is said at once."""
    return resolve_precision(device.partition(":")[0], mode)


def describe(record: dict[str, Any] | None) -> str:
    """One line for logs: ``bf16 (auto: this CPU has avx512_bf16 ...)``."""
    if not record:
        return "fp32"
    return f"{record.get('precision', 'fp32')} ({record.get('reason', '')})"


__all__ = [
    "AMP_MODES",
    "BF16_FLAGS",
    "Precision",
    "cpu_bf16_flag",
    "cpu_has_bf16",
    "describe",
    "precision_for",
    "resolve_precision",
]
