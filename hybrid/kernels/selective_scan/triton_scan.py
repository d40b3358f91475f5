"""Selective scan (Mamba-1 S6), Triton forward and backward kernels.

What it computes (reference.py has the sequential oracle): for channel d, state index n, step t,

    dt_t      = softplus(delta_t + delta_bias)                   (bias and softplus optional)
    h_t[n]    = exp(dt_t A[n]) h_{t-1}[n] + dt_t u_t B_t[n]       (ZOH for A, Euler for B; Mamba eq. 4)
    y_t       = sum_n C_t[n] h_t[n] + D u_t,   out_t = y_t silu(z_t)

Layout of the work. One program owns (batch b, a block of BLOCK_D channels) and walks the length in
chunks of SEGS * ITEMS steps. A chunk is a (BLOCK_D, SEGS, ITEMS) register tile, ITEMS = 8 (the
backward requires it): each thread holds 8 consecutive steps of one channel, one 16-byte load of
bf16, the segments lie across the lanes and the channels above them (_load_tile). On the GPU the
forward runs one channel per warp (chunks of 256 steps), the backward four channels per warp
(chunks of 64). Inside a chunk the program loops over the state index n,
forms the pairs (a_t, b_t) = (exp(dt_t A[n]), dt_t u_t B_t[n]) and solves h_t = a_t h_{t-1} + b_t
in two levels (_scan_chunk) with the affine-map composition

    (a1, b1) then (a2, b2)  =  (a1 a2, a2 b1 + b2):

a scan of each thread's ITEMS steps in registers, a scan of the SEGS segment totals across lanes,
and a fix-up h_t = h^loc_t + (prod of a within the segment up to t) h_segment_start. Cross-lane
work is paid once per segment, not once per step. Every factor a_t = exp(dt A) is <= 1 for A <= 0,
dt >= 0, so nothing overflows however long the sequence. y accumulates in registers over n, so no
(batch, dim, length, state) tensor is ever written: memory traffic is the inputs once (B and C
twice: the launcher makes padded fp32 copies), the output once, and the state at the start of
each of the backward's chunks, which the forward saves for it. The state passes
from chunk to chunk through memory: the lanes of the last segment write it, every lane of the next
chunk reads it, a barrier between (cached reads: one load per state index and chunk). Picking it out
of a register tile instead costs a cross-lane reduction per state index.

Backward, chunks in reverse, from the saved state at the start of each chunk:
  * recompute h_t inside the chunk (the forward scan again);
  * dh_t = C_t g_t + exp(dt_{t+1} A) dh_{t+1}, with g = d out / d y = dout silu(z): the same two
    levels run in reverse (_scan_chunk_reverse) over the pairs (exp(dt_{t+1} A), C_t g_t), the
    state gradient of the next chunk entering after the chunk's last step (through memory, as the
    forward's state). Triton's own reversed scans are avoided: they mirror every register of the
    tile across lanes on the way in and out, which was most of the backward's shuffles. The
    factors exp(dt_{t+1} A) are the forward's, shifted one step (one shuffle per segment);
  * with a_t h_{t-1} = h_t - dt_t u_t B_t (no shift of h needed):
        du_t  += sum_n dh_t dt_t B_t                   dB_t += sum_d dh_t dt_t u_t
        ddt_t += sum_n dh_t (u_t B_t + A a_t h_{t-1})   dC_t += sum_d g_t h_t
        dA    += sum_t dh_t dt_t a_t h_{t-1}
        d h_init = a_0 dh_0.
dB and dC are summed over the program's channels (one B/C group: a few shuffles), then over
programs with relaxed fp32 atomics (no ordering is needed between them, and the default
acquire-release order puts a memory fence before each). dA, dD and d delta_bias are summed over
the batch with atomics too, into the same zeroed buffer: one memset, no reduction launched after.

Tile settings (_forward_config, _backward_config) are the fastest of `benchmarks/bench_selective_scan.py`'s
sweep on an H100 with Triton 3.6. B and C are converted to fp32 once per call and loaded per row.
Both kernels need unit stride along the length to vectorise their loads (Triton specialises a
stride of 1); the mamba layer produces x, z and delta that way."""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from hybrid.kernels.launch import FastLauncher, cdiv, next_power_of_2
from hybrid.kernels.triton_math import softplus as _softplus

LOG2E = tl.constexpr(1.4426950408889634)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _affine_combine(a1, b1, a2, b2):
    # h -> a1 h + b1 followed by h -> a2 h + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _dt_from_raw(raw, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """delta (+ bias, softplus) from the loaded delta; 0 where masked, so that padded steps are identities."""
    dt = raw.to(tl.float32)
    if HAS_BIAS:
        dt = dt + bias  # broadcast by the caller to the tile's rank
    if SOFTPLUS:
        dt = _softplus(dt)
    return tl.where(mask, dt, 0.0)


