"""Rotary position embedding (RoPE, Su et al. 2021), GPT-NeoX / HF Llama layout.

Pairs (x_i, x_{i + r/2}) of the first r = rotary_dim dims of each head rotate by the angle
p * theta^(-2i / r) at position p:

    x_i'       = x_i cos - x_{i+r/2} sin
    x_{i+r/2}' = x_{i+r/2} cos + x_i sin

so q_m . k_n depends on m - n only. The remaining head_dim - r dims pass through (partial RoPE).
The rotation runs in float32 (float64 for float64 inputs). On CUDA, "auto" runs a hand-written Triton
kernel (`hybrid.kernels.rotary`): one launch forward and one backward that read the q/k slice of the
fused projection in place. On an H100 it took the attention layer's forward from +37% over its
kernel and matmuls to -1%, where the torch.compile'd reference ran at a sixth of the memory bound
(benchmarks/results/attention_*.md). "compiled" keeps that compiled function; on the CPU it runs
eagerly.
"""
from __future__ import annotations

import functools
import logging
from typing import Callable

import torch
from torch import Tensor

log = logging.getLogger(__name__)

BACKENDS = ("auto", "compiled", "torch", "triton")


def rotary_tables(positions: Tensor, dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos, sin of shape (*positions.shape, dim // 2), float32, for positions (length,) or (batch, length)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim)
    angles = positions.float()[..., None] * inv_freq
    return angles.cos(), angles.sin()


def apply_rotary_ref(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first 2 * cos.shape[-1] dims of x (batch, length, heads, head_dim).

    cos, sin: (length, rot / 2) or (batch, length, rot / 2). Returns x's shape and dtype."""
    rot = 2 * cos.shape[-1]
    x_rot, x_pass = x[..., :rot].to(torch.promote_types(x.dtype, torch.float32)), x[..., rot:]
    x1, x2 = x_rot.chunk(2, dim=-1)
    cos, sin = cos[..., None, :], sin[..., None, :]  # broadcast over heads
    rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)
    return torch.cat([rotated, x_pass], dim=-1) if x_pass.shape[-1] else rotated


@functools.cache
def _compiled() -> Callable:
    return torch.compile(apply_rotary_ref, dynamic=True)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, backend: str = "auto") -> Tensor:
    """`apply_rotary_ref` computed by `backend`: "auto" is the Triton kernel for CUDA tensors (the
    compiled function for float64, which the kernel does not take) and the reference elsewhere;
    "triton", "compiled" and "torch" (the eager reference) force one."""
    if backend not in BACKENDS:
        raise ValueError(f"rope backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch" or (backend == "auto" and not x.is_cuda) or torch.compiler.is_compiling():
        return apply_rotary_ref(x, cos, sin)  # inside torch.compile, the compiler fuses the reference
    if backend == "triton" or (backend == "auto" and x.dtype != torch.float64):
        from hybrid.kernels.rotary import apply_rotary_triton  # noqa: PLC0415 (Triton only when asked for)
        return apply_rotary_triton(x, cos, sin)
    return _compiled()(x, cos, sin)
