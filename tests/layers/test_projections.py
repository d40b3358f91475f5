"""Layout-changing projections (hybrid.layers.projections) against F.linear with transposes, forward and
backward, and the layouts they promise: outputs and input gradients contiguous in their own layout."""
import pytest
import torch
import torch.nn.functional as F

from hybrid.layers.projections import channels_to_channels, channels_to_tokens, tokens_to_channels

DEV = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(1, 7, 5, 6), (2, 33, 8, 12), (3, 64, 16, 4)]  # (batch, length, in, out)


def _leaves(*shapes, dtype=torch.float64):
    return [torch.randn(s, device=DEV, dtype=dtype, requires_grad=True) for s in shapes]


def _grads(out, tensors, seed=1):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out)
    return torch.autograd.grad(out, tensors, g)


@pytest.mark.parametrize("batch,length,d_in,d_out", SHAPES)
@pytest.mark.parametrize("chunks", [1, 2])
@pytest.mark.parametrize("bias", [False, True])
def test_tokens_to_channels(batch, length, d_in, d_out, chunks, bias):
    h, w, b = _leaves((batch, length, d_in), (d_out, d_in), (d_out,))
    b = b if bias else None
    outs = tokens_to_channels(h, w, b, chunks=chunks)
    ref = F.linear(h, w, b).transpose(1, 2)  # (batch, out, length)
    assert len(outs) == chunks and all(o.is_contiguous() for o in outs)
    torch.testing.assert_close(torch.cat(outs, dim=1), ref, rtol=1e-12, atol=1e-12)
    leaves = [h, w] + ([b] if bias else [])
    got = _grads(torch.cat(outs, dim=1), leaves)
    want = _grads(ref, leaves)
    assert got[0].is_contiguous()  # (batch, length, in): token-major, no transposed view
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch,length,d_in,d_out", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_channels_to_tokens(batch, length, d_in, d_out, bias):
    y, w, b = _leaves((batch, d_in, length), (d_out, d_in), (d_out,))
    b = b if bias else None
    out = channels_to_tokens(y, w, b)
    ref = F.linear(y.transpose(1, 2), w, b)
    assert out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    leaves = [y, w] + ([b] if bias else [])
    got, want = _grads(out, leaves), _grads(ref, leaves)
    assert got[0].is_contiguous()  # (batch, in, length): channel-major, the scan's dout layout
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch,length,d_in,d_out", SHAPES)
def test_channels_to_channels_from_a_strided_slice(batch, length, d_in, d_out):
    """The Mamba layer projects a slice of a larger channel-major tensor (dt out of x_proj's output)."""
    full, w = _leaves((batch, d_in + 3, length), (d_out, d_in))
    x = full[:, 2:2 + d_in]
    out = channels_to_channels(x, w)
    ref = F.linear(x.transpose(1, 2), w).transpose(1, 2)
    assert out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for a, e in zip(_grads(out, [full, w]), _grads(ref, [full, w])):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16] if DEV == "cuda" else [torch.bfloat16])
def test_under_autocast_matches_linear(dtype):
    """Under autocast the matmuls run in its dtype as nn.Linear's would; the weight's gradient comes back
    in the weight's dtype (fp32), summed over the batch in fp32. Tolerance: a few bf16 roundings of
    sums over 48 products (2^-8 relative each)."""
    h = torch.randn(2, 40, 48, device=DEV, requires_grad=True)
    w = torch.randn(64, 48, device=DEV, requires_grad=True)
    v = torch.randn(16, 32, device=DEV, requires_grad=True)
    with torch.autocast(DEV, dtype=dtype):
        x, z = tokens_to_channels(h, w, chunks=2)
        out = channels_to_tokens(x * z, v)
    with torch.autocast(DEV, dtype=dtype):
        ref_xz = F.linear(h, w).transpose(1, 2)
        ref = F.linear((ref_xz[:, :32] * ref_xz[:, 32:]).transpose(1, 2), v)
    assert out.dtype == ref.dtype == dtype and z.dtype == dtype
    torch.testing.assert_close(out.float(), ref.float(), rtol=3e-2, atol=3e-1)
    got, want = _grads(out, [h, w, v]), _grads(ref, [h, w, v])
    for a, e in zip(got, want):
        assert a.dtype == torch.float32
        rel = ((a - e).norm() / e.norm()).item()
        assert rel < 2e-2, rel


@pytest.mark.parametrize("fn,shape", [(tokens_to_channels, (2, 5, 8)), (channels_to_tokens, (2, 8, 5)),
                                      (channels_to_channels, (2, 8, 5)), (channels_to_tokens, (8, 5))])
def test_shape_errors_name_the_projection_and_shapes(fn, shape):
    with pytest.raises(ValueError, match=rf"{fn.__name__}: input must be .* in = 7 \(the weight is \(6, 7\)\), got"):
        fn(torch.randn(shape, device=DEV), torch.randn(6, 7, device=DEV))


def test_compiled_projections_have_the_eager_gradients():
    """Compiled, the projections (plain ops under torch.compile) give the eager Functions' outputs and
    gradients: both layouts, bias, chunks. The bug this path avoids showed on an H200 only (traced, the
    Functions' gradients came out wrong there; on the CPU they did not): the GPU guard against it is
    tests/training/test_compile.py; this test keeps the compiled path itself right on the CPU."""
    torch.manual_seed(0)
    h = torch.randn(2, 7, 12, requires_grad=True)
    w_in, b_in, w_out = torch.randn(10, 12, requires_grad=True), torch.randn(10, requires_grad=True), torch.randn(6, 5)
    w_out.requires_grad_(True)

    def f(h, w_in, b_in, w_out):
        x, z = tokens_to_channels(h, w_in, b_in, chunks=2)  # (2, 5, 7) each
        return channels_to_tokens(x * torch.sigmoid(z), w_out)  # (2, 7, 6)

    args = (h, w_in, b_in, w_out)
    eager_out = f(*args)
    eager = torch.autograd.grad(eager_out.square().sum(), args)
    torch._dynamo.reset()
    compiled_out = torch.compile(f, backend="aot_eager")(*args)
    compiled = torch.autograd.grad(compiled_out.square().sum(), args)
    torch.testing.assert_close(compiled_out, eager_out, atol=1e-5, rtol=1e-5)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)