@triton.jit
def _load_dt(rows, t, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    # delta at row pointers + step offsets, for tensors other than a chunk tile
    return _dt_from_raw(tl.load(rows + t, mask=mask, other=0.0), mask, bias, HAS_BIAS, SOFTPLUS)


@triton.jit
def _load_tile(ptrs, mask):
    """tl.load of a (BLOCK_D, SEGS, ITEMS) chunk tile, issued as (SEGS, BLOCK_D, ITEMS). Triton orders
    the axes of equal contiguity across the lanes by their index: this way segments come first (the
    scans across them are plain shuffles) and channels after, in further lanes or registers. Loaded
    as (BLOCK_D, SEGS, ITEMS), several channels per warp took butterfly shuffles or shared memory
    for every scan."""
    x = tl.load(tl.permute(ptrs, (1, 0, 2)), mask=tl.permute(mask, (1, 0, 2)), other=0.0)
    return tl.permute(x, (1, 0, 2))


@triton.jit
def _load_tile_unmasked(ptrs):
    # _load_tile where every address is valid (B and C, padded to whole chunks)
    return tl.permute(tl.load(tl.permute(ptrs, (1, 0, 2))), (1, 0, 2))


@triton.jit
def _store_tile(ptrs, vals, mask):
    # tl.store of a chunk tile, laid out as _load_tile
    tl.store(tl.permute(ptrs, (1, 0, 2)), tl.permute(vals, (1, 0, 2)), mask=tl.permute(mask, (1, 0, 2)))


@triton.jit
def _atomic_add_channel_sum(row, t0, vals):
    """Relaxed fp32 atomic adds of a (BLOCK_D, SEGS, ITEMS) tile summed over its channels at row + t0,
    t0 + 1, ...: one atomic per step and program, not per channel (the atomics were a third of the
    backward's time with one channel per program, H100). The channels sit in the lanes above the
    segments, so the sum is a few shuffles."""
    STEPS: tl.constexpr = vals.shape[1] * vals.shape[2]
    tl.atomic_add(row + t0 + tl.arange(0, STEPS), tl.reshape(tl.sum(vals, 0), (STEPS,)), sem="relaxed")


@triton.jit
def _scan_chunk(a, x, h_in, offs_s, offs_i, SEGS: tl.constexpr, ITEMS: tl.constexpr):
    """h_t = a_t h_{t-1} + x_t over one chunk laid out (BLOCK_D, SEGS, ITEMS), entering with h_in
    (BLOCK_D,). Returns h and the state at the end of each segment, (BLOCK_D, SEGS): its last column
    is the state after the chunk.

    Two levels, so that cross-lane work is paid once per segment and not once per step: each
    thread scans its ITEMS consecutive steps in registers, the segment totals are scanned across the
    lanes, and every step adds its segment's incoming state times its local decay product.
    Segment totals are picked with where + sum, not a 'take last' reduction: Triton reduces across
    lanes in butterfly order, which is only right for commutative combines. Where the items of a
    segment sit in one thread, the picks fold to register moves."""
    P, h_loc = tl.associative_scan((a, x), 2, _affine_combine)
    last = offs_i[None, None, :] == ITEMS - 1
    P_seg = tl.sum(tl.where(last, P, 0.0), 2)
    h_seg = tl.sum(tl.where(last, h_loc, 0.0), 2)
    P_acc, h_acc = tl.associative_scan((P_seg, h_seg), 1, _affine_combine)
    h_end = h_acc + P_acc * h_in[:, None]  # state at the end of each segment
    prev = tl.gather(h_end, tl.broadcast_to(tl.maximum(offs_s - 1, 0)[None, :], h_end.shape), 1)
    h_start = tl.where(offs_s[None, :] == 0, h_in[:, None], prev)
    return h_loc + P * h_start[:, :, None], h_end


@triton.jit
def _items8(x):
    """The 8 items of a (BLOCK_D, SEGS, 8) tile as eight (BLOCK_D, SEGS) tensors, in order. Reshapes
    and splits along the in-thread axis only rename registers."""
    BD: tl.constexpr = x.shape[0]
    S: tl.constexpr = x.shape[1]
    even, odd = tl.split(tl.reshape(x, (BD, S, 4, 2)))  # items 0 2 4 6 and 1 3 5 7
    x04, x26 = tl.split(tl.reshape(even, (BD, S, 2, 2)))
    x15, x37 = tl.split(tl.reshape(odd, (BD, S, 2, 2)))
    x0, x4 = tl.split(x04)
    x2, x6 = tl.split(x26)
    x1, x5 = tl.split(x15)
    x3, x7 = tl.split(x37)
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def _join8(x0, x1, x2, x3, x4, x5, x6, x7):
    # the inverse of _items8
    BD: tl.constexpr = x0.shape[0]
    S: tl.constexpr = x0.shape[1]
    even = tl.reshape(tl.join(tl.join(x0, x4), tl.join(x2, x6)), (BD, S, 4))
    odd = tl.reshape(tl.join(tl.join(x1, x5), tl.join(x3, x7)), (BD, S, 4))
    return tl.reshape(tl.join(even, odd), (BD, S, 8))


@triton.jit
def _scan_chunk_reverse(a, a_after, x, d_out, offs_s, SEGS: tl.constexpr):
    """The adjoint recurrence d_t = x_t + a_{t+1} d_{t+1} over one chunk of (BLOCK_D, SEGS, 8) steps,
    given the forward's factors a_t of the chunk and a_after (BLOCK_D,), the factor of the step
    after it; d after the chunk = d_out. Returns d and d at the start of every segment in mirrored
    order, (BLOCK_D, SEGS): column j holds segment SEGS - 1 - j, so the last is the chunk's first step.

    The same two levels as _scan_chunk, run backwards, but without Triton's reversed scans, which
    mirror every register of the tile across lanes on the way in and out: each thread runs its 8
    items backwards in straight-line code, and the segment totals are mirrored across the lanes
    (two shuffles), scanned forwards, and mirrored back."""
    # The factors shifted one step (below, a_i is the factor of item i's successor): in the thread
    # for 7 of 8 items, from the next segment's lane for the last (one shuffle), and a_after for the
    # chunk's last step. Recomputing exp(dt_{t+1} A) instead cost a multiply and an exp per element.
    _a0, a0, a1, a2, a3, a4, a5, a6 = _items8(a)
    nxt = tl.broadcast_to(tl.minimum(offs_s + 1, SEGS - 1)[None, :], _a0.shape)
    a7 = tl.where(offs_s[None, :] == SEGS - 1, a_after[:, None], tl.gather(_a0, nxt, 1))
    x0, x1, x2, x3, x4, x5, x6, x7 = _items8(x)
    # suffix products P_i = a_i ... a_7 and local solutions d_i (d after the segment = 0)
    d6 = x6 + a6 * x7
    P6 = a6 * a7
    d5 = x5 + a5 * d6
    P5 = a5 * P6
    d4 = x4 + a4 * d5
    P4 = a4 * P5
    d3 = x3 + a3 * d4
    P3 = a3 * P4
    d2 = x2 + a2 * d3
    P2 = a2 * P3
    d1 = x1 + a1 * d2
    P1 = a1 * P2
    d0 = x0 + a0 * d1
    P0 = a0 * P1
    # segment j of the mirrored order is segment SEGS - 1 - j: there the recurrence runs forwards
    mirror = tl.broadcast_to((SEGS - 1 - offs_s)[None, :], d0.shape)
    P_acc, d_acc = tl.associative_scan((tl.gather(P0, mirror, 1), tl.gather(d0, mirror, 1)), 1, _affine_combine)
    d_starts = d_acc + P_acc * d_out[:, None]  # mirrored: d at the first step of segment SEGS - 1 - j
    prev = tl.gather(d_starts, tl.broadcast_to(tl.maximum(offs_s - 1, 0)[None, :], d_starts.shape), 1)
    d_after = tl.gather(tl.where(offs_s[None, :] == 0, d_out[:, None], prev), mirror, 1)
    d = _join8(d0 + P0 * d_after, d1 + P1 * d_after, d2 + P2 * d_after, d3 + P3 * d_after,
               d4 + P4 * d_after, d5 + P5 * d_after, d6 + P6 * d_after, x7 + a7 * d_after)
    return d, d_starts


@triton.jit
def _store_segment(ptrs, tile, offs_s, mask, SEG: tl.constexpr):
    # store column SEG of a (BLOCK_D, SEGS) tile at (BLOCK_D,) pointers: only that segment's lanes write
    tl.store(ptrs[:, None] + offs_s[None, :] * 0, tile, mask=mask[:, None] & (offs_s[None, :] == SEG))


@triton.jit
def _gate_grad(dout_ptrs, z_ptr, z_offsets, mask, HAS_Z: tl.constexpr):
    # d out / d y for out = y silu(z)
    g = _load_tile(dout_ptrs, mask).to(tl.float32)
    if HAS_Z:
        zv = _load_tile(z_ptr + z_offsets, mask).to(tl.float32)
        g = g * zv * tl.sigmoid(zv)
    return g


@triton.jit
def _scan_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, out_ptr, hT_ptr, states_ptr,
    batch, dim, length, dstate, per_group, n_chunks, n_slots, last_slot,
    s_u_b, s_u_d, s_u_l, s_dt_b, s_dt_d, s_dt_l, s_z_b, s_z_d, s_z_l, s_o_b, s_o_d, s_o_l,
    s_A_d, s_A_n, s_B_b, s_B_g, s_B_n, s_B_l, s_C_b, s_C_g, s_C_n, s_C_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr,
    BLOCK_D: tl.constexpr, SEGS: tl.constexpr, ITEMS: tl.constexpr, BLOCK_N: tl.constexpr,
    SAVE_SEGS: tl.constexpr,
):
    CHUNK: tl.constexpr = SEGS * ITEMS
    SAVES: tl.constexpr = SEGS // SAVE_SEGS  # states saved per chunk
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_s = tl.arange(0, SEGS)
    offs_i = tl.arange(0, ITEMS)
    step = offs_s[:, None] * ITEMS + offs_i[None, :]  # (SEGS, ITEMS) step within the chunk
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_dn = mask_d[:, None] & (offs_n[None, :] < dstate)
    grp = tl.minimum(offs_d, dim - 1) // per_group  # B/C group of each channel

    rows3 = offs_d[:, None, None]
    u_rows = u_ptr + b * s_u_b + rows3 * s_u_d
    dt_rows = dt_ptr + b * s_dt_b + rows3 * s_dt_d
    B_rows = B_ptr + b * s_B_b + grp[:, None, None] * s_B_g
    C_rows = C_ptr + b * s_C_b + grp[:, None, None] * s_C_g
    state_rows = (b * dim + offs_d) * dstate  # (batch, dim, state) contiguous index of (b, d, 0)
    dn = state_rows[:, None] + offs_n[None, :]
    slot_size = b * 0 + batch * dim * dstate  # int64, as b: slot offsets pass 2^31 on long sequences

    bias = tl.zeros((BLOCK_D,), tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0)
    # The state between chunks goes through memory: each state index's scan reads its entry and the
    # lanes of segment ends write exits, with no cross-lane reduction to pick one column of a
    # register tile. With a backward to follow, slot k holds the state after k * SAVE_SEGS segments
    # (the backward restarts each of its chunks, SAVE_SEGS segments long, from one), slots past
    # last_slot are not written, and chunk c enters from slot c * SAVES. Without, SAVE_SEGS = SEGS and
    # two slots take turns (last_slot = n_chunks masks nothing).
    H0 = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)
    if HAS_H0:
        H0 = tl.load(h0_ptr + dn, mask=mask_dn, other=0.0)
    tl.store(states_ptr + dn, H0, mask=mask_dn)
    tl.debug_barrier()

    for c in range(0, n_chunks):
        t = (c * CHUNK + step)[None, :, :]
        m3 = mask_d[:, None, None] & (t < length)
        u = _load_tile(u_rows + t * s_u_l, m3).to(tl.float32)
        dt = _dt_from_raw(_load_tile(dt_rows + t * s_dt_l, m3), m3, bias[:, None, None], HAS_BIAS, SOFTPLUS)
        dtu = dt * u
        carry_in = states_ptr + ((c * SAVES) % n_slots) * slot_size + state_rows
        save_slot = c * SAVES + (offs_s + 1) // SAVE_SEGS  # (SEGS,): the slot after each segment
        save = ((offs_s + 1) % SAVE_SEGS == 0) & (save_slot <= last_slot)
        saves = states_ptr + ((save_slot % n_slots) * slot_size)[None, :] + state_rows[:, None]
        y = tl.zeros((BLOCK_D, SEGS, ITEMS), tl.float32)
        # B and C (fp32, padded to whole chunks: no mask) are loaded one state index ahead, so that
        # their latency hides behind a scan
        Bn = _load_tile_unmasked(B_rows + t * s_B_l)
        Cn = _load_tile_unmasked(C_rows + t * s_C_l)
        for n in range(0, dstate):
            n_next = tl.minimum(n + 1, dstate - 1)
            B_next = _load_tile_unmasked(B_rows + n_next * s_B_n + t * s_B_l)
            C_next = _load_tile_unmasked(C_rows + n_next * s_C_n + t * s_C_l)
            A2 = tl.load(A_ptr + offs_d * s_A_d + n * s_A_n, mask=mask_d, other=0.0) * LOG2E
            h_in = tl.load(carry_in + n, mask=mask_d, other=0.0)
            # padded steps have dt = 0: identities, so the last segment ends on the state after the chunk
            h, h_end = _scan_chunk(tl.exp2(dt * A2[:, None, None]), dtu * Bn, h_in, offs_s, offs_i, SEGS, ITEMS)
            y += h * Cn
            tl.store(saves + n, h_end, mask=mask_d[:, None] & save[None, :])
            Bn, Cn = B_next, C_next
        tl.debug_barrier()  # the next chunk reads what this one's last lanes wrote
        if HAS_D:
            Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0)
            y += u * Dv[:, None, None]
        if HAS_Z:
            zv = _load_tile(z_ptr + b * s_z_b + rows3 * s_z_d + t * s_z_l, m3).to(tl.float32)
            y *= zv * tl.sigmoid(zv)
        _store_tile(out_ptr + b * s_o_b + rows3 * s_o_d + t * s_o_l, y, m3)
    hT = tl.load(states_ptr + (last_slot % n_slots) * slot_size + dn, mask=mask_dn, other=0.0)
    tl.store(hT_ptr + dn, hT, mask=mask_dn)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, states_ptr, dout_ptr, dhT_ptr, dh_ptr,
    du_ptr, ddt_ptr, dz_ptr, sums_ptr,
    batch, dim, length, dstate, per_group, groups, n_chunks,
    s_u_b, s_u_d, s_u_l, s_dt_b, s_dt_d, s_dt_l, s_z_b, s_z_d, s_z_l, s_do_b, s_do_d, s_do_l,
    s_A_d, s_A_n, s_B_b, s_B_g, s_B_n, s_B_l, s_C_b, s_C_g, s_C_n, s_C_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_DHT: tl.constexpr,
    BLOCK_D: tl.constexpr, SEGS: tl.constexpr, ITEMS: tl.constexpr, BLOCK_N: tl.constexpr,
):
    tl.static_assert(ITEMS == 8, "the backward's reverse scan is written out for 8 items a thread")
    CHUNK: tl.constexpr = SEGS * ITEMS
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_s = tl.arange(0, SEGS)
    offs_i = tl.arange(0, ITEMS)
    step = offs_s[:, None] * ITEMS + offs_i[None, :]
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_dn = mask_d[:, None] & (offs_n[None, :] < dstate)
    grp = tl.minimum(offs_d, dim - 1) // per_group

    rows3 = offs_d[:, None, None]
    u_rows = u_ptr + b * s_u_b + rows3 * s_u_d
    dt_rows = dt_ptr + b * s_dt_b + rows3 * s_dt_d
    B_rows = B_ptr + b * s_B_b + grp[:, None, None] * s_B_g
    C_rows = C_ptr + b * s_C_b + grp[:, None, None] * s_C_g
    padded_length = n_chunks * CHUNK
    # sums (fp32, zeroed) takes the gradients that programs add up with atomics: dB and dC, each
    # (batch, groups, state, padded), then dA (dim, state), dD (dim,) and d delta_bias (dim,). The
    # launcher keeps every channel of a program in one B/C group.
    dBC_size = b * 0 + batch * groups * dstate * padded_length  # int64, as b
    dB_ptr = sums_ptr
    dC_ptr = sums_ptr + dBC_size
    dparams_ptr = sums_ptr + 2 * dBC_size
    dBC_row = (b * groups + (pid_d * BLOCK_D) // per_group) * dstate * padded_length
    do_rows = dout_ptr + b * s_do_b + rows3 * s_do_d
    g_rows = (b * dim + rows3) * length  # du, ddelta, dz: contiguous (batch, dim, length)
    state_rows = (b * dim + offs_d) * dstate
    dn = state_rows[:, None] + offs_n[None, :]
    slot_size = b * 0 + batch * dim * dstate  # int64, as b: slot offsets pass 2^31 on long sequences
    # dh (fp32): two slots of (batch, dim, state) that carry dh across chunk boundaries, then d h_init
    dh_carry_ptr = dh_ptr
    dh0_ptr = dh_ptr + 2 * slot_size

    bias = tl.zeros((BLOCK_D,), tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0)
    bias3 = bias[:, None, None]
    Dv = tl.zeros((BLOCK_D,), tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0)
    # dh at chunk boundaries goes through two memory slots in turn, as the forward's state does:
    # slot c % 2 receives dh at chunk c's first step (d loss / d h_t there), slot n_chunks % 2 starts
    # with the final state's gradient.
    dHT = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)
    if HAS_DHT:
        dHT = tl.load(dhT_ptr + dn, mask=mask_dn, other=0.0)
    tl.store(dh_carry_ptr + (n_chunks % 2) * slot_size + dn, dHT, mask=mask_dn)
    tl.debug_barrier()
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), tl.float32)

    for cc in range(0, n_chunks):
        c = n_chunks - 1 - cc
        t = (c * CHUNK + step)[None, :, :]
        m3 = mask_d[:, None, None] & (t < length)
        u = _load_tile(u_rows + t * s_u_l, m3).to(tl.float32)
        dt = _dt_from_raw(_load_tile(dt_rows + t * s_dt_l, m3), m3, bias3, HAS_BIAS, SOFTPLUS)
        # the adjoint recurrence decays by the next step's factor: the forward's factors shifted by
        # one step, and for the chunk's last step the factor of the next chunk's first
        t_after = (c + 1) * CHUNK + offs_d * 0  # (BLOCK_D,), so that the mask is a tensor
        dt_after = _load_dt(dt_ptr + b * s_dt_b + offs_d * s_dt_d, t_after * s_dt_l, mask_d & (t_after < length),
                            bias, HAS_BIAS, SOFTPLUS)
        dtu = dt * u
        # Only what the loop over n needs stays in registers; dout and z are loaded again after it
        # (from cache), which leaves registers for more resident warps.
        g = _gate_grad(do_rows + t * s_do_l, z_ptr, b * s_z_b + rows3 * s_z_d + t * s_z_l, m3, HAS_Z)
        h_rows = states_ptr + c * slot_size + state_rows  # the state entering this chunk, from the forward
        dh_in = dh_carry_ptr + ((c + 1) % 2) * slot_size + state_rows
        dh_out = dh_carry_ptr + (c % 2) * slot_size + state_rows

        y = tl.zeros((BLOCK_D, SEGS, ITEMS), tl.float32)
        du = tl.zeros((BLOCK_D, SEGS, ITEMS), tl.float32)
        ddt = tl.zeros((BLOCK_D, SEGS, ITEMS), tl.float32)
        Bn = _load_tile_unmasked(B_rows + t * s_B_l)  # one state index ahead, as in the forward
        Cn = _load_tile_unmasked(C_rows + t * s_C_l)
        for n in range(0, dstate):
            n_next = tl.minimum(n + 1, dstate - 1)
            B_next = _load_tile_unmasked(B_rows + n_next * s_B_n + t * s_B_l)
            C_next = _load_tile_unmasked(C_rows + n_next * s_C_n + t * s_C_l)
            A_n = tl.load(A_ptr + offs_d * s_A_d + n * s_A_n, mask=mask_d, other=0.0)
            A2_row = A_n * LOG2E
            A2 = A2_row[:, None, None]
            # forward again: h_t, and bx_t = dt_t u_t B_t so that a_t h_{t-1} = h_t - bx_t
            bx = dtu * Bn
            h_in = tl.load(h_rows + n, mask=mask_d, other=0.0)
            a = tl.exp2(dt * A2)
            h, _h_end = _scan_chunk(a, bx, h_in, offs_s, offs_i, SEGS, ITEMS)
            if HAS_Z:
                y += h * Cn
            # dh_t = C_t g_t + exp(dt_{t+1} A) dh_{t+1}, entering from the next chunk with its dh
            dh_next = tl.load(dh_in + n, mask=mask_d, other=0.0)
            a_after = tl.exp2(dt_after * A2_row)  # rounded as the forward's factors
            dh, dh_starts = _scan_chunk_reverse(a, a_after, g * Cn, dh_next, offs_s, SEGS)
            _store_segment(dh_out + n, dh_starts, offs_s, mask_d, SEGS - 1)  # the chunk's first step
            dh_ah = dh * (h - bx)  # dh_t a_t h_{t-1}
            dhB = dh * Bn
            du += dhB * dt
            ddt += dhB * u + dh_ah * A_n[:, None, None]
            dA_n = tl.sum(tl.sum(dh_ah * dt, axis=2), axis=1)
            dA_acc += tl.where(offs_n[None, :] == n, dA_n[:, None], 0.0)
            # summed over the program's channels, then over programs by atomics. No mask: rows past
            # dim and steps past length add zeros (their u, dt and dout load as 0) to buffers padded
            # to whole chunks.
            _atomic_add_channel_sum(dB_ptr + dBC_row + n * padded_length, c * CHUNK, dh * dtu)
            _atomic_add_channel_sum(dC_ptr + dBC_row + n * padded_length, c * CHUNK, g * h)
            Bn, Cn = B_next, C_next
        tl.debug_barrier()  # the previous chunk reads what this one's first lanes wrote

        if HAS_D:
            du += g * Dv[:, None, None]
            dD_acc += tl.sum(tl.sum(g * u, axis=2), axis=1)
        if HAS_Z:
            y += u * Dv[:, None, None]
            dout = _load_tile(do_rows + t * s_do_l, m3).to(tl.float32)
            zv = _load_tile(z_ptr + b * s_z_b + rows3 * s_z_d + t * s_z_l, m3).to(tl.float32)
            sig_z = tl.sigmoid(zv)
            # d silu(z) / dz = sig(z) (1 + z (1 - sig(z)))
            dz = dout * y * sig_z * (1.0 + zv * (1.0 - sig_z))
            _store_tile(dz_ptr + g_rows + t, dz, m3)
        ddt = tl.where(m3, ddt, 0.0)
        if SOFTPLUS:
            # d softplus(x) / dx = sigmoid(x), at x = delta + bias
            raw = _load_tile(dt_rows + t * s_dt_l, m3).to(tl.float32)
            if HAS_BIAS:
                raw = raw + bias3
            ddt = ddt * tl.sigmoid(raw)
        dbias_acc += tl.sum(tl.sum(ddt, axis=2), axis=1)
        _store_tile(du_ptr + g_rows + t, du, m3)
        _store_tile(ddt_ptr + g_rows + t, ddt, m3)

    # d h_init = a_0 dh_0 = exp(dt_0 A) dH, dH being dh at step 0
    dH = tl.load(dh_carry_ptr + dn, mask=mask_dn, other=0.0)
    A_tile = tl.load(A_ptr + offs_d[:, None] * s_A_d + offs_n[None, :] * s_A_n, mask=mask_dn, other=0.0)
    dt0 = _load_dt(dt_ptr + b * s_dt_b + offs_d[:, None] * s_dt_d, tl.zeros((1, 1), tl.int32), mask_d[:, None],
                   bias[:, None], HAS_BIAS, SOFTPLUS)
    tl.store(dh0_ptr + dn, tl.exp2(dt0 * A_tile * LOG2E) * dH, mask=mask_dn)
    # summed over the batch here rather than by a reduction launched after: host time on short calls
    tl.atomic_add(dparams_ptr + offs_d[:, None] * dstate + offs_n[None, :], dA_acc, mask=mask_dn, sem="relaxed")
    tl.atomic_add(dparams_ptr + dim * dstate + offs_d, dD_acc, mask=mask_d, sem="relaxed")
    tl.atomic_add(dparams_ptr + dim * (dstate + 1) + offs_d, dbias_acc, mask=mask_d, sem="relaxed")


