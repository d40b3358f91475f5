"""SSD (Mamba-2), one decoding step in Triton, updating the state in place.

    dt      = clamp(softplus(dt[b, h] + dt_bias[h]), dt_limit)        (bias, softplus, limit optional)
    s[p, n] = exp(dt A[h]) s[p, n] + dt x[p] B[g(h), n]                 (one scalar decay per head)
    y[p]    = sum_n C[g(h), n] s[p, n] + D x[p],   y *= silu(z[p])       (D per head or per channel)

One program owns (batch row b, head h, BLOCK_P of its headdim channels) and that part of the state, so the
state is read and written once: the step is bound by memory (batch * heads * headdim * d_state * 8 bytes
in fp32) or, at small batch, by the launch. dt, A and dt_bias are read once per program as scalars, B and C
once per program as vectors (group g(h) = h // (heads / groups)). Arithmetic is fp32; the state keeps its
dtype. The sequential oracle is `reference.ssd_state_update_ref`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from hybrid.kernels.launch import FastLauncher, cdiv, fill_sms, next_power_of_2
from hybrid.kernels.triton_math import softplus as _softplus


@triton.jit
def _ssd_step_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr,
    heads, headdim, dstate, heads_per_group, dt_min, dt_max,
    s_h_b, s_h_h, s_h_p, s_h_n, s_x_b, s_x_h, s_x_p, s_dt_b, s_dt_h, s_B_b, s_B_g, s_B_n,
    s_C_b, s_C_g, s_C_n, s_z_b, s_z_h, s_z_p, s_y_b, s_y_h, s_y_p, s_D_h, s_D_p,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_LIMIT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_p = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // heads).to(tl.int64)
    h = bh % heads
    g = h // heads_per_group
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_p = offs_p < headdim
    mask_n = offs_n < dstate
    mask = mask_p[:, None] & mask_n[None, :]

    dt = tl.load(dt_ptr + b * s_dt_b + h * s_dt_h).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + h).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt)
    if HAS_LIMIT:
        dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)
    decay = tl.exp(dt * tl.load(A_ptr + h).to(tl.float32))

    x = tl.load(x_ptr + b * s_x_b + h * s_x_h + offs_p * s_x_p, mask=mask_p, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + b * s_B_b + g * s_B_g + offs_n * s_B_n, mask=mask_n, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + b * s_C_b + g * s_C_g + offs_n * s_C_n, mask=mask_n, other=0.0).to(tl.float32)
    s_ptrs = state_ptr + b * s_h_b + h * s_h_h + offs_p[:, None] * s_h_p + offs_n[None, :] * s_h_n
    s = tl.load(s_ptrs, mask=mask, other=0.0).to(tl.float32)
    s = s * decay + (dt * x)[:, None] * Bv[None, :]
    tl.store(s_ptrs, s, mask=mask)
    y = tl.sum(s * Cv[None, :], axis=1)
    if HAS_D:
        y += x * tl.load(D_ptr + h * s_D_h + offs_p * s_D_p, mask=mask_p, other=0.0).to(tl.float32)
    if HAS_Z:
        zv = tl.load(z_ptr + b * s_z_b + h * s_z_h + offs_p * s_z_p, mask=mask_p, other=0.0).to(tl.float32)
        y *= zv * tl.sigmoid(zv)
    tl.store(y_ptr + b * s_y_b + h * s_y_h + offs_p * s_y_p, y, mask=mask_p)


_launch_ssd_step = FastLauncher(_ssd_step_kernel)  # kernel[grid] without Triton's per-call argument binding
PROGRAMS_PER_SM = 4  # at small batch, split each head's channels until the grid has this many programs per SM
MIN_BLOCK_P = 4


def _tile(rows: int, headdim: int, block_n: int, device: torch.device) -> tuple[int, int]:
    """(BLOCK_P, num_warps). Up to 4,096 state elements a program (32 channels at d_state 128); with few
    (batch, head) rows (decoding at batch 1: 24 rows of the ~130M model) that grid leaves most SMs idle and
    the step waits on a few programs' memory latency, so the channels are split further, down to
    MIN_BLOCK_P, until the grid reaches PROGRAMS_PER_SM programs per SM (mamba_ssm's step splits them
    into blocks of 4 channels at d_state 128, with 4 warps). Tiles under 512 elements take fewer warps."""
    block_p = fill_sms(max(1, min(next_power_of_2(headdim), 4096 // block_n)), MIN_BLOCK_P, rows, headdim, device,
                       PROGRAMS_PER_SM)
    return block_p, max(1, min(4, block_p * block_n // 128))


def ssd_state_update_triton(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                            D: Tensor | None = None, z: Tensor | None = None, dt_bias: Tensor | None = None,
                            dt_softplus: bool = False,
                            dt_limit: tuple[float, float] = (0.0, float("inf"))) -> Tensor:
    """One decoding step; updates `state` in place and returns y.

    state: (batch, heads, headdim, d_state), any float dtype and strides; x, z: (batch, heads, headdim);
    dt: (batch, heads); A, dt_bias: (heads,); B, C: (batch, groups, d_state); D: (heads,) or (heads, headdim).
    Returns y: (batch, heads, headdim) in x's dtype.
    """
    batch, heads, headdim = x.shape
    dstate, groups = state.shape[3], B.shape[1]
    y = torch.empty_like(x)
    block_n = next_power_of_2(dstate)
    block_p, num_warps = _tile(batch * heads, headdim, block_n, state.device)
    zz = z if z is not None else x
    d_strides = (0, 0) if D is None else (D.stride(0), D.stride(1) if D.dim() == 2 else 0)
    limit = tuple(dt_limit) != (0.0, float("inf"))
    _launch_ssd_step(
        (cdiv(headdim, block_p), batch * heads),
        state, x, dt, A, B, C, D, z, dt_bias, y,
        heads, headdim, dstate, heads // groups, float(dt_limit[0]), float(min(dt_limit[1], 3.0e38)),
        *state.stride(), *x.stride(), *dt.stride(), *B.stride(), *C.stride(), *zz.stride(), *y.stride(), *d_strides,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus,
        HAS_LIMIT=limit, BLOCK_P=block_p, BLOCK_N=block_n, num_warps=num_warps,
    )
    return y
