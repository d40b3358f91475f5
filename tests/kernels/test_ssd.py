"""SSD (Mamba-2's scan): the chunked PyTorch backend against the sequential recurrence, output, final
state and every gradient, at awkward shapes; the decoding step against the scan.

Tolerances: in fp32 the chunked form reorders sums and computes decays as exp(a-hat_i - a-hat_j),
so outputs agree to ~1e-5 (atol 1e-4 with rtol 1e-4 on O(1) values). In bf16 the inputs are rounded
the same way on both sides and all arithmetic is fp32, so the same bound holds against the fp32
reference fed the rounded inputs.
"""
import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():  # the "triton" backend runs under the interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hybrid.kernels.ssd import ssd, ssd_ref, ssd_state_update  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # where the Triton tests run (the interpreter on the CPU)


def on_dev(inputs: dict) -> dict:
    return {k: (v.to(DEV) if torch.is_tensor(v) else v) for k, v in inputs.items()}

NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")


def make(batch, length, heads, headdim, groups, n, D="head", z=False, h0=False, seq=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = {"x": torch.randn(batch, length, heads, headdim, generator=g),
         "dt": torch.randn(batch, length, heads, generator=g) - 1,  # softplus(.) ~ 0.3
         "A": -torch.rand(heads, generator=g) * 2 - 0.2,
         "B": torch.randn(batch, length, groups, n, generator=g),
         "C": torch.randn(batch, length, groups, n, generator=g),
         "D": {"head": torch.randn(heads, generator=g), "channel": torch.randn(heads, headdim, generator=g),
               None: None}[D],
         "z": torch.randn(batch, length, heads, headdim, generator=g) if z else None,
         "dt_bias": torch.randn(heads, generator=g) * 0.2,
         "initial_states": torch.randn(batch, heads, headdim, n, generator=g) if h0 else None}
    if seq:  # documents of random lengths, one starting inside every chunk somewhere
        starts = torch.rand(batch, length, generator=g) < 0.1
        starts[:, 0] = False
        t["seq_idx"] = starts.cumsum(-1).int()
    return t


def run(inputs, backend, chunk_size=16, dtype=torch.float32, limit=(0.0, float("inf"))):
    leaves = {k: inputs[k].to(dtype if k in ("x", "B", "C", "z") else torch.float32).detach().requires_grad_()
              for k in NAMES if inputs.get(k) is not None}
    y, final = ssd(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], chunk_size=chunk_size,
                   D=leaves.get("D"), z=leaves.get("z"), dt_bias=leaves["dt_bias"], dt_softplus=True, dt_limit=limit,
                   initial_states=leaves.get("initial_states"), seq_idx=inputs.get("seq_idx"),
                   return_final_states=True, backend=backend)
    g = torch.Generator().manual_seed(1)
    gy, gf = torch.randn(y.shape, generator=g).to(y.device), torch.randn(final.shape, generator=g).to(y.device)
    ((y.float() * gy).sum() + (final * gf).sum()).backward()
    return y.float(), final, {k: v.grad for k, v in leaves.items()}


CASES = [
    pytest.param(dict(batch=1, length=1, heads=2, headdim=4, groups=1, n=4), 16, id="B1-L1"),
    pytest.param(dict(batch=2, length=7, heads=2, headdim=3, groups=2, n=5), 16, id="B2-L7-chunk-above-L-G2"),
    pytest.param(dict(batch=2, length=33, heads=4, headdim=5, groups=2, n=6, D="channel", z=True), 16,
                 id="B2-L33-G2-Dchannel-z"),
    pytest.param(dict(batch=1, length=70, heads=4, headdim=8, groups=1, n=8, h0=True), 32, id="B1-L70-h0"),
    pytest.param(dict(batch=2, length=50, heads=3, headdim=4, groups=3, n=4, seq=True), 16, id="B2-L50-G3-seq"),
    pytest.param(dict(batch=2, length=45, heads=2, headdim=4, groups=1, n=4, seq=True, h0=True, D=None), 8,
                 id="B2-L45-seq-h0-noD"),
]


@pytest.mark.parametrize("shape,chunk", CASES)
def test_chunked_matches_the_recurrence(shape, chunk):
    inputs = make(**shape)
    y0, s0, g0 = run(inputs, "ref")
    y1, s1, g1 = run(inputs, "torch", chunk_size=chunk)
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s1, s0, rtol=1e-4, atol=1e-4)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=2e-4, msg=lambda m: f"d{name}: {m}")


def test_triton_backend_through_the_public_function():
    """backend="triton" reaches the kernels (their own tests: test_ssd_triton.py) with the same result."""
    inputs = on_dev(make(2, 37, 4, 8, 2, 8, D="channel", z=True, h0=True, seq=True))
    y0, s0, g0 = run(inputs, "ref")
    y1, s1, g1 = run(inputs, "triton", chunk_size=16)
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s1, s0, rtol=1e-4, atol=1e-4)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=2e-4, msg=lambda m: f"d{name}: {m}")


