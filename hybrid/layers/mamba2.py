"""Mamba-2 block (Dao & Gu 2024, "Transformers are SSMs", Fig. 6): the SSD mixer.

    z, xBC, dt = in_proj(u)                      one projection (plus z0, x0 of an MLP part when d_ssm < d_inner)
    x, B, C    = silu(causal depthwise conv1d(xBC))             the conv covers x, B and C
    y          = ssd(x, dt, A = -exp(A_log), B, C, D, dt_bias, softplus, dt_limit)   per head, scalar A
    y          = gated_rmsnorm(y, z)                            (or y * silu(z) without rmsnorm)
    out        = out_proj(y)

Heads of `headdim` channels share a scalar decay; groups of heads share B and C (multi-value
attention's analogue). Parameter names, shapes, defaults and initialisation follow mamba_ssm's
`Mamba2`, so its state dicts load unchanged. Inference keeps a `Mamba2State`: the last d_conv - 1
conv inputs and the SSM state (batch, heads, headdim, d_state), of a size independent of the context.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybrid.init import mark_no_reinit, mark_no_weight_decay, mark_residual_out
from hybrid.kernels.causal_conv1d import causal_conv1d, causal_conv1d_continue
from hybrid.kernels.grad_sink import split_into_sink
from hybrid.kernels.ssd import ssd_packed, ssd_state_update
from hybrid.norms import GatedRMSNorm
from hybrid.registry import register_layer


@dataclass
class Mamba2Config:
    d_state: int = field(default=128, metadata={"help": "SSM state size N per head"})
    d_conv: int = field(default=4, metadata={"help": "causal depthwise convolution width"})
    conv_init: float | None = field(default=None, metadata={"help": "conv weights uniform in +-conv_init (null: PyTorch's)"})
    expand: float = field(default=2, metadata={"help": "d_inner = expand * d_model"})
    headdim: int = field(default=64, metadata={"help": "channels per head P (heads = d_ssm / headdim)"})
    d_ssm: int | None = field(default=None, metadata={
        "help": "channels through the SSM (null: d_inner); the rest of d_inner is a gated MLP"})
    ngroups: int = field(default=1, metadata={"help": "groups of heads sharing B and C"})
    A_init_range: list[float] = field(default_factory=lambda: [1.0, 16.0], metadata={"help": "A ~ -uniform(range) per head"})
    D_has_hdim: bool = field(default=False, metadata={"help": "D per channel (else per head)"})
    rmsnorm: bool = field(default=True, metadata={"help": "gated RMSNorm before out_proj (else y * silu(z))"})
    norm_before_gate: bool = field(default=False, metadata={"help": "norm(y) * silu(z) instead of norm(y * silu(z))"})
    dt_min: float = field(default=0.001, metadata={"help": "initial dt drawn log-uniformly in [dt_min, dt_max]"})
    dt_max: float = field(default=0.1, metadata={"help": "see dt_min"})
    dt_init_floor: float = field(default=1e-4, metadata={"help": "lower clamp of the initial dt"})
    dt_limit: list[float] = field(default_factory=lambda: [0.0, math.inf], metadata={"help": "clamp of dt after softplus"})
    bias: bool = field(default=False, metadata={"help": "biases in in_proj and out_proj"})
    conv_bias: bool = field(default=True, metadata={"help": "bias in conv1d"})
    chunk_size: int = field(default=256, metadata={"help": "SSD chunk length"})
    ssd_backend: Literal["auto", "triton", "torch", "ref"] = field(
        default="auto", metadata={"help": "SSD implementation (auto: the Triton kernels on CUDA, chunked PyTorch on the CPU)"})
    conv_backend: Literal["auto", "triton", "torch", "ref"] = field(
        default="auto", metadata={"help": "causal conv1d + SiLU implementation (auto: Triton on GPU)"})
    norm_backend: Literal["auto", "triton", "torch"] = field(
        default="auto", metadata={"help": "gated RMSNorm implementation (auto: Triton on GPU, checkpointed PyTorch on the CPU)"})

    def __post_init__(self):
        if min(self.d_state, self.d_conv, self.headdim, self.ngroups, self.chunk_size) <= 0 or self.expand <= 0:
            raise ValueError("d_state, d_conv, expand, headdim, ngroups and chunk_size must be positive")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        if len(self.A_init_range) != 2 or not 0 < self.A_init_range[0] <= self.A_init_range[1]:
            raise ValueError(f"A_init_range must be [low, high] with 0 < low <= high, got {self.A_init_range}")
        if len(self.dt_limit) != 2 or not 0 <= self.dt_limit[0] < self.dt_limit[1]:
            raise ValueError(f"dt_limit must be [low, high] with 0 <= low < high, got {self.dt_limit}")


@dataclass
class Mamba2State:
    conv: Tensor  # (batch, conv_dim, d_conv - 1): the last conv inputs (x, B and C channels)
    ssm: Tensor   # (batch, heads, headdim, d_state) fp32
    # A = -exp(A_log), D (heads,) or (heads, headdim) and dt_bias in fp32, made by the first decoding step
    # and kept for the next ones, as MambaState's (two fewer kernel launches a step, more with bf16 weights,
    # whose casts go too): a state decodes one model's weights as they were when it started. Not a field,
    # so not counted as state.
    step_constants = None


@register_layer("mamba2", config=Mamba2Config, state="recurrent", megatron_symbol="M", hf_type="mamba2",
                capturable=True)
class Mamba2(nn.Module):
    """Mamba-2 SSD mixer (multi-head scalar-decay SSM, grouped B and C, gated RMSNorm)."""

    def __init__(self, d_model: int, config: Mamba2Config):
        super().__init__()
        self.config = c = config
        self.d_model = d_model
        if c.expand * d_model != int(c.expand * d_model):
            raise ValueError(f"mamba2: expand ({c.expand}) times d_model ({d_model}) must be a whole number of channels")
        self.d_inner = int(c.expand * d_model)
        self.d_ssm = self.d_inner if c.d_ssm is None else c.d_ssm
        if self.d_ssm > self.d_inner or self.d_ssm % c.headdim or (self.d_ssm // c.headdim) % c.ngroups:
            raise ValueError(f"mamba2: d_ssm ({self.d_ssm}) must be at most d_inner ({self.d_inner}) and a multiple "
                             f"of headdim ({c.headdim}), with ngroups ({c.ngroups}) dividing the heads")
        self.nheads = self.d_ssm // c.headdim
        self.conv_dim = self.d_ssm + 2 * c.ngroups * c.d_state
        # in_proj's output, in mamba_ssm's order: [z0, x0 (the MLP part), z, x, B, C, dt]
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * c.ngroups * c.d_state + self.nheads, bias=c.bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, c.d_conv, groups=self.conv_dim,
                                padding=c.d_conv - 1, bias=c.conv_bias)
        if c.conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -c.conv_init, c.conv_init)
        # dt ~ log-uniform in [dt_min, dt_max] per head; dt_bias = softplus^-1(dt)
        dt = torch.exp(torch.rand(self.nheads) * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min))
        dt = dt.clamp(min=c.dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(*c.A_init_range)))
        self.D = nn.Parameter(torch.ones(self.d_ssm if c.D_has_hdim else self.nheads))
        if c.rmsnorm:
            self.norm = GatedRMSNorm(self.d_ssm, eps=1e-5, group_size=self.d_ssm // c.ngroups,
                                     norm_before_gate=c.norm_before_gate, backend=c.norm_backend)
        self.out_proj = mark_residual_out(nn.Linear(self.d_inner, d_model, bias=c.bias))
        mark_no_weight_decay(self.dt_bias, self.A_log, self.D)
        mark_no_reinit(self.dt_bias, self.A_log, self.D)

    def activation_elements(self, length: int) -> int:
        """float32 elements per example the chunked PyTorch SSD keeps for its backward beyond the
        projections (for `hybrid.estimate`): three (length, chunk, heads) decay and score tensors and
        the chunk states, (chunks, heads, headdim, d_state) twice."""
        c = self.config
        q = min(c.chunk_size, max(length, 1))
        chunks = -(-length // q)
        return 3 * chunks * q * q * self.nheads + 2 * chunks * self.nheads * c.headdim * c.d_state

    def init_state(self, batch_size: int, max_length: int = 0, device=None, dtype=None) -> Mamba2State:
        c = self.config
        return Mamba2State(
            torch.zeros(batch_size, self.conv_dim, c.d_conv - 1, device=device, dtype=dtype or self.conv1d.weight.dtype),
            torch.zeros(batch_size, self.nheads, c.headdim, c.d_state, device=device, dtype=torch.float32))

    def _split(self, zxbcdt: Tensor, sizes: list[int]) -> tuple[tuple[Tensor, ...], Callable | None, Callable | None]:
        """in_proj's output as (z0, x0, z, xBC, dt), and where the norm and the conv may write the
        gradients of z and xBC: slices of one buffer that is then in_proj's output gradient (no
        concatenation in the backward; `hybrid.kernels.grad_sink`). Without autograd a plain split, and
        under torch.compile too (which traces the split and fuses around it; the sink's Python callables
        in autograd Functions would break its graph)."""
        if not (torch.is_grad_enabled() and zxbcdt.requires_grad) or torch.compiler.is_compiling():
            return zxbcdt.split(sizes, dim=-1), None, None
        pieces, sink = split_into_sink(zxbcdt, sizes)
        z, xbc = 2, 3  # the pieces' positions in `sizes`
        return pieces, sink.into(z), sink.into(xbc, lambda t: t.transpose(1, 2))  # the conv's channel-last view

    def _conv(self, xBC: Tensor, state: Mamba2State | None, dx_into: Callable | None = None) -> Tensor:
        """silu(causal conv(xBC)) of xBC (batch, length, conv_dim), continuing from `state` when given."""
        weight, bias, backend = self.conv1d.weight[:, 0], self.conv1d.bias, self.config.conv_backend
        x = xBC.transpose(1, 2)  # (batch, conv_dim, length): a channel-last view, no copy
        if state is None:
            return causal_conv1d(x, weight, bias, activation="silu", backend=backend, dx_into=dx_into).transpose(1, 2)
        return causal_conv1d_continue(x, state.conv, weight, bias, activation="silu", backend=backend).transpose(1, 2)

    def _skip_weight(self) -> Tensor:
        """D, the skip weight: (heads, headdim) with D_has_hdim, else (heads,)."""
        return self.D.view(self.nheads, self.config.headdim) if self.config.D_has_hdim else self.D

    def forward(self, hidden: Tensor, state: Mamba2State | None = None) -> Tensor:
        c = self.config
        batch, length, _ = hidden.shape
        gn = c.ngroups * c.d_state
        zxbcdt = self.in_proj(hidden)  # (batch, length, d_in_proj)
        d_mlp = (zxbcdt.shape[-1] - 2 * self.d_ssm - 2 * gn - self.nheads) // 2
        (z0, x0, z, xBC, dt), dz_into, dxbc_into = self._split(
            zxbcdt, [d_mlp, d_mlp, self.d_ssm, self.conv_dim, self.nheads])
        xBC = self._conv(xBC, state, dxbc_into)  # x, B and C side by side
        heads = (batch, length, self.nheads, c.headdim)
        gate = None if c.rmsnorm else z.reshape(heads)
        if state is not None and length == 1:  # decoding: one recurrent step
            x, B, C = xBC.split([self.d_ssm, gn, gn], dim=-1)
            if state.step_constants is None:
                f32 = torch.float32  # copies, also of fp32 weights: the state keeps the weights it started with
                state.step_constants = (-torch.exp(self.A_log.to(f32)), self._skip_weight().to(f32, copy=True),
                                        self.dt_bias.to(f32, copy=True))
            A, D, dt_bias = state.step_constants
            y = ssd_state_update(state.ssm, x.reshape(heads)[:, 0], dt[:, 0], A, B.reshape(batch, 1, c.ngroups, -1)[:, 0],
                                 C.reshape(batch, 1, c.ngroups, -1)[:, 0], D, gate[:, 0] if gate is not None else None,
                                 dt_bias=dt_bias, dt_softplus=True, dt_limit=tuple(c.dt_limit))[:, None]
        else:
            A = -torch.exp(self.A_log.float())  # (heads,)
            # x, B and C as views of the conv output: their gradient is one tensor (no concatenation)
            y = ssd_packed(xBC, dt, A, (self.nheads, c.headdim, c.ngroups, c.d_state), chunk_size=c.chunk_size,
                           D=self._skip_weight(), z=gate, dt_bias=self.dt_bias, dt_softplus=True,
                           dt_limit=tuple(c.dt_limit), initial_states=state.ssm if state is not None else None,
                           return_final_states=state is not None, backend=c.ssd_backend)
            if state is not None:
                y, last = y
                state.ssm.copy_(last)
        y = y.reshape(batch, length, self.d_ssm)
        if c.rmsnorm:
            y = self.norm(y, z, dz_into=dz_into)
        if d_mlp > 0:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)
        return self.out_proj(y)
