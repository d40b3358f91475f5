"""HybridLM: every preset and layer type runs, is causal, shares what it says it shares."""
from pathlib import Path

import pytest
import torch

from hybrid.config import load_config
from hybrid.init import is_no_weight_decay
from hybrid.layout import compile_layout
from hybrid.model import HybridLM, build_model
from hybrid.model_config import ModelConfig
from hybrid.registry import LAYERS

ROOT = Path(__file__).resolve().parent.parent
PRESETS = sorted((ROOT / "configs" / "layouts").glob("*.yaml"))
SMALL = ["model.d_model=32"]


def small_preset(path) -> HybridLM:
    return HybridLM(load_config(path, SMALL).model)


def layer_types():
    return LAYERS.names()


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_forward_backward(path):
    model = small_preset(path)
    ids = torch.randint(0, model.config.vocab_size, (2, 19))
    logits = model(ids)
    assert logits.shape == (2, 19, model.config.vocab_size) and torch.isfinite(logits).all()
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.roll(-1, 1).flatten())
    for v in model.aux_losses().values():
        loss = loss + v
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"


def _assert_causal(fn, x, t):
    """Changing position t leaves every output before t unchanged (and changes position t)."""
    y = fn(x)
    x2 = x.clone()
    x2[:, t] = x2[:, t] + 1 if x.is_floating_point() else (x2[:, t] + 1) % 256
    y2 = fn(x2)
    torch.testing.assert_close(y2[:, :t], y[:, :t], rtol=0, atol=1e-6)
    assert not torch.allclose(y2[:, t:], y[:, t:]), "the change had no effect at all"


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_is_causal(path):
    model = small_preset(path).eval()
    ids = torch.randint(0, 256, (2, 23))
    with torch.no_grad():
        _assert_causal(model, ids, t=11)


@pytest.mark.parametrize("layer_type", layer_types())
def test_every_registered_layer_is_causal(layer_type):
    entry = LAYERS.get(layer_type)
    config = entry.config_cls()
    if hasattr(config, "n_heads"):
        config.n_heads = 4
        if getattr(config, "n_kv_heads", None):
            config.n_kv_heads = 4
    layer = entry.build(32, config).eval()
    x = torch.randn(2, 17, 32)
    with torch.no_grad():
        _assert_causal(lambda v: layer(v), x, t=9)


def test_shared_block_is_one_module_and_gradients_accumulate():
    layers = {"M": {"type": "mamba"}, "A": {"type": "attention", "n_heads": 4}, "F": "mlp"}
    shared_cfg = ModelConfig(d_model=32, layers=layers, shared={"Z": ["A", "F"]}, layout="Z M Z")
    model = HybridLM(shared_cfg)
    assert model.blocks[0] is model.blocks[3] and model.blocks[1] is model.blocks[4]
    n_unique = len({id(p) for p in model.parameters()})
    assert n_unique == len(list(model.parameters()))  # parameters() yields each shared tensor once

    # The same network with the two uses untied: the shared gradient is the sum of both.
    untied = HybridLM(ModelConfig(d_model=32, layers=layers, layout="A F M A F"))
    sd = model.state_dict()
    untied.load_state_dict({k: sd[k] for k in untied.state_dict()})
    ids = torch.randint(0, 256, (2, 13))
    model(ids).square().mean().backward()
    untied(ids).square().mean().backward()
    shared_grad = model.blocks[0].branches[0].qkv.weight.grad
    summed = untied.blocks[0].branches[0].qkv.weight.grad + untied.blocks[3].branches[0].qkv.weight.grad
    torch.testing.assert_close(shared_grad, summed, rtol=1e-4, atol=1e-6)


