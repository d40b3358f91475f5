"""`M xN` stacks of Mamba-1 <-> transformers' MambaForCausalLM.

HF's block i is "norm -> mixer -> residual add", our sublayer i; the mixer's parameters have
mamba_ssm's names in both (in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj).
"""
from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from hybrid.hf.common import (HFMismatch, backbone_from_hf, backbone_to_hf, check_all_used, check_rmsnorm,
                              hf_modules, require, sublayers)
from hybrid.model_config import ModelConfig

CLASS = "MambaForCausalLM"
MIXER = ("in_proj.weight", "in_proj.bias", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
         "dt_proj.bias", "A_log", "D", "out_proj.weight", "out_proj.bias")


def check(mc: ModelConfig) -> None:
    """Refuse (HFMismatch) what MambaForCausalLM cannot represent."""
    subs = sublayers(mc)
    check_rmsnorm(mc, CLASS)
    for index, alias, kind, _ in subs:
        require(kind == "mamba", f"sublayer {index} {alias!r} is {kind}; {CLASS} is Mamba-1 layers only",
                closest_for(kind))
    first = subs[0][3]
    require(float(first.expand).is_integer(), f"expand {first.expand}: {CLASS} takes an integer expand", CLASS)
    for index, alias, _, config in subs:
        require(config.d_state == first.d_state and config.d_conv == first.d_conv and config.expand == first.expand
                and config.dt_rank == first.dt_rank and config.bias == first.bias
                and config.conv_bias == first.conv_bias,
                f"sublayer {index} {alias!r} differs from sublayer 0 in its Mamba arguments; {CLASS} has one "
                f"setting for every layer", CLASS)


def closest_for(kind: str) -> str:
    return {"mamba2": "Mamba2ForCausalLM", "attention": "JambaForCausalLM", "mlp": "JambaForCausalLM",
            "moe": "JambaForCausalLM"}.get(kind, CLASS)


def to_hf(model) -> tuple[Any, dict[str, Tensor]]:
    """(transformers MambaConfig, weights by HF name) of a HybridLM that `check` accepts."""
    transformers, _ = hf_modules()
    mc = model.config
    check(mc)
    mixer0 = model.blocks[0].branches[0]
    c = mixer0.config
    config = transformers.MambaConfig(
        vocab_size=mc.vocab_size, hidden_size=mc.d_model, state_size=c.d_state, num_hidden_layers=len(model.blocks),
        layer_norm_epsilon=mc.norm_eps, expand=int(c.expand), conv_kernel=c.d_conv, use_bias=c.bias,
        use_conv_bias=c.conv_bias, hidden_act="silu", time_step_rank=mixer0.dt_rank, time_step_scale=c.dt_scale,
        time_step_min=c.dt_min, time_step_max=c.dt_max, time_step_init_scheme=c.dt_init,
        time_step_floor=c.dt_init_floor, residual_in_fp32=mc.residual_in_fp32,
        tie_word_embeddings=mc.tie_embeddings, intermediate_size=mixer0.d_inner)
    config.architectures = [CLASS]
    weights = backbone_to_hf(model, MIXER)
    return config, weights


def from_hf(config: dict[str, Any], weights: dict[str, Tensor]) -> tuple[ModelConfig, dict[str, Tensor]]:
    """(our ModelConfig, our state dict) of a MambaForCausalLM folder's config.json and weights."""
    weights = dict(weights)
    if config.get("hidden_act", "silu") != "silu":
        raise HFMismatch(f"hidden_act {config['hidden_act']!r}: our Mamba gates with SiLU")
    d_model, n = config["hidden_size"], config["num_hidden_layers"]
    d_inner = config.get("intermediate_size") or int(config.get("expand", 2) * d_model)
    rank = config.get("time_step_rank", "auto")
    layer = {"type": "mamba", "d_state": config.get("state_size", 16), "d_conv": config.get("conv_kernel", 4),
             "expand": d_inner / d_model, "dt_rank": math.ceil(d_model / 16) if rank == "auto" else rank,
             "bias": config.get("use_bias", False), "conv_bias": config.get("use_conv_bias", True)}
    tie = config.get("tie_word_embeddings", True)
    mc = ModelConfig(d_model=d_model, vocab_size=config["vocab_size"], layers={"M": layer}, layout=f"M x{n}",
                     norm="rmsnorm", norm_eps=config.get("layer_norm_epsilon", 1e-5), tie_embeddings=tie,
                     residual_in_fp32=config.get("residual_in_fp32", True))
    ours = backbone_from_hf(weights, n, MIXER, tie, CLASS)
    check_all_used(weights, CLASS)
    return mc, ours
