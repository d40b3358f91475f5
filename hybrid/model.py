"""HybridLM: token embedding -> compiled stack of residual sublayers -> final norm -> LM head.

Each sublayer is pre-norm: x <- x + sum_b branch_b(norm(x)) (one branch unless parallel).
Sublayers of a shared block are one module object reused at every use, so their weights are
shared and their gradients accumulate from every use. Inference state is kept per sublayer
position (a shared block used twice keeps two caches).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hybrid.init import is_no_reinit, is_no_weight_decay, is_residual_out
from hybrid.layout import Layout, SublayerSpec, compile_layout
from hybrid.model_config import ModelConfig
from hybrid.norms import add_and_norm, make_norm
from hybrid.registry import LAYERS


class Residual(nn.Module):
    """One residual sublayer: pre-norm, its branches (summed), residual add."""

    def __init__(self, spec: SublayerSpec, d_model: int, norm: str, eps: float):
        super().__init__()
        self.spec = spec
        self.norm = make_norm(norm, d_model, eps)
        self.branches = nn.ModuleList(LAYERS.get(b.type).build(d_model, b.config) for b in spec.branches)

    def forward(self, x: Tensor, state: Any = None, previous: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(this sublayer's output, the residual stream it read): x + previous (the last sublayer's
        output, added here, fused with this pre-norm: `hybrid.norms.add_and_norm`), normed, through
        the branches, summed. The caller adds the output to the stream it gets back (or passes it on).
        Inside forward, so that a sharded wrapper (FSDP) has the norm's weight gathered."""
        h, x = add_and_norm(self.norm, previous, x)
        if len(self.branches) == 1:
            return self.branches[0](h, state), x
        states = state if state is not None else [None] * len(self.branches)
        return sum(branch(h, s) for branch, s in zip(self.branches, states)), x

    def init_state(self, batch_size: int, max_length: int, device=None, dtype=None) -> Any:
        states = []
        for spec, branch in zip(self.spec.branches, self.branches):
            if LAYERS.get(spec.type).state_kind(spec.config) == "none":
                states.append(None)
            elif not hasattr(branch, "init_state"):
                raise TypeError(f"layer {spec.type!r} declares inference state but has no init_state method")
            else:
                states.append(branch.init_state(batch_size, max_length, device=device, dtype=dtype))
        return states[0] if len(states) == 1 else states


