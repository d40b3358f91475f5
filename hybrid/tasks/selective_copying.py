"""Selective copying (Gu & Dao 2023, "Mamba", section 4.1.1 and appendix E.1).

The generator is S4's `torch_copying_data(L, M, A, variable=True)` (state-spaces/s4,
src/dataloaders/datasets/copying.py), on which the Mamba experiment is built. With L = length noise
tokens, M = num_data_tokens and A = vocab_size:

    token 0 is noise, token A-1 the marker, data tokens are uniform in [1, A-2]
    region [0, L+M): M data tokens at distinct uniformly random positions (kept in order), noise elsewhere
    positions [L+M, L+2M): M markers; the target at the i-th marker is the i-th data token
    every other target is IGNORE_INDEX

so the model's input has length L + 2M tokens. Mamba's setting is L = 4096, A = 16 (noise included),
M = 16. Choice of ours: the answer is read causally at the marker positions (marker i predicts data
token i), where S4 reads a decoder's outputs at the same last M positions.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hybrid.tasks.base import IGNORE_INDEX, TaskShapes, register_task
from hybrid.tasks.sampling import Sample
from hybrid.tasks.synthetic import SyntheticTask


@dataclass
class SelectiveCopyingConfig:
    length: int = field(default=4096, metadata={"help": "noise tokens L; the data tokens are scattered over L + num_data_tokens positions"})
    num_data_tokens: int = field(default=16, metadata={"help": "data tokens M to copy, in order"})
    vocab_size: int = field(default=16, metadata={"help": "A: noise 0, data [1, A-2], marker A-1"})
    eval_lengths: list[int] = field(default_factory=list, metadata={"help": "noise lengths of the held-out sets (default: [length])"})
    eval_examples: int = field(default=1000, metadata={"help": "examples per held-out set"})
    eval_batch_size: int = field(default=100, metadata={"help": "examples per held-out batch"})

    def __post_init__(self):
        if self.vocab_size < 3:
            raise ValueError(f"vocab_size must be >= 3 (noise 0, marker A-1 and at least one data token), got {self.vocab_size}")
        if self.num_data_tokens < 1:
            raise ValueError(f"num_data_tokens must be >= 1, got {self.num_data_tokens}")
        for name, value in [("length", self.length)] + [(f"eval_lengths[{i}]", v) for i, v in enumerate(self.eval_lengths)]:
            if value < 0:
                raise ValueError(f"{name} (noise tokens) must be >= 0, got {value}")
        if self.eval_examples < 1 or self.eval_batch_size < 1:
            raise ValueError("eval_examples and eval_batch_size must be >= 1")

    def shapes(self) -> TaskShapes:
        rows = [n + 2 * self.num_data_tokens for n in (self.eval_lengths or [self.length])]
        return TaskShapes(self.length + 2 * self.num_data_tokens, self.eval_batch_size, max(rows),
                          self.eval_examples * sum(rows))


def selective_copying(n: int, length: int, num_data_tokens: int, vocab_size: int,
                      gen: torch.Generator, device: torch.device) -> Sample:
    """inputs, targets (n, length + 2 * num_data_tokens) int64, info {"length"}."""
    m = num_data_tokens
    region = length + m
    tokens = torch.randint(1, vocab_size - 1, (n, m), generator=gen, device=device)  # (n, M) in [1, A-2]
    positions = torch.rand(n, region, generator=gen, device=device).topk(m, dim=-1).indices.sort(-1).values  # (n, M)
    inputs = torch.zeros(n, region + m, dtype=torch.int64, device=device)
    inputs.scatter_(1, positions, tokens)
    inputs[:, region:] = vocab_size - 1
    targets = torch.full_like(inputs, IGNORE_INDEX)
    targets[:, region:] = tokens
    return inputs, targets, {"length": torch.full((n,), length, device=device)}


@register_task("selective_copying", config=SelectiveCopyingConfig)
class SelectiveCopying(SyntheticTask):
    """Selective copying (Mamba 4.1.1): output the data tokens scattered in noise, in order."""

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def train_settings(self):
        return [(1.0, {"length": self.config.length})]

    def eval_settings(self):
        return {f"L{n}": {"length": n} for n in (self.config.eval_lengths or [self.config.length])}

    def make(self, n, gen, device, *, length: int) -> Sample:
        c = self.config
        return selective_copying(n, length, c.num_data_tokens, c.vocab_size, gen, device)
