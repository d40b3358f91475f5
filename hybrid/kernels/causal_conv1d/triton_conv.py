"""Causal depthwise 1-D convolution with optional fused SiLU, Triton forward and backward kernels.

What it computes (reference.py has the oracle): for batch b, channel d, step t, filter width W,

    pre_t = bias + sum_{k<W} w[k] x_{t-W+1+k}      x_s for s < 0: initial_states[s + W - 1], else 0
    out_t = silu(pre_t) = pre_t sig(pre_t)          (or out_t = pre_t without activation)

with seq_idx, a tap counts only where seq_idx[t-W+1+k] == seq_idx[t]. Gradients, with
g_t = d loss / d pre_t = dout_t silu'(pre_t) and silu'(p) = sig(p) (1 + p (1 - sig(p))):

    dx_s     = sum_{k<W} w[k] g_{s+W-1-k}     (the outputs whose tap k reads x_s; g_t = 0 for t >= length,
                                               and 0 across a document boundary)
    dw[k]    = sum_{b,t} g_t x_{t-W+1+k}       dbias = sum_{b,t} g_t
    dinit[j] = dx_s at s = j - W + 1 < 0       (the dx formula at the negative positions)

Layout of the work. A program owns a (BLOCK_D channels, BLOCK_L steps) tile of one batch row and
reads the W shifted tiles x[t - W + 1 + k] straight from memory: the overlapping reads hit L1/L2,
so DRAM sees x about once, and no register shuffles are needed to shift a tile. Strides are
general; Triton specialises a unit stride, so the tile is vectorised along the length for the
(batch, dim, length)-contiguous layout and along the channels for the channel-last one (a slice of
a (batch, length, 3 * dim) projection, transposed), each with its own tile shape (_config).

Backward (fused, the default). A program owns a tile of dx positions s and recomputes what it needs: g at the W
positions s + j (j < W), each from dout and (with SiLU) the pre-activation recomputed from x, so
nothing but x is saved by the forward and no g tensor goes through memory. The trade-off: with SiLU
each element's pre-activation and sigmoid are computed W times (W^2 tap loads, each with its address
and mask arithmetic, and W exponentials, instead of W and 1) in exchange for no extra pass over
memory. That arithmetic, not DRAM, bounds the backward: on an H200 at (8, 1536, 2048), width 4, bf16,
it takes 0.21 ms against about 0.04 ms for a copy of its bytes (the forward: 0.047 against 0.029), and the
forward + backward 0.54 ms (with the previous, slower backward tile) against 0.92 ms for cuDNN's
depthwise F.conv1d + silu; at a small shape it trails (forward+backward at (4, 2048, 512): 0.39 against
0.27 ms; at length 512 the backward grid has one program per batch row and channel block, not yet scaled to the GPU).
The same program accumulates the weight and bias gradients of its
outputs t = s in fp32 registers, walking the length in a grid-stride loop over TILES_PER_PROGRAM
tiles; each program writes one (BLOCK_D, BLOCK_W >= W + 1) fp32 partial and the launcher sums the
(batch x length-programs) partials with torch.sum in fp32: deterministic, unlike atomics, for a
buffer of BLOCK_W / (BLOCK_L * TILES_PER_PROGRAM) floats per element of x (1.6% at width 4).
Programs of the first length block also write d initial_states, the dx formula at the W - 1
negative positions.

Two-pass backward (BACKWARD = "two_pass", or HYBRID_CONV_BWD=two_pass before the import, read by each
forward; Triton >= 3.2; the default stays "fused": the two-pass one has not been timed on a GPU yet). It trades the
recomputation for one more pass over memory, in two kernels:
  A. _causal_conv1d_bwd_g_kernel: a program owns a tile of outputs t, loads the W taps x_{t-W+1+k}
     once (a tuple of tiles: tuples in jit code need Triton >= 3.2), computes pre_t and
     g_t = dout_t silu'(pre_t) (dout_t without SiLU) and stores g to an fp32 scratch of x's shape
     and layout (channel-last stays channel-last); from the same taps it accumulates
     dw[k] += g_t x_{t-W+1+k} and dbias += g_t into per-program fp32 partials over a grid-stride of
     TILES_PER_PROGRAM tiles, summed by the launcher as above (deterministic).
  B. _causal_conv1d_bwd_dx_kernel: dx_s = sum_{j<W} w[W-1-j] g_{s+j}, a W-tap stencil over the stored
     g (the shifted loads hit L1/L2), with the fused kernel's rules (g = 0 for t >= length, across a
     document boundary, and at the negative positions, which have no output); programs of the first
     length block write d initial_states.
Per element with SiLU: W + 1 loads and one sigmoid in A and W loads in B, against the fused
kernel's W (W + 2) loads and W sigmoids, for 8 more bytes of DRAM traffic (g written by A and read
by B) on top of the x, dout in and dx out that both move (6 bytes in bf16). The memory cost is the
fp32 g, 4 bytes per element of x (twice a bf16 x; 117 MB at (8, 1792, 2048)), allocated by the
backward and freed when it returns.
"""
from __future__ import annotations