def _forward_config(dim: int, dstate: int) -> tuple[int, int, int, int, int | None]:
    """(BLOCK_D, num_warps, SEGS, ITEMS, MAXNREG) of the forward: a chunk of SEGS segments of ITEMS = 8
    consecutive steps, one segment per thread (BLOCK_D * SEGS = 32 * num_warps), and a register cap
    for ptxas (None: none). The interpreter pays per operation, not per element: few large chunks."""
    if INTERPRET:
        return (min(4, next_power_of_2(dim)), 1, 8, 8, None)
    # One channel and one warp per program, a chunk of 256 steps. Capped at 64 registers (from 128; a
    # few bytes spill) four times as many warps are resident, and the grid runs in fewer, fuller
    # waves: on an H100 0.30 against 0.36 ms at (4, 2048, 2048, 16), 1.17 against 1.49 ms at length 8K.
    # Timings: benchmarks/results/selective_scan_*.md and `bench_selective_scan.py --sweep`.
    return (1, 1, 32, 8, 64)


def _backward_config(per_group: int) -> tuple[int, int, int, int, int | None]:
    """(BLOCK_D, num_warps, SEGS, ITEMS, MAXNREG) of the backward, whose chunk divides the forward's.
    All BLOCK_D channels of a program share one B/C group (BLOCK_D divides dim / groups): their dB
    and dC are summed before the atomics."""
    block_d = 4 if per_group % 4 == 0 else 2 if per_group % 2 == 0 else 1
    if INTERPRET:
        return (block_d, 1, 4, 8, None)
    # Four channels of 8 segments in one warp, a chunk of 64 steps: a quarter of the atomics of one
    # channel a warp, for a few shuffles (H100, (4, 2048, 2048, 16): 1.00 against 1.27 ms). No
    # register cap: at 168 this tile spilled and ran slower.
    return (block_d, 1, 32 // block_d, 8, None)


def _check_dtypes(**tensors) -> None:
    for name, t in tensors.items():
        if t is not None and t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"selective_scan (triton): {name} must be float16, bfloat16 or float32, got {t.dtype}; "
                            f"use backend='torch' or 'ref' for other dtypes")


