"""The public SSD (Mamba-2) scan: input checks and the one place where a backend is chosen.

Backends (STYLE 9): "triton" (chunked SSD kernels forward and backward, `triton_ssd.py`; CUDA, or
the CPU under TRITON_INTERPRET=1), "torch" (chunked PyTorch, `chunked.py`; autograd backward) and
"ref" (the sequential recurrence, `reference.py`). "auto" is "triton" on CUDA and "torch" on the CPU.
The environment variable HYBRID_SSD_BACKEND replaces "auto" for a whole run.

The decoding step (`ssd_state_update`): "triton" (`triton_step.py`, CUDA or the interpreter; what
"auto" picks on CUDA) or "ref" (the PyTorch reference; "auto" elsewhere).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from hybrid.kernels.backend_choice import load_backend, requested_backend
from hybrid.kernels.ssd.reference import ssd_state_update_ref

BACKENDS = ("auto", "triton", "torch", "ref")
ENV_VAR = "HYBRID_SSD_BACKEND"
NO_LIMIT = (0.0, float("inf"))

_SCAN = {"triton": ("hybrid.kernels.ssd.triton_ssd", "ssd_triton"),
         "torch": ("hybrid.kernels.ssd.chunked", "ssd_chunked"),
         "ref": ("hybrid.kernels.ssd.reference", "ssd_ref")}


def resolve_backend(backend: str, cuda: bool = False) -> str:
    """The concrete backend for a request: 'auto' (or the environment variable) is "triton" on CUDA, else "torch"."""
    backend = requested_backend(backend, BACKENDS, ENV_VAR, "SSD")
    return ("triton" if cuda else "torch") if backend == "auto" else backend


def _load(backend: str) -> Callable:
    return load_backend(_SCAN, backend, "SSD")


def _check(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
           dt_bias: Tensor | None, initial_states: Tensor | None, seq_idx: Tensor | None, chunk_size: int) -> None:
    where = "ssd"
    if x.dim() != 4:
        raise ValueError(f"{where}: x must be (batch, length, heads, headdim), got {tuple(x.shape)}")
    batch, length, heads, headdim = x.shape
    if dt.shape != (batch, length, heads):
        raise ValueError(f"{where}: dt must be (batch, length, heads) = {(batch, length, heads)}, got {tuple(dt.shape)}")
    if A.shape != (heads,):
        raise ValueError(f"{where}: A must be (heads,) = ({heads},), got {tuple(A.shape)}")
    if B.dim() != 4 or B.shape[:2] != (batch, length) or B.shape != C.shape:
        raise ValueError(f"{where}: B and C must both be (batch, length, groups, d_state) with batch {batch} and "
                         f"length {length}, got {tuple(B.shape)} and {tuple(C.shape)}")
    if heads % B.shape[2]:
        raise ValueError(f"{where}: groups ({B.shape[2]}) must divide heads ({heads})")
    if D is not None and D.shape not in ((heads,), (heads, headdim)):
        raise ValueError(f"{where}: D must be (heads,) or (heads, headdim), got {tuple(D.shape)}")
    if z is not None and z.shape != x.shape:
        raise ValueError(f"{where}: z must have x's shape {tuple(x.shape)}, got {tuple(z.shape)}")
    if dt_bias is not None and dt_bias.shape != (heads,):
        raise ValueError(f"{where}: dt_bias must be (heads,), got {tuple(dt_bias.shape)}")
    if initial_states is not None and initial_states.shape != (batch, heads, headdim, B.shape[3]):
        raise ValueError(f"{where}: initial_states must be (batch, heads, headdim, d_state) = "
                         f"{(batch, heads, headdim, B.shape[3])}, got {tuple(initial_states.shape)}")
    if seq_idx is not None and (seq_idx.shape != (batch, length) or seq_idx.is_floating_point()):
        raise ValueError(f"{where}: seq_idx must be (batch, length) = {(batch, length)} integer document ids, "
                         f"got {tuple(seq_idx.shape)} {seq_idx.dtype}")
    if chunk_size < 1:
        raise ValueError(f"{where}: chunk_size must be >= 1, got {chunk_size}")
    if length == 0:
        raise ValueError(f"{where}: x has no steps (length 0)")


def ssd(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int = 256, D: Tensor | None = None,
        z: Tensor | None = None, dt_bias: Tensor | None = None, dt_softplus: bool = False,
        dt_limit: tuple[float, float] = NO_LIMIT, initial_states: Tensor | None = None,
        seq_idx: Tensor | None = None, return_final_states: bool = False, backend: str = "auto"):
    """Mamba-2's selective state-space scan (SSD), mamba_ssm's `mamba_chunk_scan_combined` interface.

    x:       (batch, length, heads, headdim)       the inputs, any float dtype
    dt:      (batch, length, heads)                the steps, before dt_bias / softplus / dt_limit
    A:       (heads,)                              negative decay rates (fp32)
    B, C:    (batch, length, groups, d_state)      groups divide heads; head h uses group h // (heads / groups)
    D:       (heads,) or (heads, headdim), or None the skip connection
    z:       like x, or None                       the gate: y *= silu(z)
    dt_bias: (heads,) or None; dt_softplus: apply softplus to dt + dt_bias; dt_limit: clamp of the result
    initial_states: (batch, heads, headdim, d_state) or None, the state before step 0
    seq_idx: (batch, length) int, non-decreasing document ids of packed sequences: each document
             starts from a zero state (the initial state reaches the first one only)
    chunk_size: steps per chunk of the chunked algorithm (any length works; the last chunk is padded)
    Returns y (batch, length, heads, headdim) in x's dtype, and with `return_final_states` also the
    final state (batch, heads, headdim, d_state) fp32. Differentiable in every float input.
    """
    _check(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, chunk_size)
    fn = _load(resolve_backend(backend, x.is_cuda))
    return fn(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
              dt_limit=tuple(dt_limit), initial_states=initial_states, seq_idx=seq_idx,
              return_final_states=return_final_states)


def unpack_xbc(xbc: Tensor, shape: tuple[int, int, int, int], where: str) -> tuple[Tensor, Tensor, Tensor]:
    """Views x (batch, length, heads, headdim), B and C (batch, length, groups, d_state) of xbc, which holds
    them side by side along its last axis; shape = (heads, headdim, groups, d_state)."""
    heads, headdim, groups, dstate = shape
    d_x, gn = heads * headdim, groups * dstate
    if xbc.dim() != 3 or xbc.shape[2] != d_x + 2 * gn:
        raise ValueError(f"{where}: xbc must be (batch, length, heads * headdim + 2 * groups * d_state) = "
                         f"(., ., {d_x + 2 * gn}) for (heads, headdim, groups, d_state) {tuple(shape)}, "
                         f"got {tuple(xbc.shape)}")
    return (xbc[..., :d_x].unflatten(-1, (heads, headdim)), xbc[..., d_x:d_x + gn].unflatten(-1, (groups, dstate)),
            xbc[..., d_x + gn:].unflatten(-1, (groups, dstate)))


def ssd_packed(xbc: Tensor, dt: Tensor, A: Tensor, shape: tuple[int, int, int, int], chunk_size: int = 256,
               D: Tensor | None = None, z: Tensor | None = None, dt_bias: Tensor | None = None,
               dt_softplus: bool = False, dt_limit: tuple[float, float] = NO_LIMIT,
               initial_states: Tensor | None = None, seq_idx: Tensor | None = None,
               return_final_states: bool = False, backend: str = "auto"):
    """`ssd` of x, B and C held side by side in xbc (batch, length, heads headdim + 2 groups d_state), as
    Mamba-2's convolution returns them; shape = (heads, headdim, groups, d_state). The Triton backend
    takes them as views and writes their gradients into one tensor of xbc's shape (three split views
    passed to `ssd` would have their gradients concatenated by autograd); the others split and call `ssd`."""
    x, B, C = unpack_xbc(xbc, shape, "ssd_packed")
    backend = resolve_backend(backend, xbc.is_cuda)
    options = dict(chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=tuple(dt_limit),
                   initial_states=initial_states, seq_idx=seq_idx, return_final_states=return_final_states)
    if backend != "triton":
        return ssd(x, dt, A, B, C, backend=backend, **options)
    _check(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, chunk_size)
    from hybrid.kernels.ssd.triton_ssd import ssd_triton_packed  # noqa: PLC0415

    return ssd_triton_packed(xbc, dt, A, tuple(shape), **options)


def ssd_state_update(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                     z: Tensor | None = None, dt_bias: Tensor | None = None, dt_softplus: bool = False,
                     dt_limit: tuple[float, float] = NO_LIMIT, backend: str = "auto") -> Tensor:
    """One decoding step of `ssd`, updating `state` (batch, heads, headdim, d_state) fp32 in place.
    x, z: (batch, heads, headdim); dt: (batch, heads); B, C: (batch, groups, d_state). Returns y like x.
    backend: "triton" (`triton_step.py`; CUDA or the interpreter), "ref", or "auto" (triton on CUDA, else ref)."""
    if state.dtype != torch.float32:
        raise TypeError(f"ssd_state_update: the state must be float32, got {state.dtype}")
    if x.dim() != 3 or state.shape[:3] != x.shape or dt.shape != x.shape[:2] or B.shape != C.shape \
            or B.dim() != 3 or B.shape[0] != x.shape[0] or B.shape[2] != state.shape[3]:
        raise ValueError(f"ssd_state_update: need state (batch, heads, headdim, d_state), x (batch, heads, headdim), "
                         f"dt (batch, heads), B and C (batch, groups, d_state); got state {tuple(state.shape)}, "
                         f"x {tuple(x.shape)}, dt {tuple(dt.shape)}, B {tuple(B.shape)}, C {tuple(C.shape)}")
    if backend not in ("auto", "triton", "ref"):
        raise ValueError(f"ssd_state_update: backend must be auto, triton or ref, got {backend!r}")
    if backend == "triton" or (backend == "auto" and state.is_cuda):
        from hybrid.kernels.ssd.triton_step import ssd_state_update_triton  # noqa: PLC0415

        return ssd_state_update_triton(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, tuple(dt_limit))
    return ssd_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, tuple(dt_limit))