import os
from typing import Callable

import torch
import triton
import triton.language as tl
from torch import Tensor

from hybrid.kernels.launch import FastLauncher, cdiv, next_power_of_2, optional_arg

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_WIDTH = 8  # the taps are unrolled; the backward holds 2W - 1 shifted tiles live
TILES_PER_PROGRAM = 4  # backward: length tiles one program walks, summing its weight gradient
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
BACKWARD_METHODS = ("fused", "two_pass")
BACKWARD_ENV = "HYBRID_CONV_BWD"
BACKWARD = os.environ.get(BACKWARD_ENV, "fused")  # which backward; each forward reads it (backward_method)
TWO_PASS_TRITON = (3, 2)  # the two-pass kernels build tuples in jit code


@triton.jit
def _x_at(x_rows, init_rows, pos, mask_d, length, s_x_l, s_i_l, WIDTH: tl.constexpr, HAS_INIT: tl.constexpr):
    """x at positions `pos` in fp32: initial_states[pos + W - 1] for pos < 0 (when given), 0 outside."""
    v = tl.load(x_rows + pos * s_x_l, mask=mask_d & (pos >= 0) & (pos < length), other=0.0).to(tl.float32)
    if HAS_INIT:
        v += tl.load(init_rows + (pos + WIDTH - 1) * s_i_l, mask=mask_d & (pos < 0) & (pos > -WIDTH),
                     other=0.0).to(tl.float32)
    return v


@triton.jit
def _doc_ids(seq_row, pos, length, s_s_l):
    # seq_idx at positions `pos`; -1 outside (where x and g are zero anyway, so the value is irrelevant)
    return tl.load(seq_row + pos * s_s_l, mask=(pos >= 0) & (pos < length), other=-1)


@triton.jit
def _doc_at(seq_row, t, length, s_s_l, HAS_SEQ: tl.constexpr):
    """seq_idx at the tile t with seq_idx, for _tap; t itself without (never read then)."""
    doc = t
    if HAS_SEQ:
        doc = _doc_ids(seq_row, t, length, s_s_l)
    return doc


@triton.jit
def _tap(x_rows, init_rows, seq_row, doc, t, mask_d, length, s_x_l, s_i_l, s_s_l, K: tl.constexpr,
         WIDTH: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr):
    """x_{t-W+1+K} (fp32) that pre_t reads, 0 across a document boundary (doc: _doc_at(t))."""
    pos = t - (WIDTH - 1 - K)
    v = _x_at(x_rows, init_rows, pos, mask_d, length, s_x_l, s_i_l, WIDTH, HAS_INIT)
    if HAS_SEQ:
        if K < WIDTH - 1:  # tap W - 1 reads x_t itself
            v = tl.where(_doc_ids(seq_row, pos, length, s_s_l) == doc, v, 0.0)
    return v


@triton.jit
def _preact(x_rows, init_rows, seq_row, w_rows, bias, t, mask_d, length, s_x_l, s_i_l, s_s_l, s_w_k,
            WIDTH: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr):
    """pre_t = bias + sum_k w[k] x_{t-W+1+k} (fp32) at the positions of the tile t (1, N)."""
    acc = bias + tl.zeros(t.shape, tl.float32)  # (BLOCK_D, 1) + (1, N)
    doc = _doc_at(seq_row, t, length, s_s_l, HAS_SEQ)
    for k in tl.static_range(WIDTH):
        v = _tap(x_rows, init_rows, seq_row, doc, t, mask_d, length, s_x_l, s_i_l, s_s_l, k, WIDTH, HAS_INIT, HAS_SEQ)
        acc += tl.load(w_rows + k * s_w_k, mask=mask_d, other=0.0).to(tl.float32) * v
    return acc


@triton.jit
def _silu(pre):
    return pre * tl.sigmoid(pre)


@triton.jit
def _causal_conv1d_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, seq_ptr, out_ptr,
    dim, length,
    s_x_b, s_x_d, s_x_l, s_w_d, s_w_k, s_bias, s_i_b, s_i_d, s_i_l, s_s_b, s_s_l, s_o_b, s_o_d, s_o_l,
    WIDTH: tl.constexpr, SILU: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr,
    HAS_SEQ: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    t0 = tl.program_id(0).to(tl.int64) * BLOCK_L
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    b = tl.program_id(2).to(tl.int64)
    rows = offs_d.to(tl.int64)[:, None]  # (BLOCK_D, 1)
    mask_d = rows < dim
    t = t0 + tl.arange(0, BLOCK_L)[None, :]  # (1, BLOCK_L)
    bias = tl.zeros((BLOCK_D, 1), tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rows * s_bias, mask=mask_d, other=0.0).to(tl.float32)
    pre = _preact(x_ptr + b * s_x_b + rows * s_x_d, init_ptr + b * s_i_b + rows * s_i_d, seq_ptr + b * s_s_b,
                  w_ptr + rows * s_w_d, bias, t, mask_d, length, s_x_l, s_i_l, s_s_l, s_w_k,
                  WIDTH, HAS_INIT, HAS_SEQ)
    out = _silu(pre) if SILU else pre
    tl.store(out_ptr + b * s_o_b + rows * s_o_d + t * s_o_l, out.to(out_ptr.dtype.element_ty),
             mask=mask_d & (t < length))