def _bc_strides(t: Tensor) -> tuple[int, int, int, int]:
    """(batch, group, state, length) strides of B or C; group stride 0 when ungrouped."""
    if t.dim() == 3:
        return t.stride(0), 0, t.stride(1), t.stride(2)
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def _padded_fp32(t: Tensor, padded_length: int) -> Tensor:
    """B or C in fp32 with the length zero-padded to (at least) whole chunks. The kernels read them
    once per state index: converted once here rather than in their innermost loops (where the
    conversions were a sixth of the forward's instructions), and padded so that those loads need no
    mask. The forward's copies serve the backward too (its chunks divide the forward's)."""
    if t.dtype == torch.float32 and t.shape[-1] >= padded_length and t.stride(-1) == 1:
        return t  # fp32 at whole chunks, or already padded: the kernels only read it
    if padded_length == t.shape[-1]:  # one launch
        return t.to(torch.float32, memory_format=torch.contiguous_format)
    out = t.new_zeros((*t.shape[:-1], padded_length), dtype=torch.float32)
    out[..., :t.shape[-1]] = t
    return out


_launch_fwd = FastLauncher(_scan_fwd_kernel)
_launch_bwd = FastLauncher(_scan_bwd_kernel)


def _launch_options(num_warps: int, maxnreg: int | None) -> dict:
    options = {"num_warps": num_warps}
    if maxnreg is not None and not INTERPRET:
        options["maxnreg"] = maxnreg
    return options


