"""Selective scan: every backend against the sequential reference (reference.py).

Without a GPU the Triton kernels run under TRITON_INTERPRET=1 at small shapes (set below, before
any Triton kernel is defined); with one they run compiled on the same cases. Tests marked `cuda`
use realistic shapes against a float64 reference.
"""
import importlib
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hybrid.kernels.selective_scan import (resolve_backend, selective_scan, selective_scan_ref,  # noqa: E402
                                           selective_scan_torch, selective_state_update, selective_state_update_ref)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def make_inputs(batch, dim, length, dstate, groups=None, z=True, D=True, bias=True, h0=True, dtype=torch.float32,
                device=DEV, softplus=True):
    """Random inputs in mamba_ssm's shapes; A < 0 and delta around softplus's knee, as in a trained model.
    Without softplus delta (+ bias) stays positive, as the step size must (else exp(dt A) > 1 grows)."""
    bc = (batch, dstate, length) if groups is None else (batch, groups, dstate, length)
    delta = 0.5 * torch.randn(batch, dim, length, device=device) - 1.0
    return {
        "u": torch.randn(batch, dim, length, device=device).to(dtype),
        "delta": (delta if softplus else torch.nn.functional.softplus(delta)).to(dtype),
        "A": -(0.1 + 2.0 * torch.rand(dim, dstate, device=device)),
        "B": torch.randn(bc, device=device).to(dtype),
        "C": torch.randn(bc, device=device).to(dtype),
        "D": torch.randn(dim, device=device) if D else None,
        "z": torch.randn(batch, dim, length, device=device).to(dtype) if z else None,
        "delta_bias": (0.5 * torch.randn(dim, device=device) if softplus else 0.1 * torch.rand(dim, device=device))
        if bias else None,
        "initial_state": torch.randn(batch, dim, dstate, device=device) if h0 else None,
    }


def run(fn, inputs, softplus, cast=None, grads=None, **kw):
    """out, final state and the gradient of every tensor input for loss = <out, g_out> + <last, g_last>."""
    leaves = {k: (None if v is None else (v.to(cast) if cast else v).detach().clone().requires_grad_())
              for k, v in inputs.items()}
    out, last = fn(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], D=leaves["D"],
                   z=leaves["z"], delta_bias=leaves["delta_bias"], delta_softplus=softplus, return_last_state=True,
                   initial_state=leaves["initial_state"], **kw)
    if grads is None:
        grads = (torch.randn_like(out, dtype=torch.float64), torch.randn_like(last, dtype=torch.float64))
    ((out.double() * grads[0]).sum() + (last.double() * grads[1]).sum()).backward()
    return out, last, {k: v.grad for k, v in leaves.items() if v is not None}, grads