@triton.jit
def _grad_pre(x_rows, init_rows, seq_row, w_rows, bias, dout_rows, t, mask_d, length,
              s_x_l, s_i_l, s_s_l, s_w_k, s_do_l,
              WIDTH: tl.constexpr, SILU: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr):
    """g_t = d loss / d pre_t (fp32) at the positions of the tile t; 0 at t >= length."""
    g = tl.load(dout_rows + t * s_do_l, mask=mask_d & (t >= 0) & (t < length), other=0.0).to(tl.float32)
    if SILU:
        pre = _preact(x_rows, init_rows, seq_row, w_rows, bias, t, mask_d, length, s_x_l, s_i_l, s_s_l, s_w_k,
                      WIDTH, HAS_INIT, HAS_SEQ)
        sig = tl.sigmoid(pre)
        g = g * sig * (1.0 + pre * (1.0 - sig))
    return g


@triton.jit
def _dx_at(x_rows, init_rows, seq_row, w_rows, bias, dout_rows, s, mask_d, length,
           s_x_l, s_i_l, s_s_l, s_w_k, s_do_l,
           WIDTH: tl.constexpr, SILU: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr):
    """(dx_s, g_s) at the positions of the tile s: dx_s = sum_j w[W-1-j] g_{s+j}, j the output's lag."""
    g0 = _grad_pre(x_rows, init_rows, seq_row, w_rows, bias, dout_rows, s, mask_d, length,
                   s_x_l, s_i_l, s_s_l, s_w_k, s_do_l, WIDTH, SILU, HAS_INIT, HAS_SEQ)
    dx = tl.load(w_rows + (WIDTH - 1) * s_w_k, mask=mask_d, other=0.0).to(tl.float32) * g0
    if HAS_SEQ:
        doc = _doc_ids(seq_row, s, length, s_s_l)
    for j in tl.static_range(1, WIDTH):
        t = s + j  # the output whose tap W - 1 - j reads x_s
        g = _grad_pre(x_rows, init_rows, seq_row, w_rows, bias, dout_rows, t, mask_d, length,
                      s_x_l, s_i_l, s_s_l, s_w_k, s_do_l, WIDTH, SILU, HAS_INIT, HAS_SEQ)
        if HAS_SEQ:
            g = tl.where(_doc_ids(seq_row, t, length, s_s_l) == doc, g, 0.0)
        dx += tl.load(w_rows + (WIDTH - 1 - j) * s_w_k, mask=mask_d, other=0.0).to(tl.float32) * g
    return dx, g0


@triton.jit
def _bwd_program(dim, BLOCK_D: tl.constexpr, BLOCK_W: tl.constexpr):
    """A backward program's place: (its length program and their count, batch row, channels (BLOCK_D, 1)
    int64, their mask, the partial's columns: w[0..W-1], then the bias)."""
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    rows = offs_d.to(tl.int64)[:, None]
    return (tl.program_id(0), tl.num_programs(0), tl.program_id(2).to(tl.int64), rows, rows < dim,
            tl.arange(0, BLOCK_W)[None, :])


@triton.jit
def _bias_rows(bias_ptr, rows, mask_d, s_bias, HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr):
    """The channels' bias in fp32 (BLOCK_D, 1); 0 without one."""
    bias = tl.zeros((BLOCK_D, 1), tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rows * s_bias, mask=mask_d, other=0.0).to(tl.float32)
    return bias


@triton.jit
def _store_partial(dwb_ptr, dwb, b, pid_l, n_prog_l, dim, rows, mask_d, offs_w, WIDTH: tl.constexpr,
                   BLOCK_W: tl.constexpr):
    """This program's (dw, dbias) into the (batch, length programs, dim, BLOCK_W) partial that the launcher
    sums over its first two axes."""
    part = ((b * n_prog_l + pid_l) * dim + rows) * BLOCK_W + offs_w
    tl.store(dwb_ptr + part, dwb, mask=mask_d & (offs_w <= WIDTH))


