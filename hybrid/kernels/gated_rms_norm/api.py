"""The public gated RMSNorm (Mamba-2's norm before out_proj): the one place where its backend is chosen.

Backends (STYLE 9): "triton" (`triton_gated_rms_norm.py`, one kernel each way), "torch" (the
reference under activation checkpointing, `reference.py`). "auto" is "triton" on CUDA and "torch" on
the CPU and under torch.compile (a Triton launch is a graph break there, and the PyTorch ops compile
with their neighbours); HYBRID_GATED_NORM_BACKEND replaces "auto" for a run.
"""
from __future__ import annotations

import os
from typing import Callable

import torch
from torch import Tensor

from hybrid.kernels.backend_choice import load_backend, requested_backend

BACKENDS = ("auto", "triton", "torch")
ENV_VAR = "HYBRID_GATED_NORM_BACKEND"
TRITON_MAX_G = 16384  # triton_gated_rms_norm.MAX_G, repeated so that choosing a backend imports no Triton
_TABLE = {"triton": ("hybrid.kernels.gated_rms_norm.triton_gated_rms_norm", "gated_rms_norm_triton"),
          "torch": ("hybrid.kernels.gated_rms_norm.reference", "gated_rms_norm_torch")}
_LOADED: dict = {}  # backend name -> function


def resolve_backend(backend: str, is_cuda: bool, group_size: int, compiling: bool = False) -> str:
    backend = requested_backend(backend, BACKENDS, ENV_VAR, "gated_rms_norm")
    if backend == "auto":
        backend = "triton" if is_cuda and not compiling else "torch"
    if backend == "triton" and ((not is_cuda and os.environ.get("TRITON_INTERPRET") != "1")
                                or group_size > TRITON_MAX_G):
        backend = "torch"  # the Triton pass needs a GPU (or the interpreter) and one group per tile
    return backend


def gated_rms_norm(x: Tensor, z: Tensor | None, weight: Tensor, eps: float = 1e-5, group_size: int | None = None,
                   norm_before_gate: bool = False, backend: str = "auto",
                   dz_into: Callable[[], Tensor] | None = None) -> Tensor:
    """Gated RMSNorm over groups of channels: rmsnorm(x silu(z)) w, or rmsnorm(x) w silu(z) with
    `norm_before_gate` (z None: a grouped RMSNorm).

    x: (..., d), any float dtype, which y keeps; z: x's shape or None; weight: (d,); group_size divides
    d (None: d). The norm is computed in fp32. Inputs may be views with any row strides. dz_into: None,
    or a callable returning the tensor (z's shape and dtype) to write z's gradient into: the triton
    backend's backward writes there, the torch one returns its own (`hybrid.kernels.grad_sink`)."""
    d = x.shape[-1]
    group_size = group_size or d
    if z is not None and z.shape != x.shape:
        raise ValueError(f"gated_rms_norm: z {tuple(z.shape)} and x {tuple(x.shape)} must have one shape")
    if weight.shape != (d,):
        raise ValueError(f"gated_rms_norm: weight must be ({d},), got {tuple(weight.shape)}")
    if group_size < 1 or d % group_size:
        raise ValueError(f"gated_rms_norm: group_size {group_size} must divide the {d} channels")
    name = resolve_backend(backend, x.is_cuda, group_size, torch.compiler.is_compiling())
    fn = _LOADED.get(name) or _LOADED.setdefault(name, load_backend(_TABLE, name, "gated_rms_norm"))
    if name == "triton" and dz_into is not None:
        return fn(x, z, weight, eps, group_size, norm_before_gate, dz_into)
    return fn(x, z, weight, eps, group_size, norm_before_gate)