def rel(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def compare(fn, inputs, softplus, tol, **kw):
    """fn on float32 (or the inputs' dtype) against the float64 reference: ||x - ref|| / ||ref|| <= tol."""
    o_ref, l_ref, g_ref, grads = run(selective_scan_ref, inputs, softplus, cast=torch.float64)
    out, last, g, _ = run(fn, inputs, softplus, grads=grads, **kw)
    assert out.dtype == inputs["u"].dtype
    assert last.dtype == (torch.float64 if inputs["u"].dtype == torch.float64 else torch.float32)
    errs = {"out": rel(out, o_ref), "last": rel(last, l_ref)}
    errs.update({f"d{k}": rel(g[k], g_ref[k]) for k in g_ref})
    bad = {k: e for k, e in errs.items() if not e <= tol}  # `not <=` also catches NaN
    assert not bad, f"relative errors above {tol}: {bad}"


# Covering set for the kernels (not the full cross product: the interpreter pays ~1 ms per step of each
# scan, so its cost grows with batch * length * state). Each length, state size, group count and optional
# input appears at least once, on and off.
# (batch, dim, length, state, groups, z, D, bias, softplus, initial_state)
CASES = [
    pytest.param(2, 5, 1, 4, None, True, True, True, True, True, id="B2-D5-L1-N4-all"),
    pytest.param(1, 6, 7, 1, 2, False, False, False, False, False, id="B1-D6-L7-N1-G2-bare"),
    pytest.param(2, 4, 63, 16, None, True, False, False, True, False, id="B2-D4-L63-N16-z-softplus"),
    pytest.param(1, 16, 129, 4, 2, False, True, True, False, True, id="B1-D16-L129-N4-G2-D-bias-h0"),
    pytest.param(1, 3, 1000, 4, 1, True, True, True, True, True, id="B1-D3-L1000-N4-G1-all"),
    pytest.param(1, 2, 40, 64, None, True, True, False, True, True, id="B1-D2-L40-N64-z-D-softplus-h0"),
    # whole chunks (64 steps forward, 32 backward under the interpreter): B and C need no padding
    pytest.param(2, 4, 64, 4, 2, True, True, True, True, True, id="B2-D4-L64-N4-G2-all-whole-chunks"),
]

# float32 kernels against float64: the scan is a sum of <= length decayed terms in fp32 (1e-7 each),
# the gradients add a reverse scan and a sum over length or channels: 1e-5 leaves 100x headroom over
# the ~1e-7 seen, and is far below what an indexing or masking bug gives (> 1e-2).
FP32_TOL = 1e-5


@pytest.mark.parametrize("batch,dim,length,dstate,groups,z,D,bias,softplus,h0", CASES)
def test_triton_matches_reference(batch, dim, length, dstate, groups, z, D, bias, softplus, h0):
    inputs = make_inputs(batch, dim, length, dstate, groups, z, D, bias, h0, softplus=softplus)
    compare(selective_scan, inputs, softplus, FP32_TOL, backend="triton")


@pytest.mark.parametrize("length", [37, 32], ids=["padded", "whole-chunk"])
def test_triton_non_contiguous_inputs(length):
    """Strided views (length not innermost, every other channel) give the same result as contiguous copies."""
    inputs = make_inputs(2, 4, length, 4, groups=2)
    views = {}
    for k, v in inputs.items():
        if v is not None and v.dim() >= 3 and k != "initial_state":
            v = v.transpose(-1, -2).contiguous().transpose(-1, -2)  # length stride != 1
        views[k] = v
    views["u"] = torch.randn(2, 8, length, device=DEV)[:, ::2]  # channel stride 2 * length
    compare(selective_scan, views, True, FP32_TOL, backend="triton")


def test_triton_without_return_last_state_and_no_grad():
    inputs = make_inputs(1, 3, 20, 4)
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C")]
    with torch.no_grad():
        out = selective_scan(*args, D=inputs["D"], z=inputs["z"], backend="triton")
    ref = selective_scan_ref(*args, D=inputs["D"], z=inputs["z"])
    assert isinstance(out, torch.Tensor) and rel(out, ref) <= FP32_TOL


def test_triton_no_grad_over_many_chunks_keeps_the_state():
    """Without a backward the state between chunks alternates between two slots: several chunks and
    the final state check the alternation."""
    inputs = make_inputs(2, 3, 100, 4)
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C")]
    kw = dict(D=inputs["D"], z=inputs["z"], delta_bias=inputs["delta_bias"], delta_softplus=True,
              initial_state=inputs["initial_state"], return_last_state=True)
    with torch.no_grad():
        out, last = selective_scan(*args, backend="triton", **kw)
    ref, ref_last = selective_scan_ref(*args, **kw)
    assert rel(out, ref) <= FP32_TOL and rel(last, ref_last) <= FP32_TOL


@pytest.mark.parametrize("backward_config", [(4, 1, 8, 8, None), (2, 1, 16, 8, None), (1, 1, 32, 8, None),
                                             (8, 2, 8, 8, None), (4, 2, 16, 8, None)],
                         ids=["4-channels", "2-channels", "1-channel", "8-channels-2-warps", "4-channels-2-warps"])
def test_triton_gpu_tiles_under_the_interpreter(backward_config, monkeypatch):
    """The GPU's tiles on CPU-sized inputs (the interpreter otherwise only runs its own small ones): the
    forward's 256-step chunk with states saved for the backward's 64, 128 or 256-step chunks, whose
    programs sum dB and dC over 8, 4, 2 or 1 channels (the two-warp tiles are candidates of
    bench_selective_scan.py's sweep; the interpreter runs them as one program of the same tiles)."""
    from hybrid.kernels.selective_scan import triton_scan
    monkeypatch.setattr(triton_scan, "_forward_config", lambda *a: (1, 1, 32, 8, 64))
    monkeypatch.setattr(triton_scan, "_backward_config", lambda *a: backward_config)
    groups = 2 if backward_config[0] <= 4 else 1  # each B/C group a whole number of the program's channels
    compare(selective_scan, make_inputs(1, 8, 300, 4, groups=groups), True, FP32_TOL, backend="triton")


@pytest.mark.parametrize("used", ["out", "last"])
def test_triton_gradients_when_one_output_is_unused(used):
    """Autograd hands the backward None for an output the loss did not use (no zeros are materialised):
    without d last the kernel starts the adjoint at zero, without d out the launcher passes zeros."""
    inputs = make_inputs(2, 4, 70, 4, groups=2)

    def loss_grads(fn, cast=None):
        leaves = {k: (v.to(cast) if cast else v).detach().clone().requires_grad_() for k, v in inputs.items()}
        out, last = fn(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], D=leaves["D"],
                       z=leaves["z"], delta_bias=leaves["delta_bias"], delta_softplus=True, return_last_state=True,
                       initial_state=leaves["initial_state"])
        (out if used == "out" else last).double().square().sum().backward()
        return {k: v.grad for k, v in leaves.items()}

    ref = loss_grads(selective_scan_ref, cast=torch.float64)
    got = loss_grads(lambda *a, **kw: selective_scan(*a, **kw, backend="triton"))
    # the final state depends on neither C, D nor z: the reference leaves their gradients None, ours are 0
    assert all(got[k].abs().max() == 0 for k in got if ref[k] is None)
    errs = {k: rel(got[k], ref[k]) for k in ref if ref[k] is not None}
    assert len(errs) >= 6 and all(e <= FP32_TOL for e in errs.values()), errs


