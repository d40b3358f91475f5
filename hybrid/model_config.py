"""The `model:` section of a config."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class ModelConfig:
    d_model: int = field(default=256, metadata={"help": "width of the residual stream"})
    vocab_size: int = field(default=256, metadata={"help": "token vocabulary (256 = bytes)"})
    layers: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "aliases: {type: <layer>, <arguments>} or {parallel: [aliases]}"})
    shared: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "shared blocks: alias -> list of aliases whose weights every use shares"})
    layout: Any = field(default="(M F) x2", metadata={"help": "layout string, alias list or shorthand (every/ratio)"})
    overrides: list[Any] = field(default_factory=list, metadata={"help": "per-sublayer argument overrides"})
    norm: Literal["rmsnorm", "layernorm"] = field(default="rmsnorm", metadata={"help": "pre-norm and final norm"})
    norm_eps: float = field(default=1e-5, metadata={"help": "epsilon of the norms"})
    tie_embeddings: bool = field(default=True, metadata={"help": "LM head shares the embedding matrix"})
    residual_in_fp32: bool = field(default=False, metadata={"help": "keep the residual stream in fp32 under autocast"})
    init_std: float = field(default=0.02, metadata={"help": "std of the embedding init"})

    def __post_init__(self):
        for name in ("d_model", "vocab_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps}")
        if not self.init_std >= 0:
            raise ValueError(f"init_std must be >= 0, got {self.init_std}")