def _selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, store_states,
                        config=None, save_every=None):
    """The forward kernel. With `store_states`, also the state every `save_every` steps (the backward's
    chunk length, which must divide the forward's), as (slots, batch, dim, state) fp32."""
    batch, dim, length = u.shape
    dstate = A.shape[1]
    groups = 1 if B.dim() == 3 else B.shape[1]
    block_d, num_warps, segs, items, maxnreg = config or _forward_config(dim, dstate)
    chunk = segs * items
    n_chunks = cdiv(length, chunk)
    if store_states:
        save_every = save_every or chunk
        if chunk % save_every or save_every % items:
            raise ValueError(f"selective_scan (triton): the forward's chunk of {chunk} steps must be a multiple of "
                             f"save_every = {save_every}, itself a multiple of {items}")
        n_slots = cdiv(length, save_every) + 1  # states[k] = the state after k * save_every steps
        save_segs, last_slot = save_every // items, n_slots - 1
    else:  # two slots in turn
        n_slots, save_segs, last_slot = 2, segs, n_chunks
    out = torch.empty((batch, dim, length), device=u.device, dtype=u.dtype)
    hT = torch.empty((batch, dim, dstate), device=u.device, dtype=torch.float32)
    states = torch.empty((n_slots, batch, dim, dstate), device=u.device, dtype=torch.float32)
    h0 = initial_state.float().contiguous() if initial_state is not None else hT
    A = A.float()
    D = D.float().contiguous() if D is not None else None
    delta_bias = delta_bias.float().contiguous() if delta_bias is not None else None
    padded_length = n_chunks * chunk
    Bf, Cf = _padded_fp32(B, padded_length), _padded_fp32(C, padded_length)
    zz = z if z is not None else u
    _launch_fwd(
        (cdiv(dim, block_d), batch),
        u, delta, A, Bf, Cf, D, z, delta_bias, h0, out, hT, states,
        batch, dim, length, dstate, dim // groups, n_chunks, n_slots, last_slot,
        *u.stride(), *delta.stride(), *zz.stride(), *out.stride(),
        *A.stride(), *_bc_strides(Bf), *_bc_strides(Cf),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
        HAS_H0=initial_state is not None,
        BLOCK_D=block_d, SEGS=segs, ITEMS=items, BLOCK_N=next_power_of_2(dstate), SAVE_SEGS=save_segs,
        **_launch_options(num_warps, maxnreg),
    )
    return out, hT, (states if store_states else None)