def test_triton_leaves_b_and_c_unchanged():
    """fp32 contiguous B and C at whole chunks reach the kernels without a copy; they must only read them."""
    from hybrid.kernels.selective_scan.triton_scan import _forward_config
    _, _, segs, items, _ = _forward_config(4, 4)
    inputs = make_inputs(1, 4, 2 * segs * items, 4, groups=2)
    B, C = inputs["B"].clone(), inputs["C"].clone()
    run(selective_scan, inputs, True, backend="triton")
    assert torch.equal(inputs["B"], B) and torch.equal(inputs["C"], C)


def test_triton_half_precision_inputs():
    """fp16 u, delta, z, B, C (converted in the launcher and the kernels): against the float64 reference
    on the same rounded inputs, the output is rounded once to fp16 (1e-3 relative)."""
    compare(selective_scan, make_inputs(1, 4, 45, 4, groups=2, dtype=torch.float16), True, 2e-3, backend="triton")


def test_triton_b_and_c_of_different_dtypes():
    """fp16 B with fp32 C: the forward's fp32 copies serve the backward, and dB, dC come back each in
    its input's dtype."""
    inputs = make_inputs(1, 4, 45, 4, groups=2)
    inputs["B"] = inputs["B"].half()
    compare(selective_scan, inputs, True, 2e-3, backend="triton")
    _, _, g, _ = run(selective_scan, inputs, True, backend="triton")
    assert g["B"].dtype == torch.float16 and g["C"].dtype == torch.float32


def test_triton_rejects_float64():
    inputs = make_inputs(1, 2, 4, 2, dtype=torch.float64)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        selective_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], backend="triton")


# ---------------------------------------------------------------------------- decoding step

