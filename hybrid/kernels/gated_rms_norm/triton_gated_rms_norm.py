"""Mamba-2's gated RMSNorm in one Triton pass each way.

Forward, one program per (BLOCK_ROWS rows, group of G channels), G <= BLOCK_G (one tile):

    v = x silu(z)  (gate before the norm)  or  v = x  (gate after, or no gate)
    s = 1 / sqrt(mean(v^2) + eps),   y = v s w   (times silu(z) with the gate after)

saving s per row and group (fp32); x and z themselves are what the backward reads again. Backward, with
v-hat = v s, n = v-hat w, the gate's derivative silu'(z) = sigmoid(z) (1 + z (1 - sigmoid(z))):

    gate after:   dz = dy n silu'(z),   dn = dy silu(z)           (else dn = dy)
    dv = s (dn w - v-hat mean(dn w v-hat)),   dw = sum over rows of dn v-hat
    gate before:  dx = dv silu(z),   dz = dv x silu'(z)           (else dx = dv)

Each backward program walks a run of row tiles of one group, summing its dw in fp32 into one row of a
(programs, d) buffer that PyTorch sums: deterministic, no atomics. Replaces the PyTorch path's ~10
elementwise kernels forward and the ~30 of its checkpointed backward (recompute and gradients), each
a pass over (rows, d) fp32, by one read of x and z and one write each way.
"""
from __future__ import annotations

from typing import Callable

import torch
import triton
import triton.language as tl
from torch import Tensor

from hybrid.kernels.launch import FastLauncher, cdiv, next_power_of_2, rows_per_tile, sm_count, tile_runs

MAX_G = 16384  # one group per tile; wider groups take the PyTorch path (api.py)


@triton.jit
def _gated_rms_norm_fwd_kernel(
    x_ptr, z_ptr, w_ptr, y_ptr, rstd_ptr,
    rows, group_size, n_groups, eps, s_x, s_z, s_y,
    GATE_IN: tl.constexpr, GATE_OUT: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_G: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)  # (BLOCK_ROWS,)
    g = tl.program_id(1)
    offs = tl.arange(0, BLOCK_G)
    in_group = offs < group_size
    col = (g * group_size + offs)[None, :]  # (1, BLOCK_G) channels of group g
    mask = (row[:, None] < rows) & in_group[None, :]
    v = tl.load(x_ptr + row[:, None] * s_x + col, mask=mask, other=0.0).to(tl.float32)
    if GATE_IN or GATE_OUT:
        z = tl.load(z_ptr + row[:, None] * s_z + col, mask=mask, other=0.0).to(tl.float32)
        gate = z * tl.sigmoid(z)
        if GATE_IN:
            v = v * gate
    rstd = 1.0 / tl.sqrt(tl.sum(v * v, axis=1) / group_size + eps)  # (BLOCK_ROWS,)
    w = tl.load(w_ptr + col, mask=in_group[None, :], other=0.0).to(tl.float32)
    y = v * rstd[:, None] * w
    if GATE_OUT:
        y = y * gate
    tl.store(y_ptr + row[:, None] * s_y + col, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + row * n_groups + g, rstd, mask=row < rows)


