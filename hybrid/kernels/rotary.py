"""Rotary position embedding as one Triton kernel, forward and backward (`hybrid.layers.rope` has the
PyTorch reference, `apply_rotary_ref`, and chooses between them).

Each program rotates one token's block of heads: pairs (x_i, x_{i + r/2}) of the first r dims by
the token's angles, the other head_dim - r dims copied through. The backward is the same kernel with
the angles negated, a rotation's transpose being its inverse. Inputs may be strided views (the query
and key heads sliced out of a fused projection); the output is contiguous. Arithmetic in fp32.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from hybrid.kernels.launch import FastLauncher, cdiv, next_power_of_2


@triton.jit
def _rotary_kernel(
    x_ptr, cos_ptr, sin_ptr, out_ptr,
    length, heads, half, n_pass,
    s_x_b, s_x_l, s_x_h, s_c_b, s_c_l, s_o_b, s_o_l, s_o_h,
    INVERSE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
):
    token = tl.program_id(0)
    b = (token // length).to(tl.int64)
    pos = (token % length).to(tl.int64)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_r = tl.arange(0, BLOCK_R)
    mask_r = offs_r < half
    cos = tl.load(cos_ptr + b * s_c_b + pos * s_c_l + offs_r, mask=mask_r, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(sin_ptr + b * s_c_b + pos * s_c_l + offs_r, mask=mask_r, other=0.0).to(tl.float32)[None, :]
    if INVERSE:
        sin = -sin
    x_rows = x_ptr + b * s_x_b + pos * s_x_l + offs_h[:, None] * s_x_h
    o_rows = out_ptr + b * s_o_b + pos * s_o_l + offs_h[:, None] * s_o_h
    mask = (offs_h[:, None] < heads) & mask_r[None, :]
    x1 = tl.load(x_rows + offs_r[None, :], mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_rows + half + offs_r[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(o_rows + offs_r[None, :], (x1 * cos - x2 * sin).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(o_rows + half + offs_r[None, :], (x2 * cos + x1 * sin).to(out_ptr.dtype.element_ty), mask=mask)
    if BLOCK_P > 0:  # partial rotary: the remaining dims pass through
        offs_p = 2 * half + tl.arange(0, BLOCK_P)[None, :]
        mask_p = (offs_h[:, None] < heads) & (offs_p < 2 * half + n_pass)
        tl.store(o_rows + offs_p, tl.load(x_rows + offs_p, mask=mask_p), mask=mask_p)


_launch_rotary = FastLauncher(_rotary_kernel)  # kernel[grid] without Triton's per-call argument binding


def _rotate(x: Tensor, cos: Tensor, sin: Tensor, inverse: bool) -> Tensor:
    batch, length, heads, head_dim = x.shape
    half = cos.shape[-1]
    if x.stride(-1) != 1:
        x = x.contiguous()
    cos, sin = cos.contiguous(), sin.contiguous()
    out = torch.empty((batch, length, heads, head_dim), device=x.device, dtype=x.dtype)
    s_c_b = cos.stride(0) if cos.dim() == 3 and cos.shape[0] > 1 else 0  # tables per batch row, or shared
    block_r = next_power_of_2(half)
    n_pass = head_dim - 2 * half
    block_h = max(1, min(next_power_of_2(heads), 4096 // (2 * block_r)))
    grid = (batch * length, cdiv(heads, block_h))
    _launch_rotary(
        grid,
        x, cos, sin, out, length, heads, half, n_pass,
        x.stride(0), x.stride(1), x.stride(2), s_c_b, cos.stride(-2), out.stride(0), out.stride(1), out.stride(2),
        INVERSE=inverse, BLOCK_H=block_h, BLOCK_R=block_r,
        BLOCK_P=next_power_of_2(n_pass) if n_pass else 0, num_warps=4,
    )
    return out


class _RotaryFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin, inverse=False)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, sin, inverse=True), None, None


def apply_rotary_triton(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (batch, length, heads, head_dim) rotated as `apply_rotary_ref`; cos, sin (length, r / 2) or
    (batch or 1, length, r / 2). The tables get no gradient."""
    if (x.dim() != 4 or cos.shape != sin.shape or cos.dim() not in (2, 3) or cos.shape[-1] * 2 > x.shape[-1]
            or cos.shape[-2] != x.shape[1] or (cos.dim() == 3 and cos.shape[0] not in (1, x.shape[0]))):
        raise ValueError(f"rotary (triton): x must be (batch, length, heads, head_dim) and cos, sin (length, r/2) or "
                         f"(batch or 1, length, r/2) with r <= head_dim; got x {tuple(x.shape)}, cos "
                         f"{tuple(cos.shape)}, sin {tuple(sin.shape)}")
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("rotary (triton): needs CUDA tensors (or TRITON_INTERPRET=1); on the CPU set the "
                         "attention layer's rope_backend to 'auto' or 'torch'")
    if x.dtype == torch.float64:
        raise TypeError("rotary (triton): float64 is not supported; use the 'torch' backend")
    return _RotaryFn.apply(x, cos.detach(), sin.detach())
