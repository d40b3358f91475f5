"""SSD Triton kernels (hybrid/kernels/ssd/triton_ssd.py): y, the final state and every gradient against the
sequential recurrence `ssd_ref` in float64 (float64_maths).

Without a GPU the kernels run under TRITON_INTERPRET=1 (set below, before any Triton kernel is defined) at
small awkward shapes; with one they run compiled on the same cases. Tests marked `cuda` use a realistic
shape against the chunked PyTorch backend.
"""
import contextlib
import dataclasses
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hybrid.kernels.ssd.chunked import ssd_chunked  # noqa: E402
from hybrid.kernels.ssd.reference import ssd_ref  # noqa: E402
from hybrid.kernels.ssd.triton_ssd import INTERPRET, ssd_triton  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _interpreter_without_overflow_checks():
    """The interpreter checks every int32 index operation for overflow, a third of its time on these kernels
    (the compiled kernels do no such check). Off for this module only."""
    import triton.runtime.interpreter as interp
    options = getattr(interp, "interpreter_builder", None) and interp.interpreter_builder.options
    if not INTERPRET or not hasattr(options, "sanitize_overflow"):
        yield
        return
    interp.interpreter_builder.options = dataclasses.replace(options, sanitize_overflow=False)
    yield
    interp.interpreter_builder.options = options


DEV = "cuda" if torch.cuda.is_available() else "cpu"
FLOATS = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")
LIMIT = (0.05, 0.6)  # with the dt below, some steps fall outside on both sides


def doc_ids(batch, length, chunk, device=DEV):
    """Packed documents, ids rising along the length: boundaries ~every 8 steps, one exactly at the
    second chunk's start, documents of one step at 3 and 4."""
    starts = torch.rand(batch, length, device=device) < 0.12
    starts[:, 0] = False
    if length > 5:
        starts[:, 3:5] = True
    if length > chunk:
        starts[:, chunk] = True
    return starts.cumsum(-1).to(torch.int32)


def make_inputs(batch, length, heads, headdim, dstate, groups, chunk, D=None, z=False, softplus=False,
                limit=False, h0=False, seq=False, dtype=torch.float32, device=DEV):
    """D: None, "head" (heads,) or "channel" (heads, headdim). x, dt, B, C, z in `dtype`; A, D, dt_bias and
    initial_states fp32 (as the layers hold them)."""
    r = lambda *s: torch.randn(*s, device=device)  # noqa: E731
    dt = r(batch, length, heads) * 0.7 - 1.0 if softplus else torch.rand(batch, length, heads, device=device) * 0.6
    return {
        "x": r(batch, length, heads, headdim).to(dtype),
        "dt": dt.to(dtype),
        "A": -(torch.rand(heads, device=device) + 0.3),
        "B": r(batch, length, groups, dstate).to(dtype),
        "C": r(batch, length, groups, dstate).to(dtype),
        "D": None if D is None else r(heads) if D == "head" else r(heads, headdim),
        "z": r(batch, length, heads, headdim).to(dtype) if z else None,
        "dt_bias": r(heads) * 0.5 if softplus else None,
        "initial_states": r(batch, heads, headdim, dstate) if h0 else None,
        "seq_idx": doc_ids(batch, length, chunk, device) if seq else None,
        "dt_softplus": softplus,
        "dt_limit": LIMIT if limit else (0.0, float("inf")),
    }


@contextlib.contextmanager
def float64_maths():
    """The references compute in fp32 whatever their inputs' dtype (reference.py and chunked.py cast with
    `.float()`). For a float64 oracle, `.float()` leaves float64 tensors as they are inside this block; the
    states the references start from zeros in fp32 are promoted by their first update (exact)."""
    original = torch.Tensor.float
    torch.Tensor.float = lambda self, *a, **k: self if self.dtype == torch.float64 else original(self, *a, **k)
    try:
        yield
    finally:
        torch.Tensor.float = original


