"""Induction heads (Gu & Dao 2023, "Mamba", section 4.1.2 and appendix E.1.2).

The generator follows H3/safari's `generate_induction_head` (HazyResearch/safari,
src/dataloaders/synthetics.py, induction_len 1, one trigger). The Mamba paper's own code for this task
is not public; its appendix E.1 draws fresh data every step, as we do. With vocabulary V and input length T:

    content tokens are uniform in [0, V-2); V-1 is the special (copy-prefix) token and V-2 is
    safari's no-op token, reserved and never drawn
    positions [0, T-1): content, except a special token at p, uniform in [0, T-4], whose
        successor x[p+1] is the token to recall
    position T-1: the special token again; its target is x[p+1] (the only scored position)

Mamba trains at T = 256 with V = 16 and tests at lengths 2^6 .. 2^20 (length extrapolation).
Choices of ours: `length` is the model's input length T (safari's input_seq_len is T-1); safari's
training loss also scores next-token prediction on the random context, which `train_scoring: all`
reproduces, while the default scores only the answer (the context is unpredictable noise); held-out
sets always score only the answer. `train_trigger_position` fixes p in training (the held-out sets keep
it uniform): the one public reproduction of Mamba at 2^20 that we found (hrbigelow/mamba-recall's
`InductionData`, state-spaces/mamba issue 62) trains with the special token at position 5 and the query
at the end, so every training example asks for the longest recall the length allows.
`eval_trigger_position` fixes p in the held-out sets too, so that a length's accuracy is that of the
longest recall alone (a gap of T-1-p) rather than an average over gaps uniform in [3, T-1].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from hybrid.tasks.base import IGNORE_INDEX, TaskShapes, register_task
from hybrid.tasks.sampling import Sample
from hybrid.tasks.synthetic import SyntheticTask


@dataclass
class InductionHeadsConfig:
    vocab_size: int = field(default=16, metadata={"help": "V: content [0, V-2), no-op V-2 (unused), special V-1"})
    length: int = field(default=256, metadata={"help": "training input length T (>= 4)"})
    eval_lengths: list[int] = field(default_factory=lambda: [2**k for k in range(6, 17)],
                                    metadata={"help": "held-out input lengths (Mamba: 2^6 .. 2^20)"})
    train_scoring: Literal["answer", "all"] = field(default="answer", metadata={
        "help": "answer: score only the recalled token; all: also next-token targets on the context (safari)"})
    train_trigger_position: int | None = field(default=None, metadata={
        "help": "p of every training example (0 <= p <= length - 4); null: uniform in [0, length - 4]. "
                "Held-out examples keep it uniform"})
    eval_trigger_position: int | None = field(default=None, metadata={
        "help": "p of every held-out example (0 <= p <= min(eval_lengths) - 4): the longest recall of each "
                "length alone; null: uniform in [0, T - 4] at each length T"})
    eval_examples: int = field(default=256, metadata={"help": "examples per held-out length"})
    eval_batch_size: int = field(default=32, metadata={"help": "examples per held-out batch"})

    def __post_init__(self):
        if self.vocab_size < 4:
            raise ValueError(f"vocab_size must be >= 4 (special, no-op and at least 2 content tokens), got {self.vocab_size}")
        for name, value in [("length", self.length)] + [(f"eval_lengths[{i}]", v) for i, v in enumerate(self.eval_lengths)]:
            if value < 4:
                raise ValueError(f"{name} must be >= 4 (special, its successor, one more token, final special), got {value}")
        if self.train_trigger_position is not None and not 0 <= self.train_trigger_position <= self.length - 4:
            raise ValueError(f"train_trigger_position must be in [0, length - 4] = [0, {self.length - 4}] (the token "
                             f"after it and two more must fit), got {self.train_trigger_position}")
        shortest = min(self.eval_lengths or [self.length])
        if self.eval_trigger_position is not None and not 0 <= self.eval_trigger_position <= shortest - 4:
            raise ValueError(f"eval_trigger_position must be in [0, min(eval_lengths) - 4] = [0, {shortest - 4}] "
                             f"(the token after it and two more must fit), got {self.eval_trigger_position}")
        if self.eval_examples < 1 or self.eval_batch_size < 1:
            raise ValueError("eval_examples and eval_batch_size must be >= 1")

    def shapes(self) -> TaskShapes:
        lengths = self.eval_lengths or [self.length]
        return TaskShapes(self.length, self.eval_batch_size, max(lengths), self.eval_examples * sum(lengths))


def induction_heads(n: int, length: int, vocab_size: int, gen: torch.Generator, device: torch.device,
                    score_context: bool = False, trigger_position: int | None = None) -> Sample:
    """inputs, targets (n, length) int64, info {"length"}; the special token at `trigger_position` in every
    row, or (None) at a uniform p in [0, T-4]."""
    special = vocab_size - 1
    inputs = torch.randint(0, vocab_size - 2, (n, length), generator=gen, device=device)
    trigger = torch.randint(0, length - 3, (n,), generator=gen, device=device)  # p in [0, T-4]
    if trigger_position is not None:
        trigger.fill_(trigger_position)  # drawn all the same, so the content tokens match the uniform case's
    rows = torch.arange(n, device=device)
    inputs[rows, trigger] = special
    inputs[:, -1] = special
    if score_context:
        targets = torch.cat([inputs[:, 1:], inputs.new_full((n, 1), IGNORE_INDEX)], dim=1)
    else:
        targets = torch.full_like(inputs, IGNORE_INDEX)
    targets[:, -1] = inputs[rows, trigger + 1]
    return inputs, targets, {"length": torch.full((n,), length, device=device)}


@register_task("induction_heads", config=InductionHeadsConfig)
class InductionHeads(SyntheticTask):
    """Induction heads (Mamba 4.1.2): after the special token, recall what followed it earlier."""

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def train_settings(self):
        return [(1.0, {"length": self.config.length, "score_context": self.config.train_scoring == "all",
                       "trigger_position": self.config.train_trigger_position})]

    def eval_settings(self):
        return {f"L{n}": {"length": n, "score_context": False, "trigger_position": self.config.eval_trigger_position}
                for n in self.config.eval_lengths}

    def make(self, n, gen, device, *, length: int, score_context: bool, trigger_position: int | None) -> Sample:
        return induction_heads(n, length, self.config.vocab_size, gen, device, score_context, trigger_position)
