"""The mamba2 layer: mamba_ssm's Mamba2 parameters and outputs, decoding equal to the parallel
forward, and its place in a model."""
import os
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():  # the Triton conv runs under the interpreter (before any kernel is defined)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hybrid.generation import state_tensors  # noqa: E402
from hybrid.layers.mamba2 import Mamba2, Mamba2Config  # noqa: E402

PEERS = Path(__file__).resolve().parents[3] / "shared" / "peers" / "mamba"

VARIANTS = [
    pytest.param(dict(d_state=8, headdim=16, chunk_size=8), id="default-norm"),
    pytest.param(dict(d_state=8, headdim=8, ngroups=2, D_has_hdim=True, norm_before_gate=True, chunk_size=4),
                 id="G2-Dhdim-norm-before-gate"),
    pytest.param(dict(d_state=4, headdim=8, rmsnorm=False, d_ssm=32, chunk_size=16), id="no-norm-mlp-part"),
]


@pytest.mark.parametrize("cfg", VARIANTS)
def test_decoding_equals_the_parallel_forward(cfg):
    torch.manual_seed(0)
    m = Mamba2(32, Mamba2Config(**cfg))
    u = torch.randn(2, 19, 32)
    whole = m(u)
    state = m.init_state(2)
    steps = [m(u[:, :6], state), m(u[:, 6:7], state), m(u[:, 7:9], state)]  # prefill, a step, a short chunk
    steps += [m(u[:, t:t + 1], state) for t in range(9, 19)]
    torch.testing.assert_close(torch.cat(steps, dim=1), whole, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_decoding_keeps_the_step_constants_with_the_state():
    """-exp(A_log), D and dt_bias in fp32 are made by the first step and reused (as MambaState's): they
    are not state tensors (a CUDA graph's snapshot leaves them alone), and a state goes on decoding the
    weights it started with while a fresh state takes the new ones."""
    m = Mamba2(32, Mamba2Config(d_state=8, headdim=8, D_has_hdim=True, chunk_size=4))
    u = torch.randn(2, 6, 32)
    states = [m.init_state(2), m.init_state(2)]
    for state in states:
        m(u[:, :3], state)
        assert state.step_constants is None  # a prefill makes none
        m(u[:, 3:4], state)
    A, D, dt_bias = constants = states[0].step_constants
    assert torch.equal(A, -torch.exp(m.A_log)) and D.shape == (m.nheads, 8) and torch.equal(dt_bias, m.dt_bias)
    m(u[:, 4:5], states[0])
    assert states[0].step_constants is constants
    assert [id(t) for t in state_tensors(states[0])] == [id(states[0].conv), id(states[0].ssm)]

    m(u[:, 4:5], states[1])
    m.A_log.add_(1.0)
    old_weights = m(u[:, 5:6], states[1])  # from the constants made before the change
    fresh = m.init_state(2)
    m(u[:, :1], fresh)
    torch.testing.assert_close(fresh.step_constants[0], -torch.exp(m.A_log), rtol=0, atol=0)
    m.A_log.sub_(1.0)
    torch.testing.assert_close(old_weights, m(u[:, 5:6], states[0]), rtol=0, atol=0)


def test_backends_agree_forward_and_backward():
    """The chunked torch SSD, the reference and the Triton kernels (under the interpreter on the CPU; their
    packed path, x, B and C as views of the conv output with one gradient tensor)."""
    torch.manual_seed(0)
    outs = []
    for backend in ("torch", "ref", "triton"):
        torch.manual_seed(0)
        m = Mamba2(24, Mamba2Config(d_state=6, headdim=12, ngroups=2, chunk_size=5, ssd_backend=backend))
        u = torch.randn(2, 13, 24, requires_grad=True)
        y = m(u)
        y.square().sum().backward()
        outs.append((y, u.grad, {n: p.grad for n, p in m.named_parameters()}))
    for other in outs[1:]:
        torch.testing.assert_close(outs[0][0], other[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(outs[0][1], other[1], rtol=1e-4, atol=1e-5)
        for name, grad in outs[0][2].items():
            torch.testing.assert_close(grad, other[2][name], rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_init_follows_mamba2_defaults():
    m = Mamba2(64, Mamba2Config())
    assert (m.d_inner, m.nheads, m.conv_dim) == (128, 2, 128 + 2 * 128)
    assert m.in_proj.weight.shape == (2 * 128 + 2 * 128 + 2, 64) and m.out_proj.bias is None
    dt = F.softplus(m.dt_bias)
    assert ((dt >= 1e-3 - 1e-7) & (dt <= 0.1 + 1e-7)).all()
    A = torch.exp(m.A_log)
    assert ((A >= 1) & (A <= 16)).all() and torch.equal(m.D, torch.ones(2))


def test_bad_head_layout_is_refused():
    with pytest.raises(ValueError, match="whole number"):
        Mamba2(33, Mamba2Config(expand=1.5, headdim=8))
    with pytest.raises(ValueError, match="headdim"):
        Mamba2(48, Mamba2Config(headdim=40))
    with pytest.raises(ValueError, match="ngroups"):
        Mamba2(64, Mamba2Config(headdim=32, ngroups=3))


def _peer_ssd(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False, seq_idx=None,
              cu_seqlens=None, dt_limit=(0.0, float("inf")), return_final_states=False, **_):
    """mamba_chunk_scan_combined's maths through the peer's own pure-PyTorch SSD (ssd_minimal)."""
    from mamba_ssm.modules.ssd_minimal import ssd_minimal_discrete

    assert seq_idx is None and cu_seqlens is None
    dt = dt.float() + (dt_bias.float() if dt_bias is not None else 0)
    dt = F.softplus(dt) if dt_softplus else dt
    dt = dt.clamp(*dt_limit)
    heads = x.shape[2]
    Bh, Ch = (t.float().repeat_interleave(heads // t.shape[2], dim=2) for t in (B, C))
    y, final = ssd_minimal_discrete(x.float() * dt[..., None], A.float() * dt, Bh, Ch, block_len=x.shape[1])
    if D is not None:
        y = y + x.float() * (D[:, None] if D.dim() == 1 else D)
    if z is not None:
        y = y * F.silu(z.float())
    return (y.to(x.dtype), final) if return_final_states else y.to(x.dtype)


def _import_peer_mamba2(monkeypatch):
    """mamba_ssm's Mamba2 on its PyTorch paths, patched for this test only."""
    if not PEERS.is_dir():
        pytest.skip(f"mamba_ssm peer sources not found at {PEERS}")
    if "huggingface_hub" not in sys.modules:  # imported for a mixin only
        hub = types.ModuleType("huggingface_hub")
        hub.PyTorchModelHubMixin = type("PyTorchModelHubMixin", (), {})
        monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    monkeypatch.syspath_prepend(str(PEERS))
    try:
        import mamba_ssm.modules.mamba2 as peer
        from mamba_ssm.ops.triton.layernorm_gated import rms_norm_ref
    except ImportError as err:
        pytest.skip(f"cannot import the mamba_ssm peer: {err}")
    monkeypatch.setattr(peer, "mamba_chunk_scan_combined", _peer_ssd)  # its maths, in the peer's PyTorch
    monkeypatch.setattr(peer, "selective_state_update", None)  # its PyTorch decoding step
    monkeypatch.setattr(peer.RMSNormGated, "forward", lambda self, x, z=None: rms_norm_ref(
        x, self.weight, self.bias, z=z, eps=self.eps, group_size=self.group_size, norm_before_gate=self.norm_before_gate))
    return peer.Mamba2


@pytest.mark.parametrize("kwargs", [
    pytest.param(dict(d_state=16, headdim=16), id="G1"),
    pytest.param(dict(d_state=8, headdim=8, ngroups=2, D_has_hdim=True, norm_before_gate=True), id="G2-Dhdim"),
    pytest.param(dict(d_state=8, headdim=16, d_ssm=32, rmsnorm=False), id="mlp-part-no-norm"),
])
def test_mamba_ssm_mamba2_weights_load_and_agree(kwargs, monkeypatch):
    PeerMamba2 = _import_peer_mamba2(monkeypatch)
    torch.manual_seed(0)
    theirs = PeerMamba2(40, use_mem_eff_path=False, **kwargs)
    ours = Mamba2(40, Mamba2Config(**kwargs))
    assert {k: v.shape for k, v in theirs.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}
    ours.load_state_dict(theirs.state_dict())
    u = torch.randn(2, 24, 40)
    torch.testing.assert_close(ours(u), theirs(u), rtol=1e-4, atol=1e-5)


def test_mamba_ssm_mamba2_decoding_step_agrees(monkeypatch):
    PeerMamba2 = _import_peer_mamba2(monkeypatch)
    torch.manual_seed(0)
    theirs = PeerMamba2(40, d_state=8, headdim=16, use_mem_eff_path=False)
    ours = Mamba2(40, Mamba2Config(d_state=8, headdim=16))
    ours.load_state_dict(theirs.state_dict())
    u = torch.randn(3, 5, 40)
    conv, ssm = theirs.allocate_inference_cache(3, 5)
    state = ours.init_state(3)
    for t in range(5):
        expected, conv, ssm = theirs.step(u[:, t:t + 1], conv, ssm)
        torch.testing.assert_close(ours(u[:, t:t + 1], state), expected, rtol=1e-4, atol=1e-5)


def test_a_mamba2_model_trains():
    from hybrid.model import HybridLM

    model = HybridLM.from_config({"model": {
        "d_model": 32, "vocab_size": 17, "layout": "(M2 F) x2",
        "layers": {"M2": {"type": "mamba2", "d_state": 8, "headdim": 16, "chunk_size": 8}, "F": {"type": "mlp"}}}})
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(0, 17, (4, 24))
    first = None
    for _ in range(30):
        loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.5  # it fits the 4 fixed sequences


def test_mamba_ssm_mamba2_language_model_converts():
    """A MambaLMHeadModel config with ssm_cfg {layer: Mamba2} and its state dict, forward written out."""
    from hybrid.convert import from_mamba_ssm

    torch.manual_seed(0)
    ssm_cfg = {"layer": "Mamba2", "d_state": 8, "headdim": 16, "ngroups": 2, "use_mem_eff_path": True,
               "A_init_range": [1, 16]}
    cfg = {"d_model": 32, "n_layer": 2, "vocab_size": 40, "rms_norm": True, "residual_in_fp32": True,
           "pad_vocab_size_multiple": 8, "ssm_cfg": ssm_cfg}
    mixers = [Mamba2(32, Mamba2Config(d_state=8, headdim=16, ngroups=2)) for _ in range(2)]
    sd = {"backbone.embedding.weight": torch.randn(40, 32), "backbone.norm_f.weight": torch.rand(32) + 0.5}
    for i, mixer in enumerate(mixers):
        sd[f"backbone.layers.{i}.norm.weight"] = torch.rand(32) + 0.5
        sd.update({f"backbone.layers.{i}.mixer.{k}": v for k, v in mixer.state_dict().items()})
    sd["lm_head.weight"] = sd["backbone.embedding.weight"]
    model = from_mamba_ssm(cfg, sd)
    assert model.blocks[0].spec.branches[0].type == "mamba2"

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w

    ids = torch.randint(0, 40, (2, 11))
    x = sd["backbone.embedding.weight"][ids]
    for i, mixer in enumerate(mixers):
        x = x + mixer(rms(x, sd[f"backbone.layers.{i}.norm.weight"]))
    expected = rms(x, sd["backbone.norm_f.weight"]) @ sd["lm_head.weight"].T
    torch.testing.assert_close(model(ids), expected, rtol=1e-4, atol=1e-4)


def test_triton_conv_backend_agrees_in_training_and_decoding():
    """The Triton causal conv (under the interpreter without a GPU) on mamba2's channel-last xBC view."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    layers = [Mamba2(24, Mamba2Config(d_state=4, headdim=12, chunk_size=4, conv_backend=b)).to(device)
              for b in ("torch", "triton")]
    layers[1].load_state_dict(layers[0].state_dict())
    u = torch.randn(2, 11, 24, device=device)
    outs = [m(u) for m in layers]
    for out in outs:
        out.square().sum().backward()
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    for (name, p0), p1 in zip(layers[0].named_parameters(), layers[1].parameters()):
        torch.testing.assert_close(p1.grad, p0.grad, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
    with torch.no_grad():
        state = layers[1].init_state(2, device=device)
        steps = torch.cat([layers[1](u[:, :7], state)] + [layers[1](u[:, t:t + 1], state) for t in range(7, 11)], 1)
    torch.testing.assert_close(steps, outs[0].detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cfg", VARIANTS)
def test_the_gradient_sink_equals_a_plain_split(cfg, monkeypatch):
    """In training the layer splits in_proj's output into one gradient buffer (`hybrid.kernels.grad_sink`):
    every gradient equals the plain split's, with groups, the norm before the gate, no norm (z into the
    SSD's gate) and an MLP part (z0 and x0 used)."""
    grads = []
    for plain in (False, True):
        if plain:
            monkeypatch.setattr(Mamba2, "_split", lambda self, t, sizes: (t.split(sizes, dim=-1), None, None))
        torch.manual_seed(0)
        m = Mamba2(32, Mamba2Config(**cfg))
        u = torch.randn(2, 11, 32, requires_grad=True)
        m(u).square().sum().backward()
        grads.append([u.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_triton_norm_and_conv_write_their_gradients_into_in_proj_output_gradient(monkeypatch):
    """With the Triton conv and gated norm (the interpreter without a GPU), z's and xBC's gradients are
    written into slices of one buffer, which becomes in_proj's output gradient: only dt's (from the SSD)
    is copied in, no concatenation. The gradients equal the plain split's (the torch backends')."""
    from hybrid.kernels import grad_sink
    copied = []
    real = grad_sink._in_place
    monkeypatch.setattr(grad_sink, "_in_place", lambda g, piece: copied.append(not real(g, piece)) or real(g, piece))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    grads = []
    for backend in ("triton", "torch"):
        torch.manual_seed(0)
        m = Mamba2(24, Mamba2Config(d_state=4, headdim=12, chunk_size=4, conv_backend=backend,
                                    norm_backend=backend, ssd_backend="torch")).to(device)
        u = torch.randn(2, 9, 24, device=device, requires_grad=True)
        m(u).square().sum().backward()
        grads.append([u.grad] + [p.grad for p in m.parameters()])
        if backend == "triton":
            assert copied == [False, False, True]  # z, xBC in place; dt copied (z0 and x0 are empty: zeroed)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("norm_before_gate", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gated_norm_keeps_only_its_inputs_for_the_backward(norm_before_gate, dtype, backend, monkeypatch):
    """Both backends keep x, z and the weight (the Triton pass also one fp32 rstd per row and group),
    none of the fp32 intermediates; the Triton one runs under the interpreter without a GPU."""
    from hybrid.kernels.gated_rms_norm import gated_rms_norm_ref
    from hybrid.norms import GatedRMSNorm

    if backend == "triton" and not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    norm = GatedRMSNorm(12, group_size=4, norm_before_gate=norm_before_gate, backend=backend).to(dev)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x, z = (torch.randn(2, 7, 12, dtype=dtype, device=dev, requires_grad=True) for _ in range(2))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = norm(x, z)
    rstd = 2 * 7 * 3 * 4 if backend == "triton" else 0  # (rows, groups) fp32
    assert sum(t.numel() * t.element_size() for t in saved) <= 2 * x.numel() * x.element_size() + 12 * 4 + rstd
    y.square().sum().backward()
    x2, z2, w2 = (t.detach().clone().requires_grad_() for t in (x, z, norm.weight))
    y2 = gated_rms_norm_ref(x2, z2, w2, norm.eps, 4, norm_before_gate)  # no checkpoint, no kernel
    y2.square().sum().backward()
    for a, b in ((y, y2), (x.grad, x2.grad), (z.grad, z2.grad), (norm.weight.grad, w2.grad)):
        if dtype == torch.float32:
            torch.testing.assert_close(a, b)
        else:  # bf16: y, dx and dz are each rounded once, the sums run in another order
            assert ((a.double() - b.double()).norm() / b.double().norm()).item() < 1e-2
