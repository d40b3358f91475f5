"""The public causal conv1d: input checks and the one place where a backend is chosen.

Backends (STYLE 9): "triton" (GPU kernels, `triton_conv.py`, `triton_update.py`), "torch" (one
depthwise F.conv1d, `reference.py`), "ref" (every window written out, `reference.py`). "auto" means
Triton for CUDA tensors of a dtype and width it takes (float16 / bfloat16 / float32, width <= 8),
and the F.conv1d path otherwise. The environment variable HYBRID_CONV_BACKEND replaces "auto" for
a whole run (for ablations and debugging).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from hybrid.kernels.backend_choice import load_backend, requested_backend

BACKENDS = ("auto", "triton", "torch", "ref")
ENV_VAR = "HYBRID_CONV_BACKEND"
ACTIVATIONS = (None, "silu", "swish")
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TRITON_MAX_WIDTH = 8  # triton_conv.MAX_WIDTH, repeated so that choosing a backend imports no Triton

# backend name -> (module, function) for the convolution and for the decoding step
_CONV = {"triton": ("hybrid.kernels.causal_conv1d.triton_conv", "causal_conv1d_triton"),
         "torch": ("hybrid.kernels.causal_conv1d.reference", "causal_conv1d_torch"),
         "ref": ("hybrid.kernels.causal_conv1d.reference", "causal_conv1d_ref")}
_UPDATE = {"triton": ("hybrid.kernels.causal_conv1d.triton_update", "causal_conv1d_update_triton"),
           "torch": ("hybrid.kernels.causal_conv1d.reference", "causal_conv1d_update_ref"),
           "ref": ("hybrid.kernels.causal_conv1d.reference", "causal_conv1d_update_ref")}


def resolve_backend(backend: str, is_cuda: bool, dtype: torch.dtype = torch.float32, width: int = 4) -> str:
    """The concrete backend for a request: 'auto' (or the environment variable) resolved by device,
    dtype and filter width."""
    backend = requested_backend(backend, BACKENDS, ENV_VAR, "causal conv1d")
    if backend == "auto":
        backend = "triton" if is_cuda and dtype in TRITON_DTYPES and width <= TRITON_MAX_WIDTH else "torch"
    return backend


def _load(table: dict, backend: str) -> Callable:
    return load_backend(table, backend, "causal conv1d")


def _check_params(where: str, x: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None) -> int:
    """Checks shared by the convolution and the step; returns the width."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"{where}: activation must be None, 'silu' or 'swish', got {activation!r}")
    if not x.is_floating_point() or x.is_complex():
        raise TypeError(f"{where}: x must be a real floating-point tensor, got {x.dtype}")
    dim = x.shape[1]
    if weight.dim() != 2 or weight.shape[0] != dim or weight.shape[1] < 1:
        hint = " (an nn.Conv1d weight (dim, 1, width) is passed as weight[:, 0])" if weight.dim() == 3 else ""
        raise ValueError(f"{where}: weight must be (dim, width) = ({dim}, width >= 1), got "
                         f"{tuple(weight.shape)}{hint}")
    if bias is not None and bias.shape != (dim,):
        raise ValueError(f"{where}: bias must be (dim,) = ({dim},), got {tuple(bias.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype not in (x.dtype, torch.float32):
            raise TypeError(f"{where}: {name} must have x's dtype ({x.dtype}) or be float32 (parameters kept "
                            f"in fp32 under mixed precision), got {t.dtype}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{where}: {name} is on {t.device} but x is on {x.device}")
    return weight.shape[1]


def _check_conv(x, weight, bias, activation, initial_states, seq_idx) -> None:
    where = "causal_conv1d"
    if x.dim() != 3:
        raise ValueError(f"{where}: x must be (batch, dim, length), got shape {tuple(x.shape)}")
    width = _check_params(where, x, weight, bias, activation)
    batch, dim, length = x.shape
    if not (x.stride(2) == 1 or length == 1 or x.stride(1) == 1 or dim == 1):
        raise ValueError(f"{where}: x needs the length (stride(2) == 1) or the channels (stride(1) == 1) "
                         f"contiguous, got strides {x.stride()} for shape {tuple(x.shape)}; pass x.contiguous()")
    if initial_states is not None and seq_idx is not None:
        raise ValueError(f"{where}: initial_states and seq_idx cannot both be given: with packed documents "
                         f"every document starts from zeros (split the batch, or drop initial_states)")
    if initial_states is not None:
        if initial_states.shape != (batch, dim, width - 1):
            raise ValueError(f"{where}: initial_states must be (batch, dim, width - 1) = {(batch, dim, width - 1)}, "
                             f"got {tuple(initial_states.shape)}")
        if initial_states.dtype != x.dtype:
            raise TypeError(f"{where}: initial_states must have x's dtype {x.dtype} (they are earlier inputs), "
                            f"got {initial_states.dtype}")
    if seq_idx is not None:
        if seq_idx.shape != (batch, length):
            raise ValueError(f"{where}: seq_idx must be (batch, length) = {(batch, length)}, "
                             f"got {tuple(seq_idx.shape)}")
        if seq_idx.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{where}: seq_idx must be int32 (or int64) document ids, got {seq_idx.dtype}")


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None,
                  initial_states: Tensor | None = None, seq_idx: Tensor | None = None,
                  backend: str = "auto", dx_into: Callable[[], Tensor] | None = None) -> Tensor:
    """Causal depthwise 1-D convolution, optionally followed by SiLU (the `causal-conv1d` interface).

        out[b, d, t] = act(bias[d] + sum_{k<width} weight[d, k] x[b, d, t - width + 1 + k])

    x:              (batch, dim, length), float; the length (stride(2) == 1) or the channels
                    (stride(1) == 1, a transposed (batch, length, dim) tensor) contiguous
    weight:         (dim, width); x's dtype or fp32 (nn.Conv1d's (dim, 1, width) weight is weight[:, 0])
    bias:           (dim,) or None, as weight
    activation:     None, "silu" or "swish" (the same)
    initial_states: (batch, dim, width - 1) in x's dtype, the inputs before step 0 (the cached conv
                    state), or None for zeros
    seq_idx:        (batch, length) int32 document ids of packed sequences, or None: out at t then
                    only uses inputs s <= t with seq_idx[s] == seq_idx[t]. Not with initial_states.
    dx_into:        None, or a callable returning the tensor (x's shape and dtype) to write x's gradient
                    into: the triton backend's backward writes there, the others return their own
                    (`hybrid.kernels.grad_sink`, which works with either)
    Returns out (batch, dim, length) in x's dtype (fp32 arithmetic; the triton backend keeps x's
    layout). Differentiable in x, weight, bias and initial_states.
    """
    _check_conv(x, weight, bias, activation, initial_states, seq_idx)
    if x.shape[2] == 0:
        return x.clone()  # no steps: nothing to convolve (F.conv1d and the kernels take no empty input)
    name = resolve_backend(backend, x.is_cuda, x.dtype, weight.shape[1])
    extra = {"dx_into": dx_into} if name == "triton" and dx_into is not None else {}
    return _load(_CONV, name)(x, weight, bias, activation=activation, initial_states=initial_states,
                              seq_idx=seq_idx, **extra)


