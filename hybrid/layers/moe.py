"""Mixture of experts with top-k token-choice routing (Shazeer 2017; Switch; Mixtral; Jamba: 16 experts, top-2).

    p      = softmax(x W_router)          router in float32                 (tokens, experts)
    w, e   = top_k(p)                     each token's k experts and weights (renormalised to sum 1 if asked)
    y_t    = sum_j w_tj FFN_{e_tj}(x_t)   FFN: SwiGLU or GELU, as `mlp`

Dispatch: the tokens * k (token, expert) assignments are sorted by expert, so each expert reads one
contiguous slice of gathered tokens; the experts run as two grouped matmuls (`torch._grouped_mm`, one
launch for all experts; CUDA, bfloat16) or as a loop over experts on those slices; the weighted results
are scattered back with index_add. No Python loop ever runs over tokens. `moe_ref` runs every expert on
every token (the oracle).

Capacity: with capacity_factor null nothing is dropped. Otherwise expert e keeps at most
ceil(capacity_factor * tokens * k / experts) assignments, earliest tokens first; a dropped assignment
contributes nothing (the residual stream carries the token past this layer).

Auxiliary losses, weighted and returned by `aux_losses()` after each forward:
    load balance (Switch, eq. 4):  n_experts * sum_e f_e P_e, f_e the fraction of the tokens * k assignments
                                   routed to e (before capacity), P_e the mean router probability of e;
                                   1 at perfect balance, n_experts when one expert takes everything.
    router z-loss (ST-MoE, eq. 5): mean_t (logsumexp_e logits_te)^2, keeps router logits small.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybrid.init import mark_residual_out
from hybrid.registry import register_layer

log = logging.getLogger(__name__)


@dataclass
class MoEConfig:
    n_experts: int = field(default=16, metadata={"help": "number of experts (Jamba: 16)"})
    top_k: int = field(default=2, metadata={"help": "experts per token (Jamba: 2)"})
    expand: float = field(default=4.0, metadata={"help": "expert hidden width = expand * d_model (ignored when hidden is set)"})
    hidden: int | None = field(default=None, metadata={"help": "explicit expert hidden width"})
    activation: Literal["swiglu", "gelu"] = field(default="swiglu", metadata={"help": "expert FFN, as in `mlp`"})
    multiple_of: int = field(default=1, metadata={"help": "round the hidden width up to a multiple of this"})
    renormalize: bool = field(default=False, metadata={"help": "rescale each token's top-k weights to sum to 1 (Mixtral); Jamba and Switch keep the softmax values"})
    capacity_factor: float | None = field(default=None, metadata={"help": "expert capacity = factor * tokens * top_k / n_experts; null: no-drop"})
    aux_loss_coef: float = field(default=0.01, metadata={"help": "weight of the load-balancing loss (Switch: 0.01)"})
    z_loss_coef: float = field(default=0.001, metadata={"help": "weight of the router z-loss (ST-MoE: 0.001)"})
    backend: Literal["auto", "grouped_mm", "loop", "ref"] = field(default="auto", metadata={"help": "expert dispatch: auto = grouped_mm on CUDA bf16 where available, else loop"})

    def __post_init__(self):
        if self.n_experts <= 0 or not 0 < self.top_k <= self.n_experts:
            raise ValueError(f"need n_experts > 0 and 0 < top_k <= n_experts, got {self.n_experts}, {self.top_k}")
        if self.expand <= 0 or (self.hidden is not None and self.hidden <= 0) or self.multiple_of <= 0:
            raise ValueError("expand, hidden and multiple_of must be positive")
        if self.capacity_factor is not None and self.capacity_factor <= 0:
            raise ValueError(f"capacity_factor must be positive or null (no-drop), got {self.capacity_factor}")
        if self.aux_loss_coef < 0 or self.z_loss_coef < 0:
            raise ValueError("aux_loss_coef and z_loss_coef must be >= 0")


class ExpertLinear(nn.Module):
    """One Linear per expert, without bias: weight (n_experts, out_features, in_features)."""

    def __init__(self, n_experts: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_experts, out_features, in_features))
        bound = in_features ** -0.5  # nn.Linear's default init, per expert
        nn.init.uniform_(self.weight, -bound, bound)


def _activate(h: Tensor, activation: str) -> Tensor:
    if activation == "swiglu":
        value, gate = h.chunk(2, dim=-1)  # mlp.py's order
        return value * F.silu(gate)
    return F.gelu(h)


def route(logits: Tensor, top_k: int, renormalize: bool) -> tuple[Tensor, Tensor, Tensor]:
    """logits (tokens, experts) float32 -> probs (tokens, experts), weights and experts (tokens, top_k)."""
    probs = logits.softmax(dim=-1)
    weights, experts = probs.topk(top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return probs, weights, experts


def moe_ref(x: Tensor, weights: Tensor, experts: Tensor, w1: Tensor, w2: Tensor, activation: str) -> Tensor:
    """Every expert on every token, combined by the routing weights (zero for unchosen experts).

    x (tokens, d_model); weights, experts (tokens, top_k); w1 (n_experts, hidden or 2 * hidden, d_model);
    w2 (n_experts, d_model, hidden). Returns (tokens, d_model)."""
    gates = torch.zeros(x.shape[0], w1.shape[0], device=x.device, dtype=weights.dtype)
    gates.scatter_(1, experts, weights)  # (tokens, n_experts)
    out = torch.zeros_like(x)
    for e in range(w1.shape[0]):
        out = out + gates[:, e:e + 1].to(x.dtype) * (_activate(x @ w1[e].t(), activation) @ w2[e].t())
    return out


def _experts_loop(xs: Tensor, counts: Tensor, w1: Tensor, w2: Tensor, activation: str) -> Tensor:
    """xs (assignments, d_model) sorted by expert, counts (n_experts,): each expert on its contiguous slice."""
    outs, start = [], 0
    for e, n in enumerate(counts.tolist()):
        if n:
            outs.append(_activate(xs[start:start + n] @ w1[e].t(), activation) @ w2[e].t())
        start += n
    return torch.cat(outs) if outs else xs.new_zeros(0, w2.shape[1])


def _experts_grouped_mm(xs: Tensor, counts: Tensor, w1: Tensor, w2: Tensor, activation: str) -> Tensor:
    """As `_experts_loop`, as two grouped GEMMs; offs holds each expert's end row."""
    offs = counts.cumsum(0).to(torch.int32)
    h = torch._grouped_mm(xs, w1.transpose(-2, -1), offs=offs)  # (assignments, hidden or 2 * hidden)
    return torch._grouped_mm(_activate(h, activation), w2.transpose(-2, -1), offs=offs)