def test_chunked_bf16_inputs_keep_fp32_state():
    inputs = make(2, 40, 4, 8, 2, 8, z=True)
    rounded = {k: (v.to(torch.bfloat16).float() if k in ("x", "B", "C", "z") else v) for k, v in inputs.items()}
    y0, s0, _ = run(rounded, "ref")
    y1, s1, _ = run(inputs, "torch", dtype=torch.bfloat16)
    assert s1.dtype == torch.float32
    torch.testing.assert_close(s1, s0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(y1, y0.to(torch.bfloat16).float(), rtol=1e-2, atol=1e-2)  # y is stored in bf16


def test_chunked_under_bf16_autocast_keeps_the_state_in_fp32():
    """Under autocast the chunked products still run in fp32: the final state (which decoding continues
    from) matches the recurrence as in fp32, and y only carries its own bf16 rounding."""
    inputs = make(2, 70, 4, 8, 2, 8, z=True, h0=True)
    y0, s0, _ = run(inputs, "ref")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y1, s1, _ = run(inputs, "torch", chunk_size=16)
    torch.testing.assert_close(s1, s0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-4)


def test_a_document_boundary_on_a_chunk_boundary():
    inputs = make(1, 48, 2, 4, 1, 4, h0=True)
    inputs["seq_idx"] = torch.tensor([[0] * 16 + [1] * 16 + [2] * 16], dtype=torch.int32)  # chunks of 16
    y0, s0, g0 = run(inputs, "ref")
    y1, s1, g1 = run(inputs, "torch", chunk_size=16)
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s1, s0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g1["initial_states"], g0["initial_states"], rtol=1e-4, atol=1e-4)


def test_dt_limit_clamps_the_step():
    inputs = make(1, 20, 2, 4, 1, 4)
    y0, _, _ = run(inputs, "ref", limit=(0.2, 0.4))
    y1, _, _ = run(inputs, "torch", limit=(0.2, 0.4))
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-4)
    free, _, _ = run(inputs, "ref")
    assert not torch.allclose(free, y0)


def test_documents_do_not_leak_into_each_other():
    """With seq_idx, each document's outputs equal the document run alone."""
    inputs = make(1, 30, 2, 4, 1, 4, D=None)
    inputs["seq_idx"] = torch.tensor([[0] * 12 + [1] * 18], dtype=torch.int32)
    y, _, _ = run(inputs, "torch", chunk_size=8)
    second = {k: (v[:, 12:] if k in ("x", "dt", "B", "C") and v is not None else v) for k, v in inputs.items()}
    second.pop("seq_idx")
    alone, _, _ = run(second, "ref")
    torch.testing.assert_close(y[:, 12:], alone, rtol=1e-4, atol=1e-4)


def test_state_update_continues_the_scan():
    inputs = make(2, 9, 4, 3, 2, 5, D="channel", z=True)
    x, dt, A, B, C, D, z = (inputs[k] for k in ("x", "dt", "A", "B", "C", "D", "z"))
    full = ssd(x, dt, A, B, C, chunk_size=4, D=D, z=z, dt_bias=inputs["dt_bias"], dt_softplus=True)
    _, state = ssd(x[:, :8], dt[:, :8], A, B[:, :8], C[:, :8], D=D, z=z[:, :8], dt_bias=inputs["dt_bias"],
                   dt_softplus=True, return_final_states=True)
    last = ssd_state_update(state, x[:, 8], dt[:, 8], A, B[:, 8], C[:, 8], D, z[:, 8], dt_bias=inputs["dt_bias"],
                            dt_softplus=True)
    torch.testing.assert_close(last, full[:, 8], rtol=1e-5, atol=1e-5)
    _, final = ssd(x, dt, A, B, C, D=D, z=z, dt_bias=inputs["dt_bias"], dt_softplus=True, return_final_states=True)
    torch.testing.assert_close(state, final, rtol=1e-5, atol=1e-5)  # updated in place to the scan's final state


@pytest.mark.parametrize("batch,heads,headdim,groups,n,D,z,bias,softplus,dtype", [
    pytest.param(1, 4, 3, 2, 5, "head", True, True, True, torch.float32, id="B1-groups2-Dhead-z"),
    pytest.param(3, 2, 5, 1, 7, "channel", False, True, True, torch.float32, id="B3-Dchannel"),
    pytest.param(2, 6, 4, 3, 4, None, True, False, False, torch.float32, id="noD-nobias-nosoftplus"),
    pytest.param(2, 4, 8, 1, 16, "head", True, True, True, torch.bfloat16, id="bf16"),
    pytest.param(1, 2, 40, 1, 256, "channel", True, True, True, torch.float32, id="state256-headdim40-3-blocks"),
])
def test_triton_state_update_matches_the_reference(batch, heads, headdim, groups, n, D, z, bias, softplus, dtype):
    # the Triton step (under the interpreter without a GPU) against the PyTorch reference: the same
    # output and the same state, updated in place
    inputs = on_dev(make(batch, 1, heads, headdim, groups, n, D=D, z=z, seed=3))
    x, dt, B, C = (inputs[k][:, 0].to(dtype) for k in ("x", "dt", "B", "C"))
    zz = inputs["z"][:, 0].to(dtype) if z else None
    kw = {"D": inputs["D"], "z": zz, "dt_bias": inputs["dt_bias"] if bias else None, "dt_softplus": softplus}
    state = torch.randn(batch, heads, headdim, n, generator=torch.Generator().manual_seed(4)).to(DEV)
    expected = state.clone()
    y_ref = ssd_state_update(expected, x, dt, inputs["A"], B, C, backend="ref", **kw)
    y = ssd_state_update(state, x, dt, inputs["A"], B, C, backend="triton", **kw)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(state, expected, rtol=1e-5, atol=1e-5)