@triton.jit
def _gated_rms_norm_bwd_kernel(
    dy_ptr, x_ptr, z_ptr, w_ptr, rstd_ptr, dx_ptr, dz_ptr, dw_ptr,
    rows, group_size, n_groups, d, tiles_per_program, s_dy, s_x, s_z, s_dz,
    GATE_IN: tl.constexpr, GATE_OUT: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_G: tl.constexpr,
):
    pid = tl.program_id(0)
    g = tl.program_id(1)
    offs = tl.arange(0, BLOCK_G)
    in_group = offs < group_size
    col = (g * group_size + offs)[None, :]  # (1, BLOCK_G)
    w = tl.load(w_ptr + col, mask=in_group[None, :], other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_G,), tl.float32)
    first = pid.to(tl.int64) * tiles_per_program * BLOCK_ROWS
    for t in range(0, tiles_per_program):
        row = first + t * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)  # (BLOCK_ROWS,)
        mask = (row[:, None] < rows) & in_group[None, :]
        x = tl.load(x_ptr + row[:, None] * s_x + col, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + row[:, None] * s_dy + col, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + row * n_groups + g, mask=row < rows, other=0.0)[:, None]  # 0 past the rows
        v = x
        dn = dy
        if GATE_IN or GATE_OUT:
            z = tl.load(z_ptr + row[:, None] * s_z + col, mask=mask, other=0.0).to(tl.float32)
            sig = tl.sigmoid(z)
            gate = z * sig
            dgate = sig * (1.0 + z * (1.0 - sig))  # silu'(z)
            if GATE_IN:
                v = x * gate
        v_hat = v * rstd
        if GATE_OUT:
            dz = dy * v_hat * w * dgate
            dn = dy * gate
        gw = dn * w
        dv = rstd * (gw - v_hat * (tl.sum(gw * v_hat, axis=1) / group_size)[:, None])
        dw += tl.sum(dn * v_hat, axis=0)
        dx = dv
        if GATE_IN:
            dz = dv * x * dgate
            dx = dv * gate
        tl.store(dx_ptr + row[:, None] * d + col, dx.to(dx_ptr.dtype.element_ty), mask=mask)  # (rows, d) contiguous
        if GATE_IN or GATE_OUT:  # dz: rows s_dz apart (a slice of a wider gradient buffer, or contiguous)
            tl.store(dz_ptr + row[:, None] * s_dz + col, dz.to(dz_ptr.dtype.element_ty), mask=mask)
    tl.store(dw_ptr + pid * d + col, dw[None, :], mask=in_group[None, :])


_fwd_launch = FastLauncher(_gated_rms_norm_fwd_kernel)
_bwd_launch = FastLauncher(_gated_rms_norm_bwd_kernel)


def _tiles(group_size: int) -> tuple[int, int, int]:
    """BLOCK_G, BLOCK_ROWS (about 4096 elements a tile) and num_warps for groups of group_size."""
    block_g = next_power_of_2(group_size)
    block_rows = rows_per_tile(block_g)
    return block_g, block_rows, 4 if block_g * block_rows <= 2048 else 8


def _gated_rms_norm_fwd(x: Tensor, z: Tensor | None, weight: Tensor, eps: float, group_size: int,
                        norm_before_gate: bool) -> tuple[Tensor, Tensor]:
    """x, z (rows, d) with unit channel stride -> y (rows, d) in x's dtype, rstd (rows, groups) fp32."""
    rows, d = x.shape
    n_groups = d // group_size
    y = torch.empty(rows, d, device=x.device, dtype=x.dtype)
    rstd = torch.empty(rows, n_groups, device=x.device, dtype=torch.float32)
    if rows == 0:  # no launch: a CUDA grid of 0 programs is an invalid configuration
        return y, rstd
    block_g, block_rows, warps = _tiles(group_size)
    _fwd_launch((cdiv(rows, block_rows), n_groups), x, z if z is not None else x, weight, y, rstd,
                rows, group_size, n_groups, eps, x.stride(0), z.stride(0) if z is not None else 0, y.stride(0),
                GATE_IN=z is not None and not norm_before_gate, GATE_OUT=z is not None and norm_before_gate,
                BLOCK_ROWS=block_rows, BLOCK_G=block_g, num_warps=warps)
    return y, rstd


