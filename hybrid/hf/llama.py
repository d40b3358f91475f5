"""`(A F) xN` Transformers of our attention and SwiGLU MLP <-> transformers' LlamaForCausalLM.

HF's decoder layer i is our sublayers 2i (input_layernorm -> self_attn) and 2i + 1
(post_attention_layernorm -> mlp). Our fused qkv projection is Llama's q_proj, k_proj, v_proj
stacked in that order; our fc1 is [up_proj; gate_proj] (value * silu(gate)), fc2 is down_proj.
Both use GPT-NeoX / Llama rotary embeddings (rotate-half pairs), so no weight permutation is needed.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from hybrid.hf.common import (check_all_used, check_rmsnorm, decoder_from_hf, decoder_to_hf, hf_modules, require,
                              sublayers, take)
from hybrid.model_config import ModelConfig

CLASS = "LlamaForCausalLM"


def check(mc: ModelConfig) -> None:
    """Refuse (HFMismatch) what LlamaForCausalLM cannot represent."""
    subs = sublayers(mc)
    check_rmsnorm(mc, CLASS)
    require(len(subs) % 2 == 0, f"{len(subs)} sublayers; {CLASS} alternates attention and MLP, (A F) xN", CLASS)
    a0, f0 = subs[0][3], subs[1][3]
    for index, alias, kind, config in subs:
        want = "attention" if index % 2 == 0 else "mlp"
        require(kind == want, f"sublayer {index} {alias!r} is {kind}, where {CLASS} has {want}",
                "JambaForCausalLM" if kind in ("mamba", "moe") else "NemotronHForCausalLM")
        if kind == "attention":
            require(config.rope_theta is not None, f"sublayer {index} {alias!r}: no positional encoding (NoPE); "
                                                   f"{CLASS} uses RoPE", "JambaForCausalLM")
            require(config.rotary_fraction == 1.0, f"sublayer {index} {alias!r}: partial RoPE "
                                                   f"(rotary_fraction {config.rotary_fraction})", "NemotronHForCausalLM")
            require(config.window is None, f"sublayer {index} {alias!r}: a sliding window of {config.window}",
                    "MistralForCausalLM")
            require(not config.qk_norm, f"sublayer {index} {alias!r}: qk_norm", "Qwen3ForCausalLM")
            same = (config.n_heads, config.n_kv_heads, config.head_dim, config.rope_theta, config.bias) == \
                   (a0.n_heads, a0.n_kv_heads, a0.head_dim, a0.rope_theta, a0.bias)
        else:
            require(config.activation == "swiglu", f"sublayer {index} {alias!r}: MLP activation "
                                                   f"{config.activation}; {CLASS} uses SwiGLU", "GPT2LMHeadModel")
            same = (config.expand, config.hidden, config.multiple_of, config.bias) == \
                   (f0.expand, f0.hidden, f0.multiple_of, f0.bias)
        require(same, f"sublayer {index} {alias!r} differs from the first of its kind; {CLASS} has one setting "
                      f"for every layer", CLASS)


def to_hf(model) -> tuple[Any, dict[str, Tensor]]:
    """(transformers LlamaConfig, weights by HF name) of a HybridLM that `check` accepts."""
    transformers, _ = hf_modules()
    mc = model.config
    check(mc)
    attn, mlp = model.blocks[0].branches[0], model.blocks[1].branches[0]
    a = attn.config
    config = transformers.LlamaConfig(
        vocab_size=mc.vocab_size, hidden_size=mc.d_model, intermediate_size=mlp.hidden,
        num_hidden_layers=len(model.blocks) // 2, num_attention_heads=attn.n_heads,
        num_key_value_heads=attn.n_kv_heads, head_dim=attn.head_dim, rms_norm_eps=mc.norm_eps,
        rope_theta=a.rope_theta, attention_bias=a.bias, mlp_bias=mlp.config.bias, hidden_act="silu",
        tie_word_embeddings=mc.tie_embeddings)
    config.architectures = [CLASS]
    ours = model.state_dict()
    q, kv = attn.n_heads * attn.head_dim, attn.n_kv_heads * attn.head_dim
    weights = decoder_to_hf(model, len(model.blocks) // 2, "post_attention_layernorm", "norm")
    for i in range(len(model.blocks) // 2):
        at, ml, hf = f"blocks.{2 * i}.", f"blocks.{2 * i + 1}.", f"model.layers.{i}."
        attention_to_hf(ours, at + "branches.0.", hf + "self_attn.", q, kv, weights)
        mlp_to_hf(ours, ml + "branches.0.", hf + "mlp.", weights)
    return config, weights


def from_hf(config: dict[str, Any], weights: dict[str, Tensor]) -> tuple[ModelConfig, dict[str, Tensor]]:
    """(our ModelConfig, our state dict) of a LlamaForCausalLM folder's config.json and weights."""
    weights = dict(weights)
    require(config.get("hidden_act", "silu") == "silu", f"hidden_act {config.get('hidden_act')!r}; ours is SwiGLU")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    require(rope.get("rope_type", rope.get("type", "default")) == "default",
            f"RoPE scaling {rope.get('rope_type', rope.get('type'))!r}; ours is plain RoPE")
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    d, heads = config["hidden_size"], config["num_attention_heads"]
    layers = {"A": {"type": "attention", "n_heads": heads, "n_kv_heads": config.get("num_key_value_heads") or heads,
                    "head_dim": config.get("head_dim") or d // heads, "rope_theta": float(theta),
                    "bias": config.get("attention_bias", False)},
              "F": {"type": "mlp", "activation": "swiglu", "hidden": config["intermediate_size"],
                    "bias": config.get("mlp_bias", False)}}
    n, tie = config["num_hidden_layers"], config.get("tie_word_embeddings", False)
    mc = ModelConfig(d_model=d, vocab_size=config["vocab_size"], layers=layers, layout=f"(A F) x{n}", norm="rmsnorm",
                     norm_eps=config.get("rms_norm_eps", 1e-6), tie_embeddings=tie)
    ours = decoder_from_hf(weights, n, "post_attention_layernorm", "norm", tie, CLASS)
    for i in range(n):
        at, ml, hf = f"blocks.{2 * i}.", f"blocks.{2 * i + 1}.", f"model.layers.{i}."
        attention_from_hf(weights, hf + "self_attn.", at + "branches.0.", ours)
        mlp_from_hf(weights, hf + "mlp.", ml + "branches.0.", ours)
    drop_rotary_buffers(weights, n)
    check_all_used(weights, CLASS)
    return mc, ours