@pytest.mark.parametrize("groups", [None, 2], ids=["G1", "G2"])
@pytest.mark.parametrize("full", [True, False], ids=["all", "bare"])
def test_step_matches_reference(groups, full):
    batch, dim, dstate = 3, 6, 5
    bc = (batch, dstate) if groups is None else (batch, groups, dstate)
    state = torch.randn(batch, dim, dstate, device=DEV)
    x, dt, z = (torch.randn(batch, dim, device=DEV) for _ in range(3))
    A = -torch.rand(dim, dstate, device=DEV)
    B, C = torch.randn(bc, device=DEV), torch.randn(bc, device=DEV)
    D, bias = torch.randn(dim, device=DEV), torch.randn(dim, device=DEV)
    kw = dict(D=D, z=z, dt_bias=bias, dt_softplus=True) if full else {}
    s_ref, s_tri = state.clone(), state.clone()
    y_ref = selective_state_update_ref(s_ref, x, dt, A, B, C, **kw)
    y_tri = selective_state_update(s_tri, x, dt, A, B, C, backend="triton", **kw)
    assert rel(y_tri, y_ref) <= FP32_TOL and rel(s_tri, s_ref) <= FP32_TOL


def test_step_block_is_halved_at_small_batch(monkeypatch):
    """At batch 1 on a 132-SM GPU, d_inner 1536 and state 16: 32 channels a program (48 programs, as
    mamba_ssm's step), not 64; at batch 64 the 64 stay (1,536 programs); on the CPU unchanged."""
    from hybrid.kernels.selective_scan import triton_step
    monkeypatch.setattr("hybrid.kernels.launch.sm_count", lambda device: 132)
    assert triton_step._block_d(1, 1536, 16, torch.device("cuda")) == 32
    assert triton_step._block_d(64, 1536, 16, torch.device("cuda")) == 64
    assert triton_step._block_d(1, 1536, 16, torch.device("cpu")) == 64


def test_step_non_contiguous_state_in_place():
    state = torch.randn(2, 5, 4, 3, device=DEV)[..., 0].transpose(1, 2)  # (batch, dim, state), strides (60, 3, 12)
    x, dt = torch.randn(2, 4, device=DEV), torch.rand(2, 4, device=DEV)
    A, B, C = -torch.rand(4, 5, device=DEV), torch.randn(2, 5, device=DEV), torch.randn(2, 5, device=DEV)
    expected = state.clone()
    y_ref = selective_state_update_ref(expected, x, dt, A, B, C)
    y = selective_state_update(state, x, dt, A, B, C, backend="triton")
    assert rel(state, expected) <= FP32_TOL and rel(y, y_ref) <= FP32_TOL


@pytest.mark.parametrize("backend", ["triton", "ref"])
def test_step_equals_one_step_of_the_scan(backend):
    """Prefill L steps with the scan, then one step == the scan over L + 1 steps."""
    inputs = make_inputs(2, 8, 9, 4, groups=2, h0=False)
    kw = dict(D=inputs["D"], z=inputs["z"], delta_bias=inputs["delta_bias"], delta_softplus=True)
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C")]
    full = selective_scan_ref(*args, **kw)
    part, state = selective_scan(*[a[..., :-1] if a.dim() >= 3 else a for a in args], return_last_state=True,
                                 backend=backend, **{**kw, "z": inputs["z"][..., :-1]})
    y = selective_state_update(state, inputs["u"][..., -1], inputs["delta"][..., -1], inputs["A"],
                               inputs["B"][..., -1], inputs["C"][..., -1], D=inputs["D"], z=inputs["z"][..., -1],
                               dt_bias=inputs["delta_bias"], dt_softplus=True, backend=backend)
    assert rel(y, full[..., -1]) <= FP32_TOL and rel(part, full[..., :-1]) <= FP32_TOL


# ---------------------------------------------------------------------------- PyTorch backend (hand-written backward)

# float64 against the float64 sequential reference: the same sums in another order, 1e-12 is rounding.
# float32 against float64: as FP32_TOL.
TORCH_CASES = [
    pytest.param(1, 3, 1, 4, None, True, True, True, True, True, torch.float64, id="B1-L1-N4-all-f64"),
    pytest.param(2, 5, 63, 16, None, False, False, False, False, False, torch.float64, id="B2-L63-N16-bare-f64"),
    pytest.param(1, 6, 129, 4, 2, True, False, True, True, True, torch.float64, id="B1-L129-N4-G2-f64"),
    pytest.param(1, 4, 1000, 4, 2, True, True, True, True, True, torch.float32, id="B1-L1000-N4-G2-all-f32"),
    pytest.param(1, 3, 7, 1, None, False, True, False, True, False, torch.float32, id="B1-L7-N1-D-f32"),
    pytest.param(3, 8, 33, 16, 4, True, True, True, False, True, torch.float64, id="B3-L33-N16-G4-no-softplus-f64"),
]


