"""Linear projections between the two layouts of a Mamba layer, without transposing copies.

The residual stream is token-major, (batch, length, features); the scan and the causal conv are
channel-major, (batch, channels, length) with the length contiguous. `torch.matmul` and `nn.Linear`
reach one layout from the other through a transposed view, and copy it: forward (matmul's output,
Linear's input) and again backward. In a training step of the 130M Mamba model on an H100 (batch
8 x 2048, d_model 768) those copies were 11 per layer, ~155 us each, about a fifth of the step.

Here every projection is a batched matmul whose weight is broadcast over the batch (stride 0: no
copy), reading and writing both layouts directly (cuBLAS takes either operand transposed). The
weight's gradient is the batch's per-row products summed in fp32. Under autocast the matmuls run in
its dtype, as nn.Linear's would.

Under torch.compile the projections are plain F.linear and a transpose, which the compiler lays out
itself: traced by Dynamo, the autograd Functions below (an `out=` matmul into views of one buffer)
gave wrong gradients for the input and the weight on an H200 (torch 2.11; tests/training/test_compile.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _compute_dtype(x: Tensor) -> torch.dtype:
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


def _sum_over_batch(per_row: Tensor) -> Tensor:
    """The weight's gradient: per-row products summed in fp32 (fp64 for fp64)."""
    return per_row.sum(0, dtype=torch.promote_types(per_row.dtype, torch.float32))


def _check(name: str, x: Tensor, features_dim: int, weight: Tensor) -> None:
    if x.dim() != 3 or x.shape[features_dim] != weight.shape[1]:
        layout = "(batch, length, in)" if features_dim == 2 else "(batch, in, length)"
        raise ValueError(f"{name}: input must be {layout} with in = {weight.shape[1]} (the weight is "
                         f"{tuple(weight.shape)}), got {tuple(x.shape)}")


def _batched(weight: Tensor, batch: int) -> Tensor:
    return weight.expand(batch, *weight.shape)  # stride 0 over the batch


class _TokensToChannels(torch.autograd.Function):
    """(batch, length, in) -> `chunks` tensors (batch, out / chunks, length), each contiguous."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, chunks: int):
        dtype = _compute_dtype(h)
        h, weight = h.to(dtype), weight.to(dtype)
        ctx.save_for_backward(h, weight)
        ctx.chunks = chunks
        batch, length, _ = h.shape
        parts = weight.chunk(chunks)
        out = torch.empty((chunks, batch, parts[0].shape[0], length), device=h.device, dtype=dtype)
        for part, w in zip(out, parts):  # straight into the halves of one buffer: no chunk, no cat
            torch.bmm(_batched(w, batch), h.transpose(1, 2), out=part)
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):
        h, weight = ctx.saved_tensors
        batch = h.shape[0]
        parts = weight.chunk(ctx.chunks)
        grads = [g.to(h.dtype) for g in grads]  # autograd passes zeros for an unused output
        dh = dw = None
        if ctx.needs_input_grad[0]:  # sum_k W_k^T g_k, as (batch, length, in): contiguous token-major
            dh = torch.bmm(grads[0].transpose(1, 2), _batched(parts[0], batch))
            for g, w in zip(grads[1:], parts[1:]):
                dh = torch.baddbmm(dh, g.transpose(1, 2), _batched(w, batch))
        if ctx.needs_input_grad[1]:
            dw = torch.cat([_sum_over_batch(torch.bmm(g, h)) for g in grads])
        return dh, dw, None


class _ChannelsToTokens(torch.autograd.Function):
    """(batch, in, length) -> (batch, length, out), contiguous."""

    @staticmethod
    def forward(ctx, y: Tensor, weight: Tensor):
        dtype = _compute_dtype(y)
        y, weight = y.to(dtype), weight.to(dtype)
        ctx.save_for_backward(y, weight)
        return torch.bmm(y.transpose(1, 2), _batched(weight.t(), y.shape[0]))

    @staticmethod
    def backward(ctx, grad: Tensor):
        y, weight = ctx.saved_tensors
        grad = grad.to(y.dtype)
        dy = dw = None
        if ctx.needs_input_grad[0]:  # W^T g^T, as (batch, in, length): contiguous channel-major
            dy = torch.bmm(_batched(weight.t(), y.shape[0]), grad.transpose(1, 2))
        if ctx.needs_input_grad[1]:
            dw = _sum_over_batch(torch.bmm(grad.transpose(1, 2), y.transpose(1, 2)))
        return dy, dw


def tokens_to_channels(h: Tensor, weight: Tensor, bias: Tensor | None = None, chunks: int = 1) -> tuple[Tensor, ...]:
    """h @ weight^T + bias for h (batch, length, in), returned channel-major: the output channels split
    into `chunks` equal parts, each (batch, out / chunks, length) and contiguous."""
    _check("tokens_to_channels", h, 2, weight)
    if torch.compiler.is_compiling():
        return tuple(o.contiguous() for o in F.linear(h, weight, bias).transpose(1, 2).chunk(chunks, dim=1))
    outs = _TokensToChannels.apply(h, weight, chunks)
    if bias is not None:
        outs = tuple(o + b[:, None].to(o.dtype) for o, b in zip(outs, bias.chunk(chunks)))
    return outs


def channels_to_tokens(y: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y^T @ weight^T + bias for y (batch, in, length), returned token-major (batch, length, out)."""
    _check("channels_to_tokens", y, 1, weight)
    if torch.compiler.is_compiling():
        return F.linear(y.transpose(1, 2), weight, bias)
    out = _ChannelsToTokens.apply(y, weight)
    return out + bias.to(out.dtype) if bias is not None else out


def channels_to_channels(x: Tensor, weight: Tensor) -> Tensor:
    """weight @ x for x (batch, in, length) with any strides whose length stride is 1: (batch, out, length),
    contiguous. Plain autograd: its backward is channel-major too."""
    _check("channels_to_channels", x, 1, weight)
    dtype = _compute_dtype(x)
    return torch.bmm(_batched(weight.to(dtype), x.shape[0]), x.to(dtype))
