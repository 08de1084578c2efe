"""Numerical precision of the networks' forward passes: bf16 autocast on GPU, fp32 on CPU.

bf16 runs the forward pass under ``torch.autocast(bfloat16)`` while weights, gradients and optimiser stay
fp32; ``auto`` picks bf16 on a GPU that supports it and fp32 elsewhere. Training and generation use it.
"""

from __future__ import annotations

import contextlib

import torch


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32`` or ``bf16`` for the configured precision on ``device``."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for the forward pass, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