def run(fn, inputs, cast=None, grads=None, **kw):
    """y, the final state and the gradient of every float input for loss = <y, g_y> + <final, g_final>;
    with cast=torch.float64, the float64 oracle (float64 inputs and float64 maths)."""
    if cast == torch.float64:
        with float64_maths():
            return _run(fn, inputs, cast, grads, **kw)
    return _run(fn, inputs, cast, grads, **kw)


def _run(fn, inputs, cast, grads, **kw):
    leaves = {k: None if inputs[k] is None else (inputs[k].to(cast) if cast else inputs[k]).detach().clone()
              .requires_grad_() for k in FLOATS}
    y, final = fn(**leaves, seq_idx=inputs["seq_idx"], dt_softplus=inputs["dt_softplus"],
                  dt_limit=inputs["dt_limit"], return_final_states=True, **kw)
    if grads is None:
        grads = (torch.randn(y.shape, dtype=torch.float64, device=y.device),
                 torch.randn(final.shape, dtype=torch.float64, device=y.device))
    ((y.double() * grads[0]).sum() + (final.double() * grads[1]).sum()).backward()
    return y, final, {k: v.grad for k, v in leaves.items() if v is not None}, grads


def rel(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def errors(out, ref):
    """Relative errors of (y, final, grads) against the reference's."""
    errs = {"y": rel(out[0], ref[0]), "final": rel(out[1], ref[1])}
    errs.update({f"d{k}": rel(out[2][k], ref[2][k]) for k in ref[2]})
    return errs


# Covering set (the interpreter pays per program and per operation, so not the full cross product): lengths
# 1, 7 (< chunk), 32 (whole chunks), 33 and 70 (a partial last chunk), a chunk of 24 (not a power of two),
# batch 1 and 2, groups 1 and 2, headdim and d_state 4..16, and every optional input on and off.
# (batch, length, heads, headdim, dstate, groups, chunk, D, z, softplus (+ dt_bias), limit, h0, seq)
CASES = [
    pytest.param(1, 1, 2, 4, 4, 1, 16, "head", False, False, False, False, False, id="B1-L1-H2-P4-N4-D"),
    pytest.param(2, 7, 3, 8, 8, 1, 16, None, True, False, False, True, False, id="B2-L7-H3-P8-N8-z-h0"),
    pytest.param(2, 33, 4, 16, 8, 2, 16, "channel", False, True, False, False, True,
                 id="B2-L33-H4-P16-N8-G2-Dchan-softplus-seq"),
    pytest.param(1, 70, 4, 4, 16, 2, 32, None, True, False, True, True, True,
                 id="B1-L70-H4-P4-N16-G2-Q32-z-limit-h0-seq"),
    pytest.param(2, 70, 2, 16, 4, 1, 16, "head", True, True, True, True, False,
                 id="B2-L70-H2-P16-N4-D-z-softplus-limit-h0"),
    pytest.param(1, 32, 2, 8, 8, 2, 16, "channel", True, True, False, True, True,
                 id="B1-L32-H2-P8-N8-G2-whole-chunks-seq-h0"),
    pytest.param(1, 50, 2, 4, 8, 1, 24, None, False, False, False, False, False, id="B1-L50-H2-P4-N8-Q24"),
]

# float32 kernels against float64: every output sums <= 70 products of O(1) terms in fp32 (~1e-7 relative;
# dA, dD and d dt_bias sum over the whole batch and length). The largest error per case is 1.4e-7..1.2e-6
# (dA or d dt_bias mostly); 2e-5 leaves >10x headroom, and is far below what an indexing, masking or decay
# error gives (> 1e-3).
FP32_TOL = 2e-5


@pytest.mark.parametrize("batch,length,heads,headdim,dstate,groups,chunk,D,z,softplus,limit,h0,seq", CASES)
def test_triton_matches_reference(batch, length, heads, headdim, dstate, groups, chunk, D, z, softplus, limit,
                                  h0, seq):
    inputs = make_inputs(batch, length, heads, headdim, dstate, groups, chunk, D, z, softplus, limit, h0, seq)
    ref = run(ssd_ref, inputs, cast=torch.float64)
    out = run(ssd_triton, inputs, grads=ref[3], chunk_size=chunk)
    assert out[0].dtype == inputs["x"].dtype and out[0].shape == inputs["x"].shape
    assert out[1].dtype == torch.float32
    errs = errors(out, ref)
    bad = {k: e for k, e in errs.items() if not e <= FP32_TOL}  # `not <=` also catches NaN
    assert not bad, f"relative errors above {FP32_TOL}: {bad}"


@pytest.mark.parametrize("config", [dict(BM=16, BM_DX=32, BK=32, BP=16, BN=16, BLOCK=128, warps=1, stages=1),
                                    dict(BM=32, BM_DX=16, BK=16, BP=16, BN=16, BLOCK=256, warps=1, stages=1)],
                         ids=["rows16-k32", "rows32-k16"])
def test_triton_several_tiles_per_chunk(config, monkeypatch):
    """The GPU's layout of the work in miniature: chunks of 48 steps in 2-3 row tiles (the causal tile skipping,
    the dCB tiles on and below the diagonal, the d a-hat partials of several tiles), headdim 20 and d_state 24
    in 2 tiles each (the partial sums over channel tiles), 4 state-passing blocks (the carry partials). The
    default interpreter tiles cover a whole chunk, head and state in one program."""
    from hybrid.kernels.ssd import triton_ssd
    monkeypatch.setattr(triton_ssd, "_config", lambda chunk, headdim, dstate: config)
    inputs = make_inputs(1, 70, 2, 20, 24, 2, 48, "channel", True, True, True, True, True)
    ref = run(ssd_ref, inputs, cast=torch.float64)
    errs = errors(run(ssd_triton, inputs, grads=ref[3], chunk_size=48), ref)
    bad = {k: e for k, e in errs.items() if not e <= FP32_TOL}
    assert not bad, f"relative errors above {FP32_TOL}: {bad}"



def test_triton_per_kernel_tuning(monkeypatch):
    """TUNING's overrides give each kernel its own tiles: here the forward scan and dx in row and channel
    tiles of 16, dCB in rows of 32, the chunk states and d prev in other channel tiles, the rest whole-chunk
    (the interpreter's defaults), so a grid or partial buffer sized from another kernel's tiles would give
    wrong results."""
    from hybrid.kernels.ssd import triton_ssd
    monkeypatch.setattr(triton_ssd, "TUNING", triton_ssd.parse_tuning(
        "scan_fwd:BM=16,BK=16,BP=16,BN=16; dx:BM_DX=16,BP=16,BN=16,BK=16; dcb:BM=32,BP=16;"
        "dbc:BM=16,BN=16,BK=16; states:BP=16,BN=32,BK=16; dprev:BP=32,BN=16,BK=32; pass_fwd:BLOCK=64;"
        "pass_bwd:BLOCK=128"))
    inputs = make_inputs(1, 70, 2, 20, 24, 2, 48, "channel", True, True, True, True, True)
    ref = run(ssd_ref, inputs, cast=torch.float64)
    errs = errors(run(ssd_triton, inputs, grads=ref[3], chunk_size=48), ref)
    bad = {k: e for k, e in errs.items() if not e <= FP32_TOL}
    assert not bad, f"relative errors above {FP32_TOL}: {bad}"


@pytest.mark.parametrize("text,message", [
    ("scan:BM=16", "KERNEL one of"), ("scan_fwd BM=16", "KERNEL one of"), ("dx:BQ=16", "KEY one of"),
    ("dx:BM=16", "what dx reads"), ("dx:BK=0", "POSITIVE_INT"), ("dx:BK=x", "POSITIVE_INT"),
    ("dx:BK=24", "power of two"), ("dx:warps=6", "power of two"), ("dx:BN=8", "16 or more")])
def test_tuning_rejects_what_it_cannot_use(text, message):
    from hybrid.kernels.ssd.triton_ssd import TUNING_VAR, parse_tuning
    with pytest.raises(ValueError, match=message) as err:
        parse_tuning(text)
    assert TUNING_VAR in str(err.value)


def test_tuning_parses_several_kernels():
    from hybrid.kernels.ssd.triton_ssd import parse_tuning
    assert parse_tuning(" scan_fwd: stages=3, BK=32 ;dx:warps=4;") == {"scan_fwd": {"stages": 3, "BK": 32},
                                                                    "dx": {"warps": 4}}
    assert parse_tuning("") == {}


# Half precision: against float64 on the same rounded inputs, the kernel's error <= 2 * the error of the
# PyTorch reference run on the same half inputs (fp32 maths; y, and so the gradient entering the backward,
# and the gradients of the half inputs rounded once) + an atol per kind of output. The kernels add roundings
# of their own: the matmul operands (the exp(.) dt-scaled CB, the states, g) are rounded to the half dtype for
# the tensor cores (under the interpreter too: triton_ssd._operand). Measured over seeds and shapes
# (L 45..300, chunks 16..256, with and without documents):
#   y and the per-element gradients: 1.0-1.7x the reference's error; the atol only guards a zero floor.
#   (dz, with y before the gate kept in the half dtype for the backward: 1.4x in bf16 and fp16, against
#   1.25x when it was kept in fp32.)
#   the fp32 final state: the reference's error is ~1e-7 (fp32 maths), ours 1.8-2.5e-4 (fp16), 1.4-2.2e-3 (bf16).
#   dA, dD, d dt_bias, sums over the batch and the length: the reference's one rounding (of y) averages out
#   over the b L P terms, ours partly does not (a chunk's rounded state serves all its steps), so its floor
#   is no scale for them: bf16 up to 1.3e-2 against a floor of 3.4e-3, fp16 up to 2.3e-3 (floor 1.1e-3).
HALF_ATOL = {  # (per-element outputs, final state, sums over batch and length)
    torch.bfloat16: (1e-3, 3e-3, 2e-2),
    torch.float16: (1e-4, 4e-4, 3e-3),
}
REDUCED = ("dA", "dD", "ddt_bias")


def half_precision_failures(ours, floor, atol):
    """{output: (error, reference error)} of the outputs above their bound (see HALF_ATOL)."""
    bound = {k: 2 * floor[k] + (atol[2] if k in REDUCED else atol[1] if k == "final" else atol[0]) for k in ours}
    return {k: (e, floor[k]) for k, e in ours.items() if not e <= bound[k]}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_triton_half_precision(dtype):
    inputs = make_inputs(2, 45, 4, 16, 16, 2, 16, "channel", True, True, True, True, True, dtype=dtype)
    o64 = run(ssd_ref, inputs, cast=torch.float64)
    out = run(ssd_triton, inputs, grads=o64[3], chunk_size=16)
    floor = errors(run(ssd_ref, inputs, grads=o64[3]), o64)
    assert out[0].dtype == out[2]["x"].dtype == out[2]["B"].dtype == out[2]["dt"].dtype == dtype
    bad = half_precision_failures(errors(out, o64), floor, HALF_ATOL[dtype])
    assert not bad, f"errors above 2 * reference + atol {HALF_ATOL[dtype]}: {bad}"


def test_triton_only_final_state_used():
    """A loss on the final state alone: no gradient reaches y (the backward gets None for it)."""
    inputs = make_inputs(1, 40, 2, 8, 8, 1, 16, "head", True, True, False, True, True)
    leaves = {k: None if inputs[k] is None else inputs[k].detach().clone().requires_grad_() for k in FLOATS}
    ref_leaves = {k: None if v is None else v.detach().double().requires_grad_() for k, v in leaves.items()}
    kw = dict(seq_idx=inputs["seq_idx"], dt_softplus=True, return_final_states=True)
    _, final = ssd_triton(**leaves, chunk_size=16, **kw)
    final.sum().backward()
    with float64_maths():
        _, final_ref = ssd_ref(**ref_leaves, **kw)
        final_ref.sum().backward()
    assert rel(final, final_ref) <= FP32_TOL
    assert leaves["z"].grad is None or not leaves["z"].grad.any()
    for k, v in leaves.items():
        if v is not None:  # z does not reach the final state: None from the reference, zeros from the kernels
            want = ref_leaves[k].grad if ref_leaves[k].grad is not None else torch.zeros_like(ref_leaves[k])
            assert v.grad is not None and rel(v.grad, want) <= FP32_TOL, k


def test_triton_gradients_without_final_state():
    """return_final_states=False: the backward gets no final-state gradient (the kernels skip it)."""
    inputs = make_inputs(2, 37, 2, 8, 4, 2, 16, "head", True, True, False, True, True)
    grads = {}
    for fn in (ssd_triton, ssd_ref):
        leaves = {k: None if inputs[k] is None else inputs[k].detach().clone().requires_grad_() for k in FLOATS}
        kw = {"chunk_size": 16} if fn is ssd_triton else {}
        y = fn(**leaves, seq_idx=inputs["seq_idx"], dt_softplus=True, **kw)
        (y * torch.linspace(-1, 1, y.numel(), device=DEV).view(y.shape)).sum().backward()
        grads[fn] = {k: v.grad for k, v in leaves.items() if v is not None}
    for k, ref in grads[ssd_ref].items():
        assert rel(grads[ssd_triton][k], ref) <= FP32_TOL, k  # fp32 against fp32: the same bound


def test_triton_without_grad_and_without_final_state():
    inputs = make_inputs(2, 20, 2, 4, 4, 1, 16, z=True, h0=True)
    args = {k: inputs[k] for k in FLOATS}
    with torch.no_grad():
        y = ssd_triton(**args, chunk_size=8)
    assert isinstance(y, torch.Tensor)
    assert rel(y, ssd_ref(**args)) <= FP32_TOL


def test_triton_strided_inputs():
    """x, z, B and C as slices of one projection (batch, length, features), as a Mamba-2 layer makes them."""
    b, L, h, p, g, n = 1, 30, 2, 8, 2, 4
    proj = torch.randn(b, L, 2 * h * p + 2 * g * n + h, device=DEV)
    z, x = proj[..., :h * p].view(b, L, h, p), proj[..., h * p:2 * h * p].view(b, L, h, p)
    B = proj[..., 2 * h * p:2 * h * p + g * n].view(b, L, g, n)
    C = proj[..., 2 * h * p + g * n:2 * h * p + 2 * g * n].view(b, L, g, n)
    dt = proj[..., -h:]
    A = -torch.rand(h, device=DEV) - 0.5
    kw = dict(z=z, dt_bias=torch.zeros(h, device=DEV), dt_softplus=True, return_final_states=True)
    y, final = ssd_triton(x, dt, A, B, C, chunk_size=16, **kw)
    y_ref, final_ref = ssd_ref(x, dt, A, B, C, **kw)
    assert rel(y, y_ref) <= FP32_TOL and rel(final, final_ref) <= FP32_TOL


@pytest.mark.parametrize("groups,seq,h0", [pytest.param(2, True, False, id="G2-seq"), pytest.param(1, False, True, id="h0")])
def test_packed_xbc_gives_the_split_views_results_and_one_gradient(groups, seq, h0):
    """ssd_packed / ssd_triton_packed on x, B and C side by side in one tensor (a Mamba-2 conv output): the
    same y, final state and gradients, bit for bit, as ssd_triton on split views of it, xbc's gradient
    being the three gradients side by side; the chunked backend through ssd_packed agrees too."""
    from hybrid.kernels.ssd import ssd_packed
    from hybrid.kernels.ssd.triton_ssd import ssd_triton_packed

    b, L, h, p, n, chunk = 2, 33, 4, 8, 4, 16
    shape = (h, p, groups, n)
    xbc = torch.randn(b, L, h * p + 2 * groups * n, device=DEV)
    dt, z = torch.randn(b, L, h, device=DEV) * 0.7 - 1.0, torch.randn(b, L, h, p, device=DEV)
    A, D, dt_bias = -(torch.rand(h, device=DEV) + 0.3), torch.randn(h, device=DEV), torch.randn(h, device=DEV) * 0.5
    kw = dict(chunk_size=chunk, D=D, z=z, dt_bias=dt_bias, dt_softplus=True, return_final_states=True,
              initial_states=torch.randn(b, h, p, n, device=DEV) if h0 else None,
              seq_idx=doc_ids(b, L, chunk) if seq else None)
    gy, gf = torch.randn(b, L, h, p, device=DEV), torch.randn(b, h, p, n, device=DEV)

    def grads(fn, *inputs):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        y, final = fn(*leaves)
        ((y * gy).sum() + (final * gf).sum()).backward()
        return y, final, [t.grad for t in leaves]

    def split(xbc_, dt_):
        x, B, C = xbc_.split([h * p, groups * n, groups * n], dim=-1)
        return ssd_triton(x.unflatten(-1, (h, p)), dt_, A, B.unflatten(-1, (groups, n)), C.unflatten(-1, (groups, n)), **kw)

    y, final, (dxbc, ddt) = grads(lambda x_, d_: ssd_triton_packed(x_, d_, A, shape, **kw), xbc, dt)
    y0, final0, (dxbc0, ddt0) = grads(split, xbc, dt)
    assert torch.equal(y, y0) and torch.equal(final, final0) and torch.equal(dxbc, dxbc0) and torch.equal(ddt, ddt0)
    y1, final1, (dxbc1, _) = grads(lambda x_, d_: ssd_packed(x_, d_, A, shape, backend="torch", **kw), xbc, dt)
    assert rel(y1, y) <= FP32_TOL and rel(final1, final) <= FP32_TOL and rel(dxbc1, dxbc) <= FP32_TOL
    with pytest.raises(ValueError, match=r"xbc must be \(batch, length, heads \* headdim \+ 2 \* groups \* d_state\)"):
        ssd_packed(xbc[..., 1:], dt, A, shape)


def test_triton_length_zero():
    x = torch.zeros(2, 0, 3, 4, device=DEV)
    h0 = torch.randn(2, 3, 4, 5, device=DEV)
    y, final = ssd_triton(x, torch.zeros(2, 0, 3, device=DEV), -torch.ones(3, device=DEV),
                          torch.zeros(2, 0, 1, 5, device=DEV), torch.zeros(2, 0, 1, 5, device=DEV),
                          initial_states=h0, return_final_states=True)
    assert y.shape == x.shape and torch.equal(final, h0)


def test_triton_rejects_what_it_cannot_run():
    x = torch.zeros(1, 4, 2, 4, dtype=torch.float64, device=DEV)
    bc = torch.zeros(1, 4, 1, 4, dtype=torch.float64, device=DEV)
    dt, A = torch.zeros(1, 4, 2, device=DEV), -torch.ones(2, device=DEV)
    with pytest.raises(TypeError, match="backend='torch'"):
        ssd_triton(x, dt, A, bc, bc)
    with pytest.raises(ValueError, match="D must have shape"):
        ssd_triton(x.float(), dt, A, bc.float(), bc.float(), D=torch.ones(4, device=DEV))
    with pytest.raises(ValueError, match="groups dividing heads"):
        ssd_triton(x.float(), dt, A, torch.zeros(1, 4, 3, 4, device=DEV), torch.zeros(1, 4, 3, 4, device=DEV))


# ---------------------------------------------------------------------------- GPU, realistic shapes

# (batch, length, heads, headdim, dstate, groups, seq)
GPU_CASES = [
    pytest.param(2, 2048, 32, 64, 128, 1, False, id="B2-L2048-H32-P64-N128"),
    pytest.param(2, 2048, 32, 64, 128, 2, True, id="B2-L2048-H32-P64-N128-G2-seq"),
    pytest.param(1, 1000, 8, 64, 128, 1, False, id="B1-L1000-H8-P64-N128-partial-chunk"),
]


@pytest.mark.cuda
@pytest.mark.parametrize("batch,length,heads,headdim,dstate,groups,seq", GPU_CASES)
def test_triton_bf16_against_chunked_on_gpu(batch, length, heads, headdim, dstate, groups, seq):
    """bf16 at a Mamba-2 shape, chunk 256, with D, z, dt_bias + softplus and initial states: against the
    chunked PyTorch backend in float64 on the same inputs, error <= 2 * that of the chunked backend on the
    bf16 inputs (fp32 maths) + the atols of test_triton_half_precision (HALF_ATOL, same reasons), the one of
    the final state doubled: 256-step chunks sum more rounded terms than the CPU tests' 16 (the CPU
    emulation at (1, 300, 2, 16, 16), chunk 256, measured 1.4-2.2e-3 for it over 6 seeds)."""
    inputs = make_inputs(batch, length, heads, headdim, dstate, groups, 256, "head", True, True, False, True, seq,
                         dtype=torch.bfloat16, device="cuda")
    if seq:  # long documents: the boundaries of doc_ids, every ~8 steps, are not what a model sees
        inputs["seq_idx"] = (torch.arange(length, device="cuda") // 700).expand(batch, -1).to(torch.int32).contiguous()
    o64 = run(ssd_chunked, inputs, cast=torch.float64, chunk_size=256)
    out = run(ssd_triton, inputs, grads=o64[3], chunk_size=256)
    floor = errors(run(ssd_chunked, inputs, grads=o64[3], chunk_size=256), o64)
    element, final, reduced = HALF_ATOL[torch.bfloat16]
    atol = (element, 2 * final, reduced)
    bad = half_precision_failures(errors(out, o64), floor, atol)
    assert not bad, f"errors above 2 * chunked + atol {atol}: {bad}"


@pytest.mark.cuda
def test_triton_fp32_against_chunked_on_gpu():
    """fp32 inputs take the tf32x3 matmuls: about fp32 accuracy at a realistic shape."""
    inputs = make_inputs(1, 1024, 8, 64, 128, 1, 256, "channel", True, True, True, True, False, device="cuda")
    o64 = run(ssd_chunked, inputs, cast=torch.float64, chunk_size=256)
    errs = errors(run(ssd_triton, inputs, grads=o64[3], chunk_size=256), o64)
    # fp32 sums over 256-step chunks: on the CPU at (1, 1024, 2, 32, 32), chunk 256, the kernels' largest error
    # is dA's 1.7e-5 (d a-hat sums +T and -T terms, then a reverse cumsum; the chunked backend in fp32: 4.4e-5)
    bad = {k: e for k, e in errs.items() if not e <= 1e-4}
    assert not bad, f"relative errors above 1e-4: {bad}"


def test_measured_settings_apply_to_half_operands_on_the_gpu_and_tuning_overrides_them(monkeypatch):
    """MEASURED's per-kernel settings come after _config's and before TUNING's, on the GPU with half operands
    only (fp32 operands keep _config's; the interpreter keeps its whole-chunk tiles)."""
    import triton.language as tl
    from hybrid.kernels.ssd import triton_ssd
    monkeypatch.setattr(triton_ssd, "INTERPRET", False)
    monkeypatch.setattr(triton_ssd, "TUNING", triton_ssd.parse_tuning("scan_fwd:BK=64"))
    base = triton_ssd._config(256, 64, 128)
    half = triton_ssd._kernel_configs(256, 64, 128, tl.bfloat16)
    assert triton_ssd._tuned(half, "dx")["BM_DX"] == triton_ssd.MEASURED["dx"]["BM_DX"] != base["BM_DX"]
    assert triton_ssd._tuned(half, "scan_fwd")["BK"] == 64 and triton_ssd._tuned(half, "scan_fwd")["warps"] == 4
    assert triton_ssd._tuned(half, "cb") == {**base, "kernels": triton_ssd.MEASURED}
    fp32 = triton_ssd._kernel_configs(256, 64, 128, tl.float32)
    assert "kernels" not in fp32 and triton_ssd._tuned(fp32, "dx")["BM_DX"] == base["BM_DX"]
    monkeypatch.setattr(triton_ssd, "INTERPRET", True)
    assert "kernels" not in triton_ssd._kernel_configs(256, 64, 128, tl.bfloat16)
