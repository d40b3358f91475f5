"""S4D: a diagonal linear time-invariant state-space mixer (Gu et al. 2022, "On the Parameterization and
Initialization of Diagonal State Space Models"), the non-selective baseline of the Mamba paper's Table 1.

Per channel h, a diagonal SSM with M modes, continuous parameters A (complex, Re A < 0), B, C and a
step dt = exp(log_dt), none of which depend on the input (time invariance):

    h_t = dA h_{t-1} + dB x_t,   y_t = s Re(C h_t) + D x_t      (s = 2: conjugate pairs; s = 1: real A)

    ZOH:       dA = exp(dt A),                 dB = (exp(dt A) - 1) / A * B
    bilinear:  dA = (1 + dt A/2) / (1 - dt A/2), dB = dt B / (1 - dt A/2)

Being time invariant, the whole map is a causal convolution y = K * x + D x with kernel
K_l = s Re(sum_m C_m dB_m dA_m^l) (a Vandermonde product): training runs it through an FFT in
O(L log L), decoding runs the recurrence one step at a time in O(M) per channel (the dual modes).
A chunk that continues from a state h_0 adds s Re(sum_m C_m dA_m^(t+1) h_0,m) and leaves
h_L = dA^L h_0 + sum_s dA^(L-1-s) dB x_s.

Initialisations of A (M = d_state / 2 complex modes, or d_state real ones):
    lin:  A_n = -1/2 + i pi n                            (S4D-Lin), B_n = 1
    inv:  A_n = -1/2 + i (N / pi) (N / (2n + 1) - 1)     (S4D-Inv), B_n = 1
    real: A_n = -(n + 1), B_n = sqrt(2n + 1)             (S4D-Real, from HiPPO-LegS)

The block around it: x, z = in_proj(u); y = S4D(x) + D x; y = y * silu(z) with gating, else gelu(y);
out = out_proj(y). The SSM runs in float32 / complex64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybrid.init import mark_no_reinit, mark_no_weight_decay, mark_residual_out
from hybrid.registry import register_layer


@dataclass
class S4DConfig:
    d_state: int = field(default=64, metadata={"help": "state size N per channel (N / 2 complex modes, or N real ones)"})
    expand: float = field(default=1.0, metadata={"help": "SSM channels = expand * d_model"})
    init: Literal["lin", "inv", "real"] = field(default="lin", metadata={"help": "S4D-Lin, S4D-Inv or S4D-Real initialisation of A (and B)"})
    discretization: Literal["zoh", "bilinear"] = field(default="zoh", metadata={"help": "zero-order hold or bilinear (Tustin)"})
    dt_min: float = field(default=0.001, metadata={"help": "initial dt drawn log-uniformly in [dt_min, dt_max]"})
    dt_max: float = field(default=0.1, metadata={"help": "see dt_min"})
    gate: bool = field(default=True, metadata={"help": "multiplicative gate y * silu(z) (H3/Mamba style); off: gelu(y)"})
    bias: bool = field(default=False, metadata={"help": "biases in in_proj and out_proj"})
    backend: Literal["auto", "conv", "recurrent"] = field(default="auto", metadata={"help": "auto: FFT convolution for sequences, recurrence for one-token steps; recurrent: sequential loop always (reference)"})

    def __post_init__(self):
        if self.d_state <= 0 or self.expand <= 0:
            raise ValueError("d_state and expand must be positive")
        if self.init != "real" and self.d_state % 2:
            raise ValueError(f"d_state must be even for complex initialisations ({self.init!r}): N/2 conjugate pairs; got {self.d_state}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")


@dataclass
class S4DState:
    ssm: Tensor  # (batch, channels, modes, 2) float32: the complex state as (real, imag)


def s4d_init(init: str, channels: int, d_state: int) -> tuple[Tensor, Tensor, float]:
    """A, B (channels, modes) complex64 and the output scale s (2 for conjugate pairs, 1 for real modes)."""
    if init == "real":
        n = torch.arange(d_state, dtype=torch.float32)
        A, B, scale = -(n + 1) + 0j, (2 * n + 1).sqrt() + 0j, 1.0
    else:
        n = torch.arange(d_state // 2, dtype=torch.float32)
        imag = math.pi * n if init == "lin" else d_state / math.pi * (d_state / (2 * n + 1) - 1)
        A, B, scale = torch.complex(torch.full_like(n, -0.5), imag), torch.ones_like(n) + 0j, 2.0
    return A.repeat(channels, 1), B.repeat(channels, 1), scale


def s4d_discretize(A: Tensor, B: Tensor, dt: Tensor, method: str) -> tuple[Tensor, Tensor, Tensor]:
    """dA, dB and log dA (channels, modes) complex, for A, B (channels, modes) and dt (channels,)."""
    dtA = dt[:, None] * A
    if method == "zoh":
        dA = torch.exp(dtA)
        return dA, (dA - 1) / A * B, dtA
    dA = (1 + dtA / 2) / (1 - dtA / 2)
    return dA, dt[:, None] * B / (1 - dtA / 2), torch.log(dA)


def s4d_powers(log_dA: Tensor, length: int) -> Tensor:
    """dA^l for l = 0..length, (channels, modes, length + 1): the Vandermonde matrix."""
    exponents = torch.arange(length + 1, device=log_dA.device, dtype=torch.float32)
    return torch.exp(log_dA[..., None] * exponents)


def s4d_conv(x: Tensor, kernel: Tensor) -> Tensor:
    """Causal convolution y_t = sum_{s<=t} K_{t-s} x_s via FFT. x (batch, channels, length), K (channels, length)."""
    length = x.shape[-1]
    n = 1 << (2 * length - 1).bit_length()  # zero-padded to >= 2L: linear, not circular, convolution
    y = torch.fft.irfft(torch.fft.rfft(x, n=n) * torch.fft.rfft(kernel, n=n), n=n)
    return y[..., :length]


def s4d_scan(x: Tensor, log_dA: Tensor, dB: Tensor, C: Tensor, scale: float, h0: Tensor | None = None,
             return_state: bool = True) -> tuple[Tensor, Tensor | None]:
    """Convolution mode: y (batch, channels, length) without the D term, and the final state (batch, channels,
    modes) complex (None unless return_state). x float32 (batch, channels, length); log_dA, dB, C (channels,
    modes) complex; h0 the state before x, as the final state."""
    length = x.shape[-1]
    powers = s4d_powers(log_dA, length)  # (channels, modes, length + 1)
    kernel = scale * torch.einsum("hm,hml->hl", C * dB, powers[..., :length]).real  # K_l = s Re(C dB dA^l)
    y = s4d_conv(x, kernel)
    state = None
    if return_state:  # h_L = dA^L h_0 + dB sum_s dA^(L-1-s) x_s
        state = dB * torch.einsum("bhl,hml->bhm", x.to(powers.dtype), powers[..., :length].flip(-1))
    if h0 is not None:
        y = y + scale * torch.einsum("bhm,hm,hml->bhl", h0, C, powers[..., 1:]).real
        if return_state:
            state = state + powers[..., length] * h0
    return y, state


def s4d_recurrent(x: Tensor, dA: Tensor, dB: Tensor, C: Tensor, scale: float, h0: Tensor | None = None
                  ) -> tuple[Tensor, Tensor]:
    """Recurrent mode, one step per position (the reference, and decoding): as `s4d_scan`, with dA (not its log)."""
    batch, channels, length = x.shape
    h = h0 if h0 is not None else torch.zeros(batch, *dA.shape, dtype=dA.dtype, device=x.device)
    ys = []
    for t in range(length):
        h = dA * h + dB * x[..., t, None]  # h_t = dA h_{t-1} + dB x_t
        ys.append(scale * (C * h).sum(-1).real)  # y_t = s Re(C h_t)
    return torch.stack(ys, dim=-1), h


@register_layer("s4d", config=S4DConfig, state="recurrent", megatron_symbol=None, hf_type="s4d",
                capturable=True)
class S4D(nn.Module):
    """S4D diagonal LTI SSM mixer (FFT convolution in training, recurrence in decoding)."""

    def __init__(self, d_model: int, config: S4DConfig):
        super().__init__()
        c = config
        self.config = c
        self.d_inner = int(c.expand * d_model)
        self.in_proj = nn.Linear(d_model, self.d_inner * (2 if c.gate else 1), bias=c.bias)
        self.out_proj = mark_residual_out(nn.Linear(self.d_inner, d_model, bias=c.bias))
        A, B, self.scale = s4d_init(c.init, self.d_inner, c.d_state)
        log_dt = torch.rand(self.d_inner) * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min)
        self.log_dt = nn.Parameter(log_dt)
        self.A_real_log = nn.Parameter(torch.log(-A.real))  # Re A = -exp(A_real_log) < 0: stable
        if c.init == "real":
            self.register_buffer("A_imag", torch.zeros_like(A.real))  # S4D-Real stays real
        else:
            self.A_imag = nn.Parameter(A.imag.clone())
        self.B = nn.Parameter(torch.view_as_real(B).clone())  # (channels, modes, 2)
        self.C = nn.Parameter(torch.view_as_real(torch.randn_like(B)).clone())  # complex N(0, 1)
        self.D = nn.Parameter(torch.ones(self.d_inner))
        ssm = [self.log_dt, self.A_real_log, self.B, self.C, self.D] + [self.A_imag] * (c.init != "real")
        mark_no_weight_decay(self.log_dt, self.A_real_log, self.B, *([self.A_imag] * (c.init != "real")))
        mark_no_reinit(*ssm)

    @property
    def modes(self) -> int:
        return self.A_real_log.shape[1]

    def discretized(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """dA, dB, log dA, C (channels, modes) complex64."""
        A = torch.complex(-torch.exp(self.A_real_log.float()), self.A_imag.float())
        dA, dB, log_dA = s4d_discretize(A, torch.view_as_complex(self.B.float()), torch.exp(self.log_dt.float()),
                                        self.config.discretization)
        return dA, dB, log_dA, torch.view_as_complex(self.C.float())

    def init_state(self, batch_size: int, max_length: int = 0, device=None, dtype=None) -> S4DState:
        return S4DState(torch.zeros(batch_size, self.d_inner, self.modes, 2, device=device, dtype=torch.float32))

    def forward(self, u: Tensor, state: S4DState | None = None) -> Tensor:
        """u: (batch, length, d_model) -> (batch, length, d_model)."""
        c = self.config
        xz = self.in_proj(u)
        x, z = xz.chunk(2, dim=-1) if c.gate else (xz, None)
        xf = x.transpose(1, 2).float()  # (batch, channels, length)
        dA, dB, log_dA, C = self.discretized()
        h0 = torch.view_as_complex(state.ssm) if state is not None else None
        if c.backend == "recurrent" or (c.backend == "auto" and state is not None and u.shape[1] == 1):
            y, h = s4d_recurrent(xf, dA, dB, C, self.scale, h0)
        else:
            y, h = s4d_scan(xf, log_dA, dB, C, self.scale, h0, return_state=state is not None)
        if state is not None:
            state.ssm.copy_(torch.view_as_real(h))
        y = (y + self.D.float()[:, None] * xf).transpose(1, 2).to(u.dtype)  # (batch, length, channels)
        y = y * F.silu(z) if c.gate else F.gelu(y)
        return self.out_proj(y)
