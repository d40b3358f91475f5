"""Mamba-2's gated RMSNorm in PyTorch: the reference and the CPU (and torch.compile) path.

Over groups of G channels (Mamba-2's `ngroups`: one group per group of heads), with the gate z:

    norm_before_gate False:  y = rmsnorm(x * silu(z)) * w        (mamba_ssm's default)
    norm_before_gate True:   y = rmsnorm(x) * w * silu(z)
    rmsnorm(v) = v / sqrt(mean over the group of v^2 + eps)       (fp32; Zhang & Sennrich 2019)

Without z it is a grouped RMSNorm. y comes back in x's dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor


def gated_rms_norm_ref(x: Tensor, z: Tensor | None, weight: Tensor, eps: float, group_size: int,
                       norm_before_gate: bool) -> Tensor:
    """x, z (..., d); weight (d,); group_size divides d -> y (..., d) in x's dtype."""
    xf = x.float()
    gate = F.silu(z.float()) if z is not None else None
    if gate is not None and not norm_before_gate:
        xf = xf * gate
    groups = xf.unflatten(-1, (-1, group_size))  # (..., groups, group_size)
    y = F.rms_norm(groups, (group_size,), None, eps).flatten(-2) * weight.float()
    if gate is not None and norm_before_gate:
        y = y * gate
    return y.to(x.dtype)


def gated_rms_norm_torch(x: Tensor, z: Tensor | None, weight: Tensor, eps: float, group_size: int,
                         norm_before_gate: bool) -> Tensor:
    """The reference under activation checkpointing where autograd records it: the backward keeps
    only x, z and the weight and recomputes the fp32 steps, whose intermediates of a (batch, length,
    d_inner) input would otherwise be held until the backward, ten times the bf16 input's size."""
    if not torch.is_grad_enabled():
        return gated_rms_norm_ref(x, z, weight, eps, group_size, norm_before_gate)
    # no RNG inside: preserve_rng_state=False also keeps it capturable in a CUDA graph
    return torch.utils.checkpoint.checkpoint(gated_rms_norm_ref, x, z, weight, eps, group_size, norm_before_gate,
                                             use_reentrant=False, preserve_rng_state=False)