def causal_conv1d_update(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None,
                         activation: str | None = None, backend: str = "auto") -> Tensor:
    """Decoding: the convolution's next output(s) from the cached inputs, shifting the cache in place.

    x:          (batch, dim) one step, or (batch, dim, steps) a few
    conv_state: (batch, dim, width - 1) the last inputs, oldest first, any float dtype (updated in
                place to the last width - 1 inputs after x)
    weight:     (dim, width); bias: (dim,) or None; activation: None, "silu" or "swish"
    Returns the outputs in x's shape and dtype; equal to the last steps of `causal_conv1d` over the
    whole sequence.
    """
    where = "causal_conv1d_update"
    if x.dim() not in (2, 3):
        raise ValueError(f"{where}: x must be (batch, dim) or (batch, dim, steps), got shape {tuple(x.shape)}")
    width = _check_params(where, x, weight, bias, activation)
    batch, dim = x.shape[:2]
    if conv_state.shape != (batch, dim, width - 1):
        raise ValueError(f"{where}: conv_state must be (batch, dim, width - 1) = {(batch, dim, width - 1)}, "
                         f"got {tuple(conv_state.shape)}")
    if not conv_state.is_floating_point():
        raise TypeError(f"{where}: conv_state must be a floating-point tensor, got {conv_state.dtype}")
    fn = _load(_UPDATE, resolve_backend(backend, x.is_cuda, x.dtype, width))
    return fn(x, conv_state, weight, bias, activation=activation)


def causal_conv1d_continue(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None,
                           activation: str | None = None, backend: str = "auto") -> Tensor:
    """`causal_conv1d` of x continuing a sequence whose last inputs `conv_state` caches, leaving in it
    the last width - 1 inputs after x: prefill from a state, chunked prefill and decoding steps alike.

    x:          (batch, dim, length), length >= 1, a layout `causal_conv1d` takes
    conv_state: (batch, dim, width - 1), oldest first, updated in place
    weight:     (dim, width); bias: (dim,) or None; activation: None, "silu" or "swish"
    Returns (batch, dim, length) in x's dtype.
    """
    if x.dim() != 3 or weight.dim() != 2 or conv_state.shape != (x.shape[0], x.shape[1], weight.shape[-1] - 1):
        raise ValueError(f"causal_conv1d_continue: need x (batch, dim, length), weight (dim, width) and conv_state "
                         f"(batch, dim, width - 1); got x {tuple(x.shape)}, weight {tuple(weight.shape)}, "
                         f"conv_state {tuple(conv_state.shape)}")
    length, keep = x.shape[-1], conv_state.shape[-1]
    if length == 1:  # a decoding step: the update kernel shifts the cache in place
        return causal_conv1d_update(x, conv_state, weight, bias, activation=activation, backend=backend)
    past = conv_state.to(x.dtype)  # the inputs before x
    out = causal_conv1d(x, weight, bias, activation=activation, initial_states=past, backend=backend)
    conv_state.copy_(torch.cat([past[..., min(length, keep):], x[..., max(length - keep, 0):]], dim=-1))
    return out
