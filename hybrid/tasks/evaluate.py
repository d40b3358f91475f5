"""Run a model over a task's held-out sets and report metrics overall, per set and per slice."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from hybrid.tasks.base import Batch, Task
from hybrid.tasks.metrics import Accumulator


@dataclass
class Split:
    """The held-out batches shared among processes (data-parallel ranks): this one takes batch i of
    every set when i % world == rank; `merge` sums the processes' totals (an all-gather). With
    `lockstep` every process runs as many forwards as the one with the most batches (FSDP's forward
    is a collective): one with none left repeats its set's first batch and discards the result."""

    rank: int
    world: int
    merge: Callable[[dict[str, dict[str, float]]], dict[str, dict[str, float]]]
    lockstep: bool = False


def _batches_of(batches: Any, count: int, split: Split | None):
    """(batch, scored) pairs this process runs: its share of the first `count` batches, then, in
    lockstep, repeats of the first batch (not scored) up to every process's number of forwards."""
    if split is None:
        for batch in itertools.islice(batches, count):
            yield batch, True
        return
    mine = range(split.rank, count, split.world)
    for i in mine:
        yield batches[i], True
    if split.lockstep and count:
        for _ in range(-(-count // split.world) - len(mine)):
            yield batches[0], False


@torch.no_grad()
def evaluate(model_fn: Callable[[Tensor], Tensor], task: Task, device: torch.device | str = "cpu", *,
             sets: list[str] | None = None, max_batches: int | None = None,
             autocast_dtype: torch.dtype | None = None,
             stats_fn: Callable[[Batch], dict[str, Tensor]] | None = None,
             split: Split | None = None, start: dict[str, Any] | None = None,
             after_set: Callable[[dict[str, Any]], None] | None = None) -> dict[str, dict[str, float]]:
    """Score `model_fn` on `task`'s held-out sets.

    Args:
        model_fn: `logits = model_fn(inputs)`, inputs (batch, length) int64 on `device`, logits
            (batch, length, vocab) with vocab >= task.vocab_size. Called under `torch.no_grad()`;
            put the model in eval mode first.
        task: a built task (`build_task(cfg["task"], seed)`).
        device: where batches are sent (held-out sets are drawn on the CPU, identical on every machine).
        sets: names of the held-out sets to run (default: all of `task.eval_sets()`).
        max_batches: at most this many batches per set (a quick look during training).
        autocast_dtype: run `model_fn` under `torch.autocast(device_type, autocast_dtype)`; metrics
            are always computed in float32 from the logits.
        stats_fn: `stats_fn(batch)` in place of `task.stats(model_fn(batch.inputs), batch)` (the trainer
            passes its CUDA-graphed forward and statistics, `hybrid.training.evaluation`).
        split: share the batches among data-parallel processes (`Split`); every process returns the
            whole evaluation's metrics.
        start: the progress of an evaluation cut short, as `after_set` gave it: its sets are not run
            again and its sums are kept (one process only, without `split`); ignored unless it planned
            the same sets as this one.
        after_set: called after each set with the progress so far, {"sets": [names done], "planned":
            [every name], "totals": {group: {statistic: sum}}} (plain JSON data); it may raise to stop the
            evaluation there.

    Returns:
        `{group: {metric: value}}`, each group's metrics computed from sums over its examples:
          "all"             every evaluated example pooled;
          "<set name>"      one held-out set (e.g. "L256-kv16", "val");
          "<key>=<value>"   one slice pooled over sets (e.g. "length=1024", "num_kv_pairs=64"),
                            for each key in `task.slice_keys` found in the batches' `info`.
        Synthetic tasks report accuracy, exact_match, loss, examples, tokens; the LM task reports
        loss, ppl, bpb (when bytes are known), accuracy, tokens. `flatten()` turns the result into
        `{"eval/<group>/<metric>": value}` for a logger.
    """
    device = torch.device(device)
    all_sets = task.eval_sets(device)
    names = list(all_sets) if sets is None else sets
    unknown = [n for n in names if n not in all_sets]
    if unknown:
        raise KeyError(f"unknown held-out set(s) {unknown} of task {task.name!r}; it has: {', '.join(all_sets)}")
    if start is not None and split is not None and split.world > 1:
        raise ValueError("an evaluation resumes (start=) in one process only: its sums would be a rank's share")
    if start is not None and start.get("planned") != names:
        start = None  # an evaluation of other sets: its sums would be pooled into this one's
    acc = Accumulator(task.slice_keys)
    done = list((start or {}).get("sets", []))
    for group, sums in (start or {}).get("totals", {}).items():
        acc.totals[group].update(sums)
    for name in names:
        if name in done:
            continue
        batches = all_sets[name]
        if not (hasattr(batches, "__len__") and hasattr(batches, "__getitem__")):
            batches = list(batches)  # a task's own iterable: indexed below
        count = len(batches) if max_batches is None else min(len(batches), max_batches)
        for batch, scored in _batches_of(batches, count, split):
            batch = batch.to(device)
            if stats_fn is not None:
                stats = stats_fn(batch)
            else:
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    logits = model_fn(batch.inputs)
                stats = task.stats(logits, batch)
            if scored:
                acc.add(stats, batch.info, group=name)
        done.append(name)
        if after_set is not None:
            totals = {g: dict(t) for g, t in acc.totals.items()}
            after_set({"sets": list(done), "planned": list(names), "totals": totals})
    if split is not None and split.world > 1:
        acc.totals = split.merge({k: dict(v) for k, v in acc.totals.items()})
    return acc.result(task.reduce)


def flatten(result: dict[str, dict[str, float]], prefix: str = "eval") -> dict[str, float]:
    """`{"all": {"accuracy": 0.9}}` -> `{"eval/all/accuracy": 0.9}`."""
    return {f"{prefix}/{group}/{metric}": value for group, metrics in result.items() for metric, value in metrics.items()}
