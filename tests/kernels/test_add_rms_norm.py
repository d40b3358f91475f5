"""Residual add + RMSNorm: the Triton pass and the PyTorch one against a float64 reference, forward
(normed output and new residual) and every gradient (out, residual, weight), with and without `out`.

Without a GPU the Triton kernels run under TRITON_INTERPRET=1 at small shapes (set below, before any
Triton kernel is defined); with one they run compiled on the same cases, and the `cuda` test adds a
model's shape. Tolerances (STYLE 4): float32 residuals agree with the reference to 1e-5 relative;
in bf16/fp16 the Triton error must stay within twice PyTorch's error in the same dtype plus 1e-3
(both round the normed output, the new residual and the gradients once to the narrow dtype).
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hybrid.kernels.add_rms_norm import add_rms_norm, add_rms_norm_ref, resolve_backend  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
EPS = 1e-5

CASES = [  # (shape, residual dtype, out dtype or None)
    pytest.param((1, 64), torch.float32, torch.float32, id="B1-d64-fp32"),
    pytest.param((63, 341), torch.float32, torch.bfloat16, id="rows63-d341-fp32-res-bf16-out"),
    pytest.param((2, 7, 96), torch.float32, None, id="B2-L7-d96-no-out"),
    pytest.param((5, 1000), torch.bfloat16, torch.bfloat16, id="rows5-d1000-bf16"),
    pytest.param((3, 17, 40), torch.float16, torch.float16, id="B3-L17-d40-fp16"),
    pytest.param((4, 130), torch.bfloat16, None, id="rows4-d130-bf16-no-out"),
    pytest.param((301, 32), torch.float32, torch.float32, id="rows301-d32-several-tiles-per-backward-program"),
]


def _inputs(shape, r_dtype, o_dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = shape[-1]
    residual = (torch.randn(shape, generator=g) * 2).to(DEV, r_dtype)
    out = torch.randn(shape, generator=g).to(DEV, o_dtype) if o_dtype is not None else None
    weight = (1 + 0.3 * torch.randn(d, generator=g)).to(DEV)
    grads = (torch.randn(shape, generator=g, dtype=torch.float64).to(DEV),
             torch.randn(shape, generator=g, dtype=torch.float64).to(DEV))
    return out, residual, weight, grads


def _run(fn, out, residual, weight, grads, cast=None):
    """normed, new residual and the gradients of (out, residual, weight) for <normed, g0> + <new, g1>."""
    leaves = [None if t is None else (t.to(cast) if cast else t).detach().clone().requires_grad_()
              for t in (out, residual, weight)]
    normed, new = fn(leaves[0], leaves[1], leaves[2], EPS)
    ((normed.double() * grads[0]).sum() + (new.double() * grads[1]).sum()).backward()
    return normed, new, [None if t is None else t.grad for t in leaves]


def _rel(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def _errors(fn, out, residual, weight, grads):
    n_ref, r_ref, g_ref = _run(add_rms_norm_ref, out, residual, weight, grads, cast=torch.float64)
    normed, new, g = _run(fn, out, residual, weight, grads)
    assert normed.dtype == residual.dtype and new.dtype == residual.dtype and normed.shape == residual.shape
    errs = {"normed": _rel(normed, n_ref), "new": _rel(new, r_ref)}
    errs.update({name: _rel(a, b) for name, a, b in zip(("d_out", "d_residual", "d_weight"), g, g_ref) if b is not None})
    return errs


def _triton(out, residual, weight, eps):
    return add_rms_norm(out, residual, weight, eps, backend="triton")


def _torch(out, residual, weight, eps):
    return add_rms_norm(out, residual, weight, eps, backend="torch")


@pytest.mark.parametrize("shape, r_dtype, o_dtype", CASES)
def test_triton_matches_the_reference(shape, r_dtype, o_dtype):
    out, residual, weight, grads = _inputs(shape, r_dtype, o_dtype)
    assert resolve_backend("triton", residual.is_cuda, shape[-1]) == "triton"
    ours = _errors(_triton, out, residual, weight, grads)
    if r_dtype == torch.float32 and o_dtype in (None, torch.float32):
        assert max(ours.values()) < 1e-5, ours
        return
    theirs = _errors(_torch, out, residual, weight, grads)
    for key, err in ours.items():
        assert err <= 2 * theirs[key] + 1e-3, (key, ours, theirs)


@pytest.mark.parametrize("config", [(8, 4, 4), (4, 4, 4), (16, 4, 8), (2, 8, 2)],
                         ids=["8-row-tiles", "4-row-tiles", "16-row-tiles", "2-row-tiles"])
def test_triton_backward_tiles_match_the_reference(config, monkeypatch):
    """The backward at tiles other than bwd_config's at d 600 (one row of 1024, 2 warps, 8 programs per
    SM; what `bench_add_rms_norm.py --sweep` times): 8, 4, 16 and 2 rows per tile, each program summing
    its dw tile once. (Warps and programs per SM matter on a GPU only: the interpreter runs 8 programs.)"""
    from hybrid.kernels.add_rms_norm import triton_add_rms_norm as tk
    assert tk.bwd_config(600) == (1, 2, 8) and tk.bwd_config(100) == (16, 4, 4)
    monkeypatch.setattr(tk, "bwd_config", lambda d: config)
    out, residual, weight, grads = _inputs((301, 600), torch.float32, torch.float32)
    errs = _errors(_triton, out, residual, weight, grads)
    assert max(errs.values()) < 1e-5, errs


def test_gradient_of_a_bf16_out_is_bf16_and_the_first_norm_passes_the_residual_through():
    out, residual, weight, grads = _inputs((3, 48), torch.float32, torch.bfloat16)
    normed, new, g = _run(_triton, out, residual, weight, grads)
    assert g[0].dtype == torch.bfloat16 and g[1].dtype == torch.float32
    _, new_alone, _ = _run(_triton, None, residual, weight, grads)
    assert torch.equal(new_alone, residual)  # nothing added


def test_auto_is_triton_without_gradients_on_cuda_and_bad_shapes_are_refused(monkeypatch):
    monkeypatch.delenv("HYBRID_NORM_BACKEND", raising=False)
    assert resolve_backend("auto", True, 768) == "torch"  # autograd records it: the PyTorch ops measured faster
    assert resolve_backend("auto", True, 768, needs_grad=False) == "triton"  # inference: the fused pass
    assert resolve_backend("auto", False, 768, needs_grad=False) == "torch"  # no GPU
    assert resolve_backend("triton", True, 1 << 15) == "torch"  # wider than one tile
    monkeypatch.setenv("HYBRID_NORM_BACKEND", "triton")
    assert resolve_backend("auto", True, 768) == "triton"
    r = torch.randn(2, 8)
    with pytest.raises(ValueError, match="one shape"):
        add_rms_norm(torch.randn(2, 9), r, torch.ones(8))
    with pytest.raises(ValueError, match=r"weight must be \(8,\)"):
        add_rms_norm(None, r, torch.ones(9))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_model_shape_cuda():
    """A training step's shape: 8 x 2048 rows of 768, fp32 residual, bf16 sublayer output."""
    out, residual, weight, grads = _inputs((8, 2048, 768), torch.float32, torch.bfloat16)
    ours, theirs = _errors(_triton, out, residual, weight, grads), _errors(_torch, out, residual, weight, grads)
    for key, err in ours.items():
        assert err <= 2 * theirs[key] + 1e-5, (key, ours, theirs)


