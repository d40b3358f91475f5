"""The mamba layer: the block's maths, its backends, its cached state, and mamba_ssm compatibility."""
import math
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hybrid.convert import from_mamba_ssm
from hybrid.layers.mamba import Mamba, MambaConfig

PEERS = Path(__file__).resolve().parents[3] / "shared" / "peers" / "mamba"


def block_reference(m: Mamba, u: torch.Tensor) -> torch.Tensor:
    """The Mamba block written out from the paper's Fig. 3, step by step, in float64."""
    c = m.config
    u = u.double()
    W = {k: v.double() for k, v in m.state_dict().items()}
    xz = u @ W["in_proj.weight"].T + W.get("in_proj.bias", 0.0)
    x, z = xz.chunk(2, dim=-1)  # (batch, length, d_inner)
    length = x.shape[1]
    xp = F.pad(x.transpose(1, 2), (c.d_conv - 1, 0))  # causal: only past inputs
    conv = torch.stack([(xp[..., t:t + c.d_conv] * W["conv1d.weight"][:, 0]).sum(-1) for t in range(length)], -1)
    x = F.silu(conv + W["conv1d.bias"][:, None])  # (batch, d_inner, length)
    dbc = x.transpose(1, 2) @ W["x_proj.weight"].T
    dt, B, C = dbc.split([m.dt_rank, c.d_state, c.d_state], dim=-1)
    if c.inner_norm_eps is not None:  # Jamba: RMSNorm of dt, B, C
        rms = lambda t, w: t * torch.rsqrt(t.square().mean(-1, keepdim=True) + c.inner_norm_eps) * w  # noqa: E731
        dt, B, C = rms(dt, W["dt_layernorm.weight"]), rms(B, W["b_layernorm.weight"]), rms(C, W["c_layernorm.weight"])
    dt = F.softplus(dt @ W["dt_proj.weight"].T + W["dt_proj.bias"])  # (batch, length, d_inner)
    A = -torch.exp(W["A_log"])
    h = torch.zeros(u.shape[0], m.d_inner, c.d_state, dtype=torch.float64)
    ys = []
    for t in range(length):
        h = torch.exp(dt[:, t, :, None] * A) * h + dt[:, t, :, None] * B[:, t, None, :] * x[:, :, t, None]
        ys.append((h * C[:, t, None, :]).sum(-1) + W["D"] * x[:, :, t])
    y = torch.stack(ys, 1) * F.silu(z)
    return y @ W["out_proj.weight"].T + W.get("out_proj.bias", 0.0)


# (d_model, length, batch, d_state); odd sizes on purpose
SHAPES = [(16, 1, 1, 4), (24, 13, 2, 16), (40, 33, 1, 8)]


@pytest.mark.parametrize("d_model,length,batch,d_state", SHAPES,
                         ids=[f"D{d}-L{l}-B{b}-N{n}" for d, l, b, n in SHAPES])
@pytest.mark.parametrize("backend", ["ref", "torch"])
def test_block_matches_reference(d_model, length, batch, d_state, backend):
    m = Mamba(d_model, MambaConfig(d_state=d_state, scan_backend=backend))
    u = torch.randn(batch, length, d_model)
    # fp32 against an fp64 reference: errors are accumulated rounding over length steps
    torch.testing.assert_close(m(u).double(), block_reference(m, u), rtol=1e-4, atol=1e-5)


def test_block_with_projection_biases_matches_reference():
    m = Mamba(24, MambaConfig(d_state=8, bias=True, scan_backend="ref"))
    with torch.no_grad():  # zero-initialised; random values so that a dropped bias shows
        m.in_proj.bias.normal_()
        m.out_proj.bias.normal_()
    u = torch.randn(2, 11, 24)
    torch.testing.assert_close(m(u).double(), block_reference(m, u), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_backends_agree_forward_and_backward(dtype, tol):
    ms = [Mamba(24, MambaConfig(d_state=8, scan_backend=b)).to(dtype) for b in ("ref", "torch")]
    ms[1].load_state_dict(ms[0].state_dict())
    u = torch.randn(2, 29, 24, dtype=dtype)
    outs = [m(u) for m in ms]
    torch.testing.assert_close(outs[0], outs[1], rtol=tol, atol=tol)
    grads = []
    for m, out in zip(ms, outs):
        out.square().sum().backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=tol * 10, atol=tol * 10, msg=name)


@pytest.mark.parametrize("backend", ["ref", "torch"])
def test_inner_norms_of_dt_b_c_match_the_reference_forward_and_decoding(backend):
    m = Mamba(24, MambaConfig(d_state=8, inner_norm_eps=1e-6, scan_backend=backend))
    with torch.no_grad():  # ones at init; random so that a norm applied to the wrong tensor shows
        for norm in (m.dt_layernorm, m.b_layernorm, m.c_layernorm):
            norm.weight.uniform_(0.5, 1.5)
    u = torch.randn(2, 17, 24)
    full = m(u)
    torch.testing.assert_close(full.double(), block_reference(m, u), rtol=1e-4, atol=1e-5)
    state = m.init_state(2, max_length=17)
    parts = [m(u[:, :9], state)] + [m(u[:, t:t + 1], state) for t in range(9, 17)]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-6)


