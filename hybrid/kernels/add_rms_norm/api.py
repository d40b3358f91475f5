"""The public fused residual add + RMSNorm: the one place where its backend is chosen.

Backends (STYLE 9): "triton" (`triton_add_rms_norm.py`), "torch" (the add and F.rms_norm,
`reference.py`). "auto" is "triton" on CUDA where no gradient is needed (evaluation, prefill and
decoding: the forward pass measured 1.34x the PyTorch ops at 8 x 2048 rows of 768, 2.2x at rows of
2048 and 3.5x at one row, H200, benchmarks/results/add_rms_norm_nvidia_h200.md) and "torch" where
autograd records it (forward and backward together measured 0.74x at rows of 768, the width of the
~130M models, though 1.50x at 2048: eager timings that include the host's time, with the backward's
earlier tiles; to be measured again from a CUDA graph, `bench_add_rms_norm.py`), and under
torch.compile (a Triton launch is a graph break there); HYBRID_NORM_BACKEND replaces "auto" for a run.
"""
from __future__ import annotations

import os

import torch
from torch import Tensor

from hybrid.kernels.backend_choice import load_backend, requested_backend

BACKENDS = ("auto", "triton", "torch")
ENV_VAR = "HYBRID_NORM_BACKEND"
TRITON_MAX_D = 16384  # triton_add_rms_norm.MAX_D, repeated so that choosing a backend imports no Triton
_TABLE = {"triton": ("hybrid.kernels.add_rms_norm.triton_add_rms_norm", "add_rms_norm_triton"),
          "torch": ("hybrid.kernels.add_rms_norm.reference", "add_rms_norm_ref")}
_LOADED: dict = {}  # backend name -> function: every sublayer calls this, every step


def resolve_backend(backend: str, is_cuda: bool, d: int, needs_grad: bool = True) -> str:
    backend = requested_backend(backend, BACKENDS, ENV_VAR, "add_rms_norm")
    if backend == "auto":
        backend = "torch" if needs_grad or not is_cuda else "triton"
    if backend == "triton" and ((not is_cuda and os.environ.get("TRITON_INTERPRET") != "1") or d > TRITON_MAX_D):
        backend = "torch"  # the Triton pass needs a GPU (or the interpreter) and one tile per row
    return backend


def add_rms_norm(out: Tensor | None, residual: Tensor, weight: Tensor, eps: float = 1e-5,
                 backend: str = "auto") -> tuple[Tensor, Tensor]:
    """residual + out, and its RMSNorm: (normed, new residual).

    out: (..., d) any float dtype, or None (normalise `residual` alone); residual: (..., d), whose
    dtype the new residual and the normed output keep; weight: (d,). The norm is computed in fp32.
    """
    d = residual.shape[-1]
    if out is not None and out.shape != residual.shape:
        raise ValueError(f"add_rms_norm: out {tuple(out.shape)} and residual {tuple(residual.shape)} must have one shape")
    if weight.shape != (d,):
        raise ValueError(f"add_rms_norm: weight must be ({d},), got {tuple(weight.shape)}")
    needs_grad = torch.is_grad_enabled() and (residual.requires_grad or weight.requires_grad
                                              or (out is not None and out.requires_grad))
    # under torch.compile the PyTorch ops compile with their neighbours; a Triton launch would break the graph
    name = resolve_backend(backend, residual.is_cuda, d, needs_grad or torch.compiler.is_compiling())
    fn = _LOADED.get(name) or _LOADED.setdefault(name, load_backend(_TABLE, name, "add_rms_norm"))
    return fn(out, residual, weight, eps)

