"""The residual add and RMSNorm in one Triton pass each way.

Forward, one program per BLOCK_ROWS rows of d channels (d <= BLOCK_D, one tile):

    r' = r + o   (fp32, stored rounded to r's dtype; the norm reads the rounded value, as PyTorch's does)
    s  = 1 / sqrt(mean(r'^2) + eps),   y = r' s w

saving s per row. Backward, with g = dy w and r_hat = r' s:

    dr' = dr'_out + s (g - r_hat mean(g r_hat))      (the gradient through the norm, plus the residual's own)
    do  = dr' (in o's dtype),   dr = dr' (in r's dtype),   dw = sum over rows of dy r_hat

each backward program walking a run of (BLOCK_ROWS, d) tiles, as the forward's, accumulating dy r_hat
elementwise in a (BLOCK_ROWS, d) fp32 tile and summing that over its rows once, into one row of a
(programs, d) buffer that PyTorch sums. The first version walked one row at a time, a latency-bound
loop that measured slower than PyTorch's kernels; the next summed dw over the tile's rows at every tile,
a cross-warp reduction per tile, which the 2-D accumulator removes (its tiles: `bwd_config`).
Replaces the add, two casts, the norm and the cast back (forward) and their backward kernels: a
sublayer's memory traffic outside its mixer, and most of a decoding step's launches outside it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from hybrid.kernels.launch import FastLauncher, cdiv, next_power_of_2, rows_per_tile, sm_count, tile_runs

MAX_D = 16384  # one row per tile; wider rows take the PyTorch path (api.py)


@triton.jit
def _add_rms_norm_fwd_kernel(
    o_ptr, r_ptr, w_ptr, y_ptr, r_out_ptr, rstd_ptr,
    rows, d, eps,
    HAS_OUT: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows_here = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)  # (BLOCK_ROWS,)
    row = rows_here[:, None]
    col = tl.arange(0, BLOCK_D)[None, :]
    mask = (row < rows) & (col < d)
    offs = row * d + col
    r = tl.load(r_ptr + offs, mask=mask, other=0.0)
    if HAS_OUT:
        o = tl.load(o_ptr + offs, mask=mask, other=0.0)
        r = (r.to(tl.float32) + o.to(tl.float32)).to(r_ptr.dtype.element_ty)
        tl.store(r_out_ptr + offs, r, mask=mask)
    rf = r.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(rf * rf, axis=1) / d + eps)  # (BLOCK_ROWS,)
    w = tl.load(w_ptr + col, mask=col < d, other=0.0).to(tl.float32)
    y = rf * rstd[:, None] * w
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + rows_here, rstd, mask=rows_here < rows)


@triton.jit
def _add_rms_norm_bwd_kernel(
    dy_ptr, dr_out_ptr, r_ptr, w_ptr, rstd_ptr, dr_ptr, do_ptr, dw_ptr,
    rows, d, tiles_per_program,
    HAS_DR_OUT: tl.constexpr, HAS_OUT: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    col = tl.arange(0, BLOCK_D)[None, :]  # (1, BLOCK_D)
    mask_d = col < d
    w = tl.load(w_ptr + col, mask=mask_d, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_ROWS, BLOCK_D), tl.float32)  # summed over its rows once, after the loop
    first = pid.to(tl.int64) * tiles_per_program * BLOCK_ROWS
    for t in range(0, tiles_per_program):  # a run of (BLOCK_ROWS, d) tiles: one load of each a tile
        row = (first + t * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS))[:, None]  # (BLOCK_ROWS, 1)
        mask = (row < rows) & mask_d
        offs = row * d + col
        rf = tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + row, mask=row < rows, other=0.0)  # 0 past the rows: no dw from them
        r_hat = rf * rstd
        g = dy * w
        dr = rstd * (g - r_hat * (tl.sum(g * r_hat, axis=1) / d)[:, None])
        if HAS_DR_OUT:
            dr += tl.load(dr_out_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(dr_ptr + offs, dr.to(dr_ptr.dtype.element_ty), mask=mask)
        if HAS_OUT:
            tl.store(do_ptr + offs, dr.to(do_ptr.dtype.element_ty), mask=mask)
        dw += dy * r_hat  # elementwise: no reduction across the tile's rows (warps) per tile
    tl.store(dw_ptr + pid * d + col, tl.sum(dw, axis=0)[None, :], mask=mask_d)


_fwd = FastLauncher(_add_rms_norm_fwd_kernel)
_bwd = FastLauncher(_add_rms_norm_bwd_kernel)


def _block_d(d: int) -> int:
    return next_power_of_2(d)


def _add_rms_norm_fwd(out: Tensor | None, residual: Tensor, weight: Tensor, eps: float):
    """(rows, d) inputs -> normed, new residual (residual itself without `out`), rstd (rows,) fp32."""
    rows, d = residual.shape
    normed = torch.empty_like(residual)
    new = torch.empty_like(residual) if out is not None else residual
    rstd = torch.empty(rows, device=residual.device, dtype=torch.float32)
    if rows == 0:  # no launch: a CUDA grid of 0 programs is an invalid configuration
        return normed, new, rstd
    block_d = _block_d(d)
    block_rows = rows_per_tile(block_d)
    _fwd((cdiv(rows, block_rows),), out if out is not None else residual, residual, weight, normed, new, rstd,
         rows, d, eps, HAS_OUT=out is not None, BLOCK_ROWS=block_rows, BLOCK_D=block_d,
         num_warps=4 if block_d <= 2048 else 8)
    return normed, new, rstd


def bwd_config(d: int) -> tuple[int, int, int]:
    """(rows per tile, warps, programs per SM) of the backward for rows of d: tiles of about 4096 elements,
    4 warps up to 2048 of them, a few programs per SM (`bench_add_rms_norm.py --sweep` times others).
    Rows of 513-1024 (the ~130M models' 768) take one row, 2 warps and 8 programs per SM, the fastest of
    the sweep on an H200 at 16384 x 768: 0.0726 ms against 0.0909 for (4, 4, 4) (commit 1751ac0)."""
    if _block_d(d) == 1024:
        return 1, 2, 8
    block_rows = rows_per_tile(_block_d(d))
    return block_rows, 4 if _block_d(d) * block_rows <= 2048 else 8, 4


def _add_rms_norm_bwd(dy: Tensor, dr_out: Tensor | None, new: Tensor, weight: Tensor, rstd: Tensor,
                      out_dtype: torch.dtype | None, config: tuple[int, int, int] | None = None):
    """Gradients for (out or None, residual, weight) from those of (normed, new residual); `config` as
    bwd_config's."""
    rows, d = new.shape
    if rows == 0:  # no launch (as the forward)
        empty = torch.empty_like(new)
        do = torch.empty(0, d, device=new.device, dtype=out_dtype) if out_dtype is not None else None
        return do, empty, torch.zeros_like(weight)
    block_d = _block_d(d)
    block_rows, num_warps, per_sm = config or bwd_config(d)
    per, programs = tile_runs(cdiv(rows, block_rows), per_sm * sm_count(new.device) if new.is_cuda else 8)
    dr = torch.empty_like(new)
    do = torch.empty(rows, d, device=new.device, dtype=out_dtype) if out_dtype is not None else dr
    dw = torch.empty(programs, d, device=new.device, dtype=torch.float32)
    _bwd((programs,), dy, dr_out if dr_out is not None else dy, new, weight, rstd, dr, do, dw, rows, d, per,
         HAS_DR_OUT=dr_out is not None, HAS_OUT=out_dtype is not None, BLOCK_ROWS=block_rows, BLOCK_D=block_d,
         num_warps=num_warps)
    return (do if out_dtype is not None else None), dr, dw.sum(0).to(weight.dtype)


def _rows(t: Tensor) -> Tensor:
    return t.reshape(-1, t.shape[-1]).contiguous()  # (rows, d)


class AddRMSNormFn(torch.autograd.Function):
    """(out, residual, weight) -> (normed, residual + out)."""

    @staticmethod
    def forward(ctx, out, residual, weight, eps):
        normed, new, rstd = _add_rms_norm_fwd(_rows(out), _rows(residual), weight.contiguous(), eps)
        ctx.save_for_backward(new, weight, rstd)
        ctx.out_dtype = out.dtype
        return normed.view(residual.shape), new.view(residual.shape)

    @staticmethod
    def backward(ctx, d_normed, d_new):
        new, weight, rstd = ctx.saved_tensors
        do, dr, dw = _add_rms_norm_bwd(_rows(d_normed), _rows(d_new) if d_new is not None else None, new, weight,
                                       rstd, ctx.out_dtype)
        return do.view(d_normed.shape), dr.view(d_normed.shape), dw, None


class RMSNormFn(torch.autograd.Function):
    """(residual, weight) -> normed: the first sublayer's norm, with nothing to add."""

    @staticmethod
    def forward(ctx, residual, weight, eps):
        normed, _, rstd = _add_rms_norm_fwd(None, _rows(residual), weight.contiguous(), eps)
        ctx.save_for_backward(_rows(residual), weight, rstd)
        return normed.view(residual.shape)

    @staticmethod
    def backward(ctx, d_normed):
        r, weight, rstd = ctx.saved_tensors
        _, dr, dw = _add_rms_norm_bwd(_rows(d_normed), None, r, weight, rstd, None)
        return dr.view(d_normed.shape), dw, None


def add_rms_norm_triton(out: Tensor | None, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """As `add_rms_norm_ref`; out and residual of one shape (..., d) with d <= MAX_D, weight (d,)."""
    if out is None:
        return RMSNormFn.apply(residual, weight, eps), residual
    return AddRMSNormFn.apply(out, residual, weight, eps)
