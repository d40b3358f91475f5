"""Load mamba_ssm checkpoints (`MambaLMHeadModel`: config.json + pytorch_model.bin) into HybridLM.

mamba_ssm block i is "add -> norm -> mixer" (+ "add -> norm2 -> mlp" when d_intermediate > 0),
which is our pre-norm residual sublayer (or two). Mixers are Mamba-1 or Mamba-2 (ssm_cfg.layer), or
MHA at attn_layer_idx.
Nothing is downloaded: pass the files (or the loaded dicts).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from hybrid.model import HybridLM
from hybrid.model_config import ModelConfig

_MAMBA_KEYS = {"d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init", "dt_scale",
               "dt_init_floor", "conv_bias", "bias"}
_MAMBA2_KEYS = {"d_state", "d_conv", "conv_init", "expand", "headdim", "d_ssm", "ngroups", "A_init_range",
                "D_has_hdim", "rmsnorm", "norm_before_gate", "dt_min", "dt_max", "dt_init_floor", "dt_limit",
                "bias", "conv_bias", "chunk_size"}
# ssm_cfg.layer -> (our layer type, the keys it takes, keys dropped: choices of mamba_ssm's kernels, not of the model)
_MIXERS = {"Mamba1": ("mamba", _MAMBA_KEYS, set()), "Mamba2": ("mamba2", _MAMBA2_KEYS, {"use_mem_eff_path"})}


def mamba_ssm_model_config(cfg: dict[str, Any], state_dict: dict[str, torch.Tensor] | None = None) -> ModelConfig:
    """Our ModelConfig for a mamba_ssm MambaConfig (as in its config.json)."""
    ssm_cfg = dict(cfg.get("ssm_cfg") or {})
    layer = ssm_cfg.pop("layer", "Mamba1")
    if layer not in _MIXERS:
        raise ValueError(f"only Mamba-1 and Mamba-2 checkpoints load (ssm_cfg.layer={layer!r})")
    mixer, keys, dropped = _MIXERS[layer]
    ssm_cfg = {k: v for k, v in ssm_cfg.items() if k not in dropped}
    unknown = set(ssm_cfg) - keys
    if unknown:
        raise ValueError(f"ssm_cfg keys not supported for {layer}: {sorted(unknown)}")
    for key in ("A_init_range", "dt_limit"):  # JSON lists or tuples; our config takes lists
        if key in ssm_cfg:
            ssm_cfg[key] = [float(v) for v in ssm_cfg[key]]
    d_model, n_layer = cfg["d_model"], cfg["n_layer"]
    vocab, multiple = cfg.get("vocab_size", 50277), cfg.get("pad_vocab_size_multiple", 8)
    vocab = -(-vocab // multiple) * multiple
    layers: dict[str, Any] = {"M": {"type": mixer, **ssm_cfg}}
    attn_idx = set(cfg.get("attn_layer_idx") or [])
    if attn_idx:
        a = dict(cfg.get("attn_cfg") or {})
        if a.get("d_conv") or a.get("mlp_dim"):
            raise ValueError("MHA layers with d_conv or mlp_dim are not supported")
        bias = state_dict is not None and any(k.endswith("mixer.in_proj.bias") for k in state_dict)
        layers["A"] = {"type": "attention", "n_heads": a["num_heads"], "n_kv_heads": a.get("num_heads_kv"),
                       "head_dim": a.get("head_dim"), "bias": bias,
                       "rope_theta": float(a.get("rotary_emb_base", 10000.0)) if a.get("rotary_emb_dim") else None}
        head_dim = a.get("head_dim") or d_model // a["num_heads"]
        if a.get("rotary_emb_dim"):
            layers["A"]["rotary_fraction"] = a["rotary_emb_dim"] / head_dim
        if a.get("rotary_emb_interleaved"):
            raise ValueError("interleaved rotary embeddings are not supported")
    mlp = cfg.get("d_intermediate", 0)
    if mlp:
        layers["F"] = {"type": "mlp", "hidden": mlp, "multiple_of": 128}
    layout = []
    for i in range(n_layer):
        layout.append("A" if i in attn_idx else "M")
        if mlp:
            layout.append("F")
    return ModelConfig(d_model=d_model, vocab_size=vocab, layers=layers, layout=" ".join(layout),
                       norm="rmsnorm" if cfg.get("rms_norm", True) else "layernorm",
                       norm_eps=cfg.get("norm_epsilon", 1e-5), tie_embeddings=cfg.get("tie_embeddings", True),
                       residual_in_fp32=cfg.get("residual_in_fp32", True))


def mamba_ssm_key_map(state_dict: dict[str, torch.Tensor], model: HybridLM) -> dict[str, str]:
    """mamba_ssm parameter name -> our parameter name."""
    has_mlp = any(".mlp." in k for k in state_dict)
    per_block = 2 if has_mlp else 1
    mapping = {}
    for key in state_dict:
        if key == "backbone.embedding.weight":
            mapping[key] = "embedding.weight"
        elif key.startswith("backbone.norm_f."):
            mapping[key] = "norm_f." + key.rsplit(".", 1)[1]
        elif key == "lm_head.weight":
            if not model.config.tie_embeddings:
                mapping[key] = "lm_head.weight"
        else:
            m = re.fullmatch(r"backbone\.layers\.(\d+)\.(norm|mixer|norm2|mlp)\.(.+)", key)
            if not m:
                raise KeyError(f"unexpected mamba_ssm parameter {key!r}")
            i, part, rest = int(m.group(1)), m.group(2), m.group(3)
            j = i * per_block + (1 if part in ("norm2", "mlp") else 0)
            if part in ("norm", "norm2"):
                mapping[key] = f"blocks.{j}.norm.{rest}"
            else:
                if model.blocks[j].spec.branches[0].type == "attention":
                    rest = rest.replace("in_proj.", "qkv.")
                mapping[key] = f"blocks.{j}.branches.0.{rest}"
    return mapping


def load_mamba_ssm_state_dict(model: HybridLM, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy a mamba_ssm state dict into `model`; every parameter of both must be accounted for."""
    mapping = mamba_ssm_key_map(state_dict, model)
    ours = model.state_dict()
    converted = {}
    for theirs, name in mapping.items():
        if name not in ours:
            raise KeyError(f"{theirs!r} maps to {name!r}, which the model does not have")
        if ours[name].shape != state_dict[theirs].shape:
            raise ValueError(f"{theirs!r} has shape {tuple(state_dict[theirs].shape)}, "
                             f"our {name!r} {tuple(ours[name].shape)}")
        converted[name] = state_dict[theirs]
    if model.config.tie_embeddings:
        converted["lm_head.weight"] = converted["embedding.weight"]
    missing = sorted(set(ours) - set(converted))
    if missing:
        raise KeyError(f"the checkpoint lacks {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    model.load_state_dict(converted)


def from_mamba_ssm(config: str | Path | dict, weights: str | Path | dict) -> HybridLM:
    """A HybridLM from a mamba_ssm config.json and pytorch_model.bin (paths or loaded dicts)."""
    cfg = json.loads(Path(config).read_text()) if not isinstance(config, dict) else config
    sd = torch.load(weights, map_location="cpu", weights_only=True) if not isinstance(weights, dict) else weights
    model = HybridLM(mamba_ssm_model_config(cfg, sd))
    load_mamba_ssm_state_dict(model, sd)
    return model
