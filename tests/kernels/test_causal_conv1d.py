"""Causal conv1d: every backend against the windowed reference (reference.py), forward and every gradient.

Without a GPU the Triton kernels run under TRITON_INTERPRET=1 at small shapes (set below, before
any Triton kernel is defined); with one they run compiled on the same cases. Tests marked `cuda`
use realistic shapes against a float64 reference.
"""
import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hybrid.kernels.causal_conv1d import (causal_conv1d, causal_conv1d_continue, causal_conv1d_ref,  # noqa: E402
                                          causal_conv1d_update, causal_conv1d_update_ref, resolve_backend)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
NAMES = ("x", "weight", "bias", "initial_states")


def doc_ids(batch, length, device=DEV):
    """Packed documents: ids rising along the length, boundaries ~every 10 steps, some documents one
    step long (a boundary inside every tap window somewhere)."""
    starts = torch.rand(batch, length, device=device) < 0.12
    starts[:, 0] = False
    if length > 5:
        starts[:, 3:5] = True  # documents of one step at 3 and 4
    return starts.cumsum(-1).to(torch.int32)


def make_inputs(batch, dim, length, width, bias=True, h0=False, seq=False, channel_last=False,
                dtype=torch.float32, weight_dtype=None, device=DEV):
    if channel_last:  # the x third of a (batch, length, 3 * dim) projection, transposed: stride(1) == 1
        x = torch.randn(batch, length, 3 * dim, device=device).to(dtype)[..., dim:2 * dim].transpose(1, 2)
    else:
        x = torch.randn(batch, dim, length, device=device).to(dtype)
    wd = weight_dtype or dtype
    return {
        "x": x,
        "weight": (torch.randn(dim, width, device=device) / width ** 0.5).to(wd),
        "bias": torch.randn(dim, device=device).to(wd) if bias else None,
        "initial_states": torch.randn(batch, dim, width - 1, device=device).to(dtype) if h0 else None,
        "seq_idx": doc_ids(batch, length, device) if seq else None,
    }


def run(fn, inputs, activation, cast=None, grads=None, **kw):
    """out and the gradient of every float input for loss = <out, g_out>."""
    leaves = {k: (None if inputs[k] is None else (inputs[k].to(cast) if cast else inputs[k]).detach().clone()
                  .requires_grad_()) for k in NAMES}
    x = inputs["x"]
    if x.stride(1) == 1 and x.stride(2) != 1 and not cast:  # keep the strided channel-last layout
        dim = x.shape[1]
        base = torch.zeros(x.shape[0], x.shape[2], 3 * dim, device=x.device, dtype=x.dtype)
        base[..., dim:2 * dim] = x.transpose(1, 2)
        leaves["x"] = base.requires_grad_()[..., dim:2 * dim].transpose(1, 2)
        leaves["x"].retain_grad()
    out = fn(leaves["x"], leaves["weight"], leaves["bias"], activation=activation,
             initial_states=leaves["initial_states"], seq_idx=inputs["seq_idx"], **kw)
    if grads is None:
        grads = torch.randn(out.shape, dtype=torch.float64, device=out.device)
    (out.double() * grads).sum().backward()
    return out, {k: v.grad for k, v in leaves.items() if v is not None}, grads


