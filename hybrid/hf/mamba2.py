"""`M2 xN` stacks of Mamba-2 <-> transformers' Mamba2ForCausalLM.

HF's block i is "norm -> mixer -> residual add", our sublayer i. The mixer's parameters have
mamba_ssm's names in both (in_proj [z, x, B, C, dt], conv1d over x, B, C, dt_bias, A_log, D, the
gated RMSNorm `norm`, out_proj). HF's mixer has fewer options than ours; those it lacks are refused.
"""
from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from hybrid.hf.common import (backbone_from_hf, backbone_to_hf, check_all_used, check_rmsnorm, hf_modules, number,
                              require, sublayers)
from hybrid.model_config import ModelConfig

CLASS = "Mamba2ForCausalLM"
MIXER = ("in_proj.weight", "in_proj.bias", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D", "norm.weight",
         "out_proj.weight", "out_proj.bias")
GATED_NORM_EPS = 1e-5  # our Mamba-2's gated norm; HF's uses layer_norm_epsilon, the block norms' too


def check(mc: ModelConfig) -> None:
    """Refuse (HFMismatch) what Mamba2ForCausalLM cannot represent."""
    subs = sublayers(mc)
    check_rmsnorm(mc, CLASS)
    for index, alias, kind, _ in subs:
        require(kind == "mamba2", f"sublayer {index} {alias!r} is {kind}; {CLASS} is Mamba-2 layers only",
                "MambaForCausalLM" if kind == "mamba" else "BambaForCausalLM")
    first = subs[0][3]
    require(mc.norm_eps == GATED_NORM_EPS, f"model.norm_eps {mc.norm_eps}: {CLASS} uses one epsilon for the block "
                                           f"norms and the gated norm, whose epsilon is {GATED_NORM_EPS} here", CLASS)
    require(float(first.expand).is_integer(), f"expand {first.expand}: {CLASS} takes an integer expand", CLASS)
    require(first.d_ssm is None, f"d_ssm {first.d_ssm}: {CLASS} has no MLP part beside the SSM", CLASS)
    require(first.rmsnorm and not first.norm_before_gate, f"rmsnorm {first.rmsnorm}, norm_before_gate "
            f"{first.norm_before_gate}: {CLASS} gates before its RMSNorm", CLASS)
    require(not first.D_has_hdim, f"D_has_hdim: {CLASS} has D per head", CLASS)
    for index, alias, _, config in subs:
        require(config == first or _same_model(config, first), f"sublayer {index} {alias!r} differs from sublayer 0 "
                                                               f"in its Mamba-2 arguments; {CLASS} has one setting", CLASS)


def _same_model(a: Any, b: Any) -> bool:
    keys = ("d_state", "d_conv", "expand", "headdim", "ngroups", "d_ssm", "D_has_hdim", "rmsnorm", "norm_before_gate",
            "dt_limit", "bias", "conv_bias", "chunk_size")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def to_hf(model) -> tuple[Any, dict[str, Tensor]]:
    """(transformers Mamba2Config, weights by HF name) of a HybridLM that `check` accepts."""
    transformers, _ = hf_modules()
    mc = model.config
    check(mc)
    mixer0 = model.blocks[0].branches[0]
    c = mixer0.config
    config = transformers.Mamba2Config(
        num_heads=mixer0.nheads, head_dim=c.headdim, vocab_size=mc.vocab_size, hidden_size=mc.d_model,
        state_size=c.d_state, num_hidden_layers=len(model.blocks), layer_norm_epsilon=mc.norm_eps,
        expand=int(c.expand), conv_kernel=c.d_conv, n_groups=c.ngroups, use_bias=c.bias, use_conv_bias=c.conv_bias,
        hidden_act="silu", residual_in_fp32=mc.residual_in_fp32, time_step_min=c.dt_min, time_step_max=c.dt_max,
        time_step_floor=c.dt_init_floor, time_step_limit=tuple(c.dt_limit), chunk_size=c.chunk_size,
        tie_word_embeddings=mc.tie_embeddings)
    config.architectures = [CLASS]
    weights = backbone_to_hf(model, MIXER)
    return config, weights


def from_hf(config: dict[str, Any], weights: dict[str, Tensor]) -> tuple[ModelConfig, dict[str, Tensor]]:
    """(our ModelConfig, our state dict) of a Mamba2ForCausalLM folder's config.json and weights."""
    weights = dict(weights)
    require(config.get("hidden_act", "silu") == "silu", f"hidden_act {config.get('hidden_act')!r}: ours is SiLU")
    eps = config.get("layer_norm_epsilon", 1e-5)
    require(eps == GATED_NORM_EPS, f"layer_norm_epsilon {eps}: our Mamba-2's gated norm uses {GATED_NORM_EPS}")
    require(config.get("rms_norm", True), "rms_norm false: our Mamba-2 import expects the gated RMSNorm")
    d_model, n = config["hidden_size"], config["num_hidden_layers"]
    heads, headdim = config["num_heads"], config["head_dim"]
    expand = config.get("expand", 2)
    require(heads * headdim == int(expand * d_model), f"num_heads x head_dim = {heads * headdim} is not expand x "
                                                      f"hidden_size = {int(expand * d_model)}")
    limit = [number(v) for v in config.get("time_step_limit", (0.0, math.inf))]
    layer = {"type": "mamba2", "d_state": config.get("state_size", 128), "d_conv": config.get("conv_kernel", 4),
             "expand": expand, "headdim": headdim, "ngroups": config.get("n_groups", 1),
             "bias": config.get("use_bias", False), "conv_bias": config.get("use_conv_bias", True),
             "chunk_size": config.get("chunk_size", 256)}
    if limit != [0.0, math.inf]:  # the default; a config takes finite numbers only
        layer["dt_limit"] = limit
    tie = config.get("tie_word_embeddings", False)
    mc = ModelConfig(d_model=d_model, vocab_size=config["vocab_size"], layers={"M2": layer}, layout=f"M2 x{n}",
                     norm="rmsnorm", norm_eps=eps, tie_embeddings=tie,
                     residual_in_fp32=config.get("residual_in_fp32", True))
    ours = backbone_from_hf(weights, n, MIXER, tie, CLASS)
    check_all_used(weights, CLASS)
    return mc, ours
