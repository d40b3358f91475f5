"""One optimiser step and the statistics it leaves on the device; the eager step.

Per optimiser step s (0-based), with the batch split into `accumulation` micro-batches:

    scored    = #(targets != IGNORE) over the whole batch            (a device tensor)
    loss_m    = CE_sum(micro-batch m) / scored       logits at the scored positions only (`_batch_loss`)
    backward of  loss_m + sum(aux losses of m) / accumulation        (MoE load balancing)
    grad_norm = clip_grad_norm_(parameters, grad_clip)
    AdamW step at lr(s) = lr * lr_factor(s)                           (`hybrid.training.optim`)

The window statistics of the training log (the summed loss and auxiliary losses, the latest
gradient norm) accumulate on the device in `StepStats`; `read()` fetches a window in one transfer.
The gradient norm is computed whether or not it is clipped (grad_clip null clips at infinity), so
that non-finite gradients are caught as non-finite losses are.

`EagerStep` runs the step as plain PyTorch (torch.compile'd when `train.compile`): it checks the loss
and the gradient norm on the host before the optimiser step and raises `NonFinite`, leaving the
weights of the last finite step. `hybrid.training.graphed.GraphedStep` runs the same computation
captured in CUDA graphs and makes that check on the device instead.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybrid.kernels.linear_cross_entropy import linear_cross_entropy
from hybrid.tasks.base import IGNORE_INDEX
from hybrid.training.config import TrainConfig
from hybrid.training.optim import lr_factor


class NonFinite(RuntimeError):
    """The loss or the gradient norm of optimiser step `step` (1-based) was NaN or infinite."""

    def __init__(self, step: int, what: str, value: float, lr: float, detected_at: int | None = None):
        self.step, self.what, self.value, self.lr, self.detected_at = step, what, value, lr, detected_at
        super().__init__(f"{what} {value} at step {step} (lr {lr:.3g})")


@dataclass
class Window:
    """Training statistics of the steps since the previous read, on the host."""

    steps: int
    loss: float  # mean over the window's steps
    aux: dict[str, float] = field(default_factory=dict)  # means, by name
    grad_norm: float | None = None  # of the latest step


class StepStats:
    """Device-side sums of one logging window. `add` launches kernels only; `read` syncs once."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.grad_norm = torch.zeros((), dtype=torch.float32, device=device)
        self.aux: dict[str, Tensor] = {}
        self.steps = 0

    def ensure(self, names: Any) -> None:
        """Allocate the sums of these auxiliary losses now (a captured step must find them allocated)."""
        for name in names:
            if name not in self.aux:
                self.aux[name] = torch.zeros_like(self.loss)

    def add(self, loss_sum: Tensor, aux: dict[str, Tensor], grad_norm: Tensor) -> None:
        self.loss += loss_sum.double()
        self.ensure(aux)
        for name, value in aux.items():
            self.aux[name] += value.double()
        self.grad_norm.copy_(grad_norm)

    def values(self) -> list[Tensor]:
        """The window's device tensors, in the order `window()` reads them."""
        return [self.loss, self.grad_norm, *self.aux.values()]

    def window(self, host: list[float]) -> Window:
        """A Window from the host copies of `values()` (the first len(values()) of `host`); starts a new window."""
        steps, self.steps = max(self.steps, 1), 0
        loss, grad_norm, rest = host[0], host[1], host[2:]
        aux = {name: value / steps for name, value in zip(self.aux, rest)}
        for value in self.values():
            if value is not self.grad_norm:
                value.zero_()
        return Window(steps, loss / steps, aux, grad_norm)


