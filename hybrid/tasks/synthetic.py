"""Machinery shared by the synthetic tasks: a training mixture of settings, held-out sets, partition.

A task describes its settings (a setting is the keyword arguments of its generator, e.g.
{"length": 256, "num_kv_pairs": 16}) and a batched generator `make(n, gen, device, **setting)`;
this base turns them into the `Task` contract:

- `train_batch(step)`: picks one setting of the training mixture for the whole batch (weights from
  the config; a batch never mixes lengths, so nothing is padded), draws it on `device` from the
  step's generator and redraws any example that falls on the held-out side (`sampling`).
- `eval_sets()`: one held-out set per evaluation setting, drawn on the CPU, cached, disjoint from
  training by construction.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor

from hybrid.tasks.base import Batch, EvalSet, Task
from hybrid.tasks.sampling import Sample, exclude_heldout, generator, only_heldout


class SyntheticTask(Task):
    slice_keys: tuple[str, ...] = ("length",)

    def __init__(self, config: Any, seed: int = 0):
        super().__init__(config, seed)
        self._eval: dict[str, EvalSet] | None = None

    # -- what a task provides
    def train_settings(self) -> list[tuple[float, dict[str, Any]]]:
        """(weight, setting) pairs of the training mixture."""
        raise NotImplementedError

    def eval_settings(self) -> dict[str, dict[str, Any]]:
        """Held-out set name -> setting."""
        raise NotImplementedError

    def make(self, n: int, gen: torch.Generator, device: torch.device, **setting: Any) -> Sample:
        """n examples of one setting: inputs (n, L) int64, targets (n, L) int64, info {name: (n,)}."""
        raise NotImplementedError

    def heldout_key(self, inputs: Tensor, setting: dict[str, Any]) -> Tensor:
        """The tokens that identify an example for the train/held-out partition (default: all inputs)."""
        return inputs

    # -- the contract
    def setting_at(self, step: int) -> dict[str, Any]:
        settings = self.train_settings()
        if len(settings) == 1:
            return settings[0][1]
        weights = torch.tensor([w for w, _ in settings], dtype=torch.float64)
        pick = torch.multinomial(weights, 1, generator=generator(self.seed, self.name, "mixture", step))
        return settings[int(pick)][1]

    def train_batch(self, step: int, batch_size: int, device: torch.device | str = "cpu") -> Batch:
        device = torch.device(device)
        setting = self.setting_at(step)
        gen = generator(self.seed, self.name, "train", step, device=device)
        inputs, targets, info = exclude_heldout(lambda n: self.make(n, gen, device, **setting), batch_size,
                                                key=lambda x: self.heldout_key(x, setting), max_token=self.vocab_size)
        return Batch(inputs, targets, info)

    def eval_sets(self, device: torch.device | str = "cpu") -> dict[str, EvalSet]:
        if self._eval is None:
            self._eval = {name: EvalSet(partial(self._produce, name, setting))
                          for name, setting in self.eval_settings().items()}
        return {name: s.on(device) for name, s in self._eval.items()}

    def _produce(self, name: str, setting: dict[str, Any]) -> list[Batch]:
        gen = generator(self.seed, self.name, "eval", name)
        cpu = torch.device("cpu")
        n, size = self.config.eval_examples, self.config.eval_batch_size
        inputs, targets, info = only_heldout(lambda k: self.make(k, gen, cpu, **setting), n, chunk=size,
                                             key=lambda x: self.heldout_key(x, setting))
        return [Batch(inputs[i:i + size], targets[i:i + size], {k: v[i:i + size] for k, v in info.items()})
                for i in range(0, n, size)]


def gumbel_topk(log_weights: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """k indices per row drawn without replacement with probability proportional to exp(log_weights),
    in draw order: (n, m) -> (n, k). Perturbing log-weights with Gumbel noise and taking the top k is
    the Plackett-Luce distribution, i.e. the same law as numpy's sequential `choice(replace=False, p=...)`."""
    u = torch.rand(log_weights.shape, generator=gen, device=log_weights.device).clamp_(min=1e-20)
    return (log_weights - torch.log(-torch.log(u))).topk(k, dim=-1).indices


def uniform_without_replacement(n: int, population: int, k: int, gen: torch.Generator, device: torch.device) -> Tensor:
    """(n, k) int64: k distinct values of range(population) per row, in uniformly random order."""
    return torch.rand(n, population, generator=gen, device=device).topk(k, dim=-1).indices


def positive(name: str, value: int, minimum: int = 1) -> None:
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