@triton.jit
def _causal_conv1d_bwd_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, seq_ptr, dout_ptr, dx_ptr, dinit_ptr, dwb_ptr,
    dim, length, n_tiles,
    s_x_b, s_x_d, s_x_l, s_w_d, s_w_k, s_bias, s_i_b, s_i_d, s_i_l, s_s_b, s_s_l,
    s_do_b, s_do_d, s_do_l, s_dx_b, s_dx_d, s_dx_l, s_di_b, s_di_d, s_di_l,
    WIDTH: tl.constexpr, SILU: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr,
    HAS_SEQ: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_W: tl.constexpr,
    HALO: tl.constexpr,
):
    pid_l, n_prog_l, b, rows, mask_d, offs_w = _bwd_program(dim, BLOCK_D, BLOCK_W)
    x_rows = x_ptr + b * s_x_b + rows * s_x_d
    init_rows = init_ptr + b * s_i_b + rows * s_i_d
    seq_row = seq_ptr + b * s_s_b
    w_rows = w_ptr + rows * s_w_d
    dout_rows = dout_ptr + b * s_do_b + rows * s_do_d
    bias = _bias_rows(bias_ptr, rows, mask_d, s_bias, HAS_BIAS, BLOCK_D)

    dwb = tl.zeros((BLOCK_D, BLOCK_W), tl.float32)
    # grid-stride over the length tiles: neighbouring programs take neighbouring tiles, whose halos
    # (x and dout W - 1 steps either side) are then in L2
    for tile in range(pid_l, n_tiles, n_prog_l):
        s = (tile * BLOCK_L + tl.arange(0, BLOCK_L)).to(tl.int64)[None, :]  # (1, BLOCK_L); lengths < 2^31
        dx, g = _dx_at(x_rows, init_rows, seq_row, w_rows, bias, dout_rows, s, mask_d, length,
                       s_x_l, s_i_l, s_s_l, s_w_k, s_do_l, WIDTH, SILU, HAS_INIT, HAS_SEQ)
        tl.store(dx_ptr + b * s_dx_b + rows * s_dx_d + s * s_dx_l, dx.to(dx_ptr.dtype.element_ty),
                 mask=mask_d & (s < length))
        # dw[k] += sum_t g_t x_{t-W+1+k} and dbias += sum_t g_t over this tile's outputs t = s
        doc = _doc_at(seq_row, s, length, s_s_l, HAS_SEQ)
        for k in tl.static_range(WIDTH):
            v = _tap(x_rows, init_rows, seq_row, doc, s, mask_d, length, s_x_l, s_i_l, s_s_l, k, WIDTH, HAS_INIT, HAS_SEQ)
            dwb += tl.where(offs_w == k, tl.sum(g * v, axis=1)[:, None], 0.0)
        dwb += tl.where(offs_w == WIDTH, tl.sum(g, axis=1)[:, None], 0.0)
    _store_partial(dwb_ptr, dwb, b, pid_l, n_prog_l, dim, rows, mask_d, offs_w, WIDTH, BLOCK_W)

    if HAS_INIT:
        if pid_l == 0:
            p = tl.arange(0, HALO)[None, :] - (WIDTH - 1)  # the positions -(W-1) .. -1 of the initial states
            dinit, _g = _dx_at(x_rows, init_rows, seq_row, w_rows, bias, dout_rows, p, mask_d, length,
                               s_x_l, s_i_l, s_s_l, s_w_k, s_do_l, WIDTH, SILU, HAS_INIT, HAS_SEQ)
            tl.store(dinit_ptr + b * s_di_b + rows * s_di_d + (p + WIDTH - 1) * s_di_l,
                     dinit.to(dinit_ptr.dtype.element_ty), mask=mask_d & (p < 0))


@triton.jit
def _weights(w_rows, mask_d, s_w_k, WIDTH: tl.constexpr):
    """The taps w[k], k < W, of the tile's channels: a tuple of fp32 (BLOCK_D, 1)."""
    ws = ()
    for k in tl.static_range(WIDTH):
        ws = ws + (tl.load(w_rows + k * s_w_k, mask=mask_d, other=0.0).to(tl.float32),)
    return ws


@triton.jit
def _taps(x_rows, init_rows, seq_row, t, mask_d, length, s_x_l, s_i_l, s_s_l,
          WIDTH: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr):
    """The inputs x_{t-W+1+k}, k < W, that pre_t reads (_tap): a tuple of W tiles."""
    doc = _doc_at(seq_row, t, length, s_s_l, HAS_SEQ)
    taps = ()
    for k in tl.static_range(WIDTH):
        taps = taps + (_tap(x_rows, init_rows, seq_row, doc, t, mask_d, length, s_x_l, s_i_l, s_s_l, k,
                            WIDTH, HAS_INIT, HAS_SEQ),)
    return taps


