"""A plain nn.Module Transformer (nanoGPT-style), the peer that holds bench_model.py's `(A F) x12` row to
account: the same shapes as ours (pre-norm RMSNorm, fused qkv, rotate-half RoPE, F.scaled_dot_product_attention
causal, GELU MLP of 4 d_model, tied embedding), written the obvious way with no kernels of ours."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def rope(x: Tensor, theta: float = 10000.0) -> Tensor:
    """x (batch, heads, length, head_dim) rotated by position, rotate-half pairs (i, i + head_dim / 2)."""
    length, dim = x.shape[-2], x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim)
    angles = torch.arange(length, device=x.device, dtype=torch.float32)[:, None] * inv  # (length, dim / 2)
    cos, sin = angles.cos(), angles.sin()
    a, b = x.float().chunk(2, dim=-1)
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1).to(x.dtype)


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.norm1, self.norm2 = nn.RMSNorm(d_model), nn.RMSNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        self.fc1 = nn.Linear(d_model, 4 * d_model, bias=False)
        self.fc2 = nn.Linear(4 * d_model, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(rope(q), rope(k), v, is_causal=True)  # (batch, heads, length, head_dim)
        x = x + self.proj(y.transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class PlainTransformer(nn.Module):
    def __init__(self, vocab: int = 50304, d_model: int = 768, n_layers: int = 12, n_heads: int = 12):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.norm_f = nn.RMSNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab, bias=False)
        self.lm_head.weight = self.embedding.weight

    def forward(self, ids: Tensor) -> Tensor:
        x = self.embedding(ids)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm_f(x))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Decay on the matrices of the blocks, as ours (not on norms or the embedding)."""
        decay = [p for n, p in self.named_parameters() if p.dim() >= 2 and not n.startswith("embedding")]
        rest = [p for n, p in self.named_parameters() if p.dim() < 2 or n.startswith("embedding")]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