@pytest.mark.parametrize("batch,dim,length,dstate,groups,z,D,bias,softplus,h0,dtype", TORCH_CASES)
def test_torch_backend_matches_reference(batch, dim, length, dstate, groups, z, D, bias, softplus, h0, dtype):
    inputs = make_inputs(batch, dim, length, dstate, groups, z, D, bias, h0, dtype=dtype, device="cpu",
                         softplus=softplus)
    if dtype == torch.float64:
        inputs = {k: (v.double() if v is not None else None) for k, v in inputs.items()}
    compare(selective_scan_torch, inputs, softplus, 1e-12 if dtype == torch.float64 else FP32_TOL)


def test_torch_backend_blocks_of_the_length(monkeypatch):
    """Inputs longer than one block hand the state from block to block, and the backward recomputes
    each block's states from the state that entered it."""
    torch_scan = importlib.import_module("hybrid.kernels.selective_scan.torch_scan")
    monkeypatch.setattr(torch_scan, "BLOCK_ELEMENTS", 2 * 3 * 4 * 40)
    inputs = make_inputs(2, 3, 150, 4, device="cpu")
    inputs = {k: (v.double() if v is not None else None) for k, v in inputs.items()}
    compare(selective_scan_torch, inputs, True, 1e-12)


def test_torch_backend_with_an_empty_length_and_without_a_final_state_gradient():
    inputs = {k: (v.double() if v is not None else None) for k, v in make_inputs(2, 4, 0, 3, device="cpu").items()}
    out, last = selective_scan_torch(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"],
                                     initial_state=inputs["initial_state"], return_last_state=True)
    assert out.shape == (2, 4, 0) and torch.equal(last, inputs["initial_state"])
    inputs = make_inputs(2, 4, 9, 3, device="cpu")
    grads = []
    for fn in (selective_scan_ref, selective_scan_torch):  # only the output is used: no final-state gradient
        leaves = {k: inputs[k].clone().requires_grad_() for k in ("u", "delta", "B")}
        fn(leaves["u"], leaves["delta"], inputs["A"], leaves["B"], inputs["C"], delta_softplus=True).sum().backward()
        grads.append({k: v.grad for k, v in leaves.items()})
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU")])])
def test_torch_backend_under_bf16_autocast_computes_in_fp32(device):
    """Autocast does not reach the scan's matmuls: forward and backward under bf16 autocast give what
    they give without it (a bf16 product once rounded y and crashed the backward on a bf16 dy)."""
    inputs = make_inputs(2, 6, 33, 4, groups=2, device=device)
    out, last, g, grads = run(selective_scan_torch, inputs, True)
    with torch.autocast(device, dtype=torch.bfloat16):
        out1, last1, g1, _ = run(selective_scan_torch, inputs, True, grads=grads)
    assert out1.dtype == last1.dtype == torch.float32
    for k in ("out", "last", *g):
        x, y = {"out": (out1, out), "last": (last1, last)}.get(k) or (g1[k], g[k])
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


def test_torch_backend_refuses_a_double_backward_and_saves_through_the_hooks():
    """Its backward is not differentiable: create_graph raises instead of giving wrong second
    derivatives. Every tensor it keeps for the backward goes through save_for_backward, so saved-tensor
    hooks (checkpointing, offloading) see them all."""
    inputs = make_inputs(2, 4, 9, 3, device="cpu")
    u = inputs["u"].clone().requires_grad_()
    out = selective_scan_torch(u, inputs["delta"], inputs["A"], inputs["B"], inputs["C"], delta_softplus=True)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(out.sum(), u, create_graph=True)
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t.numel()) or t, lambda t: t):
        selective_scan_torch(u, inputs["delta"], inputs["A"], inputs["B"], inputs["C"], delta_softplus=True)
    assert sum(packed) >= 2 * 9 * 2 * 4 * 3  # the kept decays and states, (length, batch, dim, state) each


# ---------------------------------------------------------------------------- dispatcher

