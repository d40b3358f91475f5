"""Gated RMSNorm (Mamba-2's norm before out_proj): the Triton pass and the PyTorch one against a
float64 reference, forward and every gradient (x, z, weight), gate before and after the norm, without
a gate, over groups, with z a strided slice of a wider projection as the layer passes it.

Without a GPU the Triton kernels run under TRITON_INTERPRET=1 at small shapes (set below, before any
Triton kernel is defined); with one they run compiled on the same cases, and the `cuda` test adds a
model's shape. Tolerances (STYLE 4): in float32 every output and gradient agrees with the reference
to 3e-5 relative (both compute in fp32; the sums run in another order: 1.04e-5 seen on an H200); in bf16/fp16 the Triton error
must stay within twice PyTorch's error in the same dtype plus 1e-3 (both round y, dx and dz once to the
narrow dtype; under the interpreter the cast to bf16 truncates, which stays within that bound).
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hybrid.kernels.gated_rms_norm import gated_rms_norm, gated_rms_norm_ref, resolve_backend  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
EPS = 1e-5

CASES = [  # (shape, group_size, dtype, gate: "before" | "after" | None)
    pytest.param((1, 64), 64, torch.float32, "before", id="B1-d64-fp32-gate-before"),
    pytest.param((63, 342), 57, torch.float32, "before", id="rows63-d342-g57-fp32"),
    pytest.param((2, 7, 96), 32, torch.float32, "after", id="B2-L7-d96-g32-fp32-gate-after"),
    pytest.param((3, 5, 40), 40, torch.float32, None, id="B3-L5-d40-fp32-no-gate"),
    pytest.param((5, 1000), 1000, torch.bfloat16, "before", id="rows5-d1000-bf16"),
    pytest.param((2, 17, 128), 64, torch.bfloat16, "after", id="B2-L17-d128-g64-bf16-gate-after"),
    pytest.param((3, 17, 48), 16, torch.float16, "before", id="B3-L17-d48-g16-fp16"),
    pytest.param((37, 24), 24, torch.bfloat16, None, id="rows37-d24-bf16-no-gate"),
]


def _inputs(shape, dtype, gated, seed=0, strided=False):
    """x, z (a column slice of a wider tensor with `strided`, as Mamba-2's in_proj output gives it),
    weight and the float64 cotangent of y."""
    g = torch.Generator().manual_seed(seed)
    d = shape[-1]
    x = (torch.randn(shape, generator=g) * 2).to(DEV, dtype)
    z = None
    if gated:
        wide = (torch.randn(*shape[:-1], d + 11, generator=g) * 2).to(DEV, dtype)
        z = wide[..., 5:5 + d] if strided else wide[..., :d].contiguous()
    weight = (1 + 0.3 * torch.randn(d, generator=g)).to(DEV)
    dy = torch.randn(shape, generator=g, dtype=torch.float64).to(DEV)
    return x, z, weight, dy


def _run(fn, x, z, weight, dy, cast=None):
    """y and the gradients of (x, z, weight) for <y, dy>."""
    leaves = [None if t is None else (t.to(cast) if cast else t).detach().clone().requires_grad_()
              for t in (x, z, weight)]
    y = fn(*leaves)
    (y.double() * dy).sum().backward()
    return y, [None if t is None else t.grad for t in leaves]


def _rel(a, ref):
    return ((a.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def _fn(backend, group_size, before):
    return lambda x, z, w: gated_rms_norm(x, z, w, EPS, group_size, norm_before_gate=before, backend=backend)


def _errors(backend, x, z, weight, dy, group_size, before):
    ref = lambda x, z, w: gated_rms_norm_ref(x, z, w, EPS, group_size, before)  # noqa: E731
    y_ref, g_ref = _run(ref, x, z, weight, dy, cast=torch.float64)
    y, g = _run(_fn(backend, group_size, before), x, z, weight, dy)
    assert y.dtype == x.dtype and y.shape == x.shape
    for a, leaf in zip(g, (x, z, weight)):
        assert (a is None) == (leaf is None) and (a is None or a.dtype == leaf.dtype)
    errs = {"y": _rel(y, y_ref)}
    errs.update({name: _rel(a, b) for name, a, b in zip(("dx", "dz", "dw"), g, g_ref) if b is not None})
    return errs


@pytest.mark.parametrize("shape, group_size, dtype, gate", CASES)
@pytest.mark.parametrize("strided", [False, True], ids=["z-contiguous", "z-sliced"])
def test_triton_matches_the_reference(shape, group_size, dtype, gate, strided):
    if strided and gate is None:
        pytest.skip("no z to slice")
    x, z, weight, dy = _inputs(shape, dtype, gate, strided=strided)
    before = gate == "after"  # norm_before_gate: the gate comes after the norm
    assert resolve_backend("triton", x.is_cuda, group_size) == "triton"
    ours = _errors("triton", x, z, weight, dy, group_size, before)
    if dtype == torch.float32:
        assert max(ours.values()) < 3e-5, ours  # 1.04e-5 measured on an H200 (the GPU's fp32 sums run in tiles)
        return
    theirs = _errors("torch", x, z, weight, dy, group_size, before)
    for key, err in ours.items():
        assert err <= 2 * theirs[key] + 1e-3, (key, ours, theirs)


@pytest.mark.parametrize("before", [False, True], ids=["gate-before", "gate-after"])
def test_the_checkpointed_torch_path_gives_the_reference_gradients(before):
    x, z, weight, dy = _inputs((4, 9, 64), torch.float32, True)
    ours = _errors("torch", x, z, weight, dy, 32, before)
    assert max(ours.values()) < 1e-6, ours


@pytest.mark.parametrize("before", [False, True], ids=["gate-before", "gate-after"])
def test_triton_writes_dz_where_dz_into_says(before):
    """dz_into: the backward writes z's gradient into the tensor it returns (a column slice of a wider
    buffer, as Mamba-2's in_proj output gradient) and returns it, equal to the default dz."""
    x, z, weight, dy = _inputs((2, 7, 24), torch.float32, True, strided=True)
    z = z.detach().requires_grad_()
    buffer = torch.full((2, 7, 40), float("nan"), device=DEV)
    target = buffer[..., 9:33]
    fn = lambda **kw: gated_rms_norm(x, z, weight, EPS, 8, norm_before_gate=before, backend="triton", **kw)  # noqa: E731
    dz, = torch.autograd.grad(fn(dz_into=lambda: target), z, dy.float())
    expected, = torch.autograd.grad(fn(), z, dy.float())
    assert dz.data_ptr() == target.data_ptr() and dz.stride() == target.stride()
    torch.testing.assert_close(dz, expected, rtol=0, atol=0)
    assert buffer[..., :9].isnan().all() and buffer[..., 33:].isnan().all()
    with pytest.raises(ValueError, match="z's gradient must have z's shape"):
        torch.autograd.grad(fn(dz_into=lambda: buffer[..., 9:33].double()), z, dy.float())
    with pytest.raises(ValueError, match=r"z's gradient must have z's shape \(2, 7, 24\) .* got \(2, 7, 20\)"):
        torch.autograd.grad(fn(dz_into=lambda: buffer[..., 9:29]), z, dy.float())


def test_rows_that_fill_many_backward_programs_sum_their_weight_gradients():
    """More row tiles than backward programs (each program walks several tiles, summing dw)."""
    x, z, weight, dy = _inputs((301, 32), torch.float32, True, seed=3)
    ours = _errors("triton", x, z, weight, dy, 16, False)
    assert max(ours.values()) < 3e-5, ours


def test_auto_is_triton_on_cuda_and_bad_arguments_are_refused(monkeypatch):
    monkeypatch.delenv("HYBRID_GATED_NORM_BACKEND", raising=False)
    assert resolve_backend("auto", True, 1536) == "triton"
    assert resolve_backend("auto", True, 1536, compiling=True) == "torch"  # compiles with its neighbours
    assert resolve_backend("auto", False, 1536) == "torch"  # no GPU
    assert resolve_backend("triton", True, 1 << 15) == "torch"  # a group wider than one tile
    monkeypatch.setenv("HYBRID_GATED_NORM_BACKEND", "torch")
    assert resolve_backend("auto", True, 1536) == "torch"
    monkeypatch.setenv("HYBRID_GATED_NORM_BACKEND", "fast")
    with pytest.raises(ValueError, match="HYBRID_GATED_NORM_BACKEND must be one of"):
        resolve_backend("auto", True, 1536)
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match="one shape"):
        gated_rms_norm(x, torch.randn(2, 9), torch.ones(8), backend="torch")
    with pytest.raises(ValueError, match=r"weight must be \(8,\)"):
        gated_rms_norm(x, None, torch.ones(9), backend="torch")
    with pytest.raises(ValueError, match="group_size 3 must divide the 8 channels"):
        gated_rms_norm(x, None, torch.ones(8), group_size=3, backend="torch")