@triton.jit
def _causal_conv1d_bwd_g_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, seq_ptr, dout_ptr, g_ptr, dwb_ptr,
    dim, length, n_tiles,
    s_x_b, s_x_d, s_x_l, s_w_d, s_w_k, s_bias, s_i_b, s_i_d, s_i_l, s_s_b, s_s_l,
    s_do_b, s_do_d, s_do_l, s_g_b, s_g_d, s_g_l,
    WIDTH: tl.constexpr, SILU: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr,
    HAS_SEQ: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """Two-pass backward, pass A: g_t = d loss / d pre_t into the fp32 scratch g, and the (dw, dbias)
    partial of this program's tiles."""
    pid_l, n_prog_l, b, rows, mask_d, offs_w = _bwd_program(dim, BLOCK_D, BLOCK_W)
    x_rows = x_ptr + b * s_x_b + rows * s_x_d
    init_rows = init_ptr + b * s_i_b + rows * s_i_d
    seq_row = seq_ptr + b * s_s_b
    ws = _weights(w_ptr + rows * s_w_d, mask_d, s_w_k, WIDTH)
    bias = _bias_rows(bias_ptr, rows, mask_d, s_bias, HAS_BIAS, BLOCK_D)

    dwb = tl.zeros((BLOCK_D, BLOCK_W), tl.float32)
    for tile in range(pid_l, n_tiles, n_prog_l):  # grid-stride, as the fused kernel
        t = (tile * BLOCK_L + tl.arange(0, BLOCK_L)).to(tl.int64)[None, :]  # (1, BLOCK_L)
        mask = mask_d & (t < length)
        taps = _taps(x_rows, init_rows, seq_row, t, mask_d, length, s_x_l, s_i_l, s_s_l,
                     WIDTH, HAS_INIT, HAS_SEQ)
        g = tl.load(dout_ptr + b * s_do_b + rows * s_do_d + t * s_do_l, mask=mask, other=0.0).to(tl.float32)
        if SILU:
            pre = bias + tl.zeros_like(taps[0])  # pre_t = bias + sum_k w[k] x_{t-W+1+k}
            for k in tl.static_range(WIDTH):
                pre += ws[k] * taps[k]
            sig = tl.sigmoid(pre)
            g = g * sig * (1.0 + pre * (1.0 - sig))  # silu'(pre)
        tl.store(g_ptr + b * s_g_b + rows * s_g_d + t * s_g_l, g, mask=mask)
        # dw[k] += sum_t g_t x_{t-W+1+k}, dbias += sum_t g_t (g = 0 at t >= length)
        for k in tl.static_range(WIDTH):
            dwb += tl.where(offs_w == k, tl.sum(g * taps[k], axis=1)[:, None], 0.0)
        dwb += tl.where(offs_w == WIDTH, tl.sum(g, axis=1)[:, None], 0.0)
    _store_partial(dwb_ptr, dwb, b, pid_l, n_prog_l, dim, rows, mask_d, offs_w, WIDTH, BLOCK_W)


@triton.jit
def _dx_from_g(g_rows, seq_row, ws, s, mask_d, length, s_g_l, s_s_l, WIDTH: tl.constexpr, HAS_SEQ: tl.constexpr):
    """dx_s = sum_{j<W} w[W-1-j] g_{s+j} from the stored g; a term is 0 outside 0 <= s + j < length and,
    with seq_idx, where seq_idx[s + j] != seq_idx[s] (the rule of _dx_at)."""
    if HAS_SEQ:
        doc = _doc_ids(seq_row, s, length, s_s_l)
    dx = ws[WIDTH - 1] * tl.load(g_rows + s * s_g_l, mask=mask_d & (s >= 0) & (s < length), other=0.0)
    for j in tl.static_range(1, WIDTH):
        t = s + j  # the output whose tap W - 1 - j reads x_s
        g = tl.load(g_rows + t * s_g_l, mask=mask_d & (t >= 0) & (t < length), other=0.0)
        if HAS_SEQ:
            g = tl.where(_doc_ids(seq_row, t, length, s_s_l) == doc, g, 0.0)
        dx += ws[WIDTH - 1 - j] * g
    return dx


@triton.jit
def _causal_conv1d_bwd_dx_kernel(
    g_ptr, w_ptr, seq_ptr, dx_ptr, dinit_ptr,
    dim, length,
    s_g_b, s_g_d, s_g_l, s_w_d, s_w_k, s_s_b, s_s_l, s_dx_b, s_dx_d, s_dx_l, s_di_b, s_di_d, s_di_l,
    WIDTH: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, HALO: tl.constexpr,
):
    """Two-pass backward, pass B: dx (and d initial_states) from the g of pass A."""
    pid_l = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    b = tl.program_id(2).to(tl.int64)
    rows = offs_d.to(tl.int64)[:, None]  # (BLOCK_D, 1)
    mask_d = rows < dim
    g_rows = g_ptr + b * s_g_b + rows * s_g_d
    seq_row = seq_ptr + b * s_s_b
    ws = _weights(w_ptr + rows * s_w_d, mask_d, s_w_k, WIDTH)
    s = pid_l.to(tl.int64) * BLOCK_L + tl.arange(0, BLOCK_L)[None, :]  # (1, BLOCK_L)
    dx = _dx_from_g(g_rows, seq_row, ws, s, mask_d, length, s_g_l, s_s_l, WIDTH, HAS_SEQ)
    tl.store(dx_ptr + b * s_dx_b + rows * s_dx_d + s * s_dx_l, dx.to(dx_ptr.dtype.element_ty),
             mask=mask_d & (s < length))
    if HAS_INIT:  # never with seq_idx
        if pid_l == 0:
            p = tl.arange(0, HALO)[None, :] - (WIDTH - 1)  # the positions -(W-1) .. -1 of the initial states
            dinit = _dx_from_g(g_rows, seq_row, ws, p, mask_d, length, s_g_l, s_s_l, WIDTH, HAS_SEQ)
            tl.store(dinit_ptr + b * s_di_b + rows * s_di_d + (p + WIDTH - 1) * s_di_l,
                     dinit.to(dinit_ptr.dtype.element_ty), mask=mask_d & (p < 0))


