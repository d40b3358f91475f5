"""Multi-query associative recall (MQAR; Arora, Eyuboglu et al. 2023, "Zoology"), as Zoology generates it.

Following `zoology/data/multiquery_ar.py` (num_passes = 1), for vocabulary V, length L and N pairs:

    keys    k_1..k_N  distinct, uniform from [1, V/2)        (0 is the blank of the query region)
    values  v_1..v_N  distinct, uniform from [V/2, V)
    context positions [0, 2N):  k_1 v_1 k_2 v_2 ... k_N v_N
    query region [2N, L): slots 2N + 2g for g in [0, S), S = (L - 2N) / 2. Key k_i goes to slot g_i,
        g_1..g_N drawn without replacement with P(g) proportional to (g+1)^(a-1) (a = power_a = 0.01:
        queries cluster near the context, as repeated bigrams do in text).
    labels: next-token targets, so the label at the position of query k_i is its value v_i;
        every other position is IGNORE_INDEX.
    random_non_queries: every other query-region position (the odd slots and unused even slots)
        holds a uniform token from [0, V) instead of 0. Fillers may equal keys; they are never scored.

Constraints (each checked with a message): L even, L >= 4N (Zoology's bound: S >= N slots),
N <= V/2 - 1 keys and N <= V - V/2 values. Zoology also asserts V > L; nothing in the task needs it,
so we do not. Choices of ours: the draws use torch on the device (Gumbel-top-k for the power law,
which has the law of numpy's sequential weighted draw) instead of numpy; a training batch holds one
(length, num_kv_pairs) setting of the mixture, drawn with the setting's weight, where Zoology
concatenates per-setting datasets and shuffles. Zoology's standard mixture and test settings are
the defaults.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from hybrid.tasks.base import IGNORE_INDEX, TaskShapes, register_task
from hybrid.tasks.sampling import Sample
from hybrid.tasks.synthetic import SyntheticTask, gumbel_topk, uniform_without_replacement


@dataclass
class MQARSetting:
    length: int = field(metadata={"help": "sequence length L (even, >= 4 * num_kv_pairs)"})
    num_kv_pairs: int = field(metadata={"help": "key-value pairs N, each queried once"})
    weight: float = field(default=1.0, metadata={"help": "share of training batches (training mixture only)"})


def _zoology_train() -> list[MQARSetting]:
    # Zoology's MQAR training mixture: 100k examples at (64, 4), 20k at each other setting
    return [MQARSetting(64, 4, 5.0), MQARSetting(128, 8), MQARSetting(256, 16), MQARSetting(256, 32),
            MQARSetting(256, 64)]


def _zoology_test() -> list[MQARSetting]:
    return [MQARSetting(64, 4), MQARSetting(64, 8), MQARSetting(64, 16), MQARSetting(128, 32),
            MQARSetting(256, 64)]


@dataclass
class MQARConfig:
    vocab_size: int = field(default=8192, metadata={"help": "V: keys from [1, V/2), values from [V/2, V)"})
    train: list[MQARSetting] = field(default_factory=_zoology_train,
                                     metadata={"help": "training mixture of {length, num_kv_pairs, weight}"})
    test: list[MQARSetting] = field(default_factory=_zoology_test,
                                    metadata={"help": "held-out settings {length, num_kv_pairs} (longer ones test extrapolation)"})
    power_a: float = field(default=0.01, metadata={"help": "query gap g drawn with P(g) ~ (g+1)^(power_a-1); 1.0 is uniform"})
    random_non_queries: bool = field(default=True, metadata={"help": "fill non-query positions with random tokens instead of 0"})
    eval_examples: int = field(default=1000, metadata={"help": "examples per held-out setting"})
    eval_batch_size: int = field(default=250, metadata={"help": "examples per held-out batch"})

    def __post_init__(self):
        if self.vocab_size < 4:
            raise ValueError(f"vocab_size must be >= 4 (one key in [1, V/2) and one value in [V/2, V)), got {self.vocab_size}")
        if not self.power_a > 0:
            raise ValueError(f"power_a must be > 0, got {self.power_a}")
        if not self.train:
            raise ValueError("train must list at least one {length, num_kv_pairs} setting")
        if self.eval_examples < 1 or self.eval_batch_size < 1:
            raise ValueError("eval_examples and eval_batch_size must be >= 1")
        for group in ("train", "test"):
            for i, s in enumerate(getattr(self, group)):
                check_setting(self.vocab_size, s.length, s.num_kv_pairs, where=f"{group}[{i}]")
                if group == "train" and not s.weight > 0:
                    raise ValueError(f"train[{i}].weight must be > 0, got {s.weight}")

    def shapes(self) -> TaskShapes:
        test = self.test or self.train
        return TaskShapes(max(s.length for s in self.train), self.eval_batch_size, max(s.length for s in test),
                          self.eval_examples * sum(s.length for s in test))


def check_setting(vocab_size: int, length: int, num_kv_pairs: int, where: str = "") -> None:
    at = f"{where}: " if where else ""
    n, half = num_kv_pairs, vocab_size // 2
    if n < 1:
        raise ValueError(f"{at}num_kv_pairs must be >= 1, got {n}")
    if length % 2:
        raise ValueError(f"{at}length must be even (queries sit on every other slot), got {length}")
    if length < 4 * n:
        raise ValueError(f"{at}{n} kv pairs do not fit in length {length}: MQAR needs length >= 4 * num_kv_pairs "
                         f"= {4 * n} (2N context tokens and N query slots of 2)")
    if n > half - 1:
        raise ValueError(f"{at}vocab_size {vocab_size} is too small for {n} distinct keys: keys come from "
                         f"[1, V/2) = {half - 1} tokens; need vocab_size >= {2 * (n + 1)}")
    if n > vocab_size - half:
        raise ValueError(f"{at}vocab_size {vocab_size} is too small for {n} distinct values from [V/2, V)")


def mqar(n: int, length: int, num_kv_pairs: int, vocab_size: int, power_a: float, random_non_queries: bool,
         gen: torch.Generator, device: torch.device) -> tuple[Tensor, Tensor]:
    """n MQAR examples: inputs, targets (n, length) int64 (see the module header)."""
    pairs, half = num_kv_pairs, vocab_size // 2
    keys = 1 + uniform_without_replacement(n, half - 1, pairs, gen, device)  # (n, N) in [1, V/2)
    values = half + uniform_without_replacement(n, vocab_size - half, pairs, gen, device)  # (n, N) in [V/2, V)
    context = 2 * pairs
    space = (length - context) // 2
    log_p = (power_a - 1) * torch.log(torch.arange(1, space + 1, device=device, dtype=torch.float32))  # log (g+1)^(a-1)
    gaps = gumbel_topk(log_p.expand(n, space), pairs, gen)  # (n, N): slot of key i
    inputs = torch.zeros(n, length, dtype=torch.int64, device=device)
    inputs[:, 0:context:2] = keys
    inputs[:, 1:context:2] = values
    query_pos = context + 2 * gaps  # (n, N)
    inputs.scatter_(1, query_pos, keys)
    targets = torch.full_like(inputs, IGNORE_INDEX).scatter_(1, query_pos, values)
    if random_non_queries:
        filler = torch.randint(0, vocab_size, (n, length), generator=gen, device=device)
        inputs = torch.where(inputs == 0, filler, inputs)
    return inputs, targets


@register_task("mqar", config=MQARConfig)
class MQAR(SyntheticTask):
    """Multi-query associative recall (Zoology): recall the value of each key queried after the context."""

    slice_keys = ("length", "num_kv_pairs")

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def train_settings(self):
        return [(s.weight, {"length": s.length, "num_kv_pairs": s.num_kv_pairs}) for s in self.config.train]

    def eval_settings(self):
        return {f"L{s.length}-kv{s.num_kv_pairs}": {"length": s.length, "num_kv_pairs": s.num_kv_pairs}
                for s in self.config.test}

    def make(self, n, gen, device, *, length: int, num_kv_pairs: int) -> Sample:
        c = self.config
        inputs, targets = mqar(n, length, num_kv_pairs, c.vocab_size, c.power_a, c.random_non_queries, gen, device)
        info = {"length": torch.full((n,), length, device=device), "num_kv_pairs": torch.full((n,), num_kv_pairs, device=device)}
        return inputs, targets, info


def power_law(space: int, power_a: float) -> list[float]:
    """Zoology's query-gap distribution over g in [0, space): P(g) proportional to (g+1)^(a-1)."""
    w = [math.pow(g + 1, power_a - 1) for g in range(space)]
    total = sum(w)
    return [x / total for x in w]
