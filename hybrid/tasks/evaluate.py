"""Run a model over a task's held-out sets and report metrics overall, per set and per slice."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from hybrid.tasks.base import Batch, Task
from hybrid.tasks.metrics import Accumulator


@torch.no_grad()
def evaluate(model_fn: Callable[[Tensor], Tensor], task: Task, device: torch.device | str = "cpu", *,
             sets: list[str] | None = None, max_batches: int | None = None,
             autocast_dtype: torch.dtype | None = None,
             stats_fn: Callable[[Batch], dict[str, Tensor]] | None = None) -> dict[str, dict[str, float]]:
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
    acc = Accumulator(task.slice_keys)
    for name in names:
        for i, batch in enumerate(all_sets[name]):
            if max_batches is not None and i >= max_batches:
                break
            batch = batch.to(device)
            if stats_fn is not None:
                acc.add(stats_fn(batch), batch.info, group=name)
                continue
            if autocast_dtype is not None:
                with torch.autocast(device.type, dtype=autocast_dtype):
                    logits = model_fn(batch.inputs)
            else:
                logits = model_fn(batch.inputs)
            acc.add(task.stats(logits, batch), batch.info, group=name)
    return acc.result(task.reduce)


def flatten(result: dict[str, dict[str, float]], prefix: str = "eval") -> dict[str, float]:
    """`{"all": {"accuracy": 0.9}}` -> `{"eval/all/accuracy": 0.9}`."""
    return {f"{prefix}/{group}/{metric}": value for group, metrics in result.items() for metric, value in metrics.items()}
