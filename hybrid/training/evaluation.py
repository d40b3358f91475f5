"""Evaluation during training: the held-out sets through `hybrid.tasks.evaluate`, eagerly or with
each batch shape's forward and statistics captured in a CUDA graph.

A short run of a small model spends much of its time evaluating: 1,000 examples per held-out set
in a handful of launch-bound forwards. Graphed, one batch is one replay of

    logits = model(inputs)                  (no grad, autocast as in training)
    stats  = task.stats(logits, batch)      (per-example sums; `metrics.example_stats` switches to
                                             its dense form while a graph is being captured)

whose outputs are read straight away by the evaluator's accumulator. The graphs share the training
step's memory pool (one replay at a time). A shape whose capture fails runs eagerly, with a warning.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from hybrid.tasks.base import Batch
from hybrid.training.graphed import side_stream
from hybrid.training.step import autocast

log = logging.getLogger(__name__)

MAX_GRAPHED_TOKENS = 1 << 20  # a batch of more tokens is not launch-bound: it runs eagerly (no capture cost)


class GraphedStats:
    """`stats(batch)` = `task.stats(model(batch.inputs), batch)`, replayed from one CUDA graph per shape."""

    def __init__(self, model: nn.Module, task: Any, device: torch.device, amp: torch.dtype | None, pool: Any):
        self.model, self.task, self.device, self.amp, self.pool = model, task, device, amp, pool
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph | None, Batch, dict[str, Tensor] | None]] = {}

    def _eager(self, batch: Batch) -> dict[str, Tensor]:
        with torch.no_grad(), autocast(self.device, self.amp):
            logits = self.model(batch.inputs)
        return self.task.stats(logits, batch)

    def __call__(self, batch: Batch) -> dict[str, Tensor]:
        key = (tuple(batch.inputs.shape), tuple(batch.targets.shape),
               tuple((k, tuple(v.shape), v.dtype) for k, v in batch.info.items()))
        if key not in self.graphs:
            self.graphs[key] = self._capture(key, batch)
        graph, static, outputs = self.graphs[key]
        if static is None:  # too large to gain from a graph
            return self._eager(batch)
        for dst, src in [(static.inputs, batch.inputs), (static.targets, batch.targets),
                         *((static.info[k], v) for k, v in batch.info.items())]:
            dst.copy_(src)
        if graph is None:
            return self._eager(static)
        graph.replay()
        return outputs  # read by the caller before the next replay

    def _capture(self, key: tuple, batch: Batch) -> tuple:
        if batch.inputs.numel() > MAX_GRAPHED_TOKENS:
            return None, None, None
        static = Batch(batch.inputs.clone(), batch.targets.clone(), {k: v.clone() for k, v in batch.info.items()})
        with side_stream(self.device):
            self._eager(static)  # warm-up: kernels compiled, caches filled, outside the capture
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                outputs = self._eager(static)
        except torch.OutOfMemoryError:
            raise  # the trainer reports it with the batch size and length
        except Exception as err:
            log.warning("cuda_graph: capturing the evaluation forward at shape %s failed (%s: %s); it runs eagerly",
                        key[0], type(err).__name__, err)
            return None, static, None
        return graph, static, outputs


def run_evaluation(model: nn.Module, task: Any, device: torch.device, amp: torch.dtype | None,
                   max_batches: int | None, graphed: GraphedStats | None = None,
                   sets: list[str] | None = None, split: Any = None, start: dict[str, Any] | None = None,
                   after_set: Any = None) -> dict[str, float]:
    """`{"eval/<group>/<metric>": value}` over the task's held-out sets (`sets`, default all; at most
    `max_batches` batches per set); `split` (`hybrid.tasks.evaluate.Split`) shares the batches among
    data-parallel ranks; `start` and `after_set` resume an evaluation cut short (`hybrid.tasks.evaluate`)."""
    from hybrid.tasks.evaluate import evaluate, flatten  # noqa: PLC0415

    model.eval()
    try:
        result = evaluate(model, task, device, sets=sets, max_batches=max_batches, autocast_dtype=amp,
                          stats_fn=graphed, split=split, start=start, after_set=after_set)
    finally:
        model.train()
    return flatten(result)
