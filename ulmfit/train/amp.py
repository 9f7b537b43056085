"""Mixed precision: which autocast dtype a device gets, and whether it needs a GradScaler."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ulmfit.config import AmpMode
from ulmfit.errors import UserError


@dataclass(frozen=True)
class AmpPlan:
    """Autocast dtype (``None``: full precision) and whether a GradScaler is needed (fp16 only:
    bf16 has fp32's exponent range, so its gradients do not underflow)."""

    dtype: torch.dtype | None
    use_scaler: bool


def amp_plan(device_type: str, mode: AmpMode, bf16_supported: bool | None = None) -> AmpPlan:
    """Choose mixed precision for a device. Only CUDA gets autocast; on CPU it is slower."""
    if mode not in ("auto", "bf16", "fp16", "off"):
        raise UserError(f"amp must be one of auto, bf16, fp16, off; got {mode!r}")
    if device_type != "cuda" or mode == "off":
        return AmpPlan(None, False)
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    if mode == "fp16" or (mode == "auto" and not bf16_supported):
        return AmpPlan(torch.float16, True)
    return AmpPlan(torch.bfloat16, False)


__all__ = ["AmpPlan", "amp_plan"]
