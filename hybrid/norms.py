"""Normalisation layers for pre-norm residual sublayers."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybrid.kernels.add_rms_norm import add_rms_norm
from hybrid.kernels.gated_rms_norm import gated_rms_norm


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
    norm(x * silu(z)) * weight, or norm(x) * weight * silu(z) with `norm_before_gate`
    (`hybrid.kernels.gated_rms_norm`: one Triton kernel each way on CUDA; on the CPU the PyTorch ops
    under activation checkpointing, which keep only x, z and the weight for the backward)."""

    def __init__(self, dim: int, eps: float = 1e-5, group_size: int | None = None, norm_before_gate: bool = False,
                 backend: str = "auto"):
        super().__init__()
        self.eps, self.norm_before_gate, self.backend = eps, norm_before_gate, backend
        self.group_size = group_size or dim
        if dim % self.group_size:
            raise ValueError(f"GatedRMSNorm: group_size {self.group_size} must divide dim {dim}")
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor, z: Tensor | None = None, dz_into: Callable[[], Tensor] | None = None) -> Tensor:
        """dz_into: where the backward may write z's gradient (`hybrid.kernels.grad_sink`), or None."""
        return gated_rms_norm(x, z, self.weight, self.eps, self.group_size, self.norm_before_gate, self.backend,
                              dz_into=dz_into)


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
