"""Selective scan (Mamba-1 S6), one decoding step in Triton, updating the state in place.

    dt      = softplus(dt + dt_bias)                                (both optional)
    h[d, n] = exp(dt[d] A[d, n]) h[d, n] + dt[d] B[g(d), n] x[d]    (ZOH for A, Euler for B; Mamba eq. 4)
    y[d]    = sum_n C[g(d), n] h[d, n] + D[d] x[d],   y *= silu(z)  (z optional)

One program owns (batch row, BLOCK_D channels) and the whole state of those channels: the step
reads and writes the state once, so it is bound by memory (batch * dim * state * 8 bytes in fp32)
or, at small batch, by the launch. Arithmetic is fp32; the state keeps its dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from hybrid.kernels.launch import FastLauncher, cdiv, fill_sms, next_power_of_2
from hybrid.kernels.triton_math import softplus as _softplus


@triton.jit
def _state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr,
    dim, dstate, per_group,
    s_h_b, s_h_d, s_h_n, s_x_b, s_x_d, s_dt_b, s_dt_d, s_z_b, s_z_d, s_y_b, s_y_d,
    s_A_d, s_A_n, s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask = mask_d[:, None] & (offs_n[None, :] < dstate)
    grp = tl.minimum(offs_d, dim - 1) // per_group

    h_ptrs = state_ptr + b * s_h_b + offs_d[:, None] * s_h_d + offs_n[None, :] * s_h_n
    h = tl.load(h_ptrs, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + b * s_x_b + offs_d * s_x_d, mask=mask_d, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + b * s_dt_b + offs_d * s_dt_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt)
    A = tl.load(A_ptr + offs_d[:, None] * s_A_d + offs_n[None, :] * s_A_n, mask=mask, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + b * s_B_b + grp[:, None] * s_B_g + offs_n[None, :] * s_B_n, mask=mask,
                 other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + b * s_C_b + grp[:, None] * s_C_g + offs_n[None, :] * s_C_n, mask=mask,
                 other=0.0).to(tl.float32)
    h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * Bv
    tl.store(h_ptrs, h, mask=mask)
    y = tl.sum(h * Cv, axis=1)
    if HAS_D:
        y += x * tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_Z:
        zv = tl.load(z_ptr + b * s_z_b + offs_d * s_z_d, mask=mask_d, other=0.0).to(tl.float32)
        y *= zv * tl.sigmoid(zv)
    tl.store(y_ptr + b * s_y_b + offs_d * s_y_d, y, mask=mask_d)


_launch_state_update = FastLauncher(_state_update_kernel)  # kernel[grid] without Triton's per-call argument binding
MIN_BLOCK_D = 32


def _block_d(batch: int, dim: int, block_n: int, device: torch.device) -> int:
    """Channels a program: up to 64 (and 2,048 state elements); at small batch, where (dim / 64) x batch
    programs leave most SMs idle (24 at batch 1 for the ~130M model), halved down to MIN_BLOCK_D while
    the grid has fewer than 4 programs per SM (mamba_ssm's step takes 32 channels at d_state 16)."""
    return fill_sms(max(1, min(next_power_of_2(dim), 2048 // block_n, 64)), MIN_BLOCK_D, batch, dim, device)


def _strides_bc(t: Tensor) -> tuple[int, int, int]:
    """(batch, group, state) strides of B or C at one step; group stride 0 when ungrouped."""
    if t.dim() == 2:
        return t.stride(0), 0, t.stride(1)
    return t.stride(0), t.stride(1), t.stride(2)


def selective_state_update_triton(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                                  D: Tensor | None = None, z: Tensor | None = None, dt_bias: Tensor | None = None,
                                  dt_softplus: bool = False) -> Tensor:
    """One decoding step; updates `state` in place and returns y.

    state: (batch, dim, dstate), any float dtype, any strides; x, dt, z: (batch, dim);
    A: (dim, dstate); B, C: (batch, dstate) or (batch, groups, dstate); D, dt_bias: (dim,).
    Returns y: (batch, dim) in x's dtype.
    """
    batch, dim = x.shape
    dstate = A.shape[1]
    groups = 1 if B.dim() == 2 else B.shape[1]
    y = torch.empty((batch, dim), device=x.device, dtype=x.dtype)
    block_n = next_power_of_2(dstate)
    block_d = _block_d(batch, dim, block_n, x.device)
    zz = z if z is not None else x
    grid = (cdiv(dim, block_d), batch)
    _launch_state_update(
        grid,
        state, x, dt, A, B, C, D, z, dt_bias, y,
        dim, dstate, dim // groups,
        *state.stride(), *x.stride(), *dt.stride(), *zz.stride(), *y.stride(),
        *A.stride(), *_strides_bc(B), *_strides_bc(C),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus,
        BLOCK_D=block_d, BLOCK_N=block_n, num_warps=4,
    )
    return y
