"""SSD in chunks, in PyTorch (the CPU path; autograd gives the backward).

The sequence is cut into chunks of Q steps (Dao & Gu 2024, section 6). With a_t = dt_t A and
a-hat the cumulative sum of a within a chunk:

    inside a chunk   y_i += sum_{j<=i} (C_i . B_j) exp(a-hat_i - a-hat_j) dt_j x_j     the quadratic
                                                                                       (attention-like) form
    chunk state      s_c  = sum_j exp(a-hat_Q - a-hat_j) dt_j x_j B_j^T                 (P, N) per head
    state passing    S_c  = exp(a-hat_Q of chunk c) S_{c-1} + s_c                       one step per chunk
    from the past    y_i += exp(a-hat_i) C_i S_{c-1}

Work is O(L Q (N + P)) per head instead of the recurrence's O(L N P) sequential steps, in large
batched matmuls. Groups: heads h = g r share B and C of group g, so (C . B) is computed once per
group. Packed documents (seq_idx, non-decreasing along the length): every term that would cross a
document boundary is masked to zero, which is the recurrence's reset of the state. A length that is
not a multiple of Q is padded at the end with dt = 0 steps, which neither decay nor add to the state.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hybrid.kernels.ssd.reference import discretize_dt, skip_term


def _pad(t: Tensor | None, pad: int, replicate: bool = False) -> Tensor | None:
    """Pad dim 1 (the length) by `pad` steps: zeros, or the last value (document ids)."""
    if t is None or pad == 0:
        return t
    tail = t[:, -1:].expand(-1, pad, *t.shape[2:]) if replicate else t.new_zeros(t.shape[0], pad, *t.shape[2:])
    return torch.cat([t, tail], dim=1)


def ssd_chunked(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int = 256,
                D: Tensor | None = None, z: Tensor | None = None, dt_bias: Tensor | None = None,
                dt_softplus: bool = False, dt_limit: tuple[float, float] = (0.0, float("inf")),
                initial_states: Tensor | None = None, seq_idx: Tensor | None = None,
                return_final_states: bool = False):
    """The chunked SSD; shapes and semantics as `hybrid.kernels.ssd.ssd`. Every product runs in fp32,
    autocast or not (its bf16 matmuls would round the state carried from chunk to chunk)."""
    with torch.autocast(x.device.type, enabled=False):
        return _ssd_chunked(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit, initial_states,
                            seq_idx, return_final_states)


def _ssd_chunked(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit, initial_states, seq_idx,
                 return_final_states):
    batch, length, heads, headdim = x.shape
    groups, n = B.shape[2], B.shape[3]
    r = heads // groups  # heads per group
    q = min(chunk_size, length)
    pad = (-length) % q
    dtf = discretize_dt(dt, dt_bias, dt_softplus, dt_limit)  # (batch, length, heads)
    xdt = x.float() * dtf[..., None]  # dt_j x_j: (batch, length, heads, P)
    xdt, dtf, Bf, Cf = (_pad(t, pad) for t in (xdt, dtf, B.float(), C.float()))
    seq = _pad(seq_idx, pad, replicate=True)
    c = (length + pad) // q
    xdt = xdt.view(batch, c, q, groups, r, headdim)  # (b, c, Q, g, r, P)
    Bf, Cf = Bf.view(batch, c, q, groups, n), Cf.view(batch, c, q, groups, n)  # (b, c, Q, g, N)
    a = (dtf * A.float()).view(batch, c, q, groups, r)  # a_t = dt_t A
    a_cs = a.cumsum(dim=2)  # (b, c, Q, g, r)

    # inside each chunk: decay from j to i, masked above the diagonal and across documents
    seg = a_cs[:, :, :, None] - a_cs[:, :, None]  # (b, c, Q_i, Q_j, g, r)
    keep = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()[None, None, :, :, None, None]
    if seq is not None:
        s = seq.view(batch, c, q)
        keep = keep & (s[:, :, :, None] == s[:, :, None, :])[..., None, None]
    decay = torch.exp(seg.masked_fill(~keep, float("-inf")))  # (b, c, Q_i, Q_j, g, r)
    cb = torch.einsum("bcign,bcjgn->bcijg", Cf, Bf)  # (b, c, Q_i, Q_j, g)
    y = torch.einsum("bcijgr,bcjgrp->bcigrp", cb[..., None] * decay, xdt)  # (b, c, Q, g, r, P)

    # each chunk's own state, then the states passed from chunk to chunk
    to_end = torch.exp(a_cs[:, :, -1:] - a_cs)  # (b, c, Q, g, r): decay from j to the chunk's end
    if seq is not None:
        to_end = to_end * (s == s[:, :, -1:])[..., None, None]
    chunk_states = torch.einsum("bcjgn,bcjgr,bcjgrp->bcgrpn", Bf, to_end, xdt)  # (b, c, g, r, P, N)
    state = (initial_states.float().reshape(batch, groups, r, headdim, n) if initial_states is not None else
             x.new_zeros(batch, groups, r, headdim, n, dtype=torch.float32))
    chunk_decay = torch.exp(a_cs[:, :, -1])  # (b, c, g, r): across a whole chunk
    previous = []  # the state entering each chunk
    for k in range(c):
        previous.append(state)
        carry = chunk_decay[:, k]
        if seq is not None:  # the state carries on only if the chunk ends in the document it began in
            before = s[:, k - 1, -1] if k > 0 else s[:, 0, 0]
            carry = carry * (s[:, k, -1] == before).float()[:, None, None]
        state = carry[..., None, None] * state + chunk_states[:, k]
    previous = torch.stack(previous, dim=1)  # (b, c, g, r, P, N)

    # what the state entering each chunk contributes to its outputs
    from_start = torch.exp(a_cs)  # (b, c, Q, g, r): decay from the chunk's start to i
    if seq is not None:
        first = torch.cat([s[:, :1, :1], s[:, :-1, -1:]], dim=1)  # (b, c, 1): the document before each chunk
        from_start = from_start * (s == first)[..., None, None]
    y = y + torch.einsum("bcign,bcgrpn,bcigr->bcigrp", Cf, previous, from_start)

    y = y.reshape(batch, c * q, heads, headdim)[:, :length] + skip_term(D, x.float())
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(x.dtype)
    final = state.view(batch, heads, headdim, n)
    return (y, final) if return_final_states else y
