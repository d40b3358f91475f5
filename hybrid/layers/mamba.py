"""Mamba-1 block (Gu & Dao 2023, Fig. 3): the selective state-space mixer.

    x, z   = in_proj(u)                                  (batch, 2 * d_inner, length)
    x      = silu(causal depthwise conv1d(x))            one fused op (hybrid.kernels.causal_conv1d)
    dt, B, C = x_proj(x);  dt = dt_proj(dt)              input-dependent step and projections
                                                         (Jamba: RMSNorm of dt, B and C first, `inner_norm_eps`)
    y      = selective_scan(x, dt, A = -exp(A_log), B, C, D, z, dt bias, softplus)
    out    = out_proj(y)

Parameter names, shapes, defaults and initialisation follow mamba_ssm's `Mamba` so that its
checkpoints load (`hybrid.convert`). Inference keeps a `MambaState`: the last d_conv - 1 conv
inputs and the SSM state, whose size does not depend on the context length.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybrid.init import mark_no_reinit, mark_no_weight_decay, mark_residual_out
from hybrid.kernels.causal_conv1d import causal_conv1d, causal_conv1d_continue, causal_conv1d_update
from hybrid.kernels.selective_scan import selective_scan, selective_state_update
from hybrid.layers.projections import channels_to_channels, channels_to_tokens, tokens_to_channels
from hybrid.norms import RMSNorm
from hybrid.registry import register_layer


@dataclass
class MambaConfig:
    d_state: int = field(default=16, metadata={"help": "SSM state size N per channel"})
    d_conv: int = field(default=4, metadata={"help": "causal depthwise convolution width"})
    expand: float = field(default=2, metadata={"help": "d_inner = expand * d_model"})
    dt_rank: int | Literal["auto"] = field(default="auto", metadata={"help": "rank of the dt projection; auto = ceil(d_model / 16)"})
    dt_min: float = field(default=0.001, metadata={"help": "initial dt drawn log-uniformly in [dt_min, dt_max]"})
    dt_max: float = field(default=0.1, metadata={"help": "see dt_min"})
    dt_init: Literal["random", "constant"] = field(default="random", metadata={"help": "dt_proj weight init"})
    dt_scale: float = field(default=1.0, metadata={"help": "scale of the dt_proj weight init"})
    dt_init_floor: float = field(default=1e-4, metadata={"help": "lower clamp of the initial dt"})
    conv_bias: bool = field(default=True, metadata={"help": "bias in conv1d"})
    inner_norm_eps: float | None = field(default=None, metadata={
        "help": "RMSNorm of dt, B and C after x_proj with this epsilon (Jamba's dt/b/c_layernorm); null: none"})
    bias: bool = field(default=False, metadata={"help": "biases in in_proj and out_proj"})
    scan_backend: Literal["auto", "triton", "torch", "ref"] = field(
        default="auto", metadata={"help": "selective scan implementation (auto: Triton on GPU, PyTorch on CPU)"})
    conv_backend: Literal["auto", "triton", "torch", "ref"] = field(
        default="auto", metadata={"help": "causal conv1d + SiLU implementation (auto: Triton on GPU, F.conv1d on CPU)"})

    def __post_init__(self):
        if self.d_state <= 0 or self.d_conv <= 0 or self.expand <= 0:
            raise ValueError("d_state, d_conv and expand must be positive")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")


@dataclass
class MambaState:
    conv: Tensor  # (batch, d_inner, d_conv - 1): the last conv inputs
    ssm: Tensor   # (batch, d_inner, d_state) fp32
    # A = -exp(A_log), D and the dt bias in fp32, made by the first decoding step and kept for the next
    # ones (five fewer kernel launches a step, which bind eager decoding): a state decodes one model's
    # weights as they were when it started. Not a field, so not counted as state.
    step_constants = None


@register_layer("mamba", config=MambaConfig, state="recurrent", megatron_symbol="M", hf_type="mamba", capturable=True)
class Mamba(nn.Module):
    """Mamba-1 selective SSM mixer (S6 scan, conv, gate)."""

    def __init__(self, d_model: int, config: MambaConfig):
        super().__init__()
        self.config = config
        c = config
        self.d_model = d_model
        self.d_inner = int(c.expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if c.dt_rank == "auto" else c.dt_rank
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=c.bias)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, c.d_conv, groups=self.d_inner,
                                padding=c.d_conv - 1, bias=c.conv_bias)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * c.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.out_proj = mark_residual_out(nn.Linear(self.d_inner, d_model, bias=c.bias))

        # dt_proj init preserves the variance of dt at initialisation (mamba_ssm)
        std = self.dt_rank ** -0.5 * c.dt_scale
        with torch.no_grad():
            if c.dt_init == "constant":
                self.dt_proj.weight.fill_(std)
            else:
                self.dt_proj.weight.uniform_(-std, std)
            # dt ~ log-uniform in [dt_min, dt_max]; bias = softplus^-1(dt) so that softplus(bias) = dt
            dt = torch.exp(torch.rand(self.d_inner) * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min))
            dt = dt.clamp(min=c.dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        # S4D-real: A[d, n] = -(n + 1)
        A = torch.arange(1, c.d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        if c.inner_norm_eps is not None:  # Jamba's names
            self.dt_layernorm = RMSNorm(self.dt_rank, c.inner_norm_eps)
            self.b_layernorm = RMSNorm(c.d_state, c.inner_norm_eps)
            self.c_layernorm = RMSNorm(c.d_state, c.inner_norm_eps)
        mark_no_weight_decay(self.A_log, self.D, self.dt_proj.bias)
        mark_no_reinit(self.A_log, self.D, self.dt_proj.bias, self.dt_proj.weight)

    def init_state(self, batch_size: int, max_length: int = 0, device=None, dtype=None) -> MambaState:
        dtype = dtype or self.conv1d.weight.dtype
        return MambaState(torch.zeros(batch_size, self.d_inner, self.config.d_conv - 1, device=device, dtype=dtype),
                          torch.zeros(batch_size, self.d_inner, self.config.d_state, device=device, dtype=torch.float32))

    def _conv(self, x: Tensor, state: MambaState | None) -> Tensor:
        """silu(causal depthwise conv(x)) of x (batch, d_inner, length), continuing from `state` when given.

        The nn.Conv1d stays the parameter holder (mamba_ssm's names and shapes); its forward is not used."""
        weight = self.conv1d.weight[:, 0]  # (d_inner, d_conv)
        bias, backend = self.conv1d.bias, self.config.conv_backend
        if state is None:
            return causal_conv1d(x, weight, bias, activation="silu", backend=backend)
        return causal_conv1d_continue(x, state.conv, weight, bias, activation="silu", backend=backend)

    def _step(self, hidden: Tensor, state: MambaState) -> Tensor:
        """One decoding step, (batch, 1, d_model) -> (batch, 1, d_model): the token-major projections
        of a single position need no layout change, so plain F.linear replaces the batched matmuls
        (decoding is bound by the host's per-op cost, not by the GPU)."""
        c = self.config
        x, z = F.linear(hidden[:, 0], self.in_proj.weight, self.in_proj.bias).chunk(2, dim=-1)  # (batch, d_inner)
        x = causal_conv1d_update(x, state.conv, self.conv1d.weight[:, 0], self.conv1d.bias, activation="silu",
                                 backend=c.conv_backend)
        dt, B, C = F.linear(x, self.x_proj.weight).split([self.dt_rank, c.d_state, c.d_state], dim=-1)
        if c.inner_norm_eps is not None:
            dt, B, C = self.dt_layernorm(dt), self.b_layernorm(B), self.c_layernorm(C)
        dt = F.linear(dt, self.dt_proj.weight)  # (batch, d_inner); bias added in the update
        if state.step_constants is None:
            f32 = torch.float32  # copies, also of fp32 weights: the state keeps the weights it started with
            state.step_constants = (-torch.exp(self.A_log.to(f32)), self.D.to(f32, copy=True),
                                    self.dt_proj.bias.to(f32, copy=True))
        A, D, dt_bias = state.step_constants
        y = selective_state_update(state.ssm, x, dt, A, B, C, D, z=z, dt_bias=dt_bias, dt_softplus=True,
                                   backend=c.scan_backend)
        return F.linear(y, self.out_proj.weight, self.out_proj.bias)[:, None]

    def forward(self, hidden: Tensor, state: MambaState | None = None) -> Tensor:
        length = hidden.shape[1]
        c = self.config
        if state is not None and length == 1:
            return self._step(hidden, state)
        # The scan and the conv want (batch, channels, length) with the length contiguous: the
        # projections write that layout directly (projections.py), with no transposing copies.
        x, z = tokens_to_channels(hidden, self.in_proj.weight, self.in_proj.bias, chunks=2)  # (batch, d_inner, length)
        x = self._conv(x, state)  # silu(conv(x)): (batch, d_inner, length)
        dt, B, C = channels_to_channels(x, self.x_proj.weight).split([self.dt_rank, c.d_state, c.d_state], dim=1)
        if c.inner_norm_eps is not None:  # over the channels of (batch, channels, length)
            dt, B, C = (norm(t.transpose(1, 2)).transpose(1, 2).contiguous() for norm, t in
                        ((self.dt_layernorm, dt), (self.b_layernorm, B), (self.c_layernorm, C)))
        dt = channels_to_channels(dt, self.dt_proj.weight)  # (batch, d_inner, length); bias added in the scan
        A = -torch.exp(self.A_log.float())  # (d_inner, d_state)
        y = selective_scan(x, dt, A, B, C, self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(),
                           delta_softplus=True, return_last_state=state is not None,
                           initial_state=state.ssm if state is not None else None, backend=c.scan_backend)
        if state is not None:
            y, last = y
            state.ssm.copy_(last)
        return channels_to_tokens(y, self.out_proj.weight, self.out_proj.bias)  # (batch, length, d_model)
