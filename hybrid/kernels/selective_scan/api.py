"""The public selective scan: input checks and the one place where a backend is chosen.

Backends (STYLE 9): "triton" (GPU kernels, `triton_scan.py`), "torch" (PyTorch with a hand-written
backward, `torch_scan.py`: one multiply-add a step each way, everything else vectorised over the
length), "ref" (sequential, `reference.py`, autograd through every step: the oracle). "auto" means
Triton for CUDA tensors and "torch" on the CPU, where it measured 1.3-5.3x as fast as the
reference forward and backward (benchmarks/results/selective_scan_cpu_x86_64.md). The environment variable
HYBRID_SCAN_BACKEND replaces "auto" for a whole run (for ablations and debugging).
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor

from hybrid.kernels.backend_choice import load_backend, requested_backend

BACKENDS = ("auto", "triton", "torch", "ref")
ENV_VAR = "HYBRID_SCAN_BACKEND"

# backend name -> (module, function) for the full scan and for the decoding step
_SCAN = {"triton": ("hybrid.kernels.selective_scan.triton_scan", "selective_scan_triton"),
         "torch": ("hybrid.kernels.selective_scan.torch_scan", "selective_scan_torch"),
         "ref": ("hybrid.kernels.selective_scan.reference", "selective_scan_ref")}
_STEP = {"triton": ("hybrid.kernels.selective_scan.triton_step", "selective_state_update_triton"),
         "torch": ("hybrid.kernels.selective_scan.reference", "selective_state_update_ref"),
         "ref": ("hybrid.kernels.selective_scan.reference", "selective_state_update_ref")}


def resolve_backend(backend: str, is_cuda: bool) -> str:
    """The concrete backend for a request: 'auto' (or the environment variable) resolved by device."""
    backend = requested_backend(backend, BACKENDS, ENV_VAR, "selective scan")
    if backend == "auto":
        backend = "triton" if is_cuda else "torch"
    return backend


def _load(table: dict, backend: str) -> Callable:
    return load_backend(table, backend, "selective scan")


def _check_dtypes(where: str, **tensors) -> None:
    for name, t in tensors.items():
        if t is not None and not t.is_floating_point():
            raise TypeError(f"{where}: {name} must be a real floating-point tensor "
                            f"(float16, bfloat16, float32 or float64), got {t.dtype}")


def _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state) -> None:
    _check_dtypes("selective_scan", u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                  initial_state=initial_state)
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, dim, length), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan: z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")
    if A.dim() != 2 or A.shape[0] != dim or A.is_complex():
        raise ValueError(f"selective_scan: A must be real (dim={dim}, state), got {tuple(A.shape)} {A.dtype}")
    dstate = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        ok = (t.dim() == 3 and t.shape == (batch, dstate, length)) or (
            t.dim() == 4 and t.shape[0] == batch and t.shape[2:] == (dstate, length) and dim % t.shape[1] == 0)
        if not ok:
            raise ValueError(f"selective_scan: {name} must be (batch, state, length) = {(batch, dstate, length)} "
                             f"or (batch, groups, state, length) with groups dividing dim={dim}; "
                             f"got {tuple(t.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (dim,):
            raise ValueError(f"selective_scan: {name} must be (dim,) = ({dim},), got {tuple(t.shape)}")
    if initial_state is not None and initial_state.shape != (batch, dim, dstate):
        raise ValueError(f"selective_scan: initial_state must be (batch, dim, state) = {(batch, dim, dstate)}, "
                         f"got {tuple(initial_state.shape)}")


def _check_step_shapes(state, x, dt, A, B, C, D, z, dt_bias) -> None:
    _check_dtypes("selective_state_update", state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    if x.dim() != 2:
        raise ValueError(f"selective_state_update: x must be (batch, dim), got shape {tuple(x.shape)}")
    batch, dim = x.shape
    for name, t in (("dt", dt), ("z", z)):
        if t is not None and t.shape != x.shape:
            raise ValueError(f"selective_state_update: {name} must have x's shape {tuple(x.shape)}, "
                             f"got {tuple(t.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_state_update: A must be (dim={dim}, state), got {tuple(A.shape)}")
    dstate = A.shape[1]
    if state.shape != (batch, dim, dstate):
        raise ValueError(f"selective_state_update: state must be (batch, dim, state) = {(batch, dim, dstate)}, "
                         f"got {tuple(state.shape)}")
    for name, t in (("B", B), ("C", C)):
        ok = (t.dim() == 2 and t.shape == (batch, dstate)) or (
            t.dim() == 3 and t.shape[0] == batch and t.shape[2] == dstate and dim % t.shape[1] == 0)
        if not ok:
            raise ValueError(f"selective_state_update: {name} must be (batch, state) = {(batch, dstate)} or "
                             f"(batch, groups, state) with groups dividing dim={dim}; got {tuple(t.shape)}")
    for name, t in (("D", D), ("dt_bias", dt_bias)):
        if t is not None and t.shape != (dim,):
            raise ValueError(f"selective_state_update: {name} must be (dim,) = ({dim},), got {tuple(t.shape)}")


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False, initial_state: Tensor | None = None,
                   backend: str = "auto"):
    """Mamba-1 selective scan with mamba_ssm's semantics and shapes.

    u, delta, z:    (batch, dim, length), any float dtype
    A:              (dim, state), real fp32, negative for a stable system
    B, C:           (batch, state, length) or (batch, groups, state, length), groups dividing dim
    D, delta_bias:  (dim,) fp32
    initial_state:  (batch, dim, state) fp32, the state before step 0
    Returns out (batch, dim, length) in u's dtype, and with `return_last_state` also the final
    state (batch, dim, state) fp32. Differentiable in every tensor input.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state)
    fn = _load(_SCAN, resolve_backend(backend, u.is_cuda))
    return fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
              return_last_state=return_last_state, initial_state=initial_state)


def selective_state_update(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                           D: Tensor | None = None, z: Tensor | None = None, dt_bias: Tensor | None = None,
                           dt_softplus: bool = False, backend: str = "auto") -> Tensor:
    """One decoding step; updates `state` (batch, dim, state) in place and returns y (batch, dim).

    x, dt, z: (batch, dim); A: (dim, state); B, C: (batch, state) or (batch, groups, state);
    D, dt_bias: (dim,).
    """
    _check_step_shapes(state, x, dt, A, B, C, D, z, dt_bias)
    fn = _load(_STEP, resolve_backend(backend, state.is_cuda))
    return fn(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)
