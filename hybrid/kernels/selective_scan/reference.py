"""Selective scan (Mamba-1's S6), sequential reference in PyTorch: slow, obviously correct.

For each channel d and state index n, with dt = softplus(delta + delta_bias) (softplus optional):

    h_t[d, n] = exp(dt_t[d] * A[d, n]) * h_{t-1}[d, n] + dt_t[d] * B_t[g(d), n] * u_t[d]   (ZOH for A,
    y_t[d]    = sum_n C_t[g(d), n] * h_t[d, n] + D[d] * u_t[d]                              Euler for B;
    out_t[d]  = y_t[d] * silu(z_t[d])                          (when z is given)             Mamba eq. 4)

g(d) = d // (dim // groups) is the B/C group of channel d. State and arithmetic are fp32 (the
fp64 inputs of tests stay fp64); the output has u's dtype. This is the CPU oracle every faster
backend is tested against, and the decode-step reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def expand_groups(BC: Tensor, dim: int) -> Tensor:
    """(batch, state, length) or (batch, groups, state, length) -> (batch, dim, state, length) view."""
    if BC.dim() == 3:
        return BC.unsqueeze(1).expand(-1, dim, -1, -1)
    groups = BC.shape[1]
    return BC.repeat_interleave(dim // groups, dim=1)


def compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def step_sizes(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool, ct: torch.dtype) -> Tensor:
    """dt = delta (+ delta_bias per channel, softplus when asked) in ct; delta (batch, dim, length)."""
    delta = delta.to(ct)
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[:, None]
    return F.softplus(delta) if delta_softplus else delta


def selective_scan_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                       z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                       return_last_state: bool = False, initial_state: Tensor | None = None):
    """Sequential scan over the length. Shapes as `hybrid.kernels.selective_scan`."""
    dtype_in = u.dtype
    ct = compute_dtype(u)
    batch, dim, length = u.shape
    u, A = u.to(ct), A.to(ct)
    delta = step_sizes(delta, delta_bias, delta_softplus, ct)
    Bx = expand_groups(B.to(ct), dim)  # (batch, dim, state, length)
    Cx = expand_groups(C.to(ct), dim)
    h = (initial_state.to(ct).clone() if initial_state is not None
         else u.new_zeros(batch, dim, A.shape[1]))  # (batch, dim, state)
    # unbind once: indexing x[..., t] in the loop would cost O(length^2) in the backward pass
    steps = zip((delta[..., None] * A[:, None, :]).unbind(2),  # delta_t * A: (batch, dim, state)
                (delta * u).unbind(2), Bx.unbind(3), Cx.unbind(3))
    ys = []
    for dA_log, du, B_t, C_t in steps:
        h = torch.exp(dA_log) * h + du[..., None] * B_t
        ys.append((h * C_t).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, dim, 0)  # (batch, dim, length)
    if D is not None:
        y = y + u * D.to(ct)[:, None]
    if z is not None:
        y = y * F.silu(z.to(ct))
    out = y.to(dtype_in)
    return (out, h) if return_last_state else out


def selective_state_update_ref(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                               D: Tensor | None = None, z: Tensor | None = None,
                               dt_bias: Tensor | None = None, dt_softplus: bool = False) -> Tensor:
    """One decoding step of the scan, updating `state` in place.

    state: (batch, dim, dstate) fp32; x, dt, z: (batch, dim); A: (dim, dstate);
    B, C: (batch, dstate) or (batch, groups, dstate); D, dt_bias: (dim,). Returns y: (batch, dim).
    """
    ct = state.dtype
    dim = x.shape[1]
    dt = dt.to(ct)
    if dt_bias is not None:
        dt = dt + dt_bias.to(ct)
    if dt_softplus:
        dt = F.softplus(dt)
    Bx = expand_groups(B.to(ct)[..., None], dim)[..., 0]  # (batch, dim, dstate)
    Cx = expand_groups(C.to(ct)[..., None], dim)[..., 0]
    dA = torch.exp(dt[..., None] * A.to(ct))
    state.mul_(dA).add_((dt * x.to(ct))[..., None] * Bx)
    y = (state * Cx).sum(-1)
    if D is not None:
        y = y + x.to(ct) * D.to(ct)
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y.to(x.dtype)