def test_backend_resolution(monkeypatch):
    monkeypatch.delenv("HYBRID_SCAN_BACKEND", raising=False)
    assert resolve_backend("auto", is_cuda=True) == "triton"
    assert resolve_backend("auto", is_cuda=False) == "torch"
    assert resolve_backend("torch", is_cuda=True) == "torch"
    monkeypatch.setenv("HYBRID_SCAN_BACKEND", "torch")
    assert resolve_backend("auto", is_cuda=True) == "torch"
    assert resolve_backend("ref", is_cuda=True) == "ref"  # an explicit name beats the variable
    monkeypatch.setenv("HYBRID_SCAN_BACKEND", "cuda")
    with pytest.raises(ValueError, match="HYBRID_SCAN_BACKEND"):
        resolve_backend("auto", is_cuda=True)
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("fast", is_cuda=True)


def _bad(**change):
    x = make_inputs(2, 4, 8, 3, device="cpu")
    x.update(change)
    return x


@pytest.mark.parametrize("inputs,match", [
    pytest.param(_bad(u=torch.randn(2, 4)), "u must be", id="u-2d"),
    pytest.param(_bad(delta=torch.randn(2, 4, 9)), "delta must have", id="delta-length"),
    pytest.param(_bad(z=torch.randn(2, 4, 7)), "z must have", id="z-length"),
    pytest.param(_bad(A=torch.randn(5, 3)), "A must be", id="A-dim"),
    pytest.param(_bad(B=torch.randn(2, 4, 8)), "B must be", id="B-state"),
    pytest.param(_bad(C=torch.randn(2, 3, 3, 8)), "C must be", id="C-groups-not-dividing"),
    pytest.param(_bad(D=torch.randn(3)), "D must be", id="D-size"),
    pytest.param(_bad(initial_state=torch.randn(2, 4, 4)), "initial_state must be", id="h0-state"),
    pytest.param(_bad(u=torch.zeros(2, 4, 8, dtype=torch.int32)), "floating-point", id="u-int"),
])
def test_dispatcher_rejects_bad_inputs(inputs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        selective_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], D=inputs["D"],
                       z=inputs["z"], initial_state=inputs["initial_state"], backend="torch")


def test_step_rejects_bad_shapes():
    state, x = torch.zeros(2, 4, 3), torch.zeros(2, 4)
    A, B = torch.zeros(4, 3), torch.zeros(2, 3)
    with pytest.raises(ValueError, match="state must be"):
        selective_state_update(torch.zeros(2, 4, 5), x, x, A, B, B, backend="ref")
    with pytest.raises(ValueError, match="B must be"):
        selective_state_update(state, x, x, A, torch.zeros(2, 3, 3), B, backend="ref")
    with pytest.raises(ValueError, match="dt must have"):
        selective_state_update(state, x, torch.zeros(2, 5), A, B, B, backend="ref")


# ---------------------------------------------------------------------------- GPU, realistic shapes

def _errors(out, last, g, o_ref, l_ref, g_ref):
    errs = {"out": rel(out, o_ref), "last": rel(last, l_ref)}
    errs.update({f"d{k}": rel(g[k], g_ref[k]) for k in g_ref})
    return errs


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("batch,dim,length,dstate,groups", [
    pytest.param(2, 256, 2048, 16, None, id="B2-D256-L2048-N16"),
    pytest.param(1, 192, 1000, 64, 2, id="B1-D192-L1000-N64-G2"),
    pytest.param(3, 341, 500, 16, None, id="B3-D341-L500-N16"),
])
def test_triton_gpu_against_float64(batch, dim, length, dstate, groups, dtype):
    """Kernel error against float64 <= 2 * (error of the PyTorch reference run in the same dtype) + atol.

    The reference in bf16/fp16 rounds its inputs, output and gradients the same way the kernel does,
    so its error is the floor for that dtype; the factor 2 and atol (1e-3 in fp32 terms of a relative
    norm, for gradients summed over thousands of terms) leave room for a different summation order."""
    inputs = make_inputs(batch, dim, length, dstate, groups, dtype=dtype)
    o64, l64, g64, grads = run(selective_scan_ref, inputs, True, cast=torch.float64)
    ours = _errors(*run(selective_scan, inputs, True, grads=grads, backend="triton")[:3], o64, l64, g64)
    if dtype == torch.float32:
        bad = {k: e for k, e in ours.items() if not e <= FP32_TOL}
    else:
        torch_err = _errors(*run(selective_scan_ref, inputs, True, grads=grads)[:3], o64, l64, g64)
        bad = {k: (e, torch_err[k]) for k, e in ours.items() if not e <= 2 * torch_err[k] + 1e-3}
    assert not bad, f"errors above bound: {bad}"


