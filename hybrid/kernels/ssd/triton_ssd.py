"""SSD (Mamba-2's scan, Dao & Gu 2024) in chunks: Triton forward and backward kernels.

What it computes is `ssd_ref` (reference.py); the algorithm is `ssd_chunked` (chunked.py), whose header
gives the chunked maths. Per head h of group g, chunks of Q steps, a_t = dt_t A_h and a-hat the cumulative
sum of a within the chunk (one document: seq_idx masks every term that crosses a boundary):

  (1) dt, a-hat      dt_t = clamp(softplus(dt_t + dt_bias), dt_limit), 0 past the length;  a-hat = cumsum(dt A)
  (2) chunk states   s_c[p, n] = sum_j exp(a-hat_end - a-hat_j) dt_j x_j[p] B_j[n]
  (3) state passing  S_c = exp(a-hat_end of c) S_{c-1} + s_c, S_{-1} = initial_states;  prev_c = S_{c-1}
  (4) chunk scan     y_i = sum_{j<=i} (C_i . B_j) exp(a-hat_i - a-hat_j) dt_j x_j + exp(a-hat_i) C_i prev_c
                         + D x_i,    out_i = y_i silu(z_i)
with (C_i . B_j) computed once per group and chunk ("CB", (batch, chunks, groups, Q, Q)) and shared by the
group's heads. Backward, with g_i = dout_i silu(z_i) the gradient of y_i and dS the state gradient:

  d prev_c[p, n]  = sum_i exp(a-hat_i) g_i[p] C_i[n]                         (the chunk-state kernel on g, C)
  dS_{c-1}        = d prev_c + exp(a-hat_end of c) dS_c,  d s_c = dS_c,  d init = dS_{-1}   (reverse pass)
  dx_j            = dt_j [sum_{i>=j} CB_ij exp(a-hat_i - a-hat_j) g_i + exp(a-hat_end - a-hat_j) d s_c B_j] + D g_j
  ddt_j          += x_j . (dx_j - D g_j) / dt_j                               (the same sums, before dt_j)
  dCB_ij          = sum_{h in g} (g_i . x_j) exp(a-hat_i - a-hat_j) dt_j          (j <= i)
  dC_i            = sum_j dCB_ij B_j + sum_{h in g} exp(a-hat_i) g_i prev_c
  dB_j            = sum_i dCB_ij C_i + sum_{h in g} exp(a-hat_end - a-hat_j) dt_j x_j d s_c
  d a-hat         every term above depends on a-hat through exp(a-hat_u - a-hat_v): its contribution T
                  (the term times its gradient) adds +T at u and -T at v; then da_t = sum_{i>=t} d a-hat_i
                  (a reverse cumsum), ddt_t += da_t A, dA = sum da_t dt_t.
The z gate and D's gradient are one elementwise Triton kernel (triton_gate.py); the stages past the
kernels (the reverse cumsum and the chain through dt_bias, softplus and the clamp) are elementwise over
(batch, length, heads) and are done in PyTorch in fp32.

Kernels and grids (b batch, c chunks, h heads, g groups, P headdim, N d_state):
  _dt_cumsum_kernel          (heads / BLOCK_H, c, b)           dt and a-hat, (b, h, c, Q) fp32
  _chunk_cb_kernel           (Q / BM, Q / BN, b c g)           C B^T, lower blocks only, fp32
  _chunk_outer_kernel        (P / BP * N / BN, h, b c)         s_c (forward) and d prev_c (backward), fp32
  _state_passing_fwd_kernel  (P N / BLOCK, h, b)               sequential over chunks, in place: s_c -> prev_c
  _chunk_scan_fwd_kernel     (Q / BM * P / BP, h, b c)         y (and y before the gate, with z)
  _state_passing_bwd_kernel  (P N / BLOCK, h, b)               reverse over chunks, in place: d prev_c -> d s_c
  _chunk_scan_bwd_dx_kernel  (Q / BM_DX * P / BP, h, b c)       dx, and per-position partials of ddt and d a-hat
  _chunk_scan_bwd_dcb_kernel (Q / BM, Q / BM, b c g)           dCB (fp32), and the d a-hat of the quadratic part
  _chunk_scan_bwd_dbc_kernel (Q / BM * N / BN, g, b c)         dB or dC
Every accumulator, the state passing's running states, CB, dt and a-hat are fp32. The matmuls take their
operands in the inputs' dtype when x, B and C are all fp16 or all bf16 (tensor cores; the fp32 factors
exp(.) dt are rounded to it for the product, as mamba_ssm does), else fp32 with "tf32x3" (about fp32
accuracy). The states the matmuls read, prev_c and d s_c ((b, c, h, P, N)), are stored in the matmuls'
dtype, as mamba_ssm stores them: the product would round them to it anyway, and they are the largest
tensors the kernels pass between them. Partial sums over blocks go to separate buffers summed by PyTorch:
deterministic, no atomics. The forward saves for the backward dt and a-hat, CB, prev_c (as large as x times
N / Q) and, with z, y before the gate (in x's dtype); the backward recomputes none of them.

Tile sizes and launch options come from `_config`, one set for every kernel, then from MEASURED (per kernel,
timed on an H200, half operands on the GPU only); `TUNING` (from the environment variable
HYBRID_SSD_TUNING, or set by benchmarks/tune_ssd.py) overrides both per kernel, e.g.
HYBRID_SSD_TUNING="scan_fwd:stages=3,BK=32;dx:warps=4" (kernel names in KERNELS). Each kernel's grid and
partial buffers follow its own tiles, so any combination computes the same result.

Under TRITON_INTERPRET=1 (the CPU tests) two interpreter defects of Triton 3.9 are worked around, so that the
CPU tests see the GPU's numerics: its dot of bf16 operands multiplies their raw bits (a bf16 operand is
given as the fp32 value rounded to bf16 instead, _operand), and its fp32 -> bf16 cast truncates (values are
rounded to nearest-even by their bits first, _cast_out).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from hybrid.kernels.launch import FastLauncher, cdiv, next_power_of_2, optional_arg
from hybrid.kernels.triton_math import softplus as _softplus
from hybrid.kernels.ssd.api import unpack_xbc
from hybrid.kernels.ssd.reference import discretize_dt
from hybrid.kernels.ssd.triton_gate import gate_backward
from hybrid.kernels.ssd.triton_rounding import INTERPRET, _cast_out, _operand

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
NO_LIMIT = (0.0, float("inf"))


# ---------------------------------------------------------------------------- helpers

@triton.jit
def _doc(seq_row, t, length, s_s_l):
    # seq_idx at positions t, clamped into the sequence (past the end: the last document, as chunked.py pads)
    return tl.load(seq_row + tl.minimum(tl.maximum(t, 0), length - 1) * s_s_l)


@triton.jit
def _masked_exp(diff, keep):
    # exp(diff) where keep, else 0 (never exp of a large positive difference outside the mask)
    return tl.exp(tl.where(keep, diff, float("-inf")))


# ---------------------------------------------------------------------------- forward kernels

@triton.jit
def _pair_dot(a_ptr, b_ptr, h, k0, offs_i, offs_j, mi, mj, width, s_a_l, s_a_h, s_a_k, s_b_l, s_b_h, s_b_k,
              acc, DOT: tl.constexpr, PREC: tl.constexpr, BK: tl.constexpr):
    # acc + a_i . b_j over entries k0 .. k0 + BK of the width (rows i of a, j of b, head or group h): C_i . B_j
    # for CB, g_i . x_j for dCB
    kk = k0 + tl.arange(0, BK)
    mk = kk < width
    ai = tl.load(a_ptr + offs_i[:, None] * s_a_l + h * s_a_h + kk[None, :] * s_a_k,
                 mask=mi[:, None] & mk[None, :], other=0.0)  # (BM, BK)
    bj = tl.load(b_ptr + offs_j[None, :] * s_b_l + h * s_b_h + kk[:, None] * s_b_k,
                 mask=mk[:, None] & mj[None, :], other=0.0)  # (BK, BN)
    return tl.dot(_operand(ai, DOT), _operand(bj, DOT), acc, input_precision=PREC)


@triton.jit
def _dt_cumsum_kernel(dt_ptr, a_ptr, bias_ptr, dtp_ptr, acs_ptr,
                      length, heads, n_chunks, chunk, lim_lo, lim_hi,
                      s_dt_b, s_dt_l, s_dt_h,
                      HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_LIMIT: tl.constexpr,
                      BLOCK_H: tl.constexpr, BLOCK_Q: tl.constexpr):
    """(1): dt (bias, softplus, clamp; 0 past the length) and a-hat = cumsum(dt A) of one chunk, heads tile."""
    offs_h = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    c = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    offs_q = tl.arange(0, BLOCK_Q)
    row0 = c * chunk  # the chunk's first step
    # every tensor's pointer moves to this batch row and chunk (int64); tile offsets from it stay int32
    dt_ptr += b * s_dt_b + row0 * s_dt_l
    t = row0 + offs_q
    mask_h = offs_h < heads
    in_chunk = mask_h[:, None] & (offs_q[None, :] < chunk)
    valid = in_chunk & (t[None, :] < length)  # (BLOCK_H, BLOCK_Q)
    dt = tl.load(dt_ptr + offs_q[None, :] * s_dt_l + offs_h[:, None] * s_dt_h, mask=valid,
                 other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + offs_h, mask=mask_h, other=0.0).to(tl.float32)[:, None]
    if SOFTPLUS:
        dt = _softplus(dt)
    if HAS_LIMIT:
        dt = tl.minimum(tl.maximum(dt, lim_lo), lim_hi)
    dt = tl.where(valid, dt, 0.0)  # padded steps neither decay nor add
    a = tl.load(a_ptr + offs_h, mask=mask_h, other=0.0).to(tl.float32)
    acs = tl.cumsum(dt * a[:, None], axis=1)
    base = (b * heads * n_chunks + c) * chunk  # (b, h, c, Q)
    out = offs_h[:, None] * (n_chunks * chunk) + offs_q[None, :]
    tl.store(dtp_ptr + base + out, dt, mask=in_chunk)
    tl.store(acs_ptr + base + out, acs, mask=in_chunk)


@triton.jit
def _chunk_cb_kernel(c_ptr, b_ptr, cb_ptr, length, n_chunks, chunk, groups, dstate,
                     s_c_b, s_c_l, s_c_g, s_c_n, s_b_b, s_b_l, s_b_g, s_b_n,
                     DOT: tl.constexpr, PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                     BK: tl.constexpr):
    """CB[i, j] = C_i . B_j of one group and chunk, (BM, BN) tile; tiles above the diagonal are skipped
    (never read: every reader masks j > i)."""
    i0 = tl.program_id(0) * BM
    j0 = tl.program_id(1) * BN
    if j0 > i0 + BM - 1:
        return
    pid = tl.program_id(2).to(tl.int64)
    g = pid % groups
    c = (pid // groups) % n_chunks
    b = pid // groups // n_chunks
    row0 = c * chunk  # the chunk's first step
    # every tensor's pointer moves to this batch row and chunk (int64); tile offsets from it stay int32
    c_ptr += b * s_c_b + row0 * s_c_l
    b_ptr += b * s_b_b + row0 * s_b_l
    offs_i = i0 + tl.arange(0, BM)
    offs_j = j0 + tl.arange(0, BN)
    ti, tj = row0 + offs_i, row0 + offs_j
    mi = (offs_i < chunk) & (ti < length)
    mj = (offs_j < chunk) & (tj < length)
    acc = tl.zeros((BM, BN), tl.float32)
    for k0 in range(0, dstate, BK):
        acc = _pair_dot(c_ptr, b_ptr, g, k0, offs_i, offs_j, mi, mj, dstate, s_c_l, s_c_g, s_c_n,
                        s_b_l, s_b_g, s_b_n, acc, DOT, PREC, BK)
    out = offs_i[:, None] * chunk + offs_j[None, :]
    tl.store(cb_ptr + ((b * n_chunks + c) * groups + g) * chunk * chunk + out, acc,
             mask=(offs_i[:, None] < chunk) & (offs_j[None, :] < chunk))


@triton.jit
def _chunk_outer_kernel(u_ptr, v_ptr, dtp_ptr, acs_ptr, seq_ptr, out_ptr,
                        length, heads, n_chunks, chunk, headdim, dstate, heads_per_group,
                        s_u_b, s_u_l, s_u_h, s_u_p, s_v_b, s_v_l, s_v_g, s_v_n, s_s_b, s_s_l,
                        TO_END: tl.constexpr, HAS_SEQ: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
                        BP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """out[b, c, h, p, n] = sum_j w_j u_j[p] v_j[n] over one chunk, a (BP, BN) tile:
    TO_END: the chunk state, u = x, v = B, w_j = dt_j exp(a-hat_end - a-hat_j) (j in the chunk's last document);
    else:   d prev, u = g, v = C, w_i = exp(a-hat_i) (i in the document the chunk started in)."""
    pid_pn = tl.program_id(0)
    h = tl.program_id(1)
    pid = tl.program_id(2).to(tl.int64)
    b, c = pid // n_chunks, pid % n_chunks
    row0 = c * chunk  # the chunk's first step
    # every tensor's pointer moves to this batch row and chunk (int64); tile offsets from it stay int32
    u_ptr += b * s_u_b + row0 * s_u_l
    v_ptr += b * s_v_b + row0 * s_v_l
    n_pb = tl.cdiv(headdim, BP)
    offs_p = (pid_pn % n_pb) * BP + tl.arange(0, BP)
    offs_n = (pid_pn // n_pb) * BN + tl.arange(0, BN)
    mp, mn = offs_p < headdim, offs_n < dstate
    g = h // heads_per_group
    vec = ((b * heads + h) * n_chunks + c) * chunk  # (b, h, c, Q) vectors
    if TO_END:
        acs_end = tl.load(acs_ptr + vec + chunk - 1)
    if HAS_SEQ:
        seq_row = seq_ptr + b * s_s_b
        if TO_END:
            doc_ref = _doc(seq_row, row0 + chunk - 1, length, s_s_l)
        else:
            doc_ref = _doc(seq_row, row0 - 1, length, s_s_l)
    acc = tl.zeros((BP, BN), tl.float32)
    for k0 in range(0, chunk, BK):
        kk = k0 + tl.arange(0, BK)
        t = row0 + kk
        mk = (kk < chunk) & (t < length)
        acs = tl.load(acs_ptr + vec + kk, mask=kk < chunk, other=0.0)
        if TO_END:
            w = tl.load(dtp_ptr + vec + kk, mask=kk < chunk, other=0.0) * _masked_exp(acs_end - acs, mk)
        else:
            w = _masked_exp(acs, mk)
        if HAS_SEQ:
            w = tl.where(_doc(seq_row, t, length, s_s_l) == doc_ref, w, 0.0)
        uu = tl.load(u_ptr + kk[:, None] * s_u_l + h * s_u_h + offs_p[None, :] * s_u_p,
                     mask=mk[:, None] & mp[None, :], other=0.0).to(tl.float32)  # (BK, BP)
        vv = tl.load(v_ptr + kk[:, None] * s_v_l + g * s_v_g + offs_n[None, :] * s_v_n,
                     mask=mk[:, None] & mn[None, :], other=0.0)  # (BK, BN)
        acc = tl.dot(tl.trans(_operand(uu * w[:, None], DOT)), _operand(vv, DOT), acc, input_precision=PREC)
    out = offs_p[:, None] * dstate + offs_n[None, :]
    tl.store(out_ptr + ((b * n_chunks + c) * heads + h) * headdim * dstate + out, acc, mask=mp[:, None] & mn[None, :])


@triton.jit
def _carry(acs_ptr, vec, seq_ptr, b, c, chunk, length, s_s_b, s_s_l, HAS_SEQ: tl.constexpr):
    """The factor of S_{c-1} in S_c: exp(a-hat_end), 0 when chunk c ends in another document than c - 1 did."""
    carry = tl.exp(tl.load(acs_ptr + vec + chunk - 1))
    if HAS_SEQ:
        seq_row = seq_ptr + b * s_s_b
        end = _doc(seq_row, c * chunk + chunk - 1, length, s_s_l)
        before = _doc(seq_row, c * chunk - 1, length, s_s_l)
        carry = tl.where(end == before, carry, 0.0)
    return carry


@triton.jit
def _state_passing_fwd_kernel(st_ptr, prev_ptr, init_ptr, acs_ptr, seq_ptr, final_ptr,
                              length, heads, n_chunks, chunk, size, s_s_b, s_s_l,
                              HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr, BLOCK: tl.constexpr):
    """(3): S_c = carry_c S_{c-1} + s_c along the chunks of one (batch, head), BLOCK of the P N state
    entries, in fp32. Slot c of st (b, c, h, P, N) holds s_c; slot c of prev (st itself, or a buffer in the
    matmuls' half dtype) gets prev_c = S_{c-1}."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    m = offs < size
    if HAS_INIT:
        s = tl.load(init_ptr + (b * heads + h) * size + offs, mask=m, other=0.0)
    else:
        s = tl.zeros((BLOCK,), tl.float32)
    for c in range(n_chunks):
        slot = ((b * n_chunks + c) * heads + h) * size + offs
        new = tl.load(st_ptr + slot, mask=m, other=0.0)
        tl.store(prev_ptr + slot, _cast_out(s, prev_ptr), mask=m)
        vec = ((b * heads + h) * n_chunks + c) * chunk
        s = _carry(acs_ptr, vec, seq_ptr, b, c, chunk, length, s_s_b, s_s_l, HAS_SEQ) * s + new
    tl.store(final_ptr + (b * heads + h) * size + offs, s, mask=m)


@triton.jit
def _chunk_scan_fwd_kernel(cb_ptr, x_ptr, z_ptr, dtp_ptr, acs_ptr, seq_ptr, c_ptr, prev_ptr, d_ptr, y_ptr, ypre_ptr,
                           length, heads, n_chunks, chunk, headdim, dstate, heads_per_group,
                           s_x_b, s_x_l, s_x_h, s_x_p, s_z_b, s_z_l, s_z_h, s_z_p, s_c_b, s_c_l, s_c_g, s_c_n,
                           s_s_b, s_s_l, s_y_b, s_y_l, s_y_h, s_y_p, s_d_h, s_d_p,
                           HAS_D: tl.constexpr, HAS_Z: tl.constexpr, STORE_PRE: tl.constexpr,
                           HAS_SEQ: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
                           BM: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """(4): y of BM steps i and BP channels p of one (batch, chunk, head):
    y_i = exp(a-hat_i) C_i prev_c + sum_{j<=i} CB_ij exp(a-hat_i - a-hat_j) dt_j x_j + D x_i, times silu(z_i)."""
    pid_ip = tl.program_id(0)
    h = tl.program_id(1)
    pid = tl.program_id(2).to(tl.int64)
    b, c = pid // n_chunks, pid % n_chunks
    row0 = c * chunk  # the chunk's first step
    # every tensor's pointer moves to this batch row and chunk (int64); tile offsets from it stay int32
    c_ptr += b * s_c_b + row0 * s_c_l
    x_ptr += b * s_x_b + row0 * s_x_l
    z_ptr += b * s_z_b + row0 * s_z_l
    groups = heads // heads_per_group
    g = h // heads_per_group
    n_ib = tl.cdiv(chunk, BM)
    i0 = (pid_ip % n_ib) * BM
    offs_i = i0 + tl.arange(0, BM)
    offs_p = (pid_ip // n_ib) * BP + tl.arange(0, BP)
    ti = row0 + offs_i
    mi = (offs_i < chunk) & (ti < length)
    mp = offs_p < headdim
    vec = ((b * heads + h) * n_chunks + c) * chunk
    acs_i = tl.load(acs_ptr + vec + offs_i, mask=offs_i < chunk, other=0.0)
    if HAS_SEQ:
        seq_row = seq_ptr + b * s_s_b
        doc_i = _doc(seq_row, ti, length, s_s_l)
        doc_first = _doc(seq_row, row0 - 1, length, s_s_l)

    # from the past: exp(a-hat_i) C_i prev_c, prev (P, N) read as (N, P)
    acc = tl.zeros((BM, BP), tl.float32)
    prev_base = prev_ptr + ((b * n_chunks + c) * heads + h) * headdim * dstate
    for n0 in range(0, dstate, BN):
        nn = n0 + tl.arange(0, BN)
        mn = nn < dstate
        cc = tl.load(c_ptr + offs_i[:, None] * s_c_l + g * s_c_g + nn[None, :] * s_c_n,
                     mask=mi[:, None] & mn[None, :], other=0.0)  # (BM, BN)
        pv = tl.load(prev_base + offs_p[None, :] * dstate + nn[:, None], mask=mn[:, None] & mp[None, :], other=0.0)
        acc = tl.dot(_operand(cc, DOT), _operand(pv, DOT), acc, input_precision=PREC)
    keep_i = mi
    if HAS_SEQ:
        keep_i = keep_i & (doc_i == doc_first)
    acc = acc * _masked_exp(acs_i, keep_i)[:, None]

    # inside the chunk, j <= i: the causal blocks only
    cb_base = cb_ptr + ((b * n_chunks + c) * groups + g) * chunk * chunk
    for j0 in range(0, tl.minimum(i0 + BM, chunk), BK):
        offs_j = j0 + tl.arange(0, BK)
        tj = row0 + offs_j
        mj = (offs_j < chunk) & (tj < length)
        keep = (offs_j[None, :] <= offs_i[:, None]) & mi[:, None] & mj[None, :]  # (BM, BK)
        if HAS_SEQ:
            keep = keep & (doc_i[:, None] == _doc(seq_row, tj, length, s_s_l)[None, :])
        acs_j = tl.load(acs_ptr + vec + offs_j, mask=offs_j < chunk, other=0.0)
        dt_j = tl.load(dtp_ptr + vec + offs_j, mask=offs_j < chunk, other=0.0)
        cb = tl.load(cb_base + offs_i[:, None] * chunk + offs_j[None, :], mask=keep, other=0.0)
        w = cb * _masked_exp(acs_i[:, None] - acs_j[None, :], keep) * dt_j[None, :]
        xj = tl.load(x_ptr + offs_j[:, None] * s_x_l + h * s_x_h + offs_p[None, :] * s_x_p,
                     mask=mj[:, None] & mp[None, :], other=0.0)  # (BK, BP)
        acc = tl.dot(_operand(w, DOT), _operand(xj, DOT), acc, input_precision=PREC)

    mask = mi[:, None] & mp[None, :]
    if HAS_D:
        xi = tl.load(x_ptr + offs_i[:, None] * s_x_l + h * s_x_h + offs_p[None, :] * s_x_p,
                     mask=mask, other=0.0).to(tl.float32)
        acc += xi * tl.load(d_ptr + h * s_d_h + offs_p * s_d_p, mask=mp, other=0.0).to(tl.float32)[None, :]
    y_base = b * s_y_b + row0 * s_y_l  # y and ypre: one layout
    out = offs_i[:, None] * s_y_l + h * s_y_h + offs_p[None, :] * s_y_p
    if HAS_Z:
        if STORE_PRE:  # y before the gate, in x's dtype, for dz
            tl.store(ypre_ptr + y_base + out, _cast_out(acc, ypre_ptr), mask=mask)
        zz = tl.load(z_ptr + offs_i[:, None] * s_z_l + h * s_z_h + offs_p[None, :] * s_z_p,
                     mask=mask, other=0.0).to(tl.float32)
        acc = acc * zz * tl.sigmoid(zz)
    tl.store(y_ptr + y_base + out, _cast_out(acc, y_ptr), mask=mask)


# ---------------------------------------------------------------------------- backward kernels

@triton.jit
def _state_passing_bwd_kernel(dprev_ptr, ds_ptr, prev_ptr, acs_ptr, seq_ptr, dfinal_ptr, dinit_ptr, dcarry_ptr,
                              length, heads, n_chunks, chunk, size, n_blocks, s_s_b, s_s_l,
                              HAS_DFINAL: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr,
                              BLOCK: tl.constexpr):
    """dS_{c-1} = d prev_c + carry_c dS_c, from dS_last = d final, chunks in reverse, in fp32. Slot c of
    dprev (fp32) holds d prev_c; slot c of ds (dprev itself, or a buffer in the matmuls' half dtype) gets
    d s_c = dS_c; d carry_c = <dS_c, prev_c> goes, times carry_c (that is, as the gradient of a-hat_end),
    to dcarry (b, h, c, n_blocks), one partial per program."""
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    m = offs < size
    if HAS_DFINAL:
        d = tl.load(dfinal_ptr + (b * heads + h) * size + offs, mask=m, other=0.0)
    else:
        d = tl.zeros((BLOCK,), tl.float32)
    for k in range(n_chunks):
        c = n_chunks - 1 - k
        slot = ((b * n_chunks + c) * heads + h) * size + offs
        dprev = tl.load(dprev_ptr + slot, mask=m, other=0.0)
        prev = tl.load(prev_ptr + slot, mask=m, other=0.0).to(tl.float32)
        tl.store(ds_ptr + slot, _cast_out(d, ds_ptr), mask=m)
        vec = ((b * heads + h) * n_chunks + c) * chunk
        carry = _carry(acs_ptr, vec, seq_ptr, b, c, chunk, length, s_s_b, s_s_l, HAS_SEQ)
        tl.store(dcarry_ptr + ((b * heads + h) * n_chunks + c) * n_blocks + pid, carry * tl.sum(d * prev, axis=0))
        d = dprev + carry * d
    if HAS_INIT:
        tl.store(dinit_ptr + (b * heads + h) * size + offs, d, mask=m)


@triton.jit
def _chunk_scan_bwd_dx_kernel(cb_ptr, x_ptr, g_ptr, dtp_ptr, acs_ptr, seq_ptr, b_ptr, c_ptr, ds_ptr, prev_ptr, d_ptr,
                              dx_ptr, part_ptr,
                              length, heads, n_chunks, chunk, headdim, dstate, heads_per_group, s_part, s_plane,
                              s_x_b, s_x_l, s_x_h, s_x_p, s_g_b, s_g_l, s_g_h, s_g_p, s_b_b, s_b_l, s_b_g, s_b_n,
                              s_c_b, s_c_l, s_c_g, s_c_n, s_s_b, s_s_l, s_dx_b, s_dx_l, s_dx_h, s_dx_p, s_d_h, s_d_p,
                              HAS_D: tl.constexpr, HAS_SEQ: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
                              BM: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """dx of BM steps j and BP channels of one (batch, chunk, head), with
        r_j = sum_{i>=j} CB_ij exp(a-hat_i - a-hat_j) g_i + exp(a-hat_end - a-hat_j) (d s_c B_j)  (d y / d (dt_j x_j))
        dx_j = dt_j r_j + D g_j,
    and the per-position partials (over this program's channels) written to part (3, P blocks, b, h, c, Q):
        [0] ddt_j        = x_j . r_j
        [1] d a-hat_i   += exp(a-hat_i) g_i . (prev_c C_i)                           (the state from the past)
        [2] the chunk state's T_j = dt_j exp(a-hat_end - a-hat_j) x_j . (d s_c B_j): -T_j at j, +T_j at the end."""
    pid_jp = tl.program_id(0)
    h = tl.program_id(1)
    pid = tl.program_id(2).to(tl.int64)
    b, c = pid // n_chunks, pid % n_chunks
    row0 = c * chunk  # the chunk's first step
    # every tensor's pointer moves to this batch row and chunk (int64); tile offsets from it stay int32
    g_ptr += b * s_g_b + row0 * s_g_l
    b_ptr += b * s_b_b + row0 * s_b_l
    c_ptr += b * s_c_b + row0 * s_c_l
    x_ptr += b * s_x_b + row0 * s_x_l
    dx_ptr += b * s_dx_b + row0 * s_dx_l
    groups = heads // heads_per_group
    g = h // heads_per_group
    n_jb = tl.cdiv(chunk, BM)
    j0 = (pid_jp % n_jb) * BM
    pid_p = pid_jp // n_jb
    offs_j = j0 + tl.arange(0, BM)
    offs_p = pid_p * BP + tl.arange(0, BP)
    tj = row0 + offs_j
    mj = (offs_j < chunk) & (tj < length)
    mp = offs_p < headdim
    vec = ((b * heads + h) * n_chunks + c) * chunk
    acs_j = tl.load(acs_ptr + vec + offs_j, mask=offs_j < chunk, other=0.0)
    dt_j = tl.load(dtp_ptr + vec + offs_j, mask=offs_j < chunk, other=0.0)
    acs_end = tl.load(acs_ptr + vec + chunk - 1)
    keep_end, keep_first = mj, mj
    if HAS_SEQ:
        seq_row = seq_ptr + b * s_s_b
        doc_j = _doc(seq_row, tj, length, s_s_l)
        keep_end = keep_end & (doc_j == _doc(seq_row, row0 + chunk - 1, length, s_s_l))
        keep_first = keep_first & (doc_j == _doc(seq_row, row0 - 1, length, s_s_l))

    # inside the chunk: sum over i >= j of CB[i, j] exp(a-hat_i - a-hat_j) g_i
    acc = tl.zeros((BM, BP), tl.float32)
    cb_base = cb_ptr + ((b * n_chunks + c) * groups + g) * chunk * chunk
    for i0 in range((j0 // BK) * BK, chunk, BK):
        offs_i = i0 + tl.arange(0, BK)
        ti = row0 + offs_i
        mi = (offs_i < chunk) & (ti < length)
        keep = (offs_i[None, :] >= offs_j[:, None]) & mj[:, None] & mi[None, :]  # (BM, BK)
        if HAS_SEQ:
            keep = keep & (doc_j[:, None] == _doc(seq_row, ti, length, s_s_l)[None, :])
        acs_i = tl.load(acs_ptr + vec + offs_i, mask=offs_i < chunk, other=0.0)
        cbt = tl.load(cb_base + offs_i[None, :] * chunk + offs_j[:, None], mask=keep, other=0.0)  # CB[i, j]
        w = cbt * _masked_exp(acs_i[None, :] - acs_j[:, None], keep)
        gi = tl.load(g_ptr + offs_i[:, None] * s_g_l + h * s_g_h + offs_p[None, :] * s_g_p,
                     mask=mi[:, None] & mp[None, :], other=0.0)  # (BK, BP)
        acc = tl.dot(_operand(w, DOT), _operand(gi, DOT), acc, input_precision=PREC)

    # B_j d s_c^T (for dx) and C_j prev_c^T (for d a-hat), the (P, N) states read as (N, P)
    st_base = ((b * n_chunks + c) * heads + h) * headdim * dstate
    acc_s = tl.zeros((BM, BP), tl.float32)
    acc_p = tl.zeros((BM, BP), tl.float32)
    for n0 in range(0, dstate, BN):
        nn = n0 + tl.arange(0, BN)
        mn = nn < dstate
        mask_jn = mj[:, None] & mn[None, :]
        mask_np = mn[:, None] & mp[None, :]
        bb = tl.load(b_ptr + offs_j[:, None] * s_b_l + g * s_b_g + nn[None, :] * s_b_n, mask=mask_jn, other=0.0)
        dsv = tl.load(ds_ptr + st_base + offs_p[None, :] * dstate + nn[:, None], mask=mask_np, other=0.0)
        acc_s = tl.dot(_operand(bb, DOT), _operand(dsv, DOT), acc_s, input_precision=PREC)
        cc = tl.load(c_ptr + offs_j[:, None] * s_c_l + g * s_c_g + nn[None, :] * s_c_n, mask=mask_jn, other=0.0)
        pv = tl.load(prev_ptr + st_base + offs_p[None, :] * dstate + nn[:, None], mask=mask_np, other=0.0)
        acc_p = tl.dot(_operand(cc, DOT), _operand(pv, DOT), acc_p, input_precision=PREC)

    mask = mj[:, None] & mp[None, :]
    xj = tl.load(x_ptr + offs_j[:, None] * s_x_l + h * s_x_h + offs_p[None, :] * s_x_p,
                 mask=mask, other=0.0).to(tl.float32)
    gj = tl.load(g_ptr + offs_j[:, None] * s_g_l + h * s_g_h + offs_p[None, :] * s_g_p,
                 mask=mask, other=0.0).to(tl.float32)
    to_end = _masked_exp(acs_end - acs_j, keep_end)
    r = acc + to_end[:, None] * acc_s
    dx = dt_j[:, None] * r
    if HAS_D:
        dx += gj * tl.load(d_ptr + h * s_d_h + offs_p * s_d_p, mask=mp, other=0.0).to(tl.float32)[None, :]
    tl.store(dx_ptr + offs_j[:, None] * s_dx_l + h * s_dx_h + offs_p[None, :] * s_dx_p,
             _cast_out(dx, dx_ptr), mask=mask)
    part = part_ptr + pid_p * s_part + vec + offs_j
    in_chunk = offs_j < chunk
    tl.store(part, tl.sum(xj * r, axis=1), mask=in_chunk)
    tl.store(part + s_plane, _masked_exp(acs_j, keep_first) * tl.sum(gj * acc_p, axis=1), mask=in_chunk)
    tl.store(part + 2 * s_plane, dt_j * to_end * tl.sum(xj * acc_s, axis=1), mask=in_chunk)


@triton.jit
def _chunk_scan_bwd_dcb_kernel(x_ptr, g_ptr, dtp_ptr, acs_ptr, seq_ptr, cb_ptr, dcb_ptr, dacs_ptr,
                               length, heads, n_chunks, chunk, headdim, heads_per_group, s_part, s_plane,
                               s_x_b, s_x_l, s_x_h, s_x_p, s_g_b, s_g_l, s_g_h, s_g_p, s_s_b, s_s_l,
                               HAS_SEQ: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
                               BM: tl.constexpr, BK: tl.constexpr, SINGLE_K: tl.constexpr):
    """dCB[i, j] = sum_{h in group} (g_i . x_j) exp(a-hat_i - a-hat_j) dt_j, a (BM, BM) tile of one group and
    chunk, and per head the d a-hat of these terms, T_ij = dCB_h[i, j] CB[i, j]: the row sums (+ at i) and
    the column sums (- at j) go to dacs (2, Q blocks, b, h, c, Q), indexed by the other block."""
    pid_i, pid_j = tl.program_id(0), tl.program_id(1)
    i0, j0 = pid_i * BM, pid_j * BM
    if j0 > i0 + BM - 1:
        return
    pid = tl.program_id(2).to(tl.int64)
    groups = heads // heads_per_group
    g = pid % groups
    c = (pid // groups) % n_chunks
    b = pid // groups // n_chunks
    row0 = c * chunk  # the chunk's first step
    # every tensor's pointer moves to this batch row and chunk (int64); tile offsets from it stay int32
    g_ptr += b * s_g_b + row0 * s_g_l
    x_ptr += b * s_x_b + row0 * s_x_l
    offs_i = i0 + tl.arange(0, BM)
    offs_j = j0 + tl.arange(0, BM)
    ti, tj = row0 + offs_i, row0 + offs_j
    mi = (offs_i < chunk) & (ti < length)
    mj = (offs_j < chunk) & (tj < length)
    keep = (offs_j[None, :] <= offs_i[:, None]) & mi[:, None] & mj[None, :]
    if HAS_SEQ:
        seq_row = seq_ptr + b * s_s_b
        keep = keep & (_doc(seq_row, ti, length, s_s_l)[:, None] == _doc(seq_row, tj, length, s_s_l)[None, :])
    cb_base = ((b * n_chunks + c) * groups + g) * chunk * chunk
    cb_offs = offs_i[:, None] * chunk + offs_j[None, :]
    cb = tl.load(cb_ptr + cb_base + cb_offs, mask=keep, other=0.0)
    dcb = tl.zeros((BM, BM), tl.float32)
    for hh in range(heads_per_group):
        h = g * heads_per_group + hh
        gx = tl.zeros((BM, BM), tl.float32)  # g_i . x_j
        if SINGLE_K:  # the head dimension in one tile: no inner loop, so the loop over heads is pipelined
            gx = _pair_dot(g_ptr, x_ptr, h, 0, offs_i, offs_j, mi, mj, headdim, s_g_l, s_g_h, s_g_p,
                           s_x_l, s_x_h, s_x_p, gx, DOT, PREC, BK)
        else:
            for p0 in range(0, headdim, BK):
                gx = _pair_dot(g_ptr, x_ptr, h, p0, offs_i, offs_j, mi, mj, headdim, s_g_l, s_g_h, s_g_p,
                               s_x_l, s_x_h, s_x_p, gx, DOT, PREC, BK)
        vec = ((b * heads + h) * n_chunks + c) * chunk
        acs_i = tl.load(acs_ptr + vec + offs_i, mask=offs_i < chunk, other=0.0)
        acs_j = tl.load(acs_ptr + vec + offs_j, mask=offs_j < chunk, other=0.0)
        dt_j = tl.load(dtp_ptr + vec + offs_j, mask=offs_j < chunk, other=0.0)
        dcb_h = gx * _masked_exp(acs_i[:, None] - acs_j[None, :], keep) * dt_j[None, :]
        dcb += dcb_h
        t = dcb_h * cb
        tl.store(dacs_ptr + pid_j * s_part + vec + offs_i, tl.sum(t, axis=1), mask=offs_i < chunk)
        tl.store(dacs_ptr + s_plane + pid_i * s_part + vec + offs_j, -tl.sum(t, axis=0), mask=offs_j < chunk)
    tl.store(dcb_ptr + cb_base + cb_offs, dcb, mask=(offs_i[:, None] < chunk) & (offs_j[None, :] < chunk))


@triton.jit
def _state_part(u_ptr, st_base, h, p0, offs_r, offs_n, mr, mn, w, headdim, dstate, s_u_l, s_u_h, s_u_p,
                acc, DOT: tl.constexpr, PREC: tl.constexpr, BK: tl.constexpr):
    # acc + (w u_r) . st over channels p0 .. p0 + BK of head h: the state term of dB or dC
    pp = p0 + tl.arange(0, BK)
    mp = pp < headdim
    uu = tl.load(u_ptr + offs_r[:, None] * s_u_l + h * s_u_h + pp[None, :] * s_u_p,
                 mask=mr[:, None] & mp[None, :], other=0.0).to(tl.float32)  # (BM, BK)
    sv = tl.load(st_base + pp[:, None] * dstate + offs_n[None, :], mask=mp[:, None] & mn[None, :], other=0.0)
    return tl.dot(_operand(uu * w[:, None], DOT), _operand(sv, DOT), acc, input_precision=PREC)


@triton.jit
def _chunk_scan_bwd_dbc_kernel(dcb_ptr, v_ptr, u_ptr, st_ptr, dtp_ptr, acs_ptr, seq_ptr, out_ptr,
                               length, heads, n_chunks, chunk, headdim, dstate, heads_per_group,
                               s_v_b, s_v_l, s_v_g, s_v_n, s_u_b, s_u_l, s_u_h, s_u_p, s_s_b, s_s_l,
                               s_o_b, s_o_l, s_o_g, s_o_n,
                               FOR_B: tl.constexpr, HAS_SEQ: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
                               BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SINGLE_K: tl.constexpr):
    """dC (FOR_B false: v = B, u = g, st = prev) or dB (v = C, u = x, st = d s) of BM steps, BN state entries:
        dC_i = sum_{j<=i} dCB_ij B_j + sum_h exp(a-hat_i) g_i prev_c
        dB_j = sum_{i>=j} dCB_ij C_i + sum_h dt_j exp(a-hat_end - a-hat_j) x_j d s_c."""
    pid_rn = tl.program_id(0)
    g = tl.program_id(1)
    pid = tl.program_id(2).to(tl.int64)
    b, c = pid // n_chunks, pid % n_chunks
    row0 = c * chunk  # the chunk's first step
    # every tensor's pointer moves to this batch row and chunk (int64); tile offsets from it stay int32
    v_ptr += b * s_v_b + row0 * s_v_l
    u_ptr += b * s_u_b + row0 * s_u_l
    out_ptr += b * s_o_b + row0 * s_o_l
    groups = heads // heads_per_group
    n_rb = tl.cdiv(chunk, BM)
    r0 = (pid_rn % n_rb) * BM
    offs_r = r0 + tl.arange(0, BM)
    offs_n = (pid_rn // n_rb) * BN + tl.arange(0, BN)
    tr = row0 + offs_r
    mr = (offs_r < chunk) & (tr < length)
    mn = offs_n < dstate
    dcb_base = dcb_ptr + ((b * n_chunks + c) * groups + g) * chunk * chunk
    if HAS_SEQ:
        seq_row = seq_ptr + b * s_s_b
        doc_r = _doc(seq_row, tr, length, s_s_l)
    acc = tl.zeros((BM, BN), tl.float32)
    if FOR_B:
        lo, hi = (r0 // BK) * BK, chunk
    else:
        lo, hi = 0, tl.minimum(r0 + BM, chunk)
    for k0 in range(lo, hi, BK):
        kk = k0 + tl.arange(0, BK)
        tk = row0 + kk
        mk = (kk < chunk) & (tk < length)
        if FOR_B:
            keep = (kk[None, :] >= offs_r[:, None]) & mr[:, None] & mk[None, :]
            d = tl.load(dcb_base + kk[None, :] * chunk + offs_r[:, None], mask=keep, other=0.0)  # dCB[i=k, j=r]
        else:
            keep = (kk[None, :] <= offs_r[:, None]) & mr[:, None] & mk[None, :]
            d = tl.load(dcb_base + offs_r[:, None] * chunk + kk[None, :], mask=keep, other=0.0)  # dCB[i=r, j=k]
        vv = tl.load(v_ptr + kk[:, None] * s_v_l + g * s_v_g + offs_n[None, :] * s_v_n,
                     mask=mk[:, None] & mn[None, :], other=0.0)  # (BK, BN)
        acc = tl.dot(_operand(d, DOT), _operand(vv, DOT), acc, input_precision=PREC)

    # the state terms, one head of the group at a time
    if FOR_B:
        keep_r = mr
        if HAS_SEQ:
            keep_r = keep_r & (doc_r == _doc(seq_row, row0 + chunk - 1, length, s_s_l))
    else:
        keep_r = mr
        if HAS_SEQ:
            keep_r = keep_r & (doc_r == _doc(seq_row, row0 - 1, length, s_s_l))
    for hh in range(heads_per_group):
        h = g * heads_per_group + hh
        vec = ((b * heads + h) * n_chunks + c) * chunk
        acs_r = tl.load(acs_ptr + vec + offs_r, mask=offs_r < chunk, other=0.0)
        if FOR_B:
            w = tl.load(dtp_ptr + vec + offs_r, mask=offs_r < chunk, other=0.0) * _masked_exp(
                tl.load(acs_ptr + vec + chunk - 1) - acs_r, keep_r)
        else:
            w = _masked_exp(acs_r, keep_r)
        st_base = st_ptr + ((b * n_chunks + c) * heads + h) * headdim * dstate
        if SINGLE_K:  # the head dimension in one tile: no inner loop, so the loop over heads is pipelined
            acc = _state_part(u_ptr, st_base, h, 0, offs_r, offs_n, mr, mn, w, headdim, dstate, s_u_l, s_u_h, s_u_p,
                              acc, DOT, PREC, BK)
        else:
            for p0 in range(0, headdim, BK):
                acc = _state_part(u_ptr, st_base, h, p0, offs_r, offs_n, mr, mn, w, headdim, dstate, s_u_l, s_u_h,
                                  s_u_p, acc, DOT, PREC, BK)
    tl.store(out_ptr + offs_r[:, None] * s_o_l + g * s_o_g + offs_n[None, :] * s_o_n,
             _cast_out(acc, out_ptr), mask=mr[:, None] & mn[None, :])


# ---------------------------------------------------------------------------- launchers

_launch_dt = FastLauncher(_dt_cumsum_kernel)
_launch_cb = FastLauncher(_chunk_cb_kernel)
_launch_outer = FastLauncher(_chunk_outer_kernel)
_launch_pass_fwd = FastLauncher(_state_passing_fwd_kernel)
_launch_scan_fwd = FastLauncher(_chunk_scan_fwd_kernel)
_launch_pass_bwd = FastLauncher(_state_passing_bwd_kernel)
_launch_dx = FastLauncher(_chunk_scan_bwd_dx_kernel)
_launch_dcb = FastLauncher(_chunk_scan_bwd_dcb_kernel)
_launch_dbc = FastLauncher(_chunk_scan_bwd_dbc_kernel)


def _pow2(n: int, lo: int = 16, hi: int | None = None) -> int:
    v = max(lo, next_power_of_2(n))
    return min(v, hi) if hi else v


def _config(chunk: int, headdim: int, dstate: int) -> dict:
    """Tile sizes and launch options shared by every kernel. tl.dot needs every side >= 16 (smaller sizes
    are masked).

    GPU: 64-wide tiles of the chunk, the head dimension and the state, 8 warps, 2 pipeline stages, and
    32-step row tiles for the dx kernel, chosen from the register and shared-memory use of the kernels
    compiled for sm_90 (bf16, P 64, N 128); with half operands MEASURED then overrides some kernels. The
    interpreter pays per operation, not per element: whole chunks, heads and states per program."""
    if INTERPRET:
        q, p, n = _pow2(chunk), _pow2(headdim), _pow2(dstate)
        return dict(BM=q, BM_DX=q, BK=q, BP=p, BN=n, BLOCK=p * n, warps=1, stages=1)
    return dict(BM=min(64, _pow2(chunk)), BM_DX=min(32, _pow2(chunk)), BK=min(64, _pow2(chunk)),
                BP=_pow2(headdim, hi=64), BN=_pow2(dstate, hi=64), BLOCK=1024, warps=8, stages=2)


# the kernels by the names TUNING uses (the forward's chunk-state kernel is "states", the backward's "dprev")
# and the settings each one reads (cb's K tile is min(BN, 64), dCB's min(BP, 64))
_LAUNCH = ("warps", "stages")
KERNELS = {"dt": _LAUNCH, "cb": ("BM", "BN", *_LAUNCH), "states": ("BP", "BN", "BK", *_LAUNCH),
           "pass_fwd": ("BLOCK", *_LAUNCH), "scan_fwd": ("BM", "BP", "BN", "BK", *_LAUNCH),
           "dprev": ("BP", "BN", "BK", *_LAUNCH), "pass_bwd": ("BLOCK", *_LAUNCH),
           "dx": ("BM_DX", "BP", "BN", "BK", *_LAUNCH), "dcb": ("BM", "BP", *_LAUNCH),
           "dbc": ("BM", "BN", "BK", "BP", *_LAUNCH)}
TUNING_VAR = "HYBRID_SSD_TUNING"


def parse_tuning(text: str, source: str = TUNING_VAR) -> dict[str, dict[str, int]]:
    """"kernel:key=value,key=value;kernel:..." -> {kernel: {key: value}}; a clear error for anything else:
    a key the kernel does not read, a value that is not a power of two, a tile below 16 (every tl.dot side
    needs 16 on the GPU, whatever the interpreter accepts)."""
    tuning: dict[str, dict[str, int]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, body = part.partition(":")
        name = name.strip()
        if not sep or name not in KERNELS:
            raise ValueError(f"{source}: {part!r}: expected KERNEL:KEY=VALUE[,KEY=VALUE...], KERNEL one of "
                             f"{', '.join(KERNELS)}")
        for item in filter(None, (i.strip() for i in body.split(","))):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or key not in KERNELS[name] or not value.strip().isdigit() or int(value) < 1:
                raise ValueError(f"{source}: {name}: {item!r}: expected KEY=POSITIVE_INT, KEY one of "
                                 f"{', '.join(KERNELS[name])} (what {name} reads)")
            v = int(value)
            if key != "stages" and v & (v - 1):
                raise ValueError(f"{source}: {name}: {key}={v}: expected a power of two")
            if key not in _LAUNCH and v < 16:
                raise ValueError(f"{source}: {name}: {key}={v}: expected a tile of 16 or more")
            tuning.setdefault(name, {})[key] = v
    return tuning


TUNING: dict[str, dict[str, int]] = parse_tuning(os.environ.get(TUNING_VAR, ""))


# Per-kernel settings that timed faster than _config's on an H200 (benchmarks/tune_ssd.py at (4, 8192, 32 heads,
# 64, state 128), bf16, the whole SSD call in a CUDA graph; benchmarks/results/tune_ssd_nvidia_h200.md), used
# with half operands on the GPU; fp32 operands keep _config's, whose shared memory was checked. BP and BN stay
# capped at 64, so other head dimensions and states compile the same tiles. The chunk states, the d prev
# kernel and CB are left out: no setting beat the defaults there by more than the run's noise (1%).
MEASURED = {"scan_fwd": dict(warps=4, stages=2, BK=32, BM=64),  # fwd 1.79x alone
            "dx": dict(warps=4, stages=2, BM_DX=64),  # fwd+bwd 1.06x
            "dcb": dict(warps=4, stages=3),  # fwd+bwd 1.08x
            "dbc": dict(warps=4, stages=3)}  # fwd+bwd 1.02x


def _kernel_configs(chunk: int, headdim: int, dstate: int, dot) -> dict:
    """_config's settings, with MEASURED's per kernel (under "kernels") for half operands on the GPU."""
    cfg = _config(chunk, headdim, dstate)
    return cfg if INTERPRET or dot == tl.float32 else {**cfg, "kernels": MEASURED}


def _tuned(cfg: dict, name: str) -> dict:
    """The settings of kernel `name`: `cfg`, then its per-kernel ones (MEASURED), then TUNING's overrides."""
    return {**cfg, **cfg.get("kernels", {}).get(name, {}), **TUNING.get(name, {})}


def _dot_dtype(x: Tensor, B: Tensor, C: Tensor):
    """(operand dtype, input precision) of the matmuls: the half dtype when x, B and C all have it, else fp32."""
    if x.dtype == B.dtype == C.dtype and x.dtype in (torch.float16, torch.bfloat16):
        return (tl.float16 if x.dtype == torch.float16 else tl.bfloat16), None
    return tl.float32, "tf32x3"


def _launch_options(cfg: dict) -> dict:
    return dict(num_warps=cfg["warps"], num_stages=cfg["stages"])


def _d_strides(D: Tensor | None) -> tuple[int, int]:
    if D is None:
        return 0, 0
    return (D.stride(0), 0) if D.dim() == 1 else (D.stride(0), D.stride(1))


def _ssd_fwd(x, dt, A, B, C, chunk, D, z, dt_bias, dt_softplus, dt_limit, initial_states, seq_idx,
             for_backward=True):
    """Stages (1)-(4). Returns y (x's dtype), the final state (fp32) and what the backward needs:
    dt and a-hat (b, h, c, Q), CB (b, c, g, Q, Q), prev (b, c, h, P, N) and y before the gate (x.dtype; None
    without z or without `for_backward`)."""
    batch, length, heads, headdim = x.shape
    groups, dstate = B.shape[2], B.shape[3]
    hpg = heads // groups
    n_chunks = cdiv(length, chunk)
    dot, prec = _dot_dtype(x, B, C)
    cfg = _kernel_configs(chunk, headdim, dstate, dot)
    dev, f32 = x.device, torch.float32
    seq, s_seq = optional_arg(seq_idx, x, 2)

    dtp = torch.empty((batch, heads, n_chunks, chunk), device=dev, dtype=f32)  # dt after bias/softplus/clamp
    acs = torch.empty_like(dtp)  # a-hat
    bias = dt_bias.contiguous() if dt_bias is not None else dtp
    block_h = min(next_power_of_2(heads), max(1, 4096 // next_power_of_2(chunk)))
    has_limit = tuple(dt_limit) != NO_LIMIT
    _launch_dt((cdiv(heads, block_h), n_chunks, batch), dt, A.contiguous(), bias, dtp, acs,
               length, heads, n_chunks, chunk, float(dt_limit[0]), float(dt_limit[1]), *dt.stride(),
               HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus, HAS_LIMIT=has_limit,
               BLOCK_H=block_h, BLOCK_Q=next_power_of_2(chunk), **_launch_options(_tuned(cfg, "dt")))

    cb = torch.empty((batch, n_chunks, groups, chunk, chunk), device=dev, dtype=f32)
    k = _tuned(cfg, "cb")
    _launch_cb((cdiv(chunk, k["BM"]), cdiv(chunk, k["BM"]), batch * n_chunks * groups), C, B, cb,
               length, n_chunks, chunk, groups, dstate, *C.stride(), *B.stride(),
               DOT=dot, PREC=prec, BM=k["BM"], BN=k["BM"], BK=min(k["BN"], 64), **_launch_options(k))

    states = torch.empty((batch, n_chunks, heads, headdim, dstate), device=dev, dtype=f32)
    k = _tuned(cfg, "states")
    _launch_outer((cdiv(headdim, k["BP"]) * cdiv(dstate, k["BN"]), heads, batch * n_chunks),
                  x, B, dtp, acs, seq, states, length, heads, n_chunks, chunk, headdim, dstate, hpg,
                  *x.stride(), *B.stride(), *s_seq,
                  TO_END=True, HAS_SEQ=seq_idx is not None, DOT=dot, PREC=prec, BP=k["BP"], BN=k["BN"],
                  BK=k["BK"], **_launch_options(k))

    final = torch.empty((batch, heads, headdim, dstate), device=dev, dtype=f32)
    init = initial_states.float().contiguous() if initial_states is not None else final
    size = headdim * dstate
    k = _tuned(cfg, "pass_fwd")
    block = min(k["BLOCK"], next_power_of_2(size))
    # the state entering each chunk, as the matmuls read it: in their half dtype (half the bytes to write,
    # read and keep for the backward; the fp32 kernels round it to that dtype for the product anyway)
    prev = states if dot == tl.float32 else torch.empty(states.shape, device=dev, dtype=x.dtype)
    _launch_pass_fwd((cdiv(size, block), heads, batch), states, prev, init, acs, seq, final,
                     length, heads, n_chunks, chunk, size, *s_seq,
                     HAS_INIT=initial_states is not None, HAS_SEQ=seq_idx is not None, BLOCK=block,
                     **_launch_options(k))
    del states

    y = torch.empty((batch, length, heads, headdim), device=dev, dtype=x.dtype)
    store_pre = z is not None and for_backward
    ypre = torch.empty((batch, length, heads, headdim), device=dev, dtype=x.dtype) if store_pre else y
    zz = z if z is not None else x
    Dt = D if D is not None else x
    k = _tuned(cfg, "scan_fwd")
    _launch_scan_fwd((cdiv(chunk, k["BM"]) * cdiv(headdim, k["BP"]), heads, batch * n_chunks),
                     cb, x, zz, dtp, acs, seq, C, prev, Dt, y, ypre,
                     length, heads, n_chunks, chunk, headdim, dstate, hpg,
                     *x.stride(), *zz.stride(), *C.stride(), *s_seq, *y.stride(), *_d_strides(D),
                     HAS_D=D is not None, HAS_Z=z is not None, STORE_PRE=store_pre, HAS_SEQ=seq_idx is not None,
                     DOT=dot, PREC=prec, BM=k["BM"], BP=k["BP"], BN=k["BN"], BK=k["BK"], **_launch_options(k))
    return y, final, (dtp, acs, cb, prev, ypre if store_pre else None)


def _dt_backward(ddt_proc: Tensor, dt: Tensor, dt_bias: Tensor | None, dt_softplus: bool, dt_limit) -> tuple:
    """d dt and d dt_bias from the gradient of the processed dt (b, L, h), through bias, softplus and clamp
    (recomputed with PyTorch's own ops, so the masks at the clamp's bounds are exactly discretize_dt's)."""
    with torch.enable_grad():
        dt_ = dt.detach().requires_grad_()
        bias_ = dt_bias.detach().requires_grad_() if dt_bias is not None else None
        out = discretize_dt(dt_, bias_, dt_softplus, tuple(dt_limit))
        leaves = [dt_] + ([bias_] if bias_ is not None else [])
        grads = torch.autograd.grad(out, leaves, ddt_proc)
    return grads[0], (grads[1] if dt_bias is not None else None)


def _decay_backward(part: Tensor, dacs_qq: Tensor, dcarry: Tensor, A: Tensor, dtp: Tensor,
                    length: int) -> tuple[Tensor, Tensor]:
    """(d dt after its processing (b, L, h), dA) from the kernels' partials. d a-hat per position
    (b, h, c, Q): the state path's T at j and its sum at the chunk's end, the quadratic part's row and
    column sums, the carry of the state passing at the end; then d a_t = sum_{i >= t} d a-hat_i."""
    batch, heads, n_chunks, chunk = dtp.shape
    part = part.sum(1)  # (3, b, h, c, Q)
    dacs = part[1] - part[2] + dacs_qq.sum((0, 1))
    dacs[..., -1] += part[2].sum(-1) + dcarry.sum(-1)
    da = dacs.flip(-1).cumsum(-1).flip(-1)
    ddt_proc = part[0] + da * A.float()[None, :, None, None]
    dA = (da * dtp).sum((0, 2, 3))
    return ddt_proc.reshape(batch, heads, n_chunks * chunk)[:, :, :length].transpose(1, 2), dA


def _state_gradients(g: Tensor, C: Tensor, dtp: Tensor, acs: Tensor, seq_idx: Tensor | None, prev: Tensor,
                     dfinal: Tensor | None, has_init: bool, cfg: dict, dot,
                     prec) -> tuple[Tensor, Tensor, Tensor | None]:
    """(d s_c (b, c, h, P, N) in prev's dtype, the carries' partials (b, h, c, blocks) fp32, d initial
    state (b, h, P, N) fp32 or None): d prev_c = sum_i exp(a-hat_i) g_i C_i^T, then the reverse state passing."""
    batch, length, heads, headdim = g.shape
    dstate, hpg = C.shape[3], heads // C.shape[2]
    n_chunks, chunk = dtp.shape[2], dtp.shape[3]
    dev, f32 = g.device, torch.float32
    seq, s_seq = optional_arg(seq_idx, g, 2)
    dprev = torch.empty(prev.shape, device=dev, dtype=f32)
    k = _tuned(cfg, "dprev")
    _launch_outer((cdiv(headdim, k["BP"]) * cdiv(dstate, k["BN"]), heads, batch * n_chunks),
                  g, C, dtp, acs, seq, dprev, length, heads, n_chunks, chunk, headdim, dstate, hpg,
                  *g.stride(), *C.stride(), *s_seq,
                  TO_END=False, HAS_SEQ=seq_idx is not None, DOT=dot, PREC=prec, BP=k["BP"], BN=k["BN"],
                  BK=k["BK"], **_launch_options(k))
    size = headdim * dstate
    k = _tuned(cfg, "pass_bwd")
    block = min(k["BLOCK"], next_power_of_2(size))
    n_blocks = cdiv(size, block)
    dcarry = torch.empty((batch, heads, n_chunks, n_blocks), device=dev, dtype=f32)
    dinit = torch.empty((batch, heads, headdim, dstate), device=dev, dtype=f32) if has_init else None
    dfin = dfinal.float().contiguous() if dfinal is not None else dprev
    ds = dprev if prev.dtype == f32 else torch.empty_like(prev)  # in the dtype prev has (see _ssd_fwd)
    _launch_pass_bwd((n_blocks, heads, batch), dprev, ds, prev, acs, seq, dfin, dinit if has_init else dprev, dcarry,
                     length, heads, n_chunks, chunk, size, n_blocks, *s_seq,
                     HAS_DFINAL=dfinal is not None, HAS_INIT=has_init, HAS_SEQ=seq_idx is not None,
                     BLOCK=block, **_launch_options(k))
    return ds, dcarry, dinit


def _ssd_bwd(dy, dfinal, x, dt, A, B, C, chunk, D, z, dt_bias, dt_softplus, dt_limit, initial_states, seq_idx,
             dtp, acs, cb, prev, ypre, out=None):
    """Every gradient: (dx, ddt, dA, dB, dC, dD, dz, ddt_bias, d initial_states), in the inputs' dtypes;
    `out`: (dx, dB, dC) to write those three into (any strides), else they are allocated."""
    batch, length, heads, headdim = x.shape
    groups, dstate = B.shape[2], B.shape[3]
    hpg = heads // groups
    n_chunks = cdiv(length, chunk)
    dot, prec = _dot_dtype(x, B, C)
    cfg = _kernel_configs(chunk, headdim, dstate, dot)
    dev, f32 = x.device, torch.float32
    seq, s_seq = optional_arg(seq_idx, x, 2)
    has_seq = seq_idx is not None
    if dy is None:  # only the final state was used
        dy = torch.zeros_like(x)

    g, dz, dD = gate_backward(dy, z, ypre, x, D)

    ds, dcarry, dinit = _state_gradients(g, C, dtp, acs, seq_idx, prev, dfinal, initial_states is not None, cfg,
                                         dot, prec)

    # dx and the per-position partials of ddt and d a-hat
    k = _tuned(cfg, "dx")
    n_pb = cdiv(headdim, k["BP"])
    plane = batch * heads * n_chunks * chunk
    part = torch.empty((3, n_pb, batch, heads, n_chunks, chunk), device=dev, dtype=f32)
    dx = out[0] if out is not None else torch.empty((batch, length, heads, headdim), device=dev, dtype=x.dtype)
    Dt = D if D is not None else x
    _launch_dx((cdiv(chunk, k["BM_DX"]) * n_pb, heads, batch * n_chunks),
               cb, x, g, dtp, acs, seq, B, C, ds, prev, Dt, dx, part,
               length, heads, n_chunks, chunk, headdim, dstate, hpg, plane, n_pb * plane,
               *x.stride(), *g.stride(), *B.stride(), *C.stride(), *s_seq, *dx.stride(), *_d_strides(D),
               HAS_D=D is not None, HAS_SEQ=has_seq, DOT=dot, PREC=prec, BM=k["BM_DX"], BP=k["BP"],
               BN=k["BN"], BK=k["BK"], **_launch_options(k))

    # dCB and the d a-hat of the quadratic part
    k = _tuned(cfg, "dcb")
    n_qb = cdiv(chunk, k["BM"])
    dacs_qq = torch.zeros((2, n_qb, batch, heads, n_chunks, chunk), device=dev, dtype=f32)
    dcb = torch.empty_like(cb)
    _launch_dcb((n_qb, n_qb, batch * n_chunks * groups), x, g, dtp, acs, seq, cb, dcb, dacs_qq,
                length, heads, n_chunks, chunk, headdim, hpg, plane, n_qb * plane,
                *x.stride(), *g.stride(), *s_seq,
                HAS_SEQ=has_seq, DOT=dot, PREC=prec, BM=k["BM"], BK=min(k["BP"], 64),
                SINGLE_K=headdim <= min(k["BP"], 64), **_launch_options(k))

    dB, dC = out[1:] if out is not None else (torch.empty_like(B), torch.empty_like(C))
    k = _tuned(cfg, "dbc")
    grid = (cdiv(chunk, k["BM"]) * cdiv(dstate, k["BN"]), groups, batch * n_chunks)
    for out, v, u, st, for_b in ((dC, B, g, prev, False), (dB, C, x, ds, True)):
        _launch_dbc(grid, dcb, v, u, st, dtp, acs, seq, out,
                    length, heads, n_chunks, chunk, headdim, dstate, hpg,
                    *v.stride(), *u.stride(), *s_seq, *out.stride(),
                    FOR_B=for_b, HAS_SEQ=has_seq, DOT=dot, PREC=prec, BM=k["BM"], BN=k["BN"],
                    BK=min(k["BK"], k["BP"]), SINGLE_K=headdim <= min(k["BK"], k["BP"]), **_launch_options(k))

    ddt_proc, dA = _decay_backward(part, dacs_qq, dcarry, A, dtp, length)
    ddt, dbias = _dt_backward(ddt_proc, dt, dt_bias, dt_softplus, dt_limit)

    if D is not None:
        dD = (dD.sum(-1) if D.dim() == 1 else dD).to(D.dtype)
    return (dx, ddt.to(dt.dtype), dA.to(A.dtype), dB, dC, dD, dz,
            dbias.to(dt_bias.dtype) if dbias is not None else None,
            dinit.to(initial_states.dtype) if dinit is not None else None)


# ---------------------------------------------------------------------------- autograd and the public function

class SsdFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, chunk, dt_softplus, dt_limit,
                for_backward):
        ctx.set_materialize_grads(False)  # an unused final state needs no zeros
        y, final, saved = _ssd_fwd(x, dt, A, B, C, chunk, D, z, dt_bias, dt_softplus, dt_limit,
                                   initial_states, seq_idx, for_backward)
        if for_backward:
            ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, *saved)
        ctx.chunk, ctx.dt_softplus, ctx.dt_limit = chunk, dt_softplus, dt_limit
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, dtp, acs, cb, prev, ypre = ctx.saved_tensors
        grads = _ssd_bwd(dy, dfinal, x, dt, A, B, C, ctx.chunk, D, z, dt_bias, ctx.dt_softplus, ctx.dt_limit,
                         initial_states, seq_idx, dtp, acs, cb, prev, ypre)
        return (*grads[:8], grads[8] if ctx.needs_input_grad[8] else None, None, None, None, None, None)


class SsdPackedFn(torch.autograd.Function):
    """SsdFn with x, B and C packed side by side in one (batch, length, heads headdim + 2 groups d_state)
    tensor, as Mamba-2's convolution returns them: the backward writes their gradients into one tensor of
    that shape, where split views of it as three inputs would have them concatenated afterwards."""

    @staticmethod
    def forward(ctx, xbc, dt, A, D, z, dt_bias, initial_states, seq_idx, shape, chunk, dt_softplus, dt_limit,
                for_backward):
        ctx.set_materialize_grads(False)
        x, B, C = unpack_xbc(xbc, shape, "ssd (triton, packed)")
        y, final, saved = _ssd_fwd(x, dt, A, B, C, chunk, D, z, dt_bias, dt_softplus, dt_limit,
                                   initial_states, seq_idx, for_backward)
        if for_backward:
            ctx.save_for_backward(xbc, dt, A, D, z, dt_bias, initial_states, seq_idx, *saved)
        ctx.shape, ctx.chunk, ctx.dt_softplus, ctx.dt_limit = shape, chunk, dt_softplus, dt_limit
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        xbc, dt, A, D, z, dt_bias, initial_states, seq_idx, dtp, acs, cb, prev, ypre = ctx.saved_tensors
        dxbc = torch.empty(xbc.shape, device=xbc.device, dtype=xbc.dtype)
        where = "ssd (triton, packed)"
        (x, B, C), out = unpack_xbc(xbc, ctx.shape, where), unpack_xbc(dxbc, ctx.shape, where)
        dx, ddt, dA, dB, dC, dD, dz, dbias, dinit = _ssd_bwd(
            dy, dfinal, x, dt, A, B, C, ctx.chunk, D, z, dt_bias, ctx.dt_softplus, ctx.dt_limit, initial_states,
            seq_idx, dtp, acs, cb, prev, ypre, out=out)
        return (dxbc, ddt, dA, dD, dz, dbias, dinit if ctx.needs_input_grad[6] else None,
                None, None, None, None, None, None)


def _check(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
           dt_bias: Tensor | None, initial_states: Tensor | None, seq_idx: Tensor | None) -> None:
    """The kernels read every tensor by its shape: a wrong one would be read out of bounds, not refused."""
    for name, t in (("x", x), ("B", B), ("C", C), ("z", z)):
        if t is not None and t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"ssd (triton): {name} must be float16, bfloat16 or float32, got {t.dtype}; "
                            f"use backend='torch' or 'ref' for other dtypes")
    if x.dim() != 4 or B.dim() != 4 or B.shape != C.shape or B.shape[:2] != x.shape[:2] or x.shape[2] % B.shape[2]:
        raise ValueError(f"ssd (triton): x must be (batch, length, heads, headdim) and B, C (batch, length, groups, "
                         f"d_state) with groups dividing heads; got x {tuple(x.shape)}, B {tuple(B.shape)}, "
                         f"C {tuple(C.shape)}")
    batch, length, heads, headdim = x.shape
    expected = {"dt": (dt, [(batch, length, heads)]), "A": (A, [(heads,)]), "D": (D, [(heads,), (heads, headdim)]),
                "z": (z, [tuple(x.shape)]), "dt_bias": (dt_bias, [(heads,)]),
                "initial_states": (initial_states, [(batch, heads, headdim, B.shape[3])]),
                "seq_idx": (seq_idx, [(batch, length)])}
    for name, (t, shapes) in expected.items():
        if t is not None and tuple(t.shape) not in shapes:
            raise ValueError(f"ssd (triton): {name} must have shape {' or '.join(map(str, shapes))}, "
                             f"got {tuple(t.shape)}")
    if seq_idx is not None and seq_idx.is_floating_point():
        raise TypeError(f"ssd (triton): seq_idx must hold integer document ids, got {seq_idx.dtype}")
    if not (x.is_cuda or INTERPRET):
        raise RuntimeError("ssd (triton): needs CUDA tensors (or TRITON_INTERPRET=1); use backend='torch' on the CPU")


def ssd_triton(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int = 256,
               D: Tensor | None = None, z: Tensor | None = None, dt_bias: Tensor | None = None,
               dt_softplus: bool = False, dt_limit: tuple[float, float] = NO_LIMIT,
               initial_states: Tensor | None = None, seq_idx: Tensor | None = None,
               return_final_states: bool = False):
    """Mamba-2's SSD scan on the GPU (or under TRITON_INTERPRET=1), the semantics of `ssd_chunked` / `ssd_ref`.

    x:       (batch, length, heads, headdim)       float16 / bfloat16 / float32, any strides
    dt:      (batch, length, heads)                the steps before dt_bias / softplus / dt_limit
    A:       (heads,)                              negative decay rates
    B, C:    (batch, length, groups, d_state)      groups divide heads; head h uses group h // (heads / groups)
    D:       (heads,) or (heads, headdim), or None the skip connection
    z:       like x, or None                       the gate: y *= silu(z)
    dt_bias: (heads,) or None; dt_softplus; dt_limit: (low, high) clamp of the processed dt
    initial_states: (batch, heads, headdim, d_state) or None, the state before step 0
    seq_idx: (batch, length) int, non-decreasing document ids: each document starts from a zero state
    chunk_size: steps per chunk (min(chunk_size, length) is used; the last chunk may be partial)
    Returns y (batch, length, heads, headdim) in x's dtype, and with `return_final_states` also the final
    state (batch, heads, headdim, d_state) fp32. Differentiable in x, dt, A, B, C, D, z, dt_bias and
    initial_states.
    """
    _check(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx)
    if chunk_size < 1:
        raise ValueError(f"ssd (triton): chunk_size must be >= 1, got {chunk_size}")
    batch, length, heads, headdim = x.shape
    if length == 0:
        y = x.new_empty(x.shape)
        final = (initial_states.float().clone() if initial_states is not None else
                 x.new_zeros(batch, heads, headdim, B.shape[3], dtype=torch.float32))
        return (y, final) if return_final_states else y
    chunk = min(chunk_size, length)
    tensors = (x, dt, A, B, C, D, z, dt_bias, initial_states)
    for_backward = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    y, final = SsdFn.apply(*tensors, seq_idx, chunk, dt_softplus, tuple(float(v) for v in dt_limit), for_backward)
    return (y, final) if return_final_states else y


def ssd_triton_packed(xbc: Tensor, dt: Tensor, A: Tensor, shape: tuple[int, int, int, int], chunk_size: int = 256,
                      D: Tensor | None = None, z: Tensor | None = None, dt_bias: Tensor | None = None,
                      dt_softplus: bool = False, dt_limit: tuple[float, float] = NO_LIMIT,
                      initial_states: Tensor | None = None, seq_idx: Tensor | None = None,
                      return_final_states: bool = False):
    """`ssd_triton` of x, B and C packed in xbc (batch, length, heads headdim + 2 groups d_state) as views,
    shape = (heads, headdim, groups, d_state); differentiable in xbc (one gradient tensor, no concatenation)."""
    x, B, C = unpack_xbc(xbc, shape, "ssd (triton, packed)")
    _check(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx)
    if chunk_size < 1:
        raise ValueError(f"ssd (triton): chunk_size must be >= 1, got {chunk_size}")
    if xbc.shape[1] == 0:
        return ssd_triton(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit, initial_states, seq_idx,
                          return_final_states)
    tensors = (xbc, dt, A, D, z, dt_bias, initial_states)
    for_backward = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    y, final = SsdPackedFn.apply(*tensors, seq_idx, tuple(shape), min(chunk_size, xbc.shape[1]), dt_softplus,
                                 tuple(float(v) for v in dt_limit), for_backward)
    return (y, final) if return_final_states else y