def test_a_model_trained_through_the_triton_pass_matches_the_torch_pass(monkeypatch):
    """HybridLM's residual adds and pre-norms all go through add_rms_norm: the two backends give one
    model the same logits and gradients (float32)."""
    from hybrid.model import HybridLM  # noqa: PLC0415
    from hybrid.model_config import ModelConfig  # noqa: PLC0415

    torch.manual_seed(0)
    model = HybridLM(ModelConfig(d_model=32, vocab_size=64, layout="A F A F",
                                 layers={"A": {"type": "attention", "n_heads": 2}, "F": {"type": "mlp"}})).to(DEV)
    ids = torch.randint(0, 64, (2, 11), device=DEV)
    results = []
    for backend in ("torch", "triton"):
        monkeypatch.setenv("HYBRID_NORM_BACKEND", backend)
        model.zero_grad()
        logits = model(ids)
        logits.square().mean().backward()
        results.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-5)
    for a, b in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("grad_of", ["none", "out", "residual", "weight", "no_grad_mode"])
def test_auto_asks_for_the_pytorch_ops_exactly_when_autograd_records(grad_of, monkeypatch):
    import hybrid.kernels.add_rms_norm.api as api  # noqa: PLC0415

    seen = []
    real = api.resolve_backend
    monkeypatch.setattr(api, "resolve_backend", lambda *a: seen.append(a[3]) or real(*a))
    tensors = {"out": torch.randn(2, 8), "residual": torch.randn(2, 8), "weight": torch.ones(8)}
    out, residual, weight = tensors.values()
    if grad_of in tensors:
        tensors[grad_of].requires_grad_()
    if grad_of == "no_grad_mode":  # a tensor that asks for gradients, under torch.no_grad()
        out.requires_grad_()
    with torch.set_grad_enabled(grad_of != "no_grad_mode"):
        add_rms_norm(out, residual, weight)
    assert seen == [grad_of in ("out", "residual", "weight")]


def test_no_rows():
    out, residual = (torch.randn(0, 64, device=DEV, requires_grad=True) for _ in range(2))
    weight = torch.ones(64, device=DEV, requires_grad=True)
    normed, new = add_rms_norm(out, residual, weight, backend="triton")
    (normed.sum() + new.sum()).backward()
    assert normed.shape == (0, 64) and out.grad.shape == (0, 64) and torch.equal(weight.grad, torch.zeros(64, device=DEV))
