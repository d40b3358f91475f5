"""Normalisation layers for pre-norm residual sublayers."""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from hybrid.kernels.add_rms_norm import add_rms_norm


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight (Zhang & Sennrich 2019), computed in fp32."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # one op instead of six: fewer launches where the host is the bottleneck (decoding)
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


class GatedRMSNorm(nn.Module):
    """Mamba-2's gated RMSNorm over groups of `group_size` channels, computed in fp32:
    norm(x * silu(z)) * weight, or norm(x) * weight * silu(z) with `norm_before_gate`.

    Under autograd it keeps only x, z and the weight for the backward and recomputes the fp32 steps
    there (activation checkpointing): the fp32 intermediates of a (batch, length, d_inner) input
    would otherwise be held until the backward, ten times the bf16 input's size."""

    def __init__(self, dim: int, eps: float = 1e-5, group_size: int | None = None, norm_before_gate: bool = False):
        super().__init__()
        self.eps, self.norm_before_gate = eps, norm_before_gate
        self.group_size = group_size or dim
        if dim % self.group_size:
            raise ValueError(f"GatedRMSNorm: group_size {self.group_size} must divide dim {dim}")
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        if not torch.is_grad_enabled():
            return self._norm(x, z, self.weight)
        # no RNG inside: preserve_rng_state=False also keeps it capturable in a CUDA graph
        return torch.utils.checkpoint.checkpoint(self._norm, x, z, self.weight, use_reentrant=False,
                                                 preserve_rng_state=False)

    def _norm(self, x: Tensor, z: Tensor | None, weight: Tensor) -> Tensor:
        xf = x.float()
        gate = F.silu(z.float()) if z is not None else None
        if gate is not None and not self.norm_before_gate:
            xf = xf * gate
        groups = xf.unflatten(-1, (-1, self.group_size))  # (..., groups, group_size)
        y = F.rms_norm(groups, (self.group_size,), None, self.eps).flatten(-2) * weight.float()
        if gate is not None and self.norm_before_gate:
            y = y * gate
        return y.to(x.dtype)


def add_and_norm(norm: nn.Module, out: Tensor | None, x: Tensor) -> tuple[Tensor, Tensor]:
    """The residual add of the previous sublayer's output and this sublayer's pre-norm: (norm(x'), x')
    with x' = x + out (x itself when out is None), in x's dtype. RMSNorm goes through the fused op
    (`hybrid.kernels.add_rms_norm`, one kernel each way where its backend is Triton); other norms add, then norm."""
    if isinstance(norm, RMSNorm):
        return add_rms_norm(out, x, norm.weight, norm.eps)
    if out is not None:
        x = x + out.to(x.dtype)
    return norm(x), x


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    if kind == "rmsnorm":
        return RMSNorm(dim, eps)
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    raise ValueError(f"norm must be 'rmsnorm' or 'layernorm', got {kind!r}")