def _channel_last(x: Tensor) -> bool:
    # the channels, not the length, are contiguous (a transposed (batch, length, dim) tensor)
    return x.stride(1) == 1 and x.stride(2) != 1


def _config(x: Tensor, kernel: str = "forward") -> tuple[int, int, int]:
    """(BLOCK_D, BLOCK_L, num_warps) of a kernel for x's layout: "forward", "backward" (the fused one),
    "two_pass_g" or "two_pass_dx" (passes A and B of the two-pass backward).

    The tile is long along the contiguous axis (whole 128-byte lines per warp) and short across it.
    The fused backward, which recomputes W pre-activations per element, wants fewer elements per thread.
    The values are the fastest of `bench_causal_conv1d.py --sweep` on an H200 (Triton 3.6, bf16,
    (8, 1536, 2048), width 4, SiLU): forward 0.047 ms channel-major (8 x 128: 0.054) and 0.046 ms
    channel-last (64 x 16: 0.070); backward 0.21 ms (8 x 128: 0.31) and 0.43 ms (64 x 16: 0.68).
    Pass B of the two-pass backward, a W-tap stencil like the forward, takes the forward's tiles; pass A
    also holds the W taps and the dw sums, and at the forward's channel-major tile spills registers (255 +
    136 bytes of stack at width 4 with SiLU and bias; ptxas for sm_90, Triton 3.9), so it gets 8
    elements a thread: 8 x 128 (143 registers, 177 with initial_states) and, channel-last, 128 x 8 with
    4 warps. Timed by the same sweep (commit 1751ac0), the two-pass backward took 0.170 ms channel-major
    (fused 0.208) and 0.172 ms channel-last with pass A at 128 x 8 (0.243 at 128 x 16 with 8 warps;
    fused 0.432); the model's step has not yet measured it faster (`HYBRID_CONV_BWD`, results file).
    At width 8 pass B spills at 16 x 128, as the forward does. The fused backward at its channel-last
    tile (64 x 32, 4 warps; Mamba-2's layout) compiles to 255 registers and 128 bytes of stack at width 4
    with SiLU and bias, 9,512 bytes with initial states (ptxas for sm_90 from Triton 3.9), which may be
    why it is the slower there.
    The interpreter pays per operation, not per element: a few large tiles."""
    dim, length = x.shape[1], x.shape[2]
    if INTERPRET:
        return min(64, next_power_of_2(dim)), min(128, next_power_of_2(length)), 1
    tiles = {"forward": ((16, 128, 4), (128, 16, 4)), "backward": ((4, 128, 4), (64, 32, 4)),
             "two_pass_g": ((8, 128, 4), (128, 8, 4)), "two_pass_dx": ((16, 128, 4), (128, 16, 4))}
    return tiles[kernel][_channel_last(x)]


def _like_layout(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """An empty tensor of x's shape in x's layout (channel-last stays channel-last), of x's dtype or `dtype`."""
    batch, dim, length = x.shape
    dtype = dtype or x.dtype
    if _channel_last(x):
        return torch.empty((batch, length, dim), device=x.device, dtype=dtype).transpose(1, 2)
    return torch.empty((batch, dim, length), device=x.device, dtype=dtype)


def _check(x: Tensor, weight: Tensor) -> None:
    for name, t in (("x", x), ("weight", weight)):
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"causal_conv1d (triton): {name} must be float16, bfloat16 or float32, got {t.dtype}; "
                            f"use backend='torch' or 'ref' for other dtypes")
    if weight.shape[1] > MAX_WIDTH:
        raise ValueError(f"causal_conv1d (triton): the filter width must be at most {MAX_WIDTH}, got "
                         f"{weight.shape[1]} (weight {tuple(weight.shape)}); use backend='torch' for wider filters")


_launch_fwd = FastLauncher(_causal_conv1d_fwd_kernel)
_launch_bwd = FastLauncher(_causal_conv1d_bwd_kernel)
_launch_bwd_g = FastLauncher(_causal_conv1d_bwd_g_kernel)
_launch_bwd_dx = FastLauncher(_causal_conv1d_bwd_dx_kernel)


