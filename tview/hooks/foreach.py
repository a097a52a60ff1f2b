"""Multi-tensor reductions on every torch tview supports: torch._foreach_powsum where torch has it (2.11 on), else
the same sums from torch._foreach_norm and one in-place power (torch 2.5-2.10)."""

from __future__ import annotations

import torch

HAS_POWSUM = hasattr(torch, "_foreach_powsum")


def foreach_powsum(tensors: list[torch.Tensor], power: float = 2) -> list[torch.Tensor]:
    """[tensors] float32 sums of |value| ** power, 0-d each: one multi-tensor op (before torch 2.11, two: the
    norms, then their powers in place; the same values to float32 rounding, Inf and NaN alike)."""
    if HAS_POWSUM:
        return torch._foreach_powsum(tensors, power, dtype=torch.float32)
    norms = list(torch._foreach_norm(tensors, power, dtype=torch.float32))
    torch._foreach_pow_(norms, power)
    return norms
