"""Hugging Face transformers interop: export a HybridLM as a transformers model folder, import one.

    from hybrid.hf import export_hf, import_hf, hf_class_for
    export_hf(model, "out/")                  # config.json + model.safetensors; AutoModelForCausalLM loads it
    config, state_dict = import_hf("folder/") # our ModelConfig and state dict (HybridLM.from_hf builds the model)
    hf_class_for(model.config)                # "MambaForCausalLM", or HFMismatch naming what does not fit

Classes (one module each, both directions, exact: the logits agree in fp32):
    MambaForCausalLM   `M xN`, Mamba-1 layers                         (hybrid/hf/mamba.py)
    Mamba2ForCausalLM  `M2 xN`, Mamba-2 layers                        (hybrid/hf/mamba2.py)
    LlamaForCausalLM   `(A F) xN`, RoPE attention + SwiGLU MLP         (hybrid/hf/llama.py)
    JambaForCausalLM   Mamba-1 (dt/B/C norms) or NoPE attention, each followed by an MLP or MoE (jamba.py)
    BambaForCausalLM   Mamba-2 or attention, each followed by a SwiGLU MLP (hybrid/hf/bamba.py)
A layout no class represents is an HFMismatch naming the first sublayer or setting that does not
fit and the class that came closest. Needs the optional extra `hf` (transformers, safetensors).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from hybrid.hf import bamba, jamba, llama, mamba, mamba2
from hybrid.hf.common import HFMismatch, read_folder, sublayers, write_folder
from hybrid.model_config import ModelConfig

MAPPINGS = {mamba.CLASS: mamba, mamba2.CLASS: mamba2, llama.CLASS: llama, jamba.CLASS: jamba, bamba.CLASS: bamba}
MODEL_TYPES = {"mamba": mamba.CLASS, "mamba2": mamba2.CLASS, "llama": llama.CLASS, "jamba": jamba.CLASS,
               "bamba": bamba.CLASS}

__all__ = ["HFMismatch", "MAPPINGS", "export_hf", "hf_class_for", "import_hf"]


def hf_class_for(model_config: ModelConfig) -> str:
    """The transformers class that represents this model exactly, or an HFMismatch from the mapping
    its first sublayer points to (what does not fit, and the closest class)."""
    errors = {}
    for name, module in MAPPINGS.items():
        try:
            module.check(model_config)
            return name
        except HFMismatch as err:
            errors[name] = err
    kinds = {kind for _, _, kind, _ in sublayers(model_config)}
    closest = (mamba2.CLASS if kinds == {"mamba2"} else bamba.CLASS if "mamba2" in kinds
               else llama.CLASS if kinds <= {"attention", "mlp"} else mamba.CLASS if kinds == {"mamba"}
               else jamba.CLASS)
    raise errors[closest]


def export_hf(model, out: str | Path) -> tuple[Path, str]:
    """Write `model` (a HybridLM) as a transformers model folder; returns (folder, class name)."""
    name = hf_class_for(model.config)
    config, weights = MAPPINGS[name].to_hf(model)
    return write_folder(Path(out), config, weights), name


def import_hf(path: str | Path) -> tuple[ModelConfig, dict[str, Tensor]]:
    """(our ModelConfig, our state dict) of a transformers model folder of a supported class."""
    config, weights = read_folder(Path(path))
    name = _class_of(config, path)
    return MAPPINGS[name].from_hf(config, weights)


def _class_of(config: dict[str, Any], path: str | Path) -> str:
    archs = [a for a in config.get("architectures") or [] if a in MAPPINGS]
    name = archs[0] if archs else MODEL_TYPES.get(config.get("model_type", ""))
    if name is None:
        raise HFMismatch(f"{path}: architectures {config.get('architectures')} / model_type "
                         f"{config.get('model_type')!r} is not one of the supported classes ({', '.join(MAPPINGS)})")
    return name
