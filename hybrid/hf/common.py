"""What every Hugging Face mapping shares: reading a layout as a class would see it, refusals that name
the first sublayer or setting that does not fit, and the folder format (config.json + safetensors)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hybrid.errors import ConfigError
from hybrid.model_config import ModelConfig

WEIGHTS = "model.safetensors"


class HFMismatch(ValueError):
    """A layout or option that a transformers class cannot represent: names what and which class came closest."""

    def __init__(self, what: str, closest: str | None = None):
        self.what, self.closest = what, closest
        super().__init__(what + (f" (closest class: {closest})" if closest else ""))


def sublayers(model_config: ModelConfig) -> list[tuple[int, str, str, Any]]:
    """(index, alias, layer type, layer config) per sublayer; refuses parallel and shared sublayers,
    which no single-stack class has."""
    from hybrid.layout import compile_layout  # noqa: PLC0415

    layout = compile_layout(model_config.layers, model_config.layout, model_config.shared, model_config.overrides)
    out = []
    for spec in layout:
        if spec.is_parallel:
            raise HFMismatch(f"sublayer {spec.index} {spec.alias!r} runs {spec.type} in parallel", "FalconH1ForCausalLM")
        if spec.tie is not None:
            raise HFMismatch(f"sublayer {spec.index} {spec.alias!r} is a shared block", "Zamba2ForCausalLM")
        branch = spec.branches[0]
        out.append((spec.index, spec.alias, branch.type, branch.config))
    return out


def require(condition: bool, what: str, closest: str | None = None) -> None:
    if not condition:
        raise HFMismatch(what, closest)


def check_rmsnorm(model_config: ModelConfig, cls: str) -> None:
    require(model_config.norm == "rmsnorm", f"model.norm is {model_config.norm}; {cls} uses RMSNorm", cls)


def hf_modules():
    """transformers and safetensors, or an ImportError saying how to install them."""
    try:
        import safetensors.torch  # noqa: PLC0415
        import transformers  # noqa: PLC0415
    except ImportError as err:
        raise ImportError(f"Hugging Face interop needs transformers and safetensors ({err}); "
                          f"pip install 'hybrid[hf]'") from None
    return transformers, safetensors.torch


def write_folder(out: Path, hf_config: Any, weights: dict[str, Tensor]) -> Path:
    """config.json (from the transformers config object) and model.safetensors into `out`."""
    _, st = hf_modules()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hf_config.save_pretrained(out)
    st.save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(out / WEIGHTS),
                 metadata={"format": "pt"})
    return out


def read_folder(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config.json as a dict, every weight) of a transformers model folder (one or sharded safetensors)."""
    _, st = hf_modules()
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConfigError("no config.json: a transformers model folder holds config.json and *.safetensors",
                          file=str(path))
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"not JSON: {err}", file=str(config_file)) from None
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ConfigError("no *.safetensors weights beside config.json", file=str(path))
    weights: dict[str, Tensor] = {}
    for f in files:
        try:
            weights.update(st.load_file(str(f)))
        except Exception as err:  # noqa: BLE001  (safetensors raises its own error type for a damaged file)
            raise ConfigError(f"not a readable safetensors file ({err})", file=str(f)) from None
    return config, weights


def number(value: Any) -> float:
    """A float of config.json; transformers writes infinities as {"__float__": "Infinity"}."""
    return float(value["__float__"]) if isinstance(value, dict) and "__float__" in value else float(value)


def take(weights: dict[str, Tensor], key: str, where: str) -> Tensor:
    if key not in weights:
        raise KeyError(f"{where}: weight {key!r} missing from the checkpoint")
    return weights.pop(key)


def check_all_used(weights: dict[str, Tensor], where: str) -> None:
    if weights:
        raise ValueError(f"{where}: weights with no place in the model: {sorted(weights)[:8]}"
                         + (f" and {len(weights) - 8} more" if len(weights) > 8 else ""))


def lm_head_and_tie(weights: dict[str, Tensor], embedding_key: str, tie: bool) -> tuple[Tensor, Tensor | None]:
    """(embedding, lm head or None when tied)."""
    emb = take(weights, embedding_key, "embedding")
    head = weights.pop("lm_head.weight", None)
    if tie and head is not None and not torch.equal(head, emb):
        raise ValueError("tie_word_embeddings is set but lm_head.weight differs from the embedding")
    return emb, None if tie else head


