"""Jamba-pattern layouts <-> transformers' JambaForCausalLM.

Jamba's decoder layer i is our sublayers 2i (input_layernorm -> Mamba-1 with RMSNorms of dt, B and C,
or attention without positional encoding at i % attn_layer_period == attn_layer_offset) and 2i + 1
(pre_ff_layernorm -> SwiGLU MLP, or a mixture of experts at i % expert_layer_period ==
expert_layer_offset: softmax router, top-k weights not renormalised, no token dropped). Experts are
stored as transformers 5 does, fused: gate_up_proj (experts, 2 hidden, d) = [gate; up], our
fc1 = [up; gate]; down_proj is our fc2.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from hybrid.hf.common import (check_all_used, check_rmsnorm, decoder_from_hf, decoder_to_hf, hf_modules, move,
                              require, sublayers, take)
from hybrid.hf.llama import attention_from_hf, attention_to_hf, mlp_from_hf, mlp_to_hf
from hybrid.hf.mamba import MIXER as MAMBA_MIXER
from hybrid.model_config import ModelConfig

CLASS = "JambaForCausalLM"
INNER_NORMS = ("dt_layernorm.weight", "b_layernorm.weight", "c_layernorm.weight")


def period_of(indices: list[int], n: int, what: str) -> tuple[int, int]:
    """(period, offset) with indices == [i < n: i % period == offset], or HFMismatch."""
    if not indices:
        return n + 1, n  # never
    period = indices[1] - indices[0] if len(indices) > 1 else n
    offset = indices[0]
    require(offset < period and indices == [i for i in range(n) if i % period == offset],
            f"{what} at layers {indices}: Jamba places them every attn/expert_layer_period layers from an offset",
            CLASS)
    return period, offset


def check(mc: ModelConfig) -> None:
    """Refuse (HFMismatch) what JambaForCausalLM cannot represent."""
    subs = sublayers(mc)
    check_rmsnorm(mc, CLASS)
    require(len(subs) % 2 == 0, f"{len(subs)} sublayers; {CLASS} pairs a mixer with an MLP or MoE", CLASS)
    first: dict[str, Any] = {}
    for index, alias, kind, config in subs:
        allowed = ("mamba", "attention") if index % 2 == 0 else ("mlp", "moe")
        require(kind in allowed, f"sublayer {index} {alias!r} is {kind}, where {CLASS} has {' or '.join(allowed)}",
                "BambaForCausalLM" if kind == "mamba2" else CLASS)
        require(first.setdefault(kind, config) == config, f"sublayer {index} {alias!r} differs from the first {kind} "
                                                         f"sublayer; {CLASS} has one setting per kind", CLASS)
    m, a, f, e = (first.get(k) for k in ("mamba", "attention", "mlp", "moe"))
    require(m is not None, f"no Mamba layer: {CLASS} is a Mamba hybrid", "LlamaForCausalLM")
    require(m.inner_norm_eps == mc.norm_eps, f"Mamba inner_norm_eps {m.inner_norm_eps}: Jamba's Mamba normalises "
                                             f"dt, B and C with the model's norm epsilon ({mc.norm_eps})", CLASS)
    require(float(m.expand).is_integer(), f"Mamba expand {m.expand}: {CLASS} takes an integer expand", CLASS)
    if a is not None:
        require(a.rope_theta is None and a.window is None and not a.qk_norm and not a.bias
                and a.head_dim in (None, mc.d_model // a.n_heads),
                "attention: Jamba's has no positional encoding, window, qk_norm or bias, and head_dim d_model / "
                "n_heads", CLASS)
    hidden = {_hidden(x, mc.d_model) for x in (f, e) if x is not None}
    require(len(hidden) == 1, f"MLP and expert widths {sorted(hidden)}: {CLASS} has one intermediate_size", CLASS)
    for x in (f, e):
        require(x is None or (x.activation == "swiglu" and not getattr(x, "bias", False)),
                "MLP or experts: Jamba's are SwiGLU without biases", CLASS)
    require(e is None or (not e.renormalize and e.capacity_factor is None),
            "MoE: Jamba keeps the softmax top-k weights (renormalize false) and drops no token (capacity_factor "
            "null)", "MixtralForCausalLM")


def _hidden(config: Any, d_model: int) -> int:
    hidden = config.hidden or int(math.ceil(config.expand * d_model))
    return -(-hidden // config.multiple_of) * config.multiple_of


def to_hf(model) -> tuple[Any, dict[str, Tensor]]:
    """(transformers JambaConfig, weights by HF name) of a HybridLM that `check` accepts."""
    transformers, _ = hf_modules()
    mc = model.config
    check(mc)
    kinds = [spec.branches[0].type for spec in model.layout]
    n = len(kinds) // 2
    attn = [i for i in range(n) if kinds[2 * i] == "attention"]
    moe = [i for i in range(n) if kinds[2 * i + 1] == "moe"]
    (ap, ao), (ep, eo) = period_of(attn, n, "attention"), period_of(moe, n, "experts")
    mamba = model.blocks[2 * kinds[0::2].index("mamba")].branches[0]
    a = model.blocks[2 * attn[0]].branches[0] if attn else None
    ffn = model.blocks[1].branches[0]
    e = model.blocks[2 * moe[0] + 1].branches[0] if moe else None
    config = transformers.JambaConfig(
        vocab_size=mc.vocab_size, tie_word_embeddings=mc.tie_embeddings, hidden_size=mc.d_model,
        intermediate_size=ffn.hidden, num_hidden_layers=n, num_attention_heads=a.n_heads if a else 1,
        num_key_value_heads=a.n_kv_heads if a else 1, rms_norm_eps=mc.norm_eps, num_experts_per_tok=e.config.top_k if e
        else 1, num_experts=e.config.n_experts if e else 1, expert_layer_period=ep, expert_layer_offset=eo,
        attn_layer_period=ap, attn_layer_offset=ao, use_mamba_kernels=False, mamba_d_state=mamba.config.d_state,
        mamba_d_conv=mamba.config.d_conv, mamba_expand=int(mamba.config.expand), mamba_dt_rank=mamba.dt_rank,
        mamba_conv_bias=mamba.config.conv_bias, mamba_proj_bias=mamba.config.bias)
    config.architectures = [CLASS]
    ours = model.state_dict()
    weights = decoder_to_hf(model, len(model.blocks) // 2, "pre_ff_layernorm", "final_layernorm")
    for i in range(n):
        mx, ff, hf = f"blocks.{2 * i}.", f"blocks.{2 * i + 1}.", f"model.layers.{i}."
        if i in attn:
            attention_to_hf(ours, mx + "branches.0.", hf + "self_attn.", a.n_heads * a.head_dim,
                            a.n_kv_heads * a.head_dim, weights)
        else:
            weights.update({hf + "mamba." + k: ours[mx + "branches.0." + k] for k in MAMBA_MIXER + INNER_NORMS
                            if mx + "branches.0." + k in ours})
        if i in moe:
            up, gate = ours[ff + "branches.0.fc1.weight"].chunk(2, dim=1)
            weights.update({hf + "feed_forward.router.weight": ours[ff + "branches.0.router.weight"],
                            hf + "feed_forward.experts.gate_up_proj": torch.cat([gate, up], dim=1),
                            hf + "feed_forward.experts.down_proj": ours[ff + "branches.0.fc2.weight"]})
        else:
            mlp_to_hf(ours, ff + "branches.0.", hf + "feed_forward.", weights)
    return config, weights


def from_hf(config: dict[str, Any], weights: dict[str, Tensor]) -> tuple[ModelConfig, dict[str, Tensor]]:
    """(our ModelConfig, our state dict) of a JambaForCausalLM folder's config.json and weights."""
    weights = dict(weights)
    require(config.get("hidden_act", "silu") == "silu", f"hidden_act {config.get('hidden_act')!r}; ours is SwiGLU")
    d, n, eps = config["hidden_size"], config["num_hidden_layers"], config.get("rms_norm_eps", 1e-6)
    rank = config.get("mamba_dt_rank", "auto")
    layers = {"M": {"type": "mamba", "d_state": config.get("mamba_d_state", 16), "d_conv": config.get("mamba_d_conv", 4),
                    "expand": config.get("mamba_expand", 2), "dt_rank": -(-d // 16) if rank == "auto" else rank,
                    "conv_bias": config.get("mamba_conv_bias", True), "bias": config.get("mamba_proj_bias", False),
                    "inner_norm_eps": eps},
              "A": {"type": "attention", "n_heads": config["num_attention_heads"],
                    "n_kv_heads": config.get("num_key_value_heads"), "rope_theta": None},
              "F": {"type": "mlp", "activation": "swiglu", "hidden": config["intermediate_size"]},
              "E": {"type": "moe", "n_experts": config.get("num_experts", 16),
                    "top_k": config.get("num_experts_per_tok", 2),
                    "hidden": config["intermediate_size"], "activation": "swiglu", "renormalize": False,
                    "aux_loss_coef": config.get("router_aux_loss_coef", 0.001)}}
    ap, ao = config.get("attn_layer_period", 8), config.get("attn_layer_offset", 4)
    ep, eo = config.get("expert_layer_period", 2), config.get("expert_layer_offset", 1)
    pattern = [("A" if i % ap == ao else "M", "E" if i % ep == eo else "F") for i in range(n)]
    used = {alias for pair in pattern for alias in pair}
    tie = config.get("tie_word_embeddings", False)
    mc = ModelConfig(d_model=d, vocab_size=config["vocab_size"], layers={k: v for k, v in layers.items() if k in used},
                     layout=" ".join(" ".join(pair) for pair in pattern), norm="rmsnorm", norm_eps=eps,
                     tie_embeddings=tie)
    ours = decoder_from_hf(weights, n, "pre_ff_layernorm", "final_layernorm", tie, CLASS)
    for i, (mixer, ffn) in enumerate(pattern):
        mx, ff, hf = f"blocks.{2 * i}.", f"blocks.{2 * i + 1}.", f"model.layers.{i}."
        if mixer == "A":
            attention_from_hf(weights, hf + "self_attn.", mx + "branches.0.", ours)
        else:
            move(weights, hf + "mamba.", ours, mx + "branches.0.", MAMBA_MIXER + INNER_NORMS)
        if ffn == "E":
            ours.update(_experts_from_hf(weights, hf + "feed_forward.", ff + "branches.0.", layers["E"]["n_experts"]))
        else:
            mlp_from_hf(weights, hf + "feed_forward.", ff + "branches.0.", ours)
    check_all_used(weights, CLASS)
    return mc, ours


def _experts_from_hf(weights: dict[str, Tensor], src: str, dst: str, n_experts: int) -> dict[str, Tensor]:
    """Our router, fc1 and fc2 from fused (transformers 5) or per-expert (earlier) expert weights."""
    out = {dst + "router.weight": take(weights, src + "router.weight", CLASS)}
    if src + "experts.gate_up_proj" in weights:
        gate, up = weights.pop(src + "experts.gate_up_proj").chunk(2, dim=1)
        out[dst + "fc1.weight"] = torch.cat([up, gate], dim=1)
        out[dst + "fc2.weight"] = take(weights, src + "experts.down_proj", CLASS)
        return out
    per = [[take(weights, src + f"experts.{j}.{p}_proj.weight", CLASS) for j in range(n_experts)]
           for p in ("up", "gate", "down")]
    out[dst + "fc1.weight"] = torch.cat([torch.stack(per[0]), torch.stack(per[1])], dim=1)
    out[dst + "fc2.weight"] = torch.stack(per[2])
    return out
