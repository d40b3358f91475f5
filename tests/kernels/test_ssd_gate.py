"""The SSD backward's gate and D kernel (hybrid/kernels/ssd/triton_gate.py) against autograd through
out = (y + D x) silu(z) in float64, under TRITON_INTERPRET=1 without a GPU."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hybrid.kernels.ssd.triton_gate import ROWS, gate_backward  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def reference(dy, z, ypre, x, D):
    """(g, dz, dD) by autograd in float64 through y = s + D x (y equal to ypre) and out = y silu(z)."""
    leaf = lambda t: None if t is None else t.double().detach().requires_grad_()  # noqa: E731
    z64, D64, x64 = leaf(z), leaf(D), x.double()
    y_given = ypre.double() if ypre is not None else torch.randn(x.shape, dtype=torch.float64, device=x.device)
    skip = 0 if D is None else (D64[:, None] if D.dim() == 1 else D64) * x64
    y = leaf(y_given - (0 if D is None else skip.detach())) + skip
    y.retain_grad()
    out = y * torch.nn.functional.silu(z64) if z is not None else y
    out.backward(dy.double())
    return y.grad, (z64.grad if z is not None else None), (D64.grad if D is not None else None)


def inputs(batch, length, heads, headdim, dtype, z=True, D="head", strided=False, dy_expanded=False):
    r = lambda *s: torch.randn(*s, device=DEV)  # noqa: E731
    wide = 3 if strided else 1  # x and z as views of a wider tensor, as the layer's projections give them
    x = r(batch, length, heads, headdim * wide).to(dtype)[..., :headdim]
    zz = r(batch, length, heads, headdim * wide).to(dtype)[..., ::wide] if z else None
    # dout as the backward of a sum gives it (stride 0 everywhere) or a fresh tensor; y before the gate in
    # x's dtype, as the forward keeps it
    dy = r(1, 1, 1, 1).to(dtype).expand(batch, length, heads, headdim) if dy_expanded else \
        r(batch, length, heads, headdim).to(dtype)
    return {"dy": dy, "z": zz, "ypre": r(batch, length, heads, headdim).to(dtype) if z else None, "x": x,
            "D": None if D is None else r(heads) if D == "head" else r(heads, headdim)}


# fp32: each output is an fp32 product of O(1) terms (dD a sum over batch x length) against float64
# (~1e-7); bf16: the inputs are the same rounded values in both, and only dz is stored in bf16 (a rounding
# of 2^-9 relative), so 1e-2 for it and the fp32 tolerance for g and dD.
@pytest.mark.parametrize("batch,length,heads,headdim,dtype,z,D,strided,dy_expanded", [
    (1, 1, 1, 1, torch.float32, True, "head", False, False),
    (2, 37, 3, 20, torch.float32, True, "channel", True, False),
    (1, ROWS + 1, 2, 8, torch.float32, False, "head", False, False),
    (2, 50, 2, 16, torch.bfloat16, True, "head", True, False),
    (1, 9, 4, 5, torch.float16, True, None, False, False),
    (2, 21, 2, 128, torch.bfloat16, True, "channel", True, True),  # 32-row tiles at headdim 128
    (1, 30, 2, 8, torch.float32, False, "channel", False, True),
])
def test_gate_backward_matches_autograd(batch, length, heads, headdim, dtype, z, D, strided, dy_expanded):
    t = inputs(batch, length, heads, headdim, dtype, z, D, strided, dy_expanded)
    g, dz, dD = gate_backward(t["dy"], t["z"], t["ypre"], t["x"], t["D"])
    rg, rdz, rdD = reference(**t)
    rel = lambda a, b: ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()  # noqa: E731
    assert rel(g, rg) <= 1e-6
    if z:
        assert dz.dtype == dtype and rel(dz, rdz) <= (1e-6 if dtype == torch.float32 else 1e-2)
    else:
        assert dz is None and g is t["dy"]  # no gate: g is dout itself, not a copy
    if D is None:
        assert dD is None
    else:
        got = dD.sum(-1) if D == "head" else dD
        assert dD.dtype == torch.float32 and rel(got, rdD) <= 1e-5


def test_gate_backward_without_gate_or_skip_is_dout():
    t = inputs(1, 5, 2, 4, torch.float32, z=False, D=None)
    assert gate_backward(t["dy"], None, None, t["x"], None) == (t["dy"], None, None)


def test_gate_backward_of_an_empty_sequence():
    t = inputs(2, 0, 2, 4, torch.float32, z=True, D="channel")
    g, dz, dD = gate_backward(t["dy"], t["z"], t["ypre"], t["x"], t["D"])
    assert g.shape == dz.shape == (2, 0, 2, 4) and torch.equal(dD, torch.zeros(2, 4))