def scored_capacity(targets: Tensor, accumulation: int) -> int:
    """How many positions of each micro-batch the loss computes logits for: the most scored positions
    of any micro-batch, rounded up to a multiple of 64 (so a mixture's few counts share graphs), at
    most the micro-batch's positions. Read on the host; the batch drawing computes it (on CUDA, on
    its side stream, where the read does not wait for the training step)."""
    counts = torch.stack([(t != IGNORE_INDEX).sum() for t in targets.chunk(accumulation)])
    return min(targets.numel() // accumulation, -(-int(counts.max()) // 64) * 64)


def _batch_loss(model_fn: Callable[..., Tensor], inputs: Tensor, targets: Tensor, scored: Tensor,
                capacity: int, head: Tensor | None = None) -> Tensor:
    """Summed next-token cross-entropy of a micro-batch over the scored positions of the whole batch.

    Logits are computed at `capacity` positions: every scored one, then unscored ones that the
    cross-entropy ignores. For a synthetic task that scores a few positions per example this skips
    most of the LM head and the softmax over the vocabulary; the loss is the same sum. With `head` (the
    LM head's weight; `train.lm_loss: fused`), a batch scored at every position never materialises
    its logits: the model returns hidden states and `linear_cross_entropy` applies the head in pieces."""
    flat = targets.flatten()
    if capacity < flat.numel():
        picked = torch.argsort((flat == IGNORE_INDEX).to(torch.int8), stable=True)[:capacity]  # scored first
        logits, flat = model_fn(inputs, positions=picked), flat.index_select(0, picked)  # (capacity, vocab)
    elif head is not None:
        hidden = model_fn(inputs, hidden_only=True).flatten(0, 1)  # (batch * length, d_model)
        return linear_cross_entropy(hidden, head, flat, ignore_index=IGNORE_INDEX) / scored
    else:
        logits = model_fn(inputs).flatten(0, 1)  # (batch * length, vocab)
    return F.cross_entropy(logits.float(), flat, ignore_index=IGNORE_INDEX, reduction="sum") / scored


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def forward_backward(model_fn: Callable[..., Tensor], model: nn.Module, inputs: Tensor, targets: Tensor,
                     capacity: int, accumulation: int, amp: torch.dtype | None,
                     parallel: Any = None, lm_loss: str = "plain") -> tuple[Tensor, dict[str, Tensor]]:
    """Gradients of one optimiser batch (accumulated over micro-batches); returns the summed loss and
    the auxiliary losses averaged over micro-batches, as device tensors. No host synchronisation.
    `capacity`: logits per micro-batch (`scored_capacity`). `parallel` (data parallelism,
    `hybrid.training.distributed.Parallel`): this rank's rows of the batch, normalised by the whole
    batch's scored positions and scaled by the world size (DDP and FSDP average gradients); the
    returned loss is then this rank's part of the batch's."""
    scored = (targets != IGNORE_INDEX).sum()
    world = 1
    if parallel is not None and parallel.world > 1:
        scored, world = parallel.total(scored), parallel.world
    scored = scored.clamp(min=1)
    head = model.lm_head.weight if lm_loss == "fused" else None
    loss_sum = torch.zeros((), device=inputs.device)
    aux_sums: dict[str, Tensor] = {}
    for inp, tgt in zip(inputs.chunk(accumulation), targets.chunk(accumulation)):
        with autocast(inputs.device, amp):
            loss = _batch_loss(model_fn, inp, tgt, scored, capacity, head)
            aux = model.aux_losses()
        scaled = loss * world if world > 1 else loss
        total = scaled + sum(v.float() for v in aux.values()) / accumulation if aux else scaled
        # On the calling thread: autograd's hand-off to its CUDA worker thread buys nothing on one
        # device and costs host time (cold caches, two context switches), which small models see.
        with torch.autograd.set_multithreading_enabled(False):
            total.backward()
        loss_sum += loss.detach()
        for name, value in aux.items():
            aux_sums[name] = aux_sums.get(name, 0.0) + value.detach().float() / accumulation
    return loss_sum, aux_sums


def clip_gradients(params: list[Tensor], grad_clip: float | None) -> Tensor:
    """The global gradient norm, after clipping it to `grad_clip` (None: measured, not clipped)."""
    return torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip is not None else math.inf)


class EagerStep:
    """The optimiser step as plain PyTorch calls (see the module header)."""

    mode = "eager"

    def __init__(self, model: nn.Module, model_fn: Callable[[Tensor], Tensor], optimizer: torch.optim.Optimizer,
                 scheduler: Any, cfg: TrainConfig, amp: torch.dtype | None, device: torch.device,
                 parallel: Any = None):
        self.model, self.model_fn, self.optimizer, self.scheduler = model, model_fn, optimizer, scheduler
        self.cfg, self.amp, self.parallel = cfg, amp, parallel
        self.params = list(model.parameters())
        self.stats = StepStats(device)

    def __call__(self, s: int, inputs: Tensor, targets: Tensor, capacity: int) -> None:
        loss_sum, aux = forward_backward(self.model_fn, self.model, inputs, targets, capacity, self.cfg.accumulation,
                                         self.amp, self.parallel, self.cfg.lm_loss)
        grad_norm = clip_gradients(self.params, self.cfg.grad_clip)
        if self.parallel is not None and self.parallel.world > 1:
            loss_sum = self.parallel.total(loss_sum)  # the whole batch's loss, on every rank
            grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: a DTensor
        for what, value in zip(("loss", "gradient norm"), torch.stack([loss_sum, grad_norm]).tolist()):  # one sync
            if not math.isfinite(value):
                raise NonFinite(s + 1, what, value, self.cfg.lr * lr_factor(s, self.cfg))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.stats.add(loss_sum, aux, grad_norm)
        self.stats.steps += 1

    def read(self, step: int) -> Window:
        """The statistics of the steps since the last read (`step` optimiser steps are done)."""
        return self.stats.window(torch.stack(self.stats.values()).double().tolist())

    def check(self, step: int) -> None:
        """Raise NonFinite for a non-finite step not yet reported (an eager step reports it at once)."""

    def evaluation_stats(self, task: Any) -> None:
        """The statistics function evaluation should use: None, the task's own on eager forwards."""
        return None

    def state_dicts(self, step: int) -> tuple[dict, dict]:
        """(optimizer, scheduler) state dicts for a checkpoint taken after `step` steps."""
        return self.optimizer.state_dict(), self.scheduler.state_dict()
