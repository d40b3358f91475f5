"""State-space duality (Mamba-2, Dao & Gu 2024): the sequential recurrence, the oracle of the SSD kernels.

Per head h (headdim P, state N), with the head's group g = h // (heads / groups) supplying B and C:

    dt_t   = clamp(softplus(dt_t + dt_bias), dt_limit)       (softplus only with dt_softplus)
    S_t    = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T           S: (P, N), A a scalar per head
    y_t    = S_t C_t + D x_t                                  D per head or per channel (P)
    y_t   *= silu(z_t)                                        when z is given

A new document (seq_idx[t] != seq_idx[t-1]) starts from S = 0; `initial_states` is the state before
t = 0 (it reaches the first document only). The state is fp32 whatever the inputs' dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def discretize_dt(dt: Tensor, dt_bias: Tensor | None, dt_softplus: bool,
                  dt_limit: tuple[float, float]) -> Tensor:
    """dt (batch, length, heads) -> the step used by the recurrence, fp32."""
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    if dt_limit != (0.0, float("inf")):
        dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    return dt


def expand_groups(t: Tensor, heads: int) -> Tensor:
    """(batch, length, groups, N) -> (batch, length, heads, N): each group serves heads / groups heads."""
    return t.repeat_interleave(heads // t.shape[2], dim=2)


def skip_term(D: Tensor | None, x: Tensor) -> Tensor | float:
    """D x with D (heads,) or (heads, headdim); x (..., heads, headdim) fp32."""
    if D is None:
        return 0.0
    D = D.float()
    return x * (D[:, None] if D.dim() == 1 else D)


def ssd_ref(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
            z: Tensor | None = None, dt_bias: Tensor | None = None, dt_softplus: bool = False,
            dt_limit: tuple[float, float] = (0.0, float("inf")), initial_states: Tensor | None = None,
            seq_idx: Tensor | None = None, return_final_states: bool = False, chunk_size: int | None = None):
    """The recurrence one step at a time. Shapes as `hybrid.kernels.ssd.ssd` (`chunk_size` is
    accepted and ignored: there are no chunks); returns y in x's dtype, and the final state
    (batch, heads, headdim, N) fp32 with `return_final_states`."""
    batch, length, heads, headdim = x.shape
    xf = x.float()
    dtf = discretize_dt(dt, dt_bias, dt_softplus, dt_limit)  # (batch, length, heads)
    Bf, Cf = expand_groups(B.float(), heads), expand_groups(C.float(), heads)  # (batch, length, heads, N)
    state = (initial_states.float() if initial_states is not None else
             x.new_zeros(batch, heads, headdim, B.shape[-1], dtype=torch.float32))
    ys = []
    for t in range(length):
        decay = torch.exp(dtf[:, t] * A.float())  # (batch, heads)
        if seq_idx is not None and t > 0:
            decay = decay * (seq_idx[:, t] == seq_idx[:, t - 1]).float()[:, None]  # a new document: forget
        update = (dtf[:, t, :, None] * xf[:, t])[..., None] * Bf[:, t, :, None, :]  # (batch, heads, P, N)
        state = decay[:, :, None, None] * state + update
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Cf[:, t]))
    y = torch.stack(ys, dim=1) + skip_term(D, xf)  # (batch, length, heads, headdim)
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(x.dtype)
    return (y, state) if return_final_states else y


def ssd_state_update_ref(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                         D: Tensor | None = None, z: Tensor | None = None, dt_bias: Tensor | None = None,
                         dt_softplus: bool = False, dt_limit: tuple[float, float] = (0.0, float("inf"))) -> Tensor:
    """One decoding step, updating `state` (batch, heads, headdim, N) in place.
    x (batch, heads, headdim), dt (batch, heads), B, C (batch, groups, N), z like x; returns y like x.
    The recurrence's step written directly: few ops, as eager decoding is bound by the host."""
    heads = x.shape[1]
    dtf = discretize_dt(dt, dt_bias, dt_softplus, dt_limit)  # (batch, heads)
    Bh = B.float().repeat_interleave(heads // B.shape[1], dim=1)  # (batch, heads, N)
    Ch = C.float().repeat_interleave(heads // C.shape[1], dim=1)
    xf = x.float()
    state.mul_(torch.exp(dtf * A.float())[..., None, None]).add_((dtf[..., None] * xf)[..., None] * Bh[:, :, None, :])
    y = (state @ Ch[..., None])[..., 0] + skip_term(D, xf)  # (batch, heads, headdim)
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(x.dtype)