def test_cached_steps_equal_parallel_forward_and_state_is_context_free():
    m = Mamba(24, MambaConfig(d_state=8))
    u = torch.randn(2, 20, 24)
    full = m(u)
    state = m.init_state(2, max_length=20)
    sizes = (state.conv.numel(), state.ssm.numel())
    parts = [m(u[:, :7], state), m(u[:, 7:12], state)] + [m(u[:, t:t + 1], state) for t in range(12, 20)]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-6)
    assert (state.conv.numel(), state.ssm.numel()) == sizes
    assert m.init_state(2, max_length=10_000).ssm.numel() == sizes[1]


def test_init_follows_mamba_defaults():
    m = Mamba(64, MambaConfig())
    assert m.d_inner == 128 and m.dt_rank == math.ceil(64 / 16)
    assert m.in_proj.weight.shape == (256, 64) and m.x_proj.weight.shape == (4 + 32, 128)
    assert m.conv1d.weight.shape == (128, 1, 4) and m.out_proj.bias is None


def _import_peer_mamba():
    if not PEERS.is_dir():
        pytest.skip(f"mamba_ssm peer sources not found at {PEERS}")
    sys.path.insert(0, str(PEERS))
    try:
        sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
        import mamba_ssm.modules.mamba_simple as simple
        import mamba_ssm.ops.selective_scan_interface as ssi
    except ImportError as err:
        pytest.skip(f"cannot import the mamba_ssm peer: {err}")
    finally:
        sys.path.remove(str(PEERS))
    simple.selective_scan_fn = ssi.selective_scan_ref  # its CPU path
    return simple.Mamba


def test_mamba_ssm_block_weights_load_and_agree():
    PeerMamba = _import_peer_mamba()
    theirs = PeerMamba(40, d_state=8, use_fast_path=False)
    ours = Mamba(40, MambaConfig(d_state=8))
    assert {k: v.shape for k, v in theirs.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}
    ours.load_state_dict(theirs.state_dict())
    u = torch.randn(2, 17, 40)
    torch.testing.assert_close(ours(u), theirs(u), rtol=1e-5, atol=1e-6)


def _rms(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


@pytest.mark.parametrize("d_intermediate", [0, 64], ids=["mixer-only", "with-mlp"])
def test_mamba_ssm_language_model_checkpoint_loads(d_intermediate):
    """A state dict under mamba_ssm's MambaLMHeadModel names, and its forward written out by hand."""
    torch.manual_seed(0)
    cfg = {"d_model": 32, "n_layer": 2, "vocab_size": 50, "d_intermediate": d_intermediate,
           "rms_norm": True, "residual_in_fp32": True, "pad_vocab_size_multiple": 8, "ssm_cfg": {"d_state": 4}}
    mixers = [Mamba(32, MambaConfig(d_state=4)) for _ in range(2)]
    sd = {"backbone.embedding.weight": torch.randn(56, 32), "backbone.norm_f.weight": torch.rand(32) + 0.5}
    hidden = 128  # GatedMLP rounds 64 up to a multiple of 128
    for i, mixer in enumerate(mixers):
        sd[f"backbone.layers.{i}.norm.weight"] = torch.rand(32) + 0.5
        sd.update({f"backbone.layers.{i}.mixer.{k}": v for k, v in mixer.state_dict().items()})
        if d_intermediate:
            sd[f"backbone.layers.{i}.norm2.weight"] = torch.rand(32) + 0.5
            sd[f"backbone.layers.{i}.mlp.fc1.weight"] = torch.randn(2 * hidden, 32) * 0.1
            sd[f"backbone.layers.{i}.mlp.fc2.weight"] = torch.randn(32, hidden) * 0.1
    sd["lm_head.weight"] = sd["backbone.embedding.weight"]
    model = from_mamba_ssm(cfg, sd)
    assert model.config.vocab_size == 56

    ids = torch.randint(0, 50, (2, 9))
    x = sd["backbone.embedding.weight"][ids]
    for i, mixer in enumerate(mixers):  # mamba_ssm Block: residual add, norm, mixer (then norm2, mlp)
        x = x + mixer(_rms(x, sd[f"backbone.layers.{i}.norm.weight"]))
        if d_intermediate:
            y, gate = (_rms(x, sd[f"backbone.layers.{i}.norm2.weight"]) @ sd[f"backbone.layers.{i}.mlp.fc1.weight"].T).chunk(2, -1)
            x = x + (y * F.silu(gate)) @ sd[f"backbone.layers.{i}.mlp.fc2.weight"].T
    expected = _rms(x, sd["backbone.norm_f.weight"]) @ sd["lm_head.weight"].T
    torch.testing.assert_close(model(ids), expected, rtol=1e-4, atol=1e-4)


def test_mamba_ssm_checkpoint_errors():
    with pytest.raises(ValueError, match="only Mamba-1 and Mamba-2"):
        from_mamba_ssm({"d_model": 8, "n_layer": 1, "ssm_cfg": {"layer": "Mamba3"}}, {})
    with pytest.raises(KeyError, match="lacks"):
        from_mamba_ssm({"d_model": 8, "n_layer": 1, "vocab_size": 8}, {"backbone.embedding.weight": torch.zeros(8, 8)})