def _selective_scan_bwd(dout, dhT, u, delta, A, B, C, D, z, delta_bias, states, delta_softplus,
                        config=None, bc_dtypes=None):
    """The backward kernel, on the states the forward saved every chunk of this backward. B and C may
    be the forward's padded fp32 copies; `bc_dtypes` are then the dtypes of dB and dC. Few
    allocations and launches: on the GPU machine's host, short calls spent more time here than in
    the kernel."""
    batch, dim, length = u.shape
    dstate = A.shape[1]
    groups = 1 if B.dim() == 3 else B.shape[1]
    per_group = dim // groups
    block_d, num_warps, segs, items, maxnreg = config or _backward_config(per_group)
    if per_group % block_d:
        raise ValueError(f"selective_scan (triton): the backward's BLOCK_D = {block_d} channels must divide the "
                         f"{per_group} channels of a B/C group")
    n_chunks = cdiv(length, segs * items)
    if states.shape[0] != n_chunks + 1:  # the backward restarts each chunk from the state saved there
        raise ValueError(f"selective_scan (triton): the backward's chunks of {segs * items} steps need {n_chunks} "
                         f"saved states, but the forward saved {states.shape[0] - 1}; the forward's save_every "
                         f"must be the backward's chunk length")
    dev = u.device
    if dout is None:  # only the final state was used
        dout = torch.zeros_like(u)
    if z is None or z.dtype == u.dtype == delta.dtype:  # du, ddelta (and dz) in one allocation
        grads = torch.empty((2 if z is None else 3, batch, dim, length), device=dev, dtype=u.dtype)
        du, ddelta, dz = grads[0], grads[1], (grads[2] if z is not None else None)
    else:
        du = torch.empty((batch, dim, length), device=dev, dtype=u.dtype)
        ddelta = torch.empty((batch, dim, length), device=dev, dtype=delta.dtype)
        dz = torch.empty((batch, dim, length), device=dev, dtype=z.dtype)
    padded_length = n_chunks * segs * items
    dBC_size = batch * groups * dstate * padded_length
    sums = torch.zeros(2 * dBC_size + dim * (dstate + 2), device=dev, dtype=torch.float32)  # see the kernel
    dh = torch.empty((3, batch, dim, dstate), device=dev, dtype=torch.float32)  # two carry slots, d h_init
    A = A.float()
    Dc = D.float().contiguous() if D is not None else None
    biasc = delta_bias.float().contiguous() if delta_bias is not None else None
    dhT = dhT.float().contiguous() if dhT is not None else None
    Bf, Cf = _padded_fp32(B, padded_length), _padded_fp32(C, padded_length)
    zz = z if z is not None else u
    _launch_bwd(
        (cdiv(dim, block_d), batch),
        u, delta, A, Bf, Cf, Dc, z, biasc, states, dout, dhT, dh, du, ddelta, dz, sums,
        batch, dim, length, dstate, per_group, groups, n_chunks,
        *u.stride(), *delta.stride(), *zz.stride(), *dout.stride(),
        *A.stride(), *_bc_strides(Bf), *_bc_strides(Cf),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
        HAS_DHT=dhT is not None,
        BLOCK_D=block_d, SEGS=segs, ITEMS=items, BLOCK_N=next_power_of_2(dstate),
        **_launch_options(num_warps, maxnreg),
    )
    B_dtype, C_dtype = bc_dtypes or (B.dtype, C.dtype)
    dBC = sums[:2 * dBC_size].view(2, batch, groups, dstate, padded_length)[..., :length]
    if B_dtype == C_dtype:
        dB, dC = dBC.to(B_dtype)
    else:
        dB, dC = dBC[0].to(B_dtype), dBC[1].to(C_dtype)
    if B.dim() == 3:
        dB, dC = dB[:, 0], dC[:, 0]
    dA, dD, dbias = sums[2 * dBC_size:].split([dim * dstate, dim, dim])
    return (du, ddelta, dA.view(dim, dstate), dB, dC, dD if D is not None else None, dz,
            dbias if delta_bias is not None else None, dh[2])


class SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus):
        ctx.set_materialize_grads(False)  # an unused final state needs no zeros: the kernel skips dhT
        store = any(ctx.needs_input_grad[:9])  # boundary states only when a backward can follow
        _, _, segs, items, _ = _backward_config(u.shape[1] // (1 if B.dim() == 3 else B.shape[1]))
        fwd_config = _forward_config(u.shape[1], A.shape[1])
        fwd_chunk = fwd_config[2] * fwd_config[3]
        padded_length = cdiv(u.shape[2], fwd_chunk) * fwd_chunk
        Bf, Cf = _padded_fp32(B, padded_length), _padded_fp32(C, padded_length)  # kept for the backward
        out, hT, states = _selective_scan_fwd(u, delta, A, Bf, Cf, D, z, delta_bias, initial_state, delta_softplus,
                                              store_states=store, config=fwd_config, save_every=segs * items)
        ctx.delta_softplus = delta_softplus
        ctx.has_h0 = initial_state is not None
        ctx.bc_dtypes = (B.dtype, C.dtype)
        ctx.save_for_backward(u, delta, A, Bf, Cf, D, z, delta_bias, states)
        return out, hT

    @staticmethod
    def backward(ctx, dout, dhT):
        u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = _selective_scan_bwd(
            dout, dhT, u, delta, A, B, C, D, z, delta_bias, states, ctx.delta_softplus, bc_dtypes=ctx.bc_dtypes)
        return (du, ddelta, dA.to(A.dtype), dB, dC, dD.to(D.dtype) if dD is not None else None, dz,
                dbias.to(delta_bias.dtype) if dbias is not None else None, dh0 if ctx.has_h0 else None, None)


def selective_scan_triton(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                          z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                          return_last_state: bool = False, initial_state: Tensor | None = None):
    """Selective scan on the GPU (or under TRITON_INTERPRET=1).

    u, delta, z:    (batch, dim, length) float16 / bfloat16 / float32, any strides
    A:              (dim, state) real fp32
    B, C:           (batch, state, length) or (batch, groups, state, length)
    D, delta_bias:  (dim,) fp32
    initial_state:  (batch, dim, state), the state before step 0
    Returns out (batch, dim, length) in u's dtype, and with `return_last_state` also the final
    state (batch, dim, state) fp32.
    """
    _check_dtypes(u=u, delta=delta, B=B, C=C, z=z)
    if u.shape[2] == 0:
        out = u.new_empty(u.shape)
        last = (initial_state.float().clone() if initial_state is not None
                else u.new_zeros(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float32))
        return (out, last) if return_last_state else out
    out, last = SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus)
    return (out, last) if return_last_state else out
