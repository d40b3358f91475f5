"""Causal multi-head self-attention: grouped-query heads, optional RoPE, sliding window, qk-norm.

    q, k, v = x W_qkv;  q, k <- RMSNorm(q), RMSNorm(k)  (optional qk-norm, OLMo 2 / Qwen3)
    q, k <- RoPE(q, k)                                   (optional: Jamba uses no positional encoding)
    out = softmax(q k^T / sqrt(head_dim) + mask) v W_out

The mask is causal, and with `window` each token sees itself and the window - 1 tokens before it
(Samba: 2048); packed sequences (`seq_idx`) attend only within their document and restart their
positions. Keys and values have n_kv_heads heads shared by n_heads / n_kv_heads query heads each
(GQA; MQA when n_kv_heads = 1). The kernel is chosen by `hybrid.kernels.attention` (backend
"auto" | "flash_attn" | "sdpa" | "flex" | "eager" and SDPA's individual kernels).

Inference keeps a `KVCache` (every position so far), or with a window a `KVWindowCache` ring buffer
of the last `window` positions, so memory stays constant; either way a prefill, chunked prefill and
one-token steps give the outputs of one parallel forward.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybrid.init import mark_residual_out
from hybrid.kernels.attention import attention
from hybrid.layers.rope import apply_rotary, rotary_tables
from hybrid.registry import register_layer

MAX_CACHED_TABLES = 64  # rotary tables kept per layer (one per training length; later lengths recompute)

AttentionBackend = Literal["auto", "flash_attn", "flash_attn_cute", "sdpa", "sdpa_cudnn", "sdpa_flash",
                           "sdpa_efficient", "sdpa_math", "flex", "eager"]


@dataclass
class AttentionConfig:
    n_heads: int = field(default=8, metadata={"help": "query heads"})
    n_kv_heads: int | None = field(default=None, metadata={"help": "key/value heads (GQA); default n_heads"})
    head_dim: int | None = field(default=None, metadata={"help": "default d_model // n_heads"})
    rope_theta: float | None = field(default=10000.0, metadata={"help": "RoPE base; null for no positional encoding (NoPE)"})
    rotary_fraction: float = field(default=1.0, metadata={"help": "fraction of each head's dims that rotate (partial RoPE)"})
    bias: bool = field(default=False, metadata={"help": "biases in the projections"})
    window: int | None = field(default=None, metadata={"help": "sliding window: each token sees itself and the window - 1 before it (Samba: 2048); null for full causal"})
    qk_norm: bool = field(default=False, metadata={"help": "RMSNorm over head_dim on queries and keys before RoPE"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the attention probabilities (training only)"})
    backend: AttentionBackend = field(default="auto", metadata={"help": "attention kernel; auto picks the fastest that accepts the case"})
    rope_backend: Literal["auto", "compiled", "torch", "triton"] = field(default="auto", metadata={"help": "RoPE: the Triton kernel on CUDA (auto), the torch.compile'd reference, or eager PyTorch"})

    def __post_init__(self):
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads <= 0 or kv <= 0 or self.n_heads % kv:
            raise ValueError(f"n_heads ({self.n_heads}) must be a positive multiple of n_kv_heads ({kv})")
        if not 0.0 <= self.rotary_fraction <= 1.0:
            raise ValueError(f"rotary_fraction must be in [0, 1], got {self.rotary_fraction}")
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be a positive number of tokens or null, got {self.window}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass
class KVCache:
    """Keys and values of the positions seen so far: (batch, max_length, n_kv_heads, head_dim)."""

    k: Tensor
    v: Tensor
    length: int = 0
    position: Tensor | None = None  # the length as a device scalar, after `make_static` (graph decoding)

    def make_static(self) -> None:
        """Decode with fixed shapes from now on (CUDA graphs): the length lives in `position`, a device
        scalar advanced in place, and each step attends over every slot with a mask of the filled ones.
        One-way: the Python `length` stops advancing, so no multi-token update may follow."""
        if self.position is None:
            self.position = torch.full((), self.length, dtype=torch.long, device=self.k.device)

    def snapshot_steps(self, steps: int):
        """A function undoing the next `steps` fixed-shape steps: it saves only the slots they write and
        the position, not the whole cache (the CUDA graph's warm-up would otherwise clone it)."""
        return _snapshot_slots(self, steps)

    def step_static(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Store one new position (batch, 1, heads, dim) at `position`; return every slot's keys and values
        (batch, slots, heads, dim) and which slots the new query sees (slots,) bool. The caller sized the
        cache (init_state's max_length): a step past it is not checked (that would need the host)."""
        return _store_static(self, self.position.view(1), k, v)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new positions; return every key and value so far, (batch, length, n_kv_heads, head_dim)."""
        _check_dynamic(self)
        end = self.length + k.shape[1]
        if end > self.k.shape[1]:
            raise RuntimeError(f"KV cache holds {self.k.shape[1]} positions; {end} needed. "
                               f"Pass a larger max_length to init_state")
        self.k[:, self.length:end] = k
        self.v[:, self.length:end] = v
        self.length = end
        return self.k[:, :end], self.v[:, :end]

    update = append


@dataclass
class KVWindowCache:
    """Ring buffer of the last `window` positions' keys and values: position p lives in slot p % window.

    k, v: (batch, window, n_kv_heads, head_dim); memory does not grow with the context."""

    k: Tensor
    v: Tensor
    length: int = 0  # positions seen so far
    position: Tensor | None = None  # as KVCache.position

    make_static = KVCache.make_static
    snapshot_steps = KVCache.snapshot_steps

    def step_static(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """As KVCache.step_static, in slot position % window. Order within the ring does not matter to
        attention (keys carry their rotation); the filled slots are those below position + 1."""
        return _store_static(self, (self.position % self.k.shape[1]).view(1), k, v)

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new positions; return the keys and values a chunk of new queries may see, in order:
        the last window - 1 cached positions, then the new ones (batch, <= window - 1 + new, heads, dim)."""
        _check_dynamic(self)
        n, window = k.shape[1], self.k.shape[1]
        kept = min(self.length, window - 1)
        if kept:
            slots = torch.arange(self.length - kept, self.length, device=k.device) % window
            k_all, v_all = torch.cat([self.k[:, slots], k], dim=1), torch.cat([self.v[:, slots], v], dim=1)
        else:
            k_all, v_all = k, v
        stored = min(n, window)  # older new positions are already out of every future window
        slots = torch.arange(self.length + n - stored, self.length + n, device=k.device) % window
        self.k[:, slots] = k[:, n - stored:]
        self.v[:, slots] = v[:, n - stored:]
        self.length += n
        return k_all, v_all


def _check_dynamic(cache: KVCache | KVWindowCache) -> None:
    if cache.position is not None:
        raise RuntimeError("this KV cache decodes with fixed shapes (make_static, for a CUDA graph): it takes "
                           "one token per step from then on; start a new state for another prefill")


def _snapshot_slots(cache: KVCache | KVWindowCache, steps: int):
    if cache.position is None:  # a growing cache: its steps reassign `length`, so keep everything
        saved = (cache.length, cache.k.clone(), cache.v.clone())

        def restore_all() -> None:
            cache.length = saved[0]
            cache.k.copy_(saved[1])
            cache.v.copy_(saved[2])
        return restore_all
    size = cache.k.shape[1]
    ahead = cache.position + torch.arange(steps, device=cache.k.device)
    # a ring writes slot p % window; a flat cache slot p (clamped: a step past it is not checked anyway)
    slots = ahead % size if isinstance(cache, KVWindowCache) else ahead.clamp(max=size - 1)
    position, k, v = cache.position.clone(), cache.k.index_select(1, slots), cache.v.index_select(1, slots)

    def restore() -> None:
        cache.position.copy_(position)
        cache.k.index_copy_(1, slots, k)
        cache.v.index_copy_(1, slots, v)
    return restore


def _store_static(cache: KVCache | KVWindowCache, slot: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    if k.shape[1] != 1:
        raise ValueError(f"a fixed-shape KV cache step takes one position, got {k.shape[1]}")
    cache.k.index_copy_(1, slot, k.to(cache.k.dtype))
    cache.v.index_copy_(1, slot, v.to(cache.v.dtype))
    # slots filled so far (every slot of a ring once the position passes its size)
    seen = torch.arange(cache.k.shape[1], device=k.device) <= cache.position
    cache.position += 1
    return cache.k, cache.v, seen


def _attend_filled(q: Tensor, k: Tensor, v: Tensor, seen: Tensor) -> Tensor:
    """One query per row, (batch, 1, heads, dim), against every cache slot with the unfilled ones masked:
    fixed shapes for a CUDA graph, at the cost of reading the whole cache each step."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.to(q.dtype).transpose(1, 2), v.to(q.dtype).transpose(1, 2),
                                         attn_mask=seen.view(1, 1, 1, -1), enable_gqa=k.shape[2] != q.shape[2])
    return out.transpose(1, 2)  # (batch, 1, heads, dim)


def positions_in_documents(seq_idx: Tensor) -> Tensor:
    """(batch, length) position of each token inside its document, for packed sequences."""
    index = torch.arange(seq_idx.shape[1], device=seq_idx.device).expand_as(seq_idx)
    starts = torch.ones_like(seq_idx, dtype=torch.bool)
    starts[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    return index - torch.where(starts, index, 0).cummax(dim=1).values


def _state_kind(config: AttentionConfig) -> str:
    return "kv_window" if config.window is not None else "kv"


@register_layer("attention", config=AttentionConfig, state=_state_kind, megatron_symbol="*", hf_type="full_attention",
                capturable=True)
class Attention(nn.Module):
    """Causal multi-head attention (GQA, RoPE, sliding window, qk-norm) over pluggable kernels."""

    def __init__(self, d_model: int, config: AttentionConfig):
        super().__init__()
        self.config = config
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads or config.n_heads
        self.head_dim = config.head_dim or d_model // config.n_heads
        if self.head_dim <= 0:
            raise ValueError(f"head_dim must be positive; d_model {d_model} with {config.n_heads} heads gives {self.head_dim}")
        self.rotary_dim = int(self.head_dim * config.rotary_fraction) // 2 * 2 if config.rope_theta else 0
        qkv = (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
        self.qkv = nn.Linear(d_model, qkv, bias=config.bias)
        self.out_proj = mark_residual_out(nn.Linear(self.n_heads * self.head_dim, d_model, bias=config.bias))
        if config.qk_norm:
            self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
            self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        # (length, device) -> (cos, sin) of full-sequence forwards. Entries are never evicted: a CUDA graph
        # captured at one length reads its tables at every replay, so freeing them would corrupt it.
        self._tables: dict[tuple, tuple[Tensor, Tensor]] = {}

    def _rotary_tables(self, offset: int, length: int, device) -> tuple[Tensor, Tensor]:
        """cos, sin (length, rotary_dim / 2) for positions offset..offset+length; kept for offset 0, whose
        tables every training step reuses."""
        key = (length, device)
        if offset == 0 and key in self._tables:
            return self._tables[key]
        tables = rotary_tables(torch.arange(offset, offset + length, device=device), self.rotary_dim,
                               self.config.rope_theta)
        if offset == 0 and len(self._tables) < MAX_CACHED_TABLES and not torch.compiler.is_compiling():
            self._tables[key] = tables
        return tables

    def init_state(self, batch_size: int, max_length: int, device=None, dtype=None) -> KVCache | KVWindowCache:
        window = self.config.window
        slots = min(window, max_length) if window is not None else max_length
        shape = (batch_size, slots, self.n_kv_heads, self.head_dim)
        dtype = dtype or self.qkv.weight.dtype
        k, v = torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)
        return KVWindowCache(k, v) if window is not None else KVCache(k, v)

    def forward(self, x: Tensor, state: KVCache | KVWindowCache | None = None, *,
                seq_idx: Tensor | None = None) -> Tensor:
        """x: (batch, length, d_model) -> (batch, length, d_model). seq_idx: (batch, length) document index
        of each token for packed sequences (no state then)."""
        batch, length, _ = x.shape
        h, hkv, d = self.n_heads, self.n_kv_heads, self.head_dim
        if seq_idx is not None and state is not None:
            raise ValueError("Attention: packed sequences (seq_idx) are for training; decode one sequence per row")
        # fixed-shape decoding (CUDA graphs); a longer input to such a cache is refused by its update
        static = state is not None and state.position is not None and length == 1
        offset = state.length if state is not None else 0
        qkv = self.qkv(x).view(batch, length, h + 2 * hkv, d)  # (batch, length, all heads, head_dim)
        q, k, v = qkv.split([h, hkv, hkv], dim=2)
        if self.config.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary_dim:
            if seq_idx is not None:  # positions restart in each document
                cos, sin = rotary_tables(positions_in_documents(seq_idx), self.rotary_dim, self.config.rope_theta)
            elif static:  # the position is on the device
                cos, sin = rotary_tables(state.position.view(1), self.rotary_dim, self.config.rope_theta)
            else:
                cos, sin = self._rotary_tables(offset, length, x.device)
            if self.config.qk_norm:
                q = apply_rotary(q, cos, sin, self.config.rope_backend)
                k = apply_rotary(k, cos, sin, self.config.rope_backend)
            else:  # queries and keys are adjacent in qkv: rotate them in one pass
                qk = apply_rotary(qkv[:, :, :h + hkv], cos, sin, self.config.rope_backend)
                q, k = qk.split([h, hkv], dim=2)
        if static:
            out = _attend_filled(q, *state.step_static(k, v))
        else:
            if state is not None:
                k, v = state.update(k, v)
            out = attention(q, k, v, causal=True, window=self.config.window, seq_idx=seq_idx,
                            dropout_p=self.config.dropout if self.training else 0.0, backend=self.config.backend)
        return self.out_proj(out.reshape(batch, length, h * d))  # (batch, length, d_model)
