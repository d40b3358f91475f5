"""Selective scan in PyTorch with a hand-written backward: the fast path on the CPU.

The recurrence (reference.py) is sequential in the length, but only its one multiply-add is:

    a_t = exp(dt_t A),   b_t = dt_t u_t B_t                      (every step at once)
    h_t = a_t h_{t-1} + b_t                                      (one addcmul a step, in place)
    y_t = sum_n C_t[n] h_t[n]                                    (every step at once)

and the backward has one sequential multiply-add too, the state gradient run in reverse,

    dh_t = C_t g_t + a_{t+1} dh_{t+1}          (g = dL/dy; dh past the end: the final state's gradient)

after which every parameter's gradient is a vectorised product over all steps, with h_{t-1} the state
before step t and the log-decay gradient s_t = dh_t a_t h_{t-1}:

    d dt_t = sum_n (s_t A + dh_t B_t u_t),   du_t = dt_t sum_n dh_t B_t,   dA = sum_{b,t} s_t dt_t,
    dB_t   = sum_d dh_t dt_t u_t,            dC_t = sum_d g_t h_t,         dh_init = a_0 dh_0.

Autograd through the reference records ~6 ops a step and keeps every step's state as its own tensor
(a 128-step scan of 128 channels and batch 128 stacked 134 MB tensors in its backward); here a step
costs one kernel each way, over (length, batch, groups, channels, state) buffers whose step slices
are contiguous. Long inputs are cut into blocks of the length that pass their state on; the backward
recomputes a block's states from the state entering it (kept by the forward), so the memory held
for the backward is the inputs plus one state per block; an input of one block (the usual training
shape at small widths, e.g. batch 128 x 128 steps of 128 channels; a 1536-channel layer at batch 8
has blocks of 85 steps) keeps its decays and states from the forward instead, two (length, batch, dim,
state) buffers saved through save_for_backward (so saved-tensor hooks and checkpointing see them),
and the backward recomputes nothing. No double backward (it raises). Real A, fp32 arithmetic (fp64 inputs stay
fp64), also under autocast.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hybrid.kernels.selective_scan.reference import compute_dtype, step_sizes

# Elements of one (block, batch, dim, state) buffer; about 64 MiB in fp32. A few such buffers are
# live at once in the backward.
BLOCK_ELEMENTS = 1 << 24


def _block_states(a: Tensor, bu: Tensor, h: Tensor) -> Tensor:
    """h_t = a_t h_{t-1} + bu_t over a block: a, bu (T, b, g, p, n); h (b, g, p, n) entering -> H (T, b, g, p, n)."""
    H = torch.empty_like(bu)
    for t in range(bu.shape[0]):
        h = torch.addcmul(bu[t], a[t], h, out=H[t])
    return H


def _block_inputs(dt: Tensor, u: Tensor, A: Tensor, B: Tensor):
    """a = exp(dt A) and bu = dt u B of a block: dt, u (T, b, g, p); A (g, p, n); B (T, b, g, n)."""
    a = torch.exp(dt[..., None] * A)  # (T, b, g, p, n)
    bu = (dt * u)[..., None] * B[:, :, :, None, :]
    return a, bu


class _ScanCore(torch.autograd.Function):
    """(dt, u (L, b, g, p); A (g, p, n); B, C (L, b, g, n); h0 (b, g, p, n)) -> y (L, b, g, p), last state."""

    @staticmethod
    def forward(ctx, dt, u, A, B, C, h0, block):
        ys, entering, h = [], [], h0
        keep = None
        for start in range(0, dt.shape[0], block):
            sl = slice(start, start + block)
            a, bu = _block_inputs(dt[sl], u[sl], A, B[sl])
            entering.append(h)
            H = _block_states(a, bu, h)
            ys.append(torch.matmul(H, C[sl][..., None])[..., 0])  # sum_n h_t C_t: (T, b, g, p)
            h = H[-1].clone()
            keep = (a, H) if start == 0 and dt.shape[0] <= block else None  # one block: no recompute
        y = torch.cat(ys) if ys else dt.new_zeros(dt.shape)
        h = h.clone() if h is h0 else h  # an empty length: the output must not be the input itself
        ctx.one_block = keep is not None
        ctx.save_for_backward(dt, u, A, B, C, *(keep or ()), *entering)  # through the saved-tensor hooks
        ctx.block = block
        return y, h

    @staticmethod
    def backward(ctx, dy, dlast):
        if torch.is_grad_enabled():  # create_graph: this backward is not itself differentiable
            raise RuntimeError("selective_scan backend 'torch' has no double backward; use backend='ref' for "
                               "higher-order gradients")
        dt, u, A, B, C, *rest = ctx.saved_tensors
        with torch.autocast(dt.device.type, enabled=False):  # a backward called under autocast: still fp32
            return _ScanCore._backward(ctx, dy, dlast, dt, u, A, B, C, rest)

    @staticmethod
    def _backward(ctx, dy, dlast, dt, u, A, B, C, rest):
        keep, entering = (tuple(rest[:2]), rest[2:]) if ctx.one_block else (None, rest)
        length = dt.shape[0]
        ddt, du, dB, dC = (torch.empty_like(t) for t in (dt, u, B, C))
        dA = torch.zeros_like(A)
        carry = dlast  # dL/dh at the block's last step (autograd materialises zeros for an unused final state)
        starts = list(range(0, length, ctx.block))
        for i in reversed(range(len(starts))):
            sl = slice(starts[i], starts[i] + ctx.block)
            h_in = entering[i]
            if keep is not None:
                a, H = keep
            else:
                a, bu = _block_inputs(dt[sl], u[sl], A, B[sl])
                H = _block_states(a, bu, h_in)
            g = dy[sl]  # (T, b, g, p)
            dH = (g[..., None] * C[sl][:, :, :, None, :])  # C_t g_t, then the reverse recurrence in place
            dH[-1] += carry
            for t in range(dH.shape[0] - 2, -1, -1):
                torch.addcmul(dH[t], a[t + 1], dH[t + 1], out=dH[t])
            carry = a[0] * dH[0]
            # the contractions as batched matrix products over (T, b, g), each big operand read in place
            dHB = torch.matmul(dH, B[sl][..., None])[..., 0]  # sum_n dh_t B_t: (T, b, g, p)
            dB[sl] = torch.matmul((dt[sl] * u[sl])[..., None, :], dH)[..., 0, :]  # sum_p: (T, b, g, n)
            # s_t = dh_t a_t h_{t-1}, the log-decay's gradient, in dH's buffer (dH is not needed again;
            # a and H, possibly saved tensors, stay as they are)
            s = dH.mul_(a)
            s[1:].mul_(H[:-1])
            s[0].mul_(h_in)
            ddt[sl] = (s * A).sum(-1) + dHB * u[sl]
            du[sl] = dHB * dt[sl]
            dA += (s * dt[sl][..., None]).sum((0, 1))
            dC[sl] = torch.matmul(g[..., None, :], H)[..., 0, :]
        return ddt, du, dA, dB, dC, carry, None


def selective_scan_torch(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                         z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                         return_last_state: bool = False, initial_state: Tensor | None = None):
    """The scan with a hand-written backward (see the module header). Shapes as `hybrid.kernels.selective_scan`."""
    dtype_in = u.dtype
    ct = compute_dtype(u)
    batch, dim, length = u.shape
    dstate = A.shape[1]
    u_c, delta = u.to(ct), step_sizes(delta, delta_bias, delta_softplus, ct)
    groups = 1 if B.dim() == 3 else B.shape[1]
    per_group = dim // groups

    def steps_first(t: Tensor) -> Tensor:  # (batch, dim, length) -> (length, batch, groups, per_group)
        return t.permute(2, 0, 1).reshape(length, batch, groups, per_group)

    def bc(t: Tensor) -> Tensor:  # (batch, [groups,] state, length) -> (length, batch, groups, state)
        return (t if t.dim() == 4 else t[:, None]).to(ct).permute(3, 0, 1, 2)

    h0 = (initial_state.to(ct).view(batch, groups, per_group, dstate) if initial_state is not None
          else u_c.new_zeros(batch, groups, per_group, dstate))
    block = max(1, BLOCK_ELEMENTS // max(1, batch * dim * dstate))
    # autocast off: its bf16 matmuls would round y and hand the backward a bf16 dy beside fp32 states
    with torch.autocast(u.device.type, enabled=False):
        y, last = _ScanCore.apply(steps_first(delta).contiguous(), steps_first(u_c).contiguous(),
                                  A.to(ct).view(groups, per_group, dstate), bc(B).contiguous(), bc(C).contiguous(),
                                  h0, block)
    y = y.reshape(length, batch, dim).permute(1, 2, 0)  # (batch, dim, length)
    if D is not None:
        y = y + u_c * D.to(ct)[:, None]
    if z is not None:
        y = y * F.silu(z.to(ct))
    out = y.to(dtype_in)
    return (out, last.reshape(batch, dim, dstate)) if return_last_state else out