def rel(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def errors(fn, inputs, activation, grads=None, **kw):
    """Relative errors of fn's out and gradients against the float64 reference on the same inputs."""
    o_ref, g_ref, grads = run(causal_conv1d_ref, inputs, activation, cast=torch.float64, grads=grads)
    out, g, _ = run(fn, inputs, activation, grads=grads, **kw)
    assert out.dtype == inputs["x"].dtype and out.shape == inputs["x"].shape
    errs = {"out": rel(out, o_ref)}
    errs.update({f"d{k}": rel(g[k], g_ref[k]) for k in g_ref})
    return errs, grads


def compare(fn, inputs, activation, tol, **kw):
    errs, _ = errors(fn, inputs, activation, **kw)
    bad = {k: e for k, e in errs.items() if not e <= tol}  # `not <=` also catches NaN
    assert not bad, f"relative errors above {tol}: {bad}"


def _skip_without_two_pass():
    from hybrid.kernels.causal_conv1d import triton_conv
    try:
        triton_conv.backward_method("two_pass")
    except RuntimeError as err:  # an older Triton: the fused backward alone
        pytest.skip(str(err))


@pytest.fixture(params=["fused", "two_pass"])
def bwd_method(request, monkeypatch):
    """Runs a Triton test with each backward (triton_conv.BACKWARD, read by each forward)."""
    from hybrid.kernels.causal_conv1d import triton_conv
    if request.param == "two_pass":
        _skip_without_two_pass()
    monkeypatch.setattr(triton_conv, "BACKWARD", request.param)
    return request.param


# Covering set for the kernels (the interpreter pays per program and per operation, so not the full cross
# product): each width 1-4 and 8, length 1 (shorter than the taps), 3, 63, 64 (whole tiles) and 130 (several
# tiles), batch 1 and 2, and every optional input appear, on and off.
# (batch, dim, length, width, activation, bias, initial_states, seq_idx, channel_last)
CASES = [
    pytest.param(1, 5, 1, 2, "silu", True, False, False, False, id="B1-D5-L1-W2-silu-bias"),
    pytest.param(2, 48, 63, 4, "silu", True, True, False, False, id="B2-D48-L63-W4-silu-bias-h0"),
    pytest.param(2, 33, 130, 3, None, False, False, True, False, id="B2-D33-L130-W3-seq"),
    pytest.param(1, 16, 130, 4, "swish", False, False, True, True, id="B1-D16-L130-W4-swish-seq-channel-last"),
    pytest.param(2, 7, 3, 4, None, True, True, False, True, id="B2-D7-L3-W4-bias-h0-channel-last"),
    pytest.param(2, 20, 130, 2, "silu", False, True, False, False, id="B2-D20-L130-W2-silu-h0"),
    pytest.param(1, 9, 64, 8, None, True, True, False, False, id="B1-D9-L64-W8-bias-h0"),
    pytest.param(2, 6, 63, 1, "silu", True, False, False, True, id="B2-D6-L63-W1-silu-bias-channel-last"),
    pytest.param(1, 5, 1, 4, None, True, True, False, False, id="B1-D5-L1-W4-bias-h0"),
]

# float32 kernels against float64: an output sums <= 8 products in fp32 (~1e-7 relative), dweight and dbias
# sum <= batch * length = 260 of them over tiles: 1e-5 leaves 10-100x headroom over the ~1e-7..1e-6 seen,
# and is far below what an indexing or masking bug gives (> 1e-2).
FP32_TOL = 1e-5


@pytest.mark.parametrize("batch,dim,length,width,activation,bias,h0,seq,channel_last", CASES)
def test_triton_matches_reference(batch, dim, length, width, activation, bias, h0, seq, channel_last, bwd_method):
    inputs = make_inputs(batch, dim, length, width, bias, h0, seq, channel_last)
    compare(causal_conv1d, inputs, activation, FP32_TOL, backend="triton")


# float64 F.conv1d against the float64 windows: the same sums in another order, 1e-12 is rounding.
TORCH_CASES = [
    pytest.param(2, 5, 63, 4, "silu", True, True, False, torch.float64, id="B2-L63-W4-silu-h0-f64"),
    pytest.param(1, 6, 130, 3, None, True, False, True, torch.float64, id="B1-L130-W3-seq-f64"),
    pytest.param(2, 4, 1, 4, "silu", False, False, True, torch.float64, id="B2-L1-W4-silu-seq-f64"),
    pytest.param(2, 7, 3, 4, None, False, True, False, torch.float32, id="B2-L3-W4-h0-f32"),
    pytest.param(1, 5, 40, 2, "silu", True, False, False, torch.float32, id="B1-L40-W2-silu-f32"),
]


@pytest.mark.parametrize("batch,dim,length,width,activation,bias,h0,seq,dtype", TORCH_CASES)
def test_torch_backend_matches_reference(batch, dim, length, width, activation, bias, h0, seq, dtype):
    inputs = make_inputs(batch, dim, length, width, bias, h0, seq, dtype=dtype, device="cpu")
    compare(causal_conv1d, inputs, activation, 1e-12 if dtype == torch.float64 else FP32_TOL, backend="torch")


@pytest.mark.parametrize("config,channel_last", [((16, 128, 4), False), ((4, 128, 4), False), ((128, 16, 4), True),
                                                 ((64, 32, 4), True), ((4, 8, 1), False)],
                         ids=["gpu-fwd-channel-major", "gpu-bwd-channel-major", "gpu-fwd-channel-last",
                              "gpu-bwd-channel-last", "tiny-tiles"])
def test_triton_other_tiles_under_the_interpreter(config, channel_last, monkeypatch, bwd_method):
    """The GPU's tiles (forward and backward ones, here used for every kernel), and tiles of 8 steps: 17 length
    tiles walked by 5 programs of the (fused, or two-pass A) backward, each summing its weight gradient over
    several tiles; halos cross every tile boundary."""
    from hybrid.kernels.causal_conv1d import triton_conv
    monkeypatch.setattr(triton_conv, "_config", lambda x, kernel="forward": config)
    dim = min(config[0], 16)  # few channel blocks: the interpreter's time grows with the number of programs
    compare(causal_conv1d, make_inputs(1, dim, 130, 4, h0=True, channel_last=channel_last), "silu", FP32_TOL,
            backend="triton")
    compare(causal_conv1d, make_inputs(1, dim, 130, 3, seq=True), None, FP32_TOL, backend="triton")


@pytest.mark.parametrize("dtype,weight_dtype", [(torch.bfloat16, torch.float32), (torch.float16, torch.float16),
                                                (torch.bfloat16, torch.bfloat16)],
                         ids=["bf16-fp32-weight", "f16", "bf16"])
def test_triton_half_precision(dtype, weight_dtype, bwd_method):
    """Against float64 on the same rounded inputs, the kernel's error <= 2 * the error of the PyTorch
    reference run in the same dtype + 1e-4. Both compute in fp32 and round out, dx and d initial_states
    once to the half dtype (~2e-3 relative), so their errors nearly coincide; dweight and dbias come back
    in the weight's dtype (fp32 errors ~1e-7 with an fp32 weight, hence the atol)."""
    inputs = make_inputs(2, 24, 130, 4, h0=True, dtype=dtype, weight_dtype=weight_dtype)
    o64, g64, grads = run(causal_conv1d_ref, inputs, "silu", cast=torch.float64)
    out, g, _ = run(causal_conv1d, inputs, "silu", grads=grads, backend="triton")
    o_ref, g_ref, _ = run(causal_conv1d_ref, inputs, "silu", grads=grads)
    assert out.dtype == g["x"].dtype == g["initial_states"].dtype == dtype
    assert g["weight"].dtype == g["bias"].dtype == weight_dtype
    ours = {"out": rel(out, o64), **{k: rel(g[k], g64[k]) for k in g64}}
    floor = {"out": rel(o_ref, o64), **{k: rel(g_ref[k], g64[k]) for k in g64}}
    bad = {k: (e, floor[k]) for k, e in ours.items() if not e <= 2 * floor[k] + 1e-4}
    assert not bad, f"errors above 2 * reference + 1e-4: {bad}"


def test_triton_channel_last_keeps_its_layout(bwd_method):
    """A transposed (batch, length, dim) x is read in place: out and dx come back channel-last too."""
    from hybrid.kernels.causal_conv1d.triton_conv import _causal_conv1d_bwd
    inputs = make_inputs(2, 12, 40, 4, channel_last=True)
    out, _, _ = run(causal_conv1d, inputs, "silu", backend="triton")
    dx = _causal_conv1d_bwd(torch.ones_like(out), inputs["x"], inputs["weight"], None, None, None, True,
                            method=bwd_method)[0]
    assert out.stride(1) == 1 and dx.stride(1) == 1
    assert rel(out, causal_conv1d_ref(inputs["x"].double(), inputs["weight"].double(), inputs["bias"].double(),
                                      "silu")) <= FP32_TOL


@pytest.mark.parametrize("h0,seq,channel_last", [(True, False, False), (False, True, True)],
                         ids=["h0", "seq-channel-last"])
def test_triton_backward_methods_agree(h0, seq, channel_last):
    """The fused and the two-pass backward on the same inputs: the same fp32 sums, equal up to rounding
    (bit-equal under the interpreter, where both use the same tiles; on a GPU the tiles, hence the order
    of the dweight sums, and FMA contraction differ: ~1e-7)."""
    from hybrid.kernels.causal_conv1d.triton_conv import _causal_conv1d_bwd
    inputs = make_inputs(2, 24, 130, 4, True, h0, seq, channel_last)
    dout = torch.randn(inputs["x"].shape, device=DEV)
    args = (dout, inputs["x"], inputs["weight"], inputs["bias"], inputs["initial_states"], inputs["seq_idx"], True)
    _skip_without_two_pass()
    fused, two_pass = (_causal_conv1d_bwd(*args, method=m) for m in ("fused", "two_pass"))
    for name, a, b in zip(("dx", "dweight", "dbias", "dinit"), fused, two_pass):
        assert (a is None) == (b is None) == (name == "dinit" and not h0), name
        if a is not None:
            assert a.stride() == b.stride() and rel(b, a) <= 1e-6, name
            if os.environ.get("TRITON_INTERPRET") == "1":  # the same tiles and order of sums: bit-equal
                assert torch.equal(a, b), name


def test_triton_two_pass_at_the_gpu_tiles_channel_last(monkeypatch):
    """The two-pass backward at the tiles the GPU takes for a channel-last x (`_config` outside the
    interpreter, whose own tiles are others) against the fused one; 45 steps are six pass-A tiles of 8,
    two programs' weight-gradient partials."""
    from hybrid.kernels.causal_conv1d import triton_conv
    _skip_without_two_pass()
    inputs = make_inputs(2, 136, 45, 4, True, True, False, True)  # channels past one 128-channel tile
    x = inputs["x"]
    monkeypatch.setattr(triton_conv, "INTERPRET", False)
    tiles = (triton_conv._config(x, "two_pass_g"), triton_conv._config(x, "two_pass_dx"))
    monkeypatch.undo()
    assert tiles == ((128, 8, 4), (128, 16, 4))
    dout = torch.randn(x.shape, device=DEV)
    args = (dout, x, inputs["weight"], inputs["bias"], inputs["initial_states"], None, True)
    fused = triton_conv._causal_conv1d_bwd(*args, method="fused")
    two_pass = triton_conv._causal_conv1d_bwd(*args, method="two_pass", config=tiles)
    for name, a, b in zip(("dx", "dweight", "dbias", "dinit"), fused, two_pass):
        assert rel(b, a) <= 1e-6, name


def test_triton_rejects_an_unknown_backward(monkeypatch):
    from hybrid.kernels.causal_conv1d import triton_conv
    monkeypatch.setattr(triton_conv, "BACKWARD", "twopass")
    inputs = make_inputs(1, 4, 8, 3)
    with pytest.raises(ValueError, match="HYBRID_CONV_BWD.*'twopass'"):
        run(causal_conv1d, inputs, "silu", backend="triton")


def test_triton_writes_dx_where_dx_into_says(bwd_method):
    """dx_into: the backward writes x's gradient into the tensor it returns (a channel-last slice of a wider
    buffer here, as Mamba-2's in_proj output gradient) and returns that tensor, equal to the default dx."""
    inputs = make_inputs(2, 12, 37, 4, h0=True, channel_last=True)
    x = inputs["x"].detach().requires_grad_()
    args = (inputs["weight"], inputs["bias"])
    buffer = torch.full((2, 37, 40), float("nan"), device=DEV)
    target = buffer[..., 7:19].transpose(1, 2)  # (batch, dim, length), channel-last
    dout = torch.randn(x.shape, device=DEV)
    dx, = torch.autograd.grad(causal_conv1d(x, *args, activation="silu", backend="triton", dx_into=lambda: target),
                              x, dout)
    expected, = torch.autograd.grad(causal_conv1d(x, *args, activation="silu", backend="triton"), x, dout)
    assert dx.data_ptr() == target.data_ptr() and dx.stride() == target.stride()
    torch.testing.assert_close(dx, expected, rtol=0, atol=0)
    assert buffer[..., :7].isnan().all() and buffer[..., 19:].isnan().all()  # nothing written outside
    with pytest.raises(ValueError, match="x's gradient must have x's shape"):
        torch.autograd.grad(causal_conv1d(x, *args, activation="silu", backend="triton",
                                          dx_into=lambda: target[:, :, :5]), x, dout)


def test_triton_without_grad():
    inputs = make_inputs(2, 8, 50, 4, h0=True)
    args = (inputs["x"], inputs["weight"], inputs["bias"])
    with torch.no_grad():
        out = causal_conv1d(*args, activation="silu", initial_states=inputs["initial_states"], backend="triton")
    assert rel(out, causal_conv1d_ref(*args, "silu", inputs["initial_states"])) <= FP32_TOL


# ---------------------------------------------------------------------------- semantics of the reference

def test_initial_states_are_the_preceding_inputs():
    """Convolving x after initial_states == convolving [initial_states, x] and dropping the first W - 1 outputs."""
    x = make_inputs(2, 5, 20, 4, device="cpu")
    prefix = torch.randn(2, 5, 3)
    out = causal_conv1d_ref(x["x"], x["weight"], x["bias"], "silu", initial_states=prefix)
    whole = causal_conv1d_ref(torch.cat([prefix, x["x"]], -1), x["weight"], x["bias"], "silu")
    torch.testing.assert_close(out, whole[..., 3:], rtol=0, atol=1e-6)


def test_seq_idx_convolves_each_document_alone():
    x = make_inputs(1, 4, 30, 4, device="cpu")
    seq = torch.tensor([[0] * 10 + [1] * 1 + [2] * 19], dtype=torch.int32)
    out = causal_conv1d_ref(x["x"], x["weight"], x["bias"], seq_idx=seq)
    docs = [causal_conv1d_ref(x["x"][..., a:b], x["weight"], x["bias"]) for a, b in ((0, 10), (10, 11), (11, 30))]
    torch.testing.assert_close(out, torch.cat(docs, -1), rtol=0, atol=1e-6)


def test_length_zero():
    x = torch.zeros(2, 3, 0)
    assert causal_conv1d(x, torch.ones(3, 4), backend="ref").shape == (2, 3, 0)


# ---------------------------------------------------------------------------- decoding step

@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("width", [1, 2, 4])
def test_continue_in_pieces_equals_one_convolution(backend, width):
    """Prefill, a chunk shorter than the cache, single steps: the outputs of one convolution over the
    whole sequence, and the cache holding the last width - 1 inputs."""
    inp = make_inputs(2, 6, 17, width, device="cpu")
    x, w, b = inp["x"].to(DEV), inp["weight"].to(DEV), inp["bias"].to(DEV)
    whole = causal_conv1d_ref(x, w, b, activation="silu")
    cache = torch.zeros(2, 6, width - 1, device=DEV)
    pieces = [causal_conv1d_continue(x[..., a:e], cache, w, b, activation="silu", backend=backend)
              for a, e in [(0, 9), (9, 10), (10, 11), (11, 17)]]
    torch.testing.assert_close(torch.cat(pieces, dim=-1), whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache, x[..., 17 - (width - 1):], rtol=0, atol=0)


def test_continue_names_a_cache_of_the_wrong_width():
    with pytest.raises(ValueError, match=r"conv_state \(batch, dim, width - 1\).*conv_state \(1, 4, 2\)"):
        causal_conv1d_continue(torch.randn(1, 4, 5), torch.zeros(1, 4, 2), torch.randn(4, 4))


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("width,steps", [(4, None), (4, 3), (2, 1), (1, None), (3, 5)],
                         ids=["W4-one", "W4-steps3", "W2-steps1", "W1-one", "W3-steps5"])
def test_update_equals_the_end_of_the_full_convolution(backend, width, steps):
    """Prefill 9 steps with the convolution, then the decoding steps == the last outputs of the convolution
    over the whole sequence, and the state == the last width - 1 inputs."""
    n = steps or 1
    x = make_inputs(2, 11, 9 + n, width)
    w, b = x["weight"], x["bias"]
    full = causal_conv1d_ref(x["x"], w, b, "silu")
    state = torch.zeros(2, 11, width - 1, device=DEV)
    state.copy_(x["x"][..., 9 - (width - 1):9])  # what the prefill leaves in the cache
    new = x["x"][..., 9:] if steps else x["x"][..., 9]
    y = causal_conv1d_update(new, state, w, b, activation="silu", backend=backend)
    assert y.shape == new.shape
    assert rel(y.reshape(full[..., 9:].shape), full[..., 9:]) <= FP32_TOL
    torch.testing.assert_close(state, x["x"][..., x["x"].shape[-1] - (width - 1):], rtol=0, atol=0)


def test_update_in_place_on_a_strided_fp32_state_with_bf16_x():
    """The layer's cache: fp32 state (a strided view here), bf16 inputs; the Triton step matches the PyTorch one."""
    buf = torch.randn(3, 2, 16, 5, device=DEV)
    states = [buf[:, 0, :, 1:4].clone() for _ in range(2)]
    states[0] = buf[:, 0, :, 1:4]  # (3, 16, 3), strides (160, 5, 1): in place through the view
    x = torch.randn(3, 16, device=DEV).bfloat16()
    w, b = torch.randn(16, 4, device=DEV), torch.randn(16, device=DEV)
    y_tri = causal_conv1d_update(x, states[0], w, b, activation="silu", backend="triton")
    y_ref = causal_conv1d_update_ref(x, states[1], w, b, activation="silu")
    assert y_tri.dtype == torch.bfloat16
    assert rel(y_tri, y_ref) <= 1e-2  # both round one fp32 result to bf16 (4e-3): at most one ulp apart
    torch.testing.assert_close(buf[:, 0, :, 1:4], states[1], rtol=0, atol=0)


# ---------------------------------------------------------------------------- dispatcher and errors

def test_backend_resolution(monkeypatch):
    monkeypatch.delenv("HYBRID_CONV_BACKEND", raising=False)
    assert resolve_backend("auto", is_cuda=True, dtype=torch.bfloat16, width=4) == "triton"
    assert resolve_backend("auto", is_cuda=False) == "torch"
    assert resolve_backend("auto", is_cuda=True, dtype=torch.float64) == "torch"
    assert resolve_backend("auto", is_cuda=True, width=9) == "torch"
    assert resolve_backend("ref", is_cuda=True) == "ref"
    monkeypatch.setenv("HYBRID_CONV_BACKEND", "ref")
    assert resolve_backend("auto", is_cuda=True) == "ref"
    assert resolve_backend("torch", is_cuda=True) == "torch"  # an explicit name beats the variable
    monkeypatch.setenv("HYBRID_CONV_BACKEND", "cuda")
    with pytest.raises(ValueError, match="HYBRID_CONV_BACKEND"):
        resolve_backend("auto", is_cuda=True)
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("fast", is_cuda=True)


def _bad(**change):
    x = make_inputs(2, 4, 8, 3, device="cpu")
    x.update(change)
    return x


@pytest.mark.parametrize("inputs,backend,match", [
    pytest.param(_bad(x=torch.randn(4, 8)), "torch", "x must be", id="x-2d"),
    pytest.param(_bad(x=torch.zeros(2, 4, 8, dtype=torch.int32)), "torch", "floating-point", id="x-int"),
    pytest.param(_bad(weight=torch.randn(4, 1, 3)), "torch", r"weight\[:, 0\]", id="weight-conv1d-shape"),
    pytest.param(_bad(weight=torch.randn(5, 3)), "torch", "weight must be", id="weight-dim"),
    pytest.param(_bad(bias=torch.randn(3)), "torch", "bias must be", id="bias-size"),
    pytest.param(_bad(weight=torch.randn(4, 3).half()), "torch", "x's dtype", id="weight-dtype"),
    pytest.param(_bad(initial_states=torch.randn(2, 4, 3)), "torch", "initial_states must be", id="h0-width"),
    pytest.param(_bad(initial_states=torch.randn(2, 4, 2).double()), "torch", "initial_states must have",
                 id="h0-dtype"),
    pytest.param(_bad(initial_states=torch.randn(2, 4, 2), seq_idx=torch.zeros(2, 8, dtype=torch.int32)), "torch",
                 "cannot both", id="h0-and-seq"),
    pytest.param(_bad(seq_idx=torch.zeros(2, 7, dtype=torch.int32)), "torch", "seq_idx must be", id="seq-length"),
    pytest.param(_bad(seq_idx=torch.zeros(2, 8)), "torch", "int32", id="seq-float"),
    pytest.param(_bad(x=torch.randn(2, 4, 8, 3)[..., 0]), "torch", "contiguous", id="x-strides"),
    pytest.param(_bad(weight=torch.randn(4, 9)), "triton", "at most 8", id="triton-width-9"),
    pytest.param(_bad(x=torch.randn(2, 4, 8).double(), weight=torch.randn(4, 3).double(), bias=None), "triton",
                 "float16, bfloat16 or float32", id="triton-f64"),
])
def test_rejects_bad_inputs(inputs, backend, match):
    with pytest.raises((ValueError, TypeError), match=match):
        causal_conv1d(inputs["x"], inputs["weight"], inputs["bias"], activation="silu",
                      initial_states=inputs["initial_states"], seq_idx=inputs["seq_idx"], backend=backend)


def test_rejects_bad_activation_and_update_shapes():
    x, w = torch.randn(2, 4, 8), torch.randn(4, 3)
    with pytest.raises(ValueError, match="activation must be"):
        causal_conv1d(x, w, activation="relu")
    with pytest.raises(ValueError, match="conv_state must be"):
        causal_conv1d_update(x[..., 0], torch.zeros(2, 4, 3), w)
    with pytest.raises(ValueError, match="x must be"):
        causal_conv1d_update(x[0, 0], torch.zeros(2, 4, 2), w)


# ---------------------------------------------------------------------------- GPU, realistic shapes

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("batch,dim,length,width,h0,seq,channel_last", [
    pytest.param(8, 1536, 2048, 4, False, False, False, id="B8-D1536-L2048-W4"),
    pytest.param(2, 1536, 2048, 4, True, False, True, id="B2-D1536-L2048-W4-h0-channel-last"),
    pytest.param(3, 341, 1000, 3, False, True, False, id="B3-D341-L1000-W3-seq"),
    pytest.param(1, 2048, 4097, 2, True, False, False, id="B1-D2048-L4097-W2-h0"),
])
def test_triton_gpu_against_float64(batch, dim, length, width, h0, seq, channel_last, dtype, bwd_method):
    """Kernel error against float64 <= 2 * (error of the PyTorch reference run in the same dtype) + atol.
    The reference in bf16/fp16 rounds its inputs, output and gradients the same way the kernel does; the
    factor 2 and atol (1e-5 relative: fp32 sums of batch * length terms for dweight and dbias in another
    order) leave room for a different summation order. In fp32 the bound is FP32_TOL."""
    inputs = make_inputs(batch, dim, length, width, True, h0, seq, channel_last, dtype=dtype,
                         weight_dtype=torch.float32)
    ours, grads = errors(causal_conv1d, inputs, "silu", backend="triton")
    if dtype == torch.float32:
        bad = {k: e for k, e in ours.items() if not e <= FP32_TOL}
    else:
        floor, _ = errors(causal_conv1d_ref, inputs, "silu", grads=grads)
        bad = {k: (e, floor[k]) for k, e in ours.items() if not e <= 2 * floor[k] + 1e-5}
    assert not bad, f"errors above bound: {bad}"


@pytest.mark.cuda
@pytest.mark.parametrize("batch", [1, 64])
def test_update_gpu_equals_the_convolution(batch):
    x = make_inputs(batch, 1536, 6, 4, dtype=torch.bfloat16, weight_dtype=torch.float32)
    full = causal_conv1d(x["x"], x["weight"], x["bias"], "silu", backend="triton")
    state = x["x"][..., :3].float().contiguous()
    ys = [causal_conv1d_update(x["x"][..., t], state, x["weight"], x["bias"], "silu", backend="triton")
          for t in range(3, 6)]
    assert rel(torch.stack(ys, -1), full[..., 3:]) <= 1e-2  # bf16 outputs, one rounding each (4e-3)


@pytest.mark.cuda
def test_triton_gpu_matches_torch_conv1d_bf16():
    """The kernel against what the layer ran before it: nn.functional.conv1d + silu in bf16 (cuDNN)."""
    x = make_inputs(4, 1536, 1024, 4, dtype=torch.bfloat16)
    ours = causal_conv1d(x["x"], x["weight"], x["bias"], "silu", backend="triton")
    theirs = F.silu(F.conv1d(x["x"], x["weight"][:, None], x["bias"], padding=3, groups=1536)[..., :1024])
    assert rel(ours, theirs) <= 1e-2  # two bf16 roundings apart at most (cuDNN rounds the conv, then silu)


# ---------------------------------------------------------------------------- the Mamba layer

def test_mamba_layer_conv_backends_agree_in_training_and_decoding():
    """The layer's fused conv + SiLU on the Triton backend against the F.conv1d one: forward, every
    parameter gradient, and prefill (with state) followed by decoding steps."""
    from hybrid.layers.mamba import Mamba, MambaConfig
    layers = [Mamba(8, MambaConfig(d_state=4, scan_backend="ref", conv_backend=b)).to(DEV) for b in ("torch", "triton")]
    layers[1].load_state_dict(layers[0].state_dict())
    u = torch.randn(2, 13, 8, device=DEV)
    outs = [m(u) for m in layers]
    for m, out in zip(layers, outs):
        out.square().sum().backward()
    assert rel(outs[1], outs[0]) <= FP32_TOL
    for (name, p0), p1 in zip(layers[0].named_parameters(), layers[1].parameters()):
        assert rel(p1.grad, p0.grad) <= FP32_TOL, name
    with torch.no_grad():
        steps = []
        for m in layers:
            state = m.init_state(2, device=DEV)
            steps.append(torch.cat([m(u[:, :9], state)] + [m(u[:, t:t + 1], state) for t in range(9, 13)], 1))
    assert rel(steps[1], outs[0]) <= FP32_TOL and rel(steps[0], outs[0]) <= FP32_TOL
