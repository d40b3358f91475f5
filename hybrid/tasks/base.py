"""The task contract: what the trainer and the evaluator may rely on.

A task is registered with `@register_task("name", config=SomeDataclass)` and built as
`cls(config, seed)`. Batches are pure functions of (seed, step), so a resumed run sees exactly
the batches an uninterrupted one would, and held-out sets are fixed by the seed and never overlap
the training stream.

Metrics are computed in two stages so that they average correctly over batches and slices:
`stats(logits, batch)` returns per-example additive statistics (sums and counts, shape (batch,)),
the evaluator sums them over every example of a set or slice, and `reduce(totals)` turns the sums
into ratios (accuracy = correct / scored, exact_match = exact / examples, ...). A mean of per-batch
means would weight a batch of 3 examples like a batch of 300.

A task's config may state the sizes a memory estimate needs (`hybrid.estimate`) with a method
`shapes() -> TaskShapes`; without it the estimate leaves out activations and held-out data.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import Tensor

from hybrid.errors import ConfigError, shown
from hybrid.registry import Registry
from hybrid.typed_config import from_dict

IGNORE_INDEX = -100  # targets at unscored positions (as torch's cross_entropy ignores)


@dataclass
class Batch:
    """inputs, targets: (batch, length) int64; targets are IGNORE_INDEX where nothing is scored.
    `info` carries per-example metadata for sliced metrics (e.g. {"length": (batch,) tensor})."""

    inputs: Tensor
    targets: Tensor
    info: dict[str, Tensor] = dataclasses.field(default_factory=dict)

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.inputs.to(device), self.targets.to(device), {k: v.to(device) for k, v in self.info.items()})


class EvalSet:
    """A held-out set: `produce()` builds its batches once (on the CPU, cached); iteration moves each to `device`."""

    def __init__(self, produce: Callable[[], list[Batch]], device: torch.device | str = "cpu"):
        self._produce = produce
        self._batches: list[Batch] | None = None
        self.device = device

    def batches(self) -> list[Batch]:
        if self._batches is None:
            self._batches = self._produce()
        return self._batches

    def on(self, device: torch.device | str) -> "EvalSet":
        """The same set delivered on `device`; its batches are drawn once, by whichever copy asks first."""
        return EvalSet(self.batches, device)

    def __iter__(self) -> Iterator[Batch]:
        return (b.to(self.device) for b in self.batches())

    def __len__(self) -> int:
        return len(self.batches())

    def __getitem__(self, i: int) -> Batch:
        return self.batches()[i].to(self.device)


class Task:
    """Base class. Subclasses set `config` in __init__ and implement the methods below."""

    name: str = "?"
    slice_keys: tuple[str, ...] = ()  # keys of `Batch.info` whose values slice the metrics

    def __init__(self, config: Any, seed: int = 0):
        self.config = config
        self.seed = seed

    @property
    def vocab_size(self) -> int:
        """Token ids are in [0, vocab_size); the model's vocabulary must be at least this."""
        raise NotImplementedError

    def train_batch(self, step: int, batch_size: int, device: torch.device | str = "cpu") -> Batch:
        """The training batch of `step`: a pure function of (seed, step, batch_size)."""
        raise NotImplementedError

    def eval_sets(self, device: torch.device | str = "cpu") -> dict[str, Iterable[Batch]]:
        """Held-out sets by name (e.g. "L256", "L1024"), fixed by the seed, disjoint from training.

        Each value can be iterated more than once (an `EvalSet` or a list) and yields batches on `device`."""
        raise NotImplementedError

    def stats(self, logits: Tensor, batch: Batch) -> dict[str, Tensor]:
        """Per-example additive statistics, each (batch,) float64. Default: `metrics.example_stats`."""
        from hybrid.tasks.metrics import example_stats
        return example_stats(logits, batch.targets)

    def reduce(self, totals: dict[str, float]) -> dict[str, float]:
        """Metrics from statistics summed over examples. Default: `metrics.classification_metrics`."""
        from hybrid.tasks.metrics import classification_metrics
        return classification_metrics(totals)

    def metrics(self, logits: Tensor, batch: Batch) -> dict[str, float]:
        """Metrics of one batch (for training logs); held-out sets go through `hybrid.tasks.evaluate`."""
        return self.reduce({k: float(v.sum()) for k, v in self.stats(logits, batch).items()})


@dataclass(frozen=True)
class TaskShapes:
    """Sizes of a task's batches, from its config alone (nothing is drawn)."""

    train_length: int  # longest training sequence (tokens per example)
    eval_batch: int  # examples per held-out batch
    eval_length: int  # longest held-out sequence
    heldout_tokens: int  # tokens of all held-out sets together (inputs; targets as many), kept on the host


@dataclass(frozen=True)
class TaskEntry:
    name: str
    cls: type
    config_cls: type

    @property
    def doc(self) -> str:
        return (self.cls.__doc__ or "").strip().splitlines()[0] if self.cls.__doc__ else ""

    def build(self, args: dict[str, Any] | Any, seed: int = 0, key: str = "task") -> Task:
        config = from_dict(self.config_cls, args, key, what=f"task {self.name!r}")
        return self.cls(config, seed)


TASKS: Registry[TaskEntry] = Registry("task", entry_point_group="hybrid.tasks", builtins="hybrid.tasks")


def register_task(name: str, *, config: type, override: bool = False) -> Callable[[type], type]:
    """Class decorator: make a Task subclass available as `task: {type: name, ...}`."""
    def decorate(cls: type) -> type:
        TASKS.add(name, TaskEntry(name, cls, config), override=override)
        cls.name = name
        return cls
    return decorate


def _entry(spec: Any, key: str) -> tuple[TaskEntry, dict[str, Any]]:
    if isinstance(spec, dict) and "type" in spec and (not isinstance(spec["type"], str) or len(spec["type"]) > 100):
        raise ConfigError(f"expected a task type name (one of {', '.join(TASKS.names())}), got {shown(spec['type'])}",
                          key=f"{key}.type")
    return TASKS.get_typed(spec, key, "a task")


def check_task(spec: dict[str, Any], key: str = "task") -> Any:
    """The typed config of a `task:` mapping, checked, without building the task (no data is read)."""
    entry, args = _entry(spec, key)
    return from_dict(entry.config_cls, args, key, what=f"task {entry.name!r}")


def build_task(spec: dict[str, Any], seed: int = 0, key: str = "task") -> Task:
    """The task of a config's `task:` mapping, `{type: name, **args}`; errors name the key path."""
    entry, args = _entry(spec, key)
    return entry.build(args, seed, key)
