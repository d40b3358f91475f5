"""The SSD backward's elementwise stage in one Triton kernel: the z gate and the D skip.

With out = y silu(z) and y = (the scan) + D x, from dout (b, L, h, P):
    g  = dout silu(z)                                   the gradient of y (dout itself without z)
    dz = dout y silu'(z),  silu'(z) = sig(z) (1 + z (1 - sig(z)))
    dD = sum over batch and length of g x              (per head and channel; summed per head for D (h,))
One pass reads dout, z, y before the gate and x and writes g and dz, with per-row-block partial sums of dD
(summed by PyTorch: deterministic, no atomics), where PyTorch's ops take about fifteen fp32 passes.
Every input may have any strides (x and z are views of larger projections in the Mamba-2 layer).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from hybrid.kernels.launch import FastLauncher, cdiv, next_power_of_2
from hybrid.kernels.ssd.triton_rounding import INTERPRET, _cast_out

ROWS = 64  # (batch, length) positions per program at head dimensions to 64 (4,096 elements a tile)


@triton.jit
def _at(b, t, h, p, s_b, s_l, s_h, s_p):
    # offsets of (rows b, t) x (channels p) of head h in a (batch, length, heads, headdim) tensor
    return (b * s_b + t * s_l)[:, None] + h * s_h + p[None, :] * s_p


@triton.jit
def _gate_bwd_kernel(dy, z, ypre, x, g, dz, dd, rows, length, heads, headdim,
                     s_dy_b, s_dy_l, s_dy_h, s_dy_p, s_z_b, s_z_l, s_z_h, s_z_p, s_y_b, s_y_l, s_y_h, s_y_p,
                     s_x_b, s_x_l, s_x_h, s_x_p, s_g_b, s_g_l, s_g_h, s_g_p, s_dz_b, s_dz_l, s_dz_h, s_dz_p,
                     HAS_Z: tl.constexpr, HAS_D: tl.constexpr, BR: tl.constexpr, BP: tl.constexpr):
    # grid (rows / BR, heads): a block of (batch, length) positions of one head, every channel
    pid_r, h = tl.program_id(0), tl.program_id(1)
    r = pid_r.to(tl.int64) * BR + tl.arange(0, BR)  # int64: offsets past 2^31 elements
    p = tl.arange(0, BP)
    mask = (r < rows)[:, None] & (p < headdim)[None, :]
    b, t = r // length, r % length
    d = tl.load(dy + _at(b, t, h, p, s_dy_b, s_dy_l, s_dy_h, s_dy_p), mask=mask, other=0.0).to(tl.float32)
    if HAS_Z:
        zz = tl.load(z + _at(b, t, h, p, s_z_b, s_z_l, s_z_h, s_z_p), mask=mask, other=0.0).to(tl.float32)
        yp = tl.load(ypre + _at(b, t, h, p, s_y_b, s_y_l, s_y_h, s_y_p), mask=mask, other=0.0).to(tl.float32)
        sig = tl.sigmoid(zz)
        gg = d * zz * sig
        dzz = d * yp * sig * (1 + zz * (1 - sig))
        tl.store(dz + _at(b, t, h, p, s_dz_b, s_dz_l, s_dz_h, s_dz_p), _cast_out(dzz, dz), mask=mask)
        tl.store(g + _at(b, t, h, p, s_g_b, s_g_l, s_g_h, s_g_p), _cast_out(gg, g), mask=mask)
    else:
        gg = d
    if HAS_D:
        xx = tl.load(x + _at(b, t, h, p, s_x_b, s_x_l, s_x_h, s_x_p), mask=mask, other=0.0).to(tl.float32)
        tl.store(dd + (pid_r * heads + h) * headdim + p, tl.sum(gg * xx, axis=0), mask=p < headdim)


_launch = FastLauncher(_gate_bwd_kernel)


def gate_backward(dy: Tensor, z: Tensor | None, ypre: Tensor | None, x: Tensor,
                  D: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(g, dz, dD) from dout (b, L, h, P): g in fp32 (dout itself without z), dz in z's dtype,
    dD fp32 (h, P) summed over batch and length (None without D; the caller sums it per head for a D (h,)).
    `ypre`: y before the gate (needed with z)."""
    batch, length, heads, headdim = dy.shape
    if z is None and D is None:
        return dy, None, None
    rows = batch * length
    bp = next_power_of_2(headdim)
    br = max(16, ROWS * 64 // max(bp, 64))  # a tile of at most 4,096 elements, as at headdim 64
    n_rb = cdiv(rows, br)
    g = dy if z is None else torch.empty(dy.shape, device=dy.device, dtype=torch.float32)
    dz = torch.empty_like(z) if z is not None else dy
    dd = torch.empty((n_rb, heads, headdim), device=dy.device, dtype=torch.float32) if D is not None else dy
    zz = z if z is not None else dy
    yp = ypre if z is not None else dy
    if rows and heads and headdim:
        _launch((n_rb, heads), dy, zz, yp, x, g, dz, dd, rows, length, heads, headdim,
                *dy.stride(), *zz.stride(), *yp.stride(), *x.stride(), *g.stride(), *dz.stride(),
                HAS_Z=z is not None, HAS_D=D is not None, BR=br, BP=bp,
                num_warps=1 if INTERPRET else 4)
    return g, (dz if z is not None else None), (dd.sum(0) if D is not None else None)  # no rows: dD 0
