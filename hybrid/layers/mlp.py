"""Position-wise feed-forward: SwiGLU (default, Shazeer 2020) or GELU.

fc1 projects to the hidden width (twice it for SwiGLU: value and gate halves, in mamba_ssm
GatedMLP's order so its checkpoints load), fc2 projects back into the residual stream.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from hybrid.init import mark_residual_out
from hybrid.registry import register_layer


@dataclass
class MLPConfig:
    expand: float = field(default=4.0, metadata={"help": "hidden width = expand * d_model (ignored when hidden is set)"})
    hidden: int | None = field(default=None, metadata={"help": "explicit hidden width"})
    activation: Literal["swiglu", "gelu"] = field(default="swiglu", metadata={"help": "swiglu: silu(gate) * value; gelu: plain 2-layer MLP"})
    multiple_of: int = field(default=1, metadata={"help": "round the hidden width up to a multiple of this (e.g. 128 for tensor cores)"})
    bias: bool = field(default=False, metadata={"help": "biases in fc1 and fc2"})

    def __post_init__(self):
        if self.expand <= 0 or (self.hidden is not None and self.hidden <= 0) or self.multiple_of <= 0:
            raise ValueError("expand, hidden and multiple_of must be positive")


@register_layer("mlp", config=MLPConfig, role="channel", megatron_symbol="-", hf_type="mlp", capturable=True)
class MLP(nn.Module):
    """Feed-forward sublayer: SwiGLU or GELU."""

    def __init__(self, d_model: int, config: MLPConfig):
        super().__init__()
        self.config = config
        hidden = config.hidden or int(math.ceil(config.expand * d_model))
        self.hidden = -(-hidden // config.multiple_of) * config.multiple_of
        gated = config.activation == "swiglu"
        self.fc1 = nn.Linear(d_model, self.hidden * (2 if gated else 1), bias=config.bias)
        self.fc2 = mark_residual_out(nn.Linear(self.hidden, d_model, bias=config.bias))

    def forward(self, x: Tensor, state=None) -> Tensor:
        h = self.fc1(x)  # (batch, length, hidden or 2 * hidden)
        if self.config.activation == "swiglu":
            value, gate = h.chunk(2, dim=-1)
            h = value * F.silu(gate)
        else:
            h = F.gelu(h)
        return self.fc2(h)