@pytest.mark.parametrize("before", [False, True], ids=["gate-before", "gate-after"])
def test_a_mamba2_layer_through_the_triton_norm_matches_the_torch_norm(before):
    """The layer passes z as a slice of in_proj's output and y from the SSD; both norm backends give
    one layer the same output and gradients (float32, the other kernels on their PyTorch paths)."""
    from hybrid.layers.mamba2 import Mamba2, Mamba2Config  # noqa: PLC0415

    results = []
    for backend in ("torch", "triton"):
        torch.manual_seed(0)
        layer = Mamba2(32, Mamba2Config(d_state=8, headdim=16, ngroups=2, chunk_size=8, norm_before_gate=before,
                                        norm_backend=backend, ssd_backend="torch", conv_backend="torch")).to(DEV)
        torch.manual_seed(1)
        u = torch.randn(2, 13, 32, device=DEV).requires_grad_()
        out = layer(u)
        out.square().mean().backward()
        results.append((out.detach(), u.grad, [p.grad for p in layer.parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-5, rtol=1e-4)
    for a, b in zip(results[1][2], results[0][2]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("before", [False, True], ids=["gate-before", "gate-after"])
def test_model_shape_cuda(before):
    """The ~130M Mamba-2 model's shape: 8 x 2048 rows of 1536 channels in one group, bf16, z sliced."""
    x, z, weight, dy = _inputs((8, 2048, 1536), torch.bfloat16, True, strided=True)
    ours = _errors("triton", x, z, weight, dy, 1536, before)
    theirs = _errors("torch", x, z, weight, dy, 1536, before)
    for key, err in ours.items():
        assert err <= 2 * theirs[key] + 1e-5, (key, ours, theirs)


def test_no_rows():
    x, z = (torch.randn(0, 64, device=DEV, requires_grad=True) for _ in range(2))
    weight = torch.ones(64, device=DEV, requires_grad=True)
    y = gated_rms_norm(x, z, weight, backend="triton")
    y.sum().backward()
    assert y.shape == (0, 64) and x.grad.shape == (0, 64) and torch.equal(weight.grad, torch.zeros(64, device=DEV))