def grouped_mm_refusal(x: Tensor, w1: Tensor, w2: Tensor) -> str | None:
    """Why torch._grouped_mm cannot run these experts, or None."""
    if not hasattr(torch, "_grouped_mm"):
        return "this torch has no torch._grouped_mm"
    if not x.is_cuda or torch.cuda.get_device_capability(x.device) < (9, 0):
        return "needs a Hopper or newer GPU"
    if x.dtype != torch.bfloat16 or w1.dtype != torch.bfloat16:
        return "needs bfloat16 activations and weights"
    if any(s % 8 for s in (*w1.shape[1:], *w2.shape[1:])):
        return "needs d_model and the hidden width multiples of 8 (16-byte aligned rows)"
    return None


_logged: set[tuple[str, str]] = set()


@register_layer("moe", config=MoEConfig, role="channel", megatron_symbol="E", hf_type="moe",
                capturable=True)
class MoE(nn.Module):
    """Mixture of experts: top-k routing, load-balancing and z losses, sorted grouped dispatch."""

    def __init__(self, d_model: int, config: MoEConfig):
        super().__init__()
        self.config = config
        hidden = config.hidden or int(math.ceil(config.expand * d_model))
        self.hidden = -(-hidden // config.multiple_of) * config.multiple_of
        gated = config.activation == "swiglu"
        self.router = nn.Linear(d_model, config.n_experts, bias=False)
        self.fc1 = ExpertLinear(config.n_experts, d_model, self.hidden * (2 if gated else 1))
        self.fc2 = mark_residual_out(ExpertLinear(config.n_experts, self.hidden, d_model))
        self._aux: dict[str, Tensor] = {}
        self.last_dropped = 0  # assignments dropped by capacity in the latest forward (tensor once run)

    def aux_losses(self) -> dict[str, Tensor]:
        return dict(self._aux)

    def _backend(self, x: Tensor) -> str:
        backend = self.config.backend
        if backend in ("auto", "grouped_mm"):
            why = grouped_mm_refusal(x, self.fc1.weight, self.fc2.weight)
            if why and backend == "grouped_mm":
                raise RuntimeError(f"moe backend 'grouped_mm' cannot run here: {why}. Use 'auto' or 'loop'")
            backend = "loop" if why else "grouped_mm"
        if (self.config.backend, backend) not in _logged:
            _logged.add((self.config.backend, backend))
            log.info("moe: %s expert dispatch on %s %s (requested %s)", backend, x.device.type,
                     str(x.dtype).removeprefix("torch."), self.config.backend)
        return backend

    def cuda_graph_refusal(self, device: torch.device, dtype: torch.dtype) -> str | None:
        """Why a training step through this layer cannot be one CUDA graph, or None (see register_layer)."""
        c = self.config
        if c.capacity_factor is not None:
            return ("capacity_factor drops a data-dependent number of assignments, so shapes change from batch "
                    "to batch; set capacity_factor: null (no-drop) to capture")
        if c.backend == "loop":
            return "the 'loop' dispatch reads the per-expert counts on the host; use backend 'grouped_mm' or 'ref'"
        if c.backend == "auto":
            why = grouped_mm_refusal(torch.empty(0, device=device, dtype=dtype), self.fc1.weight, self.fc2.weight)
            if why:
                return (f"'auto' dispatch runs the expert loop here (grouped_mm {why}), which reads the per-expert "
                        f"counts on the host; set backend: ref (every expert on every token) to capture")
        return None

    def forward(self, x: Tensor, state=None) -> Tensor:
        c = self.config
        batch, length, d_model = x.shape
        xt = x.reshape(-1, d_model)  # (tokens, d_model)
        tokens, k = xt.shape[0], c.top_k
        logits = F.linear(xt.float(), self.router.weight.float())  # (tokens, experts), float32 router
        probs, weights, experts = route(logits, k, c.renormalize)
        w1, w2 = self.fc1.weight, self.fc2.weight
        backend = self._backend(x)
        flat = experts.flatten()
        # (experts,) assignments per expert; bincount would read its size off the GPU (a host sync)
        counts = torch.zeros(c.n_experts, dtype=torch.long, device=x.device).scatter_add_(0, flat, torch.ones_like(flat))

        aux = {}
        if c.aux_loss_coef:
            fraction = counts.float() / (tokens * k)
            aux["moe_load_balance"] = c.aux_loss_coef * c.n_experts * (fraction * probs.mean(dim=0)).sum()
        if c.z_loss_coef:
            aux["moe_router_z"] = c.z_loss_coef * torch.logsumexp(logits, dim=-1).square().mean()
        self._aux = aux

        if backend == "ref":
            self.last_dropped = torch.zeros((), dtype=torch.long, device=x.device)
            return moe_ref(xt, weights, experts, w1, w2, c.activation).view(batch, length, d_model)

        order = flat.argsort(stable=True)  # assignments grouped by expert, token order within
        kept = counts
        if c.capacity_factor is not None:
            capacity = math.ceil(c.capacity_factor * tokens * k / c.n_experts)
            first = counts.cumsum(0) - counts  # index of each expert's first sorted assignment
            rank = torch.arange(order.numel(), device=x.device) - first[flat[order]]
            keep = rank < capacity
            order, kept = order[keep], counts.clamp(max=capacity)
        self.last_dropped = (counts - kept).sum()
        token = order // k  # (kept assignments,) the token of each
        xs = xt[token]  # (kept assignments, d_model), each expert's rows contiguous
        run = _experts_grouped_mm if backend == "grouped_mm" else _experts_loop
        h = run(xs, kept, w1, w2, c.activation)  # (kept assignments, d_model)
        h = h * weights.flatten()[order].to(h.dtype)[:, None]
        out = torch.zeros_like(xt).index_add_(0, token, h.to(xt.dtype))
        return out.view(batch, length, d_model)
