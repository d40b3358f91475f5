"""Causal depthwise conv1d, decoding steps in Triton, shifting the conv state in place.

With v = [conv_state (W - 1 values, oldest first), x (steps values)] for one channel:

    out_t     = act(bias + sum_{k<W} w[k] v[t + k])       t < steps
    new state = v[steps .. steps + W - 2]                 (the last W - 1 inputs)

One program owns (batch row, BLOCK_D channels) and everything about them: it reads the state and
the new inputs, writes the outputs, and only then (after a barrier: a replicated lane may still be
reading a state entry another overwrites) the shifted state. One launch replaces the cat, product,
sum, bias, SiLU and copy of the PyTorch step; at decoding's batch sizes the step is launch-bound.
Arithmetic is fp32; the state keeps its dtype (it may be fp32 while x is bf16).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from hybrid.kernels.launch import FastLauncher, cdiv, next_power_of_2


@triton.jit
def _window_at(x_rows, state_rows, i, mask_d, s_x_l, s_c_k, KEEP: tl.constexpr):
    # v[i] in fp32: the state for i < W - 1 (= KEEP), then x
    from_state = tl.load(state_rows + i * s_c_k, mask=mask_d & (i < KEEP), other=0.0).to(tl.float32)
    from_x = tl.load(x_rows + (i - KEEP) * s_x_l, mask=mask_d & (i >= KEEP), other=0.0).to(tl.float32)
    return tl.where(i < KEEP, from_state, from_x)


@triton.jit
def _causal_conv1d_update_kernel(
    x_ptr, state_ptr, w_ptr, bias_ptr, out_ptr,
    dim, steps,
    s_x_b, s_x_d, s_x_l, s_c_b, s_c_d, s_c_k, s_w_d, s_w_k, s_bias, s_o_b, s_o_d, s_o_l,
    WIDTH: tl.constexpr, SILU: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    KEEP: tl.constexpr = WIDTH - 1
    offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    b = tl.program_id(1).to(tl.int64)
    mask_d = offs_d < dim
    x_rows = x_ptr + b * s_x_b + offs_d * s_x_d
    state_rows = state_ptr + b * s_c_b + offs_d * s_c_d
    bias = tl.zeros((BLOCK_D,), tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d * s_bias, mask=mask_d, other=0.0).to(tl.float32)
    for t in range(0, steps):
        acc = bias
        for k in tl.static_range(WIDTH):
            w = tl.load(w_ptr + offs_d * s_w_d + k * s_w_k, mask=mask_d, other=0.0).to(tl.float32)
            acc += w * _window_at(x_rows, state_rows, t + k, mask_d, s_x_l, s_c_k, KEEP)
        if SILU:
            acc = acc * tl.sigmoid(acc)
        tl.store(out_ptr + b * s_o_b + offs_d * s_o_d + t * s_o_l, acc.to(out_ptr.dtype.element_ty), mask=mask_d)
    if KEEP > 0:
        j = tl.arange(0, BLOCK_K)[None, :]  # (1, BLOCK_K): the new state's entries
        mask = mask_d[:, None] & (j < KEEP)
        new = _window_at(x_rows[:, None], state_rows[:, None], steps + j, mask, s_x_l, s_c_k, KEEP)
        tl.debug_barrier()  # every read of the old state is done
        tl.store(state_rows[:, None] + j * s_c_k, new.to(state_ptr.dtype.element_ty), mask=mask)


_launch_update = FastLauncher(_causal_conv1d_update_kernel)


def causal_conv1d_update_triton(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None,
                                activation: str | None = None) -> Tensor:
    """Decoding steps; shifts `conv_state` in place and returns the outputs.

    x: (batch, dim) or (batch, dim, steps); conv_state: (batch, dim, width - 1), any float dtype and
    strides; weight: (dim, width); bias: (dim,). Returns the outputs in x's shape and dtype.
    """
    one_step = x.dim() == 2
    x3 = x[..., None] if one_step else x  # (batch, dim, steps)
    batch, dim, steps = x3.shape
    width = weight.shape[1]
    out = torch.empty((batch, dim, steps), device=x.device, dtype=x.dtype)
    block_d = max(1, min(next_power_of_2(dim), 256))
    bb = bias if bias is not None else weight
    _launch_update(
        (cdiv(dim, block_d), batch),
        x3, conv_state, weight, bb, out,
        dim, steps,
        *x3.stride(), *conv_state.stride(), *weight.stride(), bb.stride(0), *out.stride(),
        WIDTH=width, SILU=activation in ("silu", "swish"), HAS_BIAS=bias is not None, BLOCK_D=block_d,
        BLOCK_K=next_power_of_2(max(width - 1, 1)), num_warps=4,
    )
    return out[..., 0] if one_step else out