def attention_to_hf(ours: dict[str, Tensor], src: str, dst: str, q: int, kv: int, weights: dict[str, Tensor]) -> None:
    """Our attention at `src` (fused qkv, out_proj) as q_proj, k_proj, v_proj, o_proj at `dst`."""
    for part in ("weight", "bias"):
        if src + "qkv." + part in ours:
            wq, wk, wv = ours[src + "qkv." + part].split([q, kv, kv])
            weights.update({dst + f"q_proj.{part}": wq, dst + f"k_proj.{part}": wk, dst + f"v_proj.{part}": wv,
                            dst + f"o_proj.{part}": ours[src + "out_proj." + part]})


def attention_from_hf(weights: dict[str, Tensor], src: str, dst: str, ours: dict[str, Tensor]) -> None:
    for part in ("weight", "bias"):
        if src + f"q_proj.{part}" in weights:
            ours[dst + "qkv." + part] = torch.cat([weights.pop(src + f"{p}_proj.{part}") for p in "qkv"])
            ours[dst + "out_proj." + part] = take(weights, src + f"o_proj.{part}", src)


def mlp_to_hf(ours: dict[str, Tensor], src: str, dst: str, weights: dict[str, Tensor]) -> None:
    """Our SwiGLU MLP at `src` (fc1 = [value; gate], fc2) as up_proj, gate_proj, down_proj at `dst`."""
    for part in ("weight", "bias"):
        if src + "fc1." + part in ours:
            up, gate = ours[src + "fc1." + part].chunk(2)
            weights.update({dst + f"up_proj.{part}": up, dst + f"gate_proj.{part}": gate,
                            dst + f"down_proj.{part}": ours[src + "fc2." + part]})


def mlp_from_hf(weights: dict[str, Tensor], src: str, dst: str, ours: dict[str, Tensor]) -> None:
    for part in ("weight", "bias"):
        if src + f"up_proj.{part}" in weights:
            ours[dst + "fc1." + part] = torch.cat([weights.pop(src + f"up_proj.{part}"),
                                                   weights.pop(src + f"gate_proj.{part}")])
            ours[dst + "fc2." + part] = take(weights, src + f"down_proj.{part}", src)


def drop_rotary_buffers(weights: dict[str, Tensor], n: int) -> None:
    """inv_freq buffers that older transformers saved: recomputed from rope_theta, not weights."""
    weights.pop("model.rotary_emb.inv_freq", None)
    for i in range(n):
        weights.pop(f"model.layers.{i}.self_attn.rotary_emb.inv_freq", None)