def test_triton_state_update_splits_heads_at_small_batch(monkeypatch):
    """The step's tile: at batch 1 on a 132-SM GPU the channels of each head are split into blocks of 4
    (384 programs of 4 warps), at batch 64 they stay in blocks of 32 (4 warps); and the small tile
    computes what the reference does (forced here, under the interpreter without a GPU)."""
    from hybrid.kernels.ssd import triton_step
    monkeypatch.setattr("hybrid.kernels.launch.sm_count", lambda device: 132)
    cuda = torch.device("cuda")
    assert triton_step._tile(1 * 24, 64, 128, cuda) == (4, 4)
    assert triton_step._tile(1 * 24, 64, 16, cuda) == (4, 1)  # a small state: a small tile, one warp
    assert triton_step._tile(64 * 24, 64, 128, cuda) == (32, 4)
    assert triton_step._tile(24, 64, 128, torch.device("cpu")) == (32, 4)
    monkeypatch.setattr(triton_step, "_tile", lambda rows, headdim, block_n, device: (4, 1))
    _step_matches_reference(1, 3, 10, 8, seed=6)  # headdim 10: three blocks of 4, the last one masked


def _step_matches_reference(batch, heads, headdim, n, seed, **extra):
    """One Triton step (D per channel, z, dt_bias + softplus, and `extra`) against the reference: the same
    output and the same state, updated in place."""
    inputs = on_dev(make(batch, 1, heads, headdim, 1, n, D="channel", z=True, seed=seed))
    x, dt, B, C, z = (inputs[k][:, 0] for k in ("x", "dt", "B", "C", "z"))
    kw = {"D": inputs["D"], "z": z, "dt_bias": inputs["dt_bias"], "dt_softplus": True, **extra}
    state = torch.randn(batch, heads, headdim, n).to(DEV)
    expected = state.clone()
    y_ref = ssd_state_update(expected, x, dt, inputs["A"], B, C, backend="ref", **kw)
    y = ssd_state_update(state, x, dt, inputs["A"], B, C, backend="triton", **kw)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, expected, rtol=1e-5, atol=1e-5)


def test_triton_state_update_clamps_dt_as_the_reference_does():
    _step_matches_reference(2, 3, 5, 6, seed=5, dt_limit=(0.2, 0.4))


@pytest.mark.parametrize("change,match", [
    pytest.param({"dt": torch.zeros(1, 4, 3)}, "dt must be", id="dt-heads"),
    pytest.param({"A": torch.zeros(3)}, "A must be", id="A-heads"),
    pytest.param({"B": torch.zeros(1, 4, 3, 4), "C": torch.zeros(1, 4, 3, 4)}, "groups", id="groups-not-dividing"),
    pytest.param({"D": torch.zeros(2, 5)}, "D must be", id="D-shape"),
    pytest.param({"initial_states": torch.zeros(1, 2, 3, 5)}, "initial_states", id="h0-shape"),
    pytest.param({"seq_idx": torch.zeros(1, 4)}, "seq_idx", id="seq-float"),
    pytest.param({"x": torch.zeros(1, 0, 2, 3), "dt": torch.zeros(1, 0, 2), "B": torch.zeros(1, 0, 1, 4),
                  "C": torch.zeros(1, 0, 1, 4)}, "no steps", id="length-0"),
])
def test_rejects_bad_shapes(change, match):
    args = {"x": torch.zeros(1, 4, 2, 3), "dt": torch.zeros(1, 4, 2), "A": -torch.ones(2),
            "B": torch.zeros(1, 4, 1, 4), "C": torch.zeros(1, 4, 1, 4), **change}
    with pytest.raises(ValueError, match=match):
        ssd(args.pop("x"), args.pop("dt"), args.pop("A"), args.pop("B"), args.pop("C"), **args)


def test_unknown_backend_is_refused():
    t = make(1, 4, 2, 3, 1, 4)
    with pytest.raises(ValueError, match="backend"):
        ssd(t["x"], F.softplus(t["dt"]), t["A"], t["B"], t["C"], backend="cuda")
