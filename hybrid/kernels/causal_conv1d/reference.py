"""Causal depthwise 1-D convolution in PyTorch: the oracle, the F.conv1d path and the decoding step.

For batch b, channel d, step t and a filter of width W (the last tap, k = W - 1, reads x_t):

    pre_t = bias + sum_{k<W} w[k] x_{t-W+1+k}      x_s for s < 0: initial_states[s + W - 1], else 0
    out_t = silu(pre_t)                             (activation "silu" / "swish"; else out_t = pre_t)

With seq_idx (packed documents) a tap counts only where seq_idx at its input equals seq_idx[t], so no
output sees a token of another document; initial states are then not allowed (api.py checks).
Arithmetic is fp32 (fp64 for fp64 inputs); the output has x's dtype.

`causal_conv1d_ref` builds every window explicitly (pad, unfold, mask, sum): slow in memory
(width copies of x), obviously correct, the oracle of the tests. `causal_conv1d_torch` is the
PyTorch backend: one depthwise F.conv1d, or width masked shifted products when documents are packed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SILU_NAMES = ("silu", "swish")


def compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _finish(pre: Tensor, bias: Tensor | None, activation: str | None, dtype: torch.dtype) -> Tensor:
    if bias is not None:
        pre = pre + bias.to(pre.dtype)[:, None]
    return (F.silu(pre) if activation in SILU_NAMES else pre).to(dtype)


def causal_conv1d_ref(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None,
                      initial_states: Tensor | None = None, seq_idx: Tensor | None = None) -> Tensor:
    """Every window written out. Shapes as `hybrid.kernels.causal_conv1d.causal_conv1d`."""
    ct = compute_dtype(x)
    batch, dim, length = x.shape
    width = weight.shape[1]
    past = (initial_states.to(ct) if initial_states is not None
            else x.new_zeros((batch, dim, width - 1), dtype=ct))
    padded = torch.cat([past, x.to(ct)], dim=-1)  # (batch, dim, width - 1 + length)
    windows = padded.unfold(-1, width, 1)  # (batch, dim, length, width): [..., t, k] = x_{t-W+1+k}
    if seq_idx is not None:
        # the padding's ids are irrelevant: x is zero there (no initial states with seq_idx)
        ids = torch.cat([seq_idx[:, :1].expand(batch, width - 1), seq_idx], dim=-1)
        same = ids.unfold(-1, width, 1) == seq_idx[..., None]  # (batch, length, width)
        windows = windows * same[:, None]
    pre = (windows * weight.to(ct)[:, None, :]).sum(-1)  # (batch, dim, length)
    return _finish(pre, bias, activation, x.dtype)


def causal_conv1d_torch(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None,
                        initial_states: Tensor | None = None, seq_idx: Tensor | None = None) -> Tensor:
    """The PyTorch backend: a depthwise F.conv1d (groups = dim), in fp32. Packed documents instead sum
    width shifted products, each masked where the shift crosses a document boundary."""
    ct = compute_dtype(x)
    dim, width = weight.shape
    length = x.shape[-1]
    xc, w = x.to(ct), weight.to(ct)
    if seq_idx is None:
        b = bias.to(ct) if bias is not None else None
        if initial_states is not None:
            pre = F.conv1d(torch.cat([initial_states.to(ct), xc], dim=-1), w[:, None, :], b, groups=dim)
        else:  # zero padding on both sides; the width - 1 outputs past the end are dropped
            pre = F.conv1d(xc, w[:, None, :], b, padding=width - 1, groups=dim)[..., :length]
        return _finish(pre, None, activation, x.dtype)
    pre = xc * w[:, width - 1, None]  # shift 0: x_t itself, always in t's document
    for shift in range(1, min(width, length)):  # x_{t-shift} feeds tap W - 1 - shift
        same = (seq_idx[:, shift:] == seq_idx[:, :-shift])[:, None]  # (batch, 1, length - shift)
        term = xc[..., :-shift] * w[:, width - 1 - shift, None] * same
        pre = pre + F.pad(term, (shift, 0))
    return _finish(pre, bias, activation, x.dtype)


def causal_conv1d_update_ref(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None,
                             activation: str | None = None) -> Tensor:
    """Decoding steps, shifting `conv_state` in place.

    x: (batch, dim) or (batch, dim, steps); conv_state: (batch, dim, width - 1), the last inputs, oldest
    first; weight: (dim, width); bias: (dim,). Returns the outputs in x's shape and dtype."""
    one_step = x.dim() == 2
    if one_step:
        x = x[..., None]
    ct = compute_dtype(x)
    width = weight.shape[1]
    window = torch.cat([conv_state.to(ct), x.to(ct)], dim=-1)  # (batch, dim, width - 1 + steps)
    pre = (window.unfold(-1, width, 1) * weight.to(ct)[:, None, :]).sum(-1)  # (batch, dim, steps)
    if width > 1:
        conv_state.copy_(window[..., window.shape[-1] - (width - 1):])
    out = _finish(pre, bias, activation, x.dtype)
    return out[..., 0] if one_step else out