def _gated_rms_norm_bwd(dy: Tensor, x: Tensor, z: Tensor | None, weight: Tensor, rstd: Tensor, group_size: int,
                        norm_before_gate: bool, dz: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor]:
    """Gradients of x, z (None without z) and the weight from dy (rows, d); z's written into `dz`
    (rows, d) with unit channel stride when given."""
    rows, d = x.shape
    if dz is not None and (z is None or dz.shape != z.shape or dz.dtype != z.dtype or dz.stride(-1) != 1):
        raise ValueError(f"gated_rms_norm (triton): the tensor for z's gradient must be (rows, d) = {(rows, d)} in "
                         f"z's dtype with unit channel stride, got {tuple(dz.shape)} {dz.dtype} strides {dz.stride()}")
    if rows == 0:  # no launch (as the forward)
        return torch.empty_like(x), (torch.empty_like(z) if z is not None else None), torch.zeros_like(weight)
    n_groups = d // group_size
    block_g, block_rows, warps = _tiles(group_size)
    target = max(1, 4 * sm_count(x.device) // n_groups) if x.is_cuda else 4  # a few programs per SM
    per, programs = tile_runs(cdiv(rows, block_rows), target)
    dx = torch.empty(rows, d, device=x.device, dtype=x.dtype)
    if dz is None and z is not None:
        dz = torch.empty(rows, d, device=x.device, dtype=z.dtype)
    dw = torch.empty(programs, d, device=x.device, dtype=torch.float32)
    _bwd_launch((programs, n_groups), dy, x, z if z is not None else x, weight, rstd, dx, dz if dz is not None else dx,
                dw, rows, group_size, n_groups, d, per, dy.stride(0), x.stride(0), z.stride(0) if z is not None else 0,
                dz.stride(0) if dz is not None else 0,
                GATE_IN=z is not None and not norm_before_gate, GATE_OUT=z is not None and norm_before_gate,
                BLOCK_ROWS=block_rows, BLOCK_G=block_g, num_warps=warps)
    return dx, dz, dw.sum(0).to(weight.dtype)


def _rows(t: Tensor) -> Tensor:
    """(..., d) as (rows, d) with unit channel stride: a view where one exists (a slice of a wider
    projection keeps its row stride), else a copy."""
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


class GatedRMSNormFn(torch.autograd.Function):
    """(x, z or None, weight) -> y; saves x, z, the weight and rstd."""

    @staticmethod
    def forward(ctx, x, z, weight, eps, group_size, norm_before_gate, dz_into):
        x2, z2 = _rows(x), (_rows(z) if z is not None else None)
        y, rstd = _gated_rms_norm_fwd(x2, z2, weight.contiguous(), eps, group_size, norm_before_gate)
        ctx.save_for_backward(x2, z2, weight, rstd)
        ctx.group_size, ctx.norm_before_gate = group_size, norm_before_gate
        ctx.dz_into = dz_into if z is not None else None
        ctx.z_shape = z.shape if z is not None else None
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, z2, weight, rstd = ctx.saved_tensors
        target = ctx.dz_into() if ctx.dz_into is not None else None
        if target is not None and (target.shape != ctx.z_shape or target.dtype != z2.dtype):
            raise ValueError(f"gated_rms_norm (triton): the tensor for z's gradient must have z's shape "
                             f"{tuple(ctx.z_shape)} and dtype {z2.dtype}, got {tuple(target.shape)} {target.dtype}")
        dz_rows = target.view(z2.shape) if target is not None else None  # (rows, d), rows a stride apart
        dx, dz, dw = _gated_rms_norm_bwd(_rows(dy), x2, z2, weight.contiguous(), rstd, ctx.group_size,
                                         ctx.norm_before_gate, dz_rows)
        dz = (target if target is not None else dz.view(dy.shape)) if dz is not None else None
        return dx.view(dy.shape), dz, dw, None, None, None, None


def gated_rms_norm_triton(x: Tensor, z: Tensor | None, weight: Tensor, eps: float, group_size: int,
                          norm_before_gate: bool, dz_into: Callable[[], Tensor] | None = None) -> Tensor:
    """As `gated_rms_norm_ref`; x, z (..., d) with group_size <= MAX_G. dz_into: None, or a callable
    returning the tensor (z's shape and dtype, unit channel stride) that the backward writes z's
    gradient into (`hybrid.kernels.grad_sink`)."""
    return GatedRMSNormFn.apply(x, z, weight, eps, group_size, norm_before_gate, dz_into)