def _causal_conv1d_fwd(x, weight, bias, initial_states, seq_idx, silu, config=None) -> Tensor:
    """The forward kernel: out (batch, dim, length) in x's dtype and layout."""
    batch, dim, length = x.shape
    width = weight.shape[1]
    block_d, block_l, num_warps = config or _config(x)
    out = _like_layout(x)
    b, s_b = optional_arg(bias, x, 1)
    h0, s_h0 = optional_arg(initial_states, x, 3)
    seq, s_seq = optional_arg(seq_idx, x, 2)
    _launch_fwd(
        (cdiv(length, block_l), cdiv(dim, block_d), batch),
        x, weight, b, h0, seq, out,
        dim, length,
        *x.stride(), *weight.stride(), *s_b, *s_h0, *s_seq, *out.stride(),
        WIDTH=width, SILU=silu, HAS_BIAS=bias is not None, HAS_INIT=initial_states is not None,
        HAS_SEQ=seq_idx is not None, BLOCK_D=block_d, BLOCK_L=block_l, num_warps=num_warps,
    )
    return out


def backward_method(method: str | None = None) -> str:
    """`method`, else BACKWARD, checked: a known name, and a Triton that builds it."""
    method = method or BACKWARD
    if method not in BACKWARD_METHODS:
        raise ValueError(f"causal_conv1d (triton): the backward must be one of {BACKWARD_METHODS} (set by "
                         f"{BACKWARD_ENV} or triton_conv.BACKWARD), got {method!r}")
    if method == "two_pass" and tuple(int(p) for p in triton.__version__.split(".")[:2]) < TWO_PASS_TRITON:
        raise RuntimeError(f"causal_conv1d (triton): the two-pass backward needs Triton >= 3.2 (tuples in jit "
                           f"code), found {triton.__version__}; use the fused one ({BACKWARD_ENV}=fused)")
    return method


def _causal_conv1d_bwd(dout, x, weight, bias, initial_states, seq_idx, silu, config=None, method=None, dx=None):
    """The backward: (dx, dweight, dbias, dinit), dx in x's dtype and layout (or written into `dx`, a
    tensor of x's shape and dtype with any strides), dweight and dbias fp32 (dim, width) and (dim,),
    dinit in x's dtype or None. `method` ("fused" or "two_pass") defaults to BACKWARD, read now;
    `config` is one kernel's tiles (fused) or a pair (two-pass: pass A, pass B)."""
    method = backward_method(method)
    if config is not None and method == "two_pass" and len(config) != 2:
        raise ValueError(f"causal_conv1d (triton): the two-pass backward takes a pair of tiles (pass A, pass B), "
                         f"got {config}")
    if dx is None:
        dx = _like_layout(x)
    elif dx.shape != x.shape or dx.dtype != x.dtype or dx.device != x.device:
        raise ValueError(f"causal_conv1d (triton): the tensor for x's gradient must have x's shape "
                         f"{tuple(x.shape)}, dtype {x.dtype} and device, got {tuple(dx.shape)} {dx.dtype} {dx.device}")
    run = _bwd_two_pass if method == "two_pass" else _bwd_fused
    return run(dout, x, weight, bias, initial_states, seq_idx, silu, dx, config)


def _partials(x: Tensor, width: int, block_l: int) -> tuple[int, int, int, Tensor]:
    """(length tiles, length programs, BLOCK_W, the fp32 (batch, length programs, dim, BLOCK_W) buffer) of a
    backward kernel that sums its weight gradient over TILES_PER_PROGRAM tiles of block_l steps."""
    batch, dim, length = x.shape
    n_tiles = cdiv(length, block_l)
    n_prog_l = cdiv(n_tiles, TILES_PER_PROGRAM)
    block_w = next_power_of_2(width + 1)
    return n_tiles, n_prog_l, block_w, torch.empty((batch, n_prog_l, dim, block_w), device=x.device,
                                                   dtype=torch.float32)


