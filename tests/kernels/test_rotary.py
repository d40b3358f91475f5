"""The Triton RoPE kernel against the PyTorch reference, forward and backward. Without a GPU it runs
under TRITON_INTERPRET=1 (set before the kernel module is imported)."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hybrid.kernels.rotary import apply_rotary_triton  # noqa: E402
from hybrid.layers.rope import apply_rotary, apply_rotary_ref, rotary_tables  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# Both sides rotate in float32 and round once to the input dtype: fp32 agrees to rounding, half
# precisions to one rounding step of the output
TOL = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def grads(out, x, g):
    (gx,) = torch.autograd.grad(out, x, g)
    return gx


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("batch,length,heads,head_dim,rot,per_batch", [
    pytest.param(1, 1, 1, 8, 8, False, id="B1-L1-H1-full"),
    pytest.param(2, 7, 3, 16, 8, False, id="B2-L7-H3-partial-half"),
    pytest.param(1, 13, 5, 24, 12, False, id="B1-L13-H5-d24-r12"),
    pytest.param(2, 9, 6, 32, 32, True, id="B2-L9-H6-per-batch-positions"),
])
def test_triton_rotary_matches_reference(batch, length, heads, head_dim, rot, per_batch, dtype):
    x = torch.randn(batch, length, heads, head_dim, device=DEV).to(dtype).requires_grad_()
    positions = (torch.randint(0, 50, (batch, length), device=DEV) if per_batch
                 else torch.arange(3, 3 + length, device=DEV))
    cos, sin = rotary_tables(positions, rot, 10000.0)
    out, ref = apply_rotary_triton(x, cos, sin), apply_rotary_ref(x, cos, sin)
    assert out.dtype == dtype and out.shape == x.shape
    tol = TOL[dtype]
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    g = torch.randn_like(out)
    torch.testing.assert_close(grads(out, x, g), grads(ref, x, g), atol=tol, rtol=tol)


def test_triton_rotary_tables_with_batch_one_broadcast():
    x = torch.randn(3, 5, 2, 8, device=DEV)
    cos, sin = rotary_tables(torch.arange(5, device=DEV)[None], 8, 10000.0)  # (1, length, r / 2)
    torch.testing.assert_close(apply_rotary_triton(x, cos, sin), apply_rotary_ref(x, cos, sin), atol=1e-6, rtol=1e-6)


def test_triton_rotary_strided_slice_of_fused_projection():
    """The layer rotates the query and key heads in place in the fused qkv output: a strided view."""
    batch, length, h, hkv, d = 2, 11, 4, 2, 16
    qkv = torch.randn(batch, length, h + 2 * hkv, d, device=DEV, requires_grad=True)
    cos, sin = rotary_tables(torch.arange(length, device=DEV), d, 10000.0)
    view = qkv[:, :, :h + hkv]
    out = apply_rotary(view, cos, sin, "triton")
    ref = apply_rotary_ref(view, cos, sin)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    g = torch.randn_like(out)
    torch.testing.assert_close(grads(out, qkv, g), grads(ref, qkv, g), atol=1e-6, rtol=1e-6)


def test_triton_rotary_layer_matches_torch_backend():
    from hybrid.layers.attention import Attention, AttentionConfig
    torch.manual_seed(0)
    layers = [Attention(32, AttentionConfig(n_heads=4, n_kv_heads=2, rotary_fraction=0.5, rope_backend=b,
                                            backend="eager")).to(DEV) for b in ("torch", "triton")]
    layers[1].load_state_dict(layers[0].state_dict())
    x = torch.randn(2, 9, 32, device=DEV)
    torch.testing.assert_close(layers[1](x), layers[0](x), atol=1e-5, rtol=1e-5)


def test_triton_rotary_rejects_bad_shapes():
    cos, sin = rotary_tables(torch.arange(5, device=DEV), 8, 10000.0)
    with pytest.raises(ValueError, match="rotary \\(triton\\): x must be"):
        apply_rotary_triton(torch.randn(5, 2, 8, device=DEV), cos, sin)
    with pytest.raises(ValueError, match="r <= head_dim"):
        apply_rotary_triton(torch.randn(1, 5, 2, 4, device=DEV), cos, sin)
    with pytest.raises(ValueError, match="batch or 1"):
        apply_rotary_triton(torch.randn(3, 5, 2, 8, device=DEV), cos[None].expand(2, -1, -1), sin[None].expand(2, -1, -1))
    with pytest.raises(TypeError, match="float64"):
        apply_rotary_triton(torch.randn(1, 5, 2, 8, dtype=torch.float64, device=DEV), cos, sin)