class HybridLM(nn.Module):
    """A language model whose stack is described by a layout (see `hybrid.layout`)."""

    def __init__(self, config: ModelConfig, layout: Layout | None = None):
        super().__init__()
        self.config = config
        self.layout = layout or compile_layout(config.layers, config.layout, config.shared, config.overrides)
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        tied: dict[tuple, Residual] = {}
        blocks = []
        for spec in self.layout:
            if spec.tie is not None and spec.tie in tied:
                blocks.append(tied[spec.tie])  # the same module object: shared weights
                continue
            block = Residual(spec, config.d_model, config.norm, config.norm_eps)
            if spec.tie is not None:
                tied[spec.tie] = block
            blocks.append(block)
        self.blocks = nn.ModuleList(blocks)
        self.norm_f = make_norm(config.norm, config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self._init_weights()
        if config.tie_embeddings:
            self.lm_head.weight = self.embedding.weight

    def _init_weights(self) -> None:
        """Embedding ~ N(0, init_std); plain Linear biases zero; residual output projections scaled by
        1/sqrt(number of sublayers) (GPT-2, mamba_ssm). Layers' own special inits (tagged no_reinit) stay."""
        with torch.no_grad():
            nn.init.normal_(self.embedding.weight, std=self.config.init_std)
            for module in self.modules():
                if isinstance(module, nn.Linear) and module.bias is not None and not is_no_reinit(module.bias):
                    module.bias.zero_()
            scale = 1.0 / math.sqrt(len(self.layout))
            for p in self.parameters():
                if is_residual_out(p):
                    p.mul_(scale)

    @classmethod
    def from_config(cls, source: Any, **overrides: Any) -> "HybridLM":
        """Build from a YAML path, a config mapping, a `RootConfig`/`ModelConfig`, with dotted
        overrides such as `model.d_model=512` (or `d_model=512`, read as model.d_model)."""
        from hybrid.config import load_config  # noqa: PLC0415 (omegaconf only where configs are read)

        if isinstance(source, ModelConfig) and not overrides:
            return cls(source)
        dotted = [f"{k if '.' in k else 'model.' + k}={v}" for k, v in overrides.items()]
        root = load_config(source, dotted)
        return cls(root.model)

    @classmethod
    def from_hf(cls, path: str | Path) -> "HybridLM":
        """A transformers model folder of a supported class (`hybrid.hf`), as a HybridLM with its weights."""
        from hybrid.hf import import_hf  # noqa: PLC0415 (transformers only where it is used)

        config, state_dict = import_hf(path)
        model = cls(config)
        model.load_state_dict(state_dict)
        return model

    def init_state(self, batch_size: int, max_length: int, device=None, dtype=None) -> list[Any]:
        """Fresh inference state for every sublayer position (None where a layer keeps none)."""
        device = device or self.embedding.weight.device
        return [block.init_state(batch_size, max_length, device=device, dtype=dtype) for block in self.blocks]

    def forward(self, input_ids: Tensor, state: list[Any] | None = None, num_last_tokens: int = 0, *,
                positions: Tensor | None = None, hidden_only: bool = False) -> Tensor:
        """input_ids: (batch, length) int64 -> logits (batch, length, vocab_size).

        With `state` (from `init_state`), the input continues the sequence the state has seen and
        the state is updated in place: prefill, chunked prefill and one-token decoding steps.
        `num_last_tokens` > 0 computes logits for the last positions only (prefill needs one).
        `positions` (n,) int64, flat indices into batch * length, computes the logits of those
        positions only, (n, vocab_size): a synthetic task scores a few positions per example.
        `hidden_only` returns the final-normed hidden states instead of logits (d_model wide), for a
        loss that applies the LM head itself (`hybrid.kernels.linear_cross_entropy`)."""
        x = self.embedding(input_ids)  # (batch, length, d_model)
        if self.config.residual_in_fp32:
            x = x.float()
        out = None
        for i, block in enumerate(self.blocks):
            out, x = block(x, state[i] if state is not None else None, previous=out)
        if out is not None:
            x = x + out.to(x.dtype)
        if positions is not None:
            x = x.flatten(0, 1).index_select(0, positions)  # (n, d_model)
        elif num_last_tokens:
            x = x[:, -num_last_tokens:]
        if hidden_only:
            return self.norm_f(x)
        return self.lm_head(self.norm_f(x).to(self.lm_head.weight.dtype))

    def generate(self, prompt_ids: Any, max_new_tokens: int, **kwargs: Any) -> Any:
        """Sample continuations with the inference caches; see `hybrid.generation.generate`."""
        from hybrid.generation import generate  # noqa: PLC0415

        return generate(self, prompt_ids, max_new_tokens, **kwargs)

    def aux_losses(self) -> dict[str, Tensor]:
        """Auxiliary losses (e.g. MoE load balancing) from the latest forward, summed by name."""
        total: dict[str, Tensor] = {}
        for module in self.modules():
            if module is not self and hasattr(module, "aux_losses"):
                for name, value in module.aux_losses().items():
                    total[name] = total[name] + value if name in total else value
        return total

    def param_groups(self, weight_decay: float, decay_embeddings: bool = False,
                     decay_norms_and_biases: bool = False) -> list[dict]:
        """AdamW groups: no decay on parameters tagged no_weight_decay (Mamba's A_log, D, dt bias),
        and unless asked on embeddings, norms and biases."""
        embedding_ids = {id(self.embedding.weight)}
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            skip = is_no_weight_decay(p)
            if id(p) in embedding_ids and not decay_embeddings:
                skip = True
            if p.dim() < 2 and not decay_norms_and_biases:
                skip = True
            (no_decay if skip else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def num_parameters(self, exclude_embedding: bool = False) -> int:
        params = {id(p): p for p in self.parameters()}
        if exclude_embedding:
            params.pop(id(self.embedding.weight), None)
        return sum(p.numel() for p in params.values())


def build_model(config: Any) -> HybridLM:
    """A HybridLM from a `ModelConfig`, a `RootConfig` (its .model) or a YAML path / mapping."""
    if isinstance(config, ModelConfig):
        return HybridLM(config)
    if hasattr(config, "model") and isinstance(config.model, ModelConfig):
        return HybridLM(config.model)
    if isinstance(config, (str, Path, dict)):
        return HybridLM.from_config(config)
    raise TypeError(f"build_model needs a ModelConfig, RootConfig, path or mapping; got {type(config).__name__}")
