"""Mamba-2 / attention / SwiGLU-MLP stacks, `(M2 F | A F) ...`, <-> transformers' BambaForCausalLM.

Bamba's decoder layer i is our sublayers 2i (input_layernorm -> Mamba-2 or attention, the layers at
`attn_layer_indices` being attention) and 2i + 1 (pre_ff_layernorm -> SwiGLU feed_forward). The
Mamba-2 mixer keeps mamba_ssm's parameter names (`hybrid.hf.mamba2`), attention and MLP Llama's
(`hybrid.hf.llama`); attention has (partial) RoPE.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from hybrid.hf import mamba2
from hybrid.hf.common import (check_all_used, check_rmsnorm, decoder_from_hf, decoder_to_hf, hf_modules, move,
                              number, require, sublayers)
from hybrid.hf.llama import attention_from_hf, attention_to_hf, drop_rotary_buffers, mlp_from_hf, mlp_to_hf
from hybrid.model_config import ModelConfig

CLASS = "BambaForCausalLM"


def check(mc: ModelConfig) -> None:
    """Refuse (HFMismatch) what BambaForCausalLM cannot represent."""
    subs = sublayers(mc)
    check_rmsnorm(mc, CLASS)
    require(len(subs) % 2 == 0, f"{len(subs)} sublayers; {CLASS} pairs a mixer with an MLP", CLASS)
    first = {}
    for index, alias, kind, config in subs:
        allowed = ("mamba2", "attention") if index % 2 == 0 else ("mlp",)
        require(kind in allowed, f"sublayer {index} {alias!r} is {kind}, where {CLASS} has "
                                 f"{' or '.join(allowed)}", "JambaForCausalLM" if kind in ("mamba", "moe") else CLASS)
        require(first.setdefault(kind, config) == config, f"sublayer {index} {alias!r} differs from the first {kind} "
                                                         f"sublayer; {CLASS} has one setting per kind", CLASS)
    require(mc.norm_eps == mamba2.GATED_NORM_EPS, f"model.norm_eps {mc.norm_eps}: {CLASS} uses one epsilon for every "
                                                  f"norm, the Mamba-2 gated norm's ({mamba2.GATED_NORM_EPS}) too", CLASS)
    require("mamba2" in first, f"no Mamba-2 layer: {CLASS} is a Mamba-2 hybrid", "LlamaForCausalLM")
    m = first["mamba2"]
    require(float(m.expand).is_integer() and m.d_ssm is None and m.rmsnorm and not m.norm_before_gate
            and not m.D_has_hdim and list(m.dt_limit) == [0.0, float("inf")],
            "Mamba-2 arguments: Bamba takes an integer expand, no d_ssm, the gated RMSNorm before the gate's "
            "product (norm_before_gate false), D per head and no dt_limit", CLASS)
    a = first.get("attention")
    if a is not None:
        require(a.rope_theta is not None and a.window is None and not a.qk_norm and (a.head_dim in (None, mc.d_model
                // a.n_heads)), "attention: Bamba's has RoPE, no window, no qk_norm and head_dim d_model / n_heads",
                CLASS)
    require(first["mlp"].activation == "swiglu", f"MLP activation {first['mlp'].activation}; {CLASS} uses SwiGLU",
            CLASS)


def to_hf(model) -> tuple[Any, dict[str, Tensor]]:
    """(transformers BambaConfig, weights by HF name) of a HybridLM that `check` accepts."""
    transformers, _ = hf_modules()
    mc = model.config
    check(mc)
    mixers = [block.branches[0] for block in model.blocks[0::2]]
    kinds = [spec.branches[0].type for spec in model.layout.sublayers[0::2]]
    attn_idx = [i for i, kind in enumerate(kinds) if kind == "attention"]
    m = mixers[kinds.index("mamba2")]
    a = mixers[attn_idx[0]] if attn_idx else None
    mlp = model.blocks[1].branches[0]
    kw = {} if a is None else {"num_attention_heads": a.n_heads, "num_key_value_heads": a.n_kv_heads,
                               "rope_theta": a.config.rope_theta, "partial_rotary_factor": a.config.rotary_fraction,
                               "attention_bias": a.config.bias}
    config = transformers.BambaConfig(
        vocab_size=mc.vocab_size, hidden_size=mc.d_model, intermediate_size=mlp.hidden, num_hidden_layers=len(mixers),
        attn_layer_indices=attn_idx, mamba_n_heads=m.nheads, mamba_d_head=m.config.headdim,
        mamba_n_groups=m.config.ngroups, mamba_d_state=m.config.d_state, mamba_d_conv=m.config.d_conv,
        mamba_expand=int(m.config.expand), mamba_chunk_size=m.config.chunk_size, mamba_conv_bias=m.config.conv_bias,
        mamba_proj_bias=m.config.bias, rms_norm_eps=mc.norm_eps, mlp_bias=mlp.config.bias,
        tie_word_embeddings=mc.tie_embeddings, **kw)
    config.architectures = [CLASS]
    ours = model.state_dict()
    weights = decoder_to_hf(model, len(model.blocks) // 2, "pre_ff_layernorm", "final_layernorm")
    for i, mixer in enumerate(mixers):
        mx, ml, hf = f"blocks.{2 * i}.", f"blocks.{2 * i + 1}.", f"model.layers.{i}."
        if i in attn_idx:
            attention_to_hf(ours, mx + "branches.0.", hf + "self_attn.", mixer.n_heads * mixer.head_dim,
                            mixer.n_kv_heads * mixer.head_dim, weights)
        else:
            weights.update({hf + "mamba." + name: ours[mx + "branches.0." + name] for name in mamba2.MIXER
                            if mx + "branches.0." + name in ours})
        mlp_to_hf(ours, ml + "branches.0.", hf + "feed_forward.", weights)
    return config, weights


def from_hf(config: dict[str, Any], weights: dict[str, Tensor]) -> tuple[ModelConfig, dict[str, Tensor]]:
    """(our ModelConfig, our state dict) of a BambaForCausalLM folder's config.json and weights."""
    weights = dict(weights)
    require(config.get("hidden_act", "silu") == "silu", f"hidden_act {config.get('hidden_act')!r}; ours is SwiGLU")
    eps = config.get("rms_norm_eps", 1e-5)
    require(eps == mamba2.GATED_NORM_EPS, f"rms_norm_eps {eps}: our Mamba-2's gated norm uses {mamba2.GATED_NORM_EPS}")
    limit = [number(v) for v in config.get("time_step_limit", (0.0, float("inf")))]
    require(limit == [0.0, float("inf")], f"time_step_limit {limit}: not supported in Bamba imports")
    rope = config.get("rope_parameters") or {}
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    fraction = rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    d, n, heads = config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]
    attn = set(config.get("attn_layer_indices") or [])
    layers = {"M2": {"type": "mamba2", "d_state": config["mamba_d_state"], "d_conv": config.get("mamba_d_conv", 4),
                     "expand": config.get("mamba_expand", 2), "headdim": config["mamba_d_head"],
                     "ngroups": config.get("mamba_n_groups", 1), "bias": config.get("mamba_proj_bias", False),
                     "conv_bias": config.get("mamba_conv_bias", True), "chunk_size": config.get("mamba_chunk_size", 256)},
              "A": {"type": "attention", "n_heads": heads, "n_kv_heads": config.get("num_key_value_heads") or heads,
                    "rope_theta": float(theta), "rotary_fraction": float(fraction),
                    "bias": config.get("attention_bias", False)},
              "F": {"type": "mlp", "activation": "swiglu", "hidden": config["intermediate_size"],
                    "bias": config.get("mlp_bias", False)}}
    if not attn:
        del layers["A"]
    layout = " ".join(("A" if i in attn else "M2") + " F" for i in range(n))
    tie = config.get("tie_word_embeddings", False)
    mc = ModelConfig(d_model=d, vocab_size=config["vocab_size"], layers=layers, layout=layout, norm="rmsnorm",
                     norm_eps=eps, tie_embeddings=tie)
    ours = decoder_from_hf(weights, n, "pre_ff_layernorm", "final_layernorm", tie, CLASS)
    for i in range(n):
        mx, ml, hf = f"blocks.{2 * i}.", f"blocks.{2 * i + 1}.", f"model.layers.{i}."
        if i in attn:
            attention_from_hf(weights, hf + "self_attn.", mx + "branches.0.", ours)
        else:
            move(weights, hf + "mamba.", ours, mx + "branches.0.", mamba2.MIXER)
        mlp_from_hf(weights, hf + "feed_forward.", ml + "branches.0.", ours)
    drop_rotary_buffers(weights, n)
    check_all_used(weights, CLASS)
    return mc, ours