def _sum_partials(partial: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """(dweight (dim, width), dbias (dim,)) fp32 from the (batch, length programs, dim, BLOCK_W) partials."""
    sums = partial.flatten(0, 1).sum(0)  # (dim, BLOCK_W) fp32
    return sums[:, :width], sums[:, width]


def _bwd_fused(dout, x, weight, bias, initial_states, seq_idx, silu, dx, config=None):
    """The fused backward kernel (writing dx) and the sum of its weight-gradient partials."""
    batch, dim, length = x.shape
    width = weight.shape[1]
    block_d, block_l, num_warps = config or _config(x, "backward")
    n_tiles, n_prog_l, block_w, partial = _partials(x, width, block_l)
    dinit = torch.empty_like(initial_states) if initial_states is not None else None
    b, s_b = optional_arg(bias, x, 1)
    h0, s_h0 = optional_arg(initial_states, x, 3)
    seq, s_seq = optional_arg(seq_idx, x, 2)
    dh0, s_dh0 = optional_arg(dinit, x, 3)
    _launch_bwd(
        (n_prog_l, cdiv(dim, block_d), batch),
        x, weight, b, h0, seq, dout, dx, dh0, partial,
        dim, length, n_tiles,
        *x.stride(), *weight.stride(), *s_b, *s_h0, *s_seq, *dout.stride(), *dx.stride(), *s_dh0,
        WIDTH=width, SILU=silu, HAS_BIAS=bias is not None, HAS_INIT=initial_states is not None,
        HAS_SEQ=seq_idx is not None, BLOCK_D=block_d, BLOCK_L=block_l, BLOCK_W=block_w,
        HALO=next_power_of_2(max(width - 1, 1)), num_warps=num_warps,
    )
    return (dx, *_sum_partials(partial, width), dinit)


def _bwd_two_pass(dout, x, weight, bias, initial_states, seq_idx, silu, dx, config=None):
    """Pass A (g into an fp32 scratch of x's layout, and the weight-gradient partials), then pass B (dx and
    d initial_states from g). The scratch is freed on return."""
    batch, dim, length = x.shape
    width = weight.shape[1]
    (bd_a, bl_a, nw_a), (bd_b, bl_b, nw_b) = config or (_config(x, "two_pass_g"), _config(x, "two_pass_dx"))
    n_tiles, n_prog_l, block_w, partial = _partials(x, width, bl_a)
    g = _like_layout(x, torch.float32)  # (batch, dim, length) d loss / d pre
    b, s_b = optional_arg(bias, x, 1)
    h0, s_h0 = optional_arg(initial_states, x, 3)
    seq, s_seq = optional_arg(seq_idx, x, 2)
    _launch_bwd_g(
        (n_prog_l, cdiv(dim, bd_a), batch),
        x, weight, b, h0, seq, dout, g, partial,
        dim, length, n_tiles,
        *x.stride(), *weight.stride(), *s_b, *s_h0, *s_seq, *dout.stride(), *g.stride(),
        WIDTH=width, SILU=silu, HAS_BIAS=bias is not None, HAS_INIT=initial_states is not None,
        HAS_SEQ=seq_idx is not None, BLOCK_D=bd_a, BLOCK_L=bl_a, BLOCK_W=block_w, num_warps=nw_a,
    )
    dinit = torch.empty_like(initial_states) if initial_states is not None else None
    dh0, s_dh0 = optional_arg(dinit, x, 3)
    _launch_bwd_dx(
        (cdiv(length, bl_b), cdiv(dim, bd_b), batch),
        g, weight, seq, dx, dh0,
        dim, length,
        *g.stride(), *weight.stride(), *s_seq, *dx.stride(), *s_dh0,
        WIDTH=width, HAS_INIT=initial_states is not None, HAS_SEQ=seq_idx is not None,
        BLOCK_D=bd_b, BLOCK_L=bl_b, HALO=next_power_of_2(max(width - 1, 1)), num_warps=nw_b,
    )
    return (dx, *_sum_partials(partial, width), dinit)


class CausalConv1dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, initial_states, seq_idx, silu, dx_into):
        ctx.method = backward_method()  # chosen (and checked) now, so the backward can't change or fail on it
        out = _causal_conv1d_fwd(x, weight, bias, initial_states, seq_idx, silu)
        ctx.silu, ctx.dx_into = silu, dx_into
        ctx.save_for_backward(x, weight, bias, initial_states, seq_idx)
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight, bias, initial_states, seq_idx = ctx.saved_tensors
        dx = ctx.dx_into() if ctx.dx_into is not None else None
        dx, dw, db, dinit = _causal_conv1d_bwd(dout, x, weight, bias, initial_states, seq_idx, ctx.silu,
                                               method=ctx.method, dx=dx)
        return (dx, dw.to(weight.dtype), db.to(bias.dtype) if bias is not None else None,
                dinit if ctx.needs_input_grad[3] else None, None, None, None)


def causal_conv1d_triton(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None,
                         initial_states: Tensor | None = None, seq_idx: Tensor | None = None,
                         dx_into: Callable[[], Tensor] | None = None) -> Tensor:
    """Causal depthwise conv1d on the GPU (or under TRITON_INTERPRET=1).

    x:              (batch, dim, length) float16 / bfloat16 / float32, any strides (fast with the length
                    or the channels contiguous)
    weight:         (dim, width), width <= MAX_WIDTH; fp32 or x's dtype
    bias:           (dim,) or None
    initial_states: (batch, dim, width - 1) in x's dtype, the inputs before step 0, or None
    seq_idx:        (batch, length) integer document ids, or None (not with initial_states)
    dx_into:        None, or a callable returning the tensor (x's shape and dtype, any strides) that the
                    backward writes x's gradient into (`hybrid.kernels.grad_sink`)
    Returns out (batch, dim, length) in x's dtype and layout; differentiable in x, weight, bias and
    initial_states.
    """
    _check(x, weight)
    return CausalConv1dFn.apply(x, weight, bias, initial_states, seq_idx,
                                activation in ("silu", "swish"), dx_into)