def test_parallel_branches_share_a_norm_and_sum():
    model = HybridLM(ModelConfig(d_model=32, layers={"M": "mamba", "A": {"type": "attention", "n_heads": 4},
                                                     "MA": {"parallel": ["M", "A"]}}, layout="MA"))
    block = model.blocks[0]
    x = torch.randn(2, 9, 32)
    h = block.norm(x)
    out, residual = block(x)
    torch.testing.assert_close(out, block.branches[0](h) + block.branches[1](h))
    assert residual is x  # nothing to add before the first sublayer
    y = torch.randn(2, 9, 32)
    out, residual = block(x, previous=y)  # the last sublayer's output added first, then normed
    torch.testing.assert_close(residual, x + y)
    h = block.norm(x + y)
    torch.testing.assert_close(out, block.branches[0](h) + block.branches[1](h))


def test_residual_output_projections_are_depth_scaled():
    torch.manual_seed(0)
    shallow = HybridLM(ModelConfig(d_model=64, layers={"F": "mlp"}, layout="F"))
    torch.manual_seed(0)
    deep = HybridLM(ModelConfig(d_model=64, layers={"F": "mlp"}, layout="F x16"))
    ratio = (shallow.blocks[0].branches[0].fc2.weight.std() / deep.blocks[0].branches[0].fc2.weight.std()).item()
    assert ratio == pytest.approx(4.0, rel=1e-4)  # 1/sqrt(1) against 1/sqrt(16)
    # fc1 is not an output projection: same init at any depth
    torch.testing.assert_close(shallow.blocks[0].branches[0].fc1.weight, deep.blocks[0].branches[0].fc1.weight)


def test_mamba_special_parameters_keep_their_init_and_skip_weight_decay():
    model = HybridLM(ModelConfig(d_model=32, layers={"M": "mamba"}, layout="M x2"))
    mamba = model.blocks[0].branches[0]
    torch.testing.assert_close(mamba.A_log, torch.log(torch.arange(1, 17.0)).repeat(64, 1))
    dt = torch.nn.functional.softplus(mamba.dt_proj.bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    groups = model.param_groups(weight_decay=0.1)
    no_decay = {id(p) for p in groups[1]["params"]}
    for p in (mamba.A_log, mamba.D, mamba.dt_proj.bias, model.embedding.weight, model.blocks[0].norm.weight):
        assert id(p) in no_decay
    assert id(mamba.in_proj.weight) not in no_decay
    assert is_no_weight_decay(mamba.A_log)


def test_tied_and_untied_heads():
    tied = HybridLM(ModelConfig(d_model=16, layers={"F": "mlp"}, layout="F"))
    assert tied.lm_head.weight is tied.embedding.weight
    untied = HybridLM(ModelConfig(d_model=16, layers={"F": "mlp"}, layout="F", tie_embeddings=False))
    assert untied.lm_head.weight is not untied.embedding.weight
    assert untied.num_parameters() == tied.num_parameters() + 16 * 256


def test_from_config_with_overrides_and_build_model():
    model = HybridLM.from_config(ROOT / "configs" / "layouts" / "transformer.yaml", d_model=48)
    assert model.config.d_model == 48
    assert isinstance(build_model(ModelConfig(d_model=16, layout="mlp")), HybridLM)
    assert build_model(str(ROOT / "configs" / "layouts" / "mamba.yaml")).config.d_model == 256


def test_residual_in_fp32_under_bf16_autocast():
    model = HybridLM(ModelConfig(d_model=32, layers={"F": "mlp", "A": {"type": "attention", "n_heads": 4}},
                                 layout="A F", residual_in_fp32=True))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randint(0, 256, (1, 8)))
    assert torch.isfinite(logits.float()).all()


def test_layout_passed_in_is_used():
    cfg = ModelConfig(d_model=16, layout="mlp")
    layout = compile_layout({}, "mlp mlp mlp")
    assert len(HybridLM(cfg, layout).blocks) == 3


def test_logits_at_chosen_positions_equal_the_full_logits():
    model = HybridLM.from_config({"model": {"d_model": 16, "vocab_size": 11, "layout": "mamba attention mlp",
                                            "layers": {"attention": {"type": "attention", "n_heads": 2}}}})
    ids = torch.randint(0, 11, (3, 7))
    positions = torch.tensor([20, 0, 8, 13])  # flat indices into batch * length, any order
    torch.testing.assert_close(model(ids, positions=positions), model(ids).flatten(0, 1)[positions])