@pytest.mark.cuda
def test_triton_gpu_long_sequence():
    """32K steps, bf16: finite outputs and gradients, agreeing with the fp32 PyTorch backend."""
    inputs = make_inputs(1, 64, 32768, 16, dtype=torch.bfloat16)
    o_ref, l_ref, g_ref, grads = run(selective_scan_torch, inputs, True, cast=torch.float32)
    out, last, g, _ = run(selective_scan, inputs, True, grads=grads, backend="triton")
    errs = _errors(out, last, g, o_ref, l_ref, g_ref)
    assert all(torch.isfinite(t).all() for t in [out, last, *g.values()])
    # bf16 inputs, outputs and gradients: ~4e-3 rounding per element; 2e-2 on a relative norm.
    assert max(errs.values()) <= 2e-2, errs


@pytest.mark.cuda
@pytest.mark.parametrize("batch", [1, 16, 64])
def test_step_gpu_equals_scan_step(batch):
    dim, dstate = 1536, 16
    inputs = make_inputs(batch, dim, 2, dstate, h0=True)
    kw = dict(D=inputs["D"], z=inputs["z"], delta_bias=inputs["delta_bias"], delta_softplus=True)
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C")]
    out, last = selective_scan(*args, **kw, initial_state=inputs["initial_state"], return_last_state=True,
                               backend="triton")
    state = inputs["initial_state"].clone()
    y0 = selective_state_update(state, inputs["u"][..., 0], inputs["delta"][..., 0], inputs["A"],
                                inputs["B"][..., 0], inputs["C"][..., 0], D=inputs["D"], z=inputs["z"][..., 0],
                                dt_bias=inputs["delta_bias"], dt_softplus=True, backend="triton")
    y1 = selective_state_update(state, inputs["u"][..., 1], inputs["delta"][..., 1], inputs["A"],
                                inputs["B"][..., 1], inputs["C"][..., 1], D=inputs["D"], z=inputs["z"][..., 1],
                                dt_bias=inputs["delta_bias"], dt_softplus=True, backend="triton")
    assert rel(torch.stack([y0, y1], -1), out) <= FP32_TOL and rel(state, last) <= FP32_TOL


def test_triton_backward_rejects_states_saved_at_another_interval():
    # The backward restarts each chunk from a state the forward saved there; states saved at another
    # interval would silently be the wrong ones.
    from hybrid.kernels.selective_scan.triton_scan import _selective_scan_bwd, _selective_scan_fwd
    x = make_inputs(1, 4, 40, 4, D=False, z=False, bias=False, h0=False, softplus=False)
    args = [x[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    out, _, states = _selective_scan_fwd(*args, None, False, True, config=(4, 1, 8, 4, None))  # every 32 steps
    with pytest.raises(ValueError, match="save_every must be the backward's chunk length"):
        _selective_scan_bwd(torch.ones_like(out), None, *args, states, False, config=(4, 1, 2, 8, None))  # 16
    with pytest.raises(ValueError, match="must be a multiple of save_every"):
        _selective_scan_fwd(*args, None, False, True, config=(4, 1, 8, 4, None), save_every=24)
    # a program's channels share one B/C group: 2 do not divide a group of 3
    x = make_inputs(1, 6, 40, 4, groups=2, D=False, z=False, bias=False, h0=False, softplus=False)
    args = [x[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    out, _, states = _selective_scan_fwd(*args, None, False, True, config=(2, 1, 4, 8, None))
    with pytest.raises(ValueError, match="must divide the 3 channels"):
        _selective_scan_bwd(torch.ones_like(out), None, *args, states, False, config=(2, 1, 4, 8, None))
