"""Training batches on the training device, drawn one step ahead on CUDA.

A task draws the batch of step s as a pure function of (seed, s) (`Task.train_batch`), which on
a GPU is a few dozen small kernels and a host synchronisation or two (the held-out redraw loop).
Drawn on the compute stream, each synchronisation would wait for the training step queued before
it. So on CUDA the loop asks for batch s + 1 right after launching step s: it is drawn on a side
stream while the GPU runs the step, and `take(s + 1)` hands it over to the compute stream.
The batches are the same as drawn inline; only the time they are drawn at moves.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from hybrid.training.step import scored_capacity


class TrainBatches:
    """`take(s)` -> (inputs, targets, logits capacity) of step s on `device`; `prefetch(s)` starts
    drawing it early. The capacity is `step.scored_capacity` of the targets, read at drawing time."""

    def __init__(self, task: Any, batch_size: int, accumulation: int, device: torch.device, parallel: Any = None):
        self.task, self.batch_size, self.accumulation, self.device = task, batch_size, accumulation, device
        self.parallel = parallel  # data parallelism: the global batch is drawn, this rank keeps its rows
        self.side = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._ready: tuple[int, Tensor, Tensor, int] | None = None

    def _draw(self, s: int) -> tuple[Tensor, Tensor, int]:
        batch = self.task.train_batch(s, self.batch_size, self.device)
        inputs, targets = batch.inputs.to(self.device), batch.targets.to(self.device)
        if self.parallel is not None:
            inputs, targets = self.parallel.rows(inputs), self.parallel.rows(targets)
        return inputs, targets, scored_capacity(targets, self.accumulation)

    def prefetch(self, s: int) -> None:
        if self.side is None:
            return
        with torch.cuda.stream(self.side):  # no wait on the compute stream: the draw needs nothing of it
            self._ready = (s, *self._draw(s))

    def take(self, s: int) -> tuple[Tensor, Tensor, int]:
        if self._ready is None or self._ready[0] != s:
            return self._draw(s)
        _, inputs, targets, capacity = self._ready
        self._ready = None
        compute = torch.cuda.current_stream(self.device)
        compute.wait_stream(self.side)
        for t in (inputs, targets):
            t.record_stream(compute)  # drawn on the side stream, used on this one: not reused too early
        return inputs, targets, capacity