def backbone_to_hf(model, mixer_names: tuple[str, ...]) -> dict[str, Tensor]:
    """The weights of a one-mixer-per-layer stack (HF Mamba, Mamba2) by HF name: backbone.embeddings,
    backbone.layers.i.norm and .mixer.<name>, backbone.norm_f, and lm_head unless tied."""
    ours = model.state_dict()
    weights = {"backbone.embeddings.weight": ours["embedding.weight"], "backbone.norm_f.weight": ours["norm_f.weight"]}
    for i in range(len(model.blocks)):
        weights[f"backbone.layers.{i}.norm.weight"] = ours[f"blocks.{i}.norm.weight"]
        weights.update({f"backbone.layers.{i}.mixer.{name}": ours[f"blocks.{i}.branches.0.{name}"]
                        for name in mixer_names if f"blocks.{i}.branches.0.{name}" in ours})
    if not model.config.tie_embeddings:
        weights["lm_head.weight"] = ours["lm_head.weight"]
    return weights


def backbone_from_hf(weights: dict[str, Tensor], n: int, mixer_names: tuple[str, ...], tie: bool,
                     cls: str) -> dict[str, Tensor]:
    """Our state dict of a `backbone_to_hf` stack of n layers; the weights taken are removed from `weights`."""
    emb, head = lm_head_and_tie(weights, "backbone.embeddings.weight", tie)
    ours = {"embedding.weight": emb, "norm_f.weight": take(weights, "backbone.norm_f.weight", cls),
            "lm_head.weight": emb if head is None else head}
    for i in range(n):
        ours[f"blocks.{i}.norm.weight"] = take(weights, f"backbone.layers.{i}.norm.weight", cls)
        move(weights, f"backbone.layers.{i}.mixer.", ours, f"blocks.{i}.branches.0.", mixer_names)
    return ours


def decoder_to_hf(model, n: int, ffn_norm: str, final_norm: str) -> dict[str, Tensor]:
    """The norms and embeddings of a (mixer, FFN)-pair decoder by HF name (Llama, Jamba, Bamba):
    model.embed_tokens, model.layers.i.input_layernorm and .<ffn_norm>, model.<final_norm>, lm_head."""
    ours = model.state_dict()
    weights = {"model.embed_tokens.weight": ours["embedding.weight"], f"model.{final_norm}.weight": ours["norm_f.weight"]}
    for i in range(n):
        weights[f"model.layers.{i}.input_layernorm.weight"] = ours[f"blocks.{2 * i}.norm.weight"]
        weights[f"model.layers.{i}.{ffn_norm}.weight"] = ours[f"blocks.{2 * i + 1}.norm.weight"]
    if not model.config.tie_embeddings:
        weights["lm_head.weight"] = ours["lm_head.weight"]
    return weights


def decoder_from_hf(weights: dict[str, Tensor], n: int, ffn_norm: str, final_norm: str, tie: bool,
                    cls: str) -> dict[str, Tensor]:
    """Our norms and embeddings of a `decoder_to_hf` decoder of n layers (removed from `weights`)."""
    emb, head = lm_head_and_tie(weights, "model.embed_tokens.weight", tie)
    ours = {"embedding.weight": emb, "norm_f.weight": take(weights, f"model.{final_norm}.weight", cls),
            "lm_head.weight": emb if head is None else head}
    for i in range(n):
        ours[f"blocks.{2 * i}.norm.weight"] = take(weights, f"model.layers.{i}.input_layernorm.weight", cls)
        ours[f"blocks.{2 * i + 1}.norm.weight"] = take(weights, f"model.layers.{i}.{ffn_norm}.weight", cls)
    return ours


def move(weights: dict[str, Tensor], src: str, ours: dict[str, Tensor], dst: str, names: tuple[str, ...]) -> None:
    """weights[src + name] -> ours[dst + name] for the names present (removed from `weights`)."""
    for name in names:
        if src + name in weights:
            ours[dst + name] = weights.pop(src + name)
