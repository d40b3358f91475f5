"""The training step captured in CUDA graphs: one replay per optimiser step, no host synchronisation.

Small models are launch-bound: a step of a two-layer d_model 64 model is a few hundred kernels of a
few microseconds each, and eager PyTorch spends longer launching them than the GPU spends running
them. Captured once, a step is one `graph.replay()`.

What one replay does, entirely on the device (the body is `GraphedStep._body`):

    zero the gradients (allocated once, before the first capture, and shared by every graph)
    lr <- lr_table[step]                     (the schedule, precomputed per step: `optim.lr_factor`)
    forward, loss, backward over the accumulation micro-batches   (`step.forward_backward`)
    grad_norm <- clip_grad_norm_
    bad <- loss or grad_norm not finite; the first bad step and its values are recorded
    AdamW (fused, capturable) with found_inf = any bad step so far: a bad step and every later one
        leave the weights and the optimiser state untouched
    window statistics += this step's; step += 1

The host copies each batch into the graph's static input buffers and replays. Batches keep being a
pure function of (seed, step): they are drawn as in eager mode (`hybrid.training.batches` draws them
one step ahead on a side stream) and copied in.

Shapes. A graph is captured per batch shape and logits capacity (`step.scored_capacity`; "each": an
MQAR mixture of five lengths gets five graphs sharing one memory pool), or every batch is padded to
the mixture's longest length and largest capacity with unscored targets ("pad"; one graph, the same
loss up to float rounding, more work per step). A shape that
cannot be captured (over MAX_GRAPHS shapes, or a capture that fails under cuda_graph: auto) runs the
same body eagerly: still no host synchronisation, only launch-bound.

Non-finite losses are thereby detected when the loop next reads the statistics (log, evaluation
and checkpoint steps), not at the step itself; the weights are those of the last finite step either
way, and the run stops as an eager run does, keeping its last good checkpoint.
"""
from __future__ import annotations

import contextlib
import logging
import math
import warnings
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybrid.training.config import TrainConfig
from hybrid.training.optim import lr_factor
from hybrid.tasks.base import IGNORE_INDEX
from hybrid.training.step import NonFinite, StepStats, Window, clip_gradients, forward_backward

log = logging.getLogger(__name__)

MAX_GRAPHS = 16  # batch shapes captured per run; later shapes run the body eagerly
WARMUP = 2  # eager forward+backward passes on a side stream before a capture (kernels compiled, caches filled)


class GraphedStep:
    """The optimiser step replayed from CUDA graphs (see the module header)."""

    mode = "graphed"

    def __init__(self, model: nn.Module, model_fn: Callable[[Tensor], Tensor], optimizer: torch.optim.Optimizer,
                 scheduler: Any, cfg: TrainConfig, amp: torch.dtype | None, device: torch.device, start: int, *,
                 pad_to: tuple[int, int] | None = None, strict: bool = False):
        self.model, self.model_fn, self.optimizer, self.scheduler = model, model_fn, optimizer, scheduler
        self.cfg, self.amp, self.device, self.strict = cfg, amp, device, strict
        self.pad_length, self.pad_capacity = pad_to or (0, 0)
        self.params = list(model.parameters())
        self.stats = StepStats(device)
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph | None, Tensor, Tensor, int]] = {}
        self.lr_table = torch.tensor([cfg.lr * lr_factor(s, cfg) for s in range(cfg.steps)], dtype=torch.float32,
                                     device=device)
        self.step_t = torch.full((1,), start, dtype=torch.long, device=device)
        self.lr = self.lr_table[min(start, cfg.steps - 1)].clone()  # 0-dim, read by AdamW at every replay
        self.bad_step = torch.full((), -1, dtype=torch.long, device=device)  # first non-finite step (0-based)
        self.bad_values = torch.zeros(2, dtype=torch.float32, device=device)  # its loss and grad norm
        self.found_inf = torch.zeros((), dtype=torch.float32, device=device)
        for group in optimizer.param_groups:
            # fused: only the fused AdamW takes found_inf (a checkpoint of a CPU run restores fused=None)
            group["lr"], group["capturable"], group["fused"] = self.lr, True, True
        optimizer.found_inf = self.found_inf  # read by the fused AdamW: skip the update when 1
        self._optimizer_ready = False

    # -- one step
    def __call__(self, s: int, inputs: Tensor, targets: Tensor, capacity: int) -> None:
        """Step s on one batch; `capacity` as `step.scored_capacity` (graphs are keyed by it and the shape).
        The device counts the steps itself (`step_t`, from `start`): `s` is the host's count of the same."""
        if inputs.shape[1] < self.pad_length:
            extra = self.pad_length - inputs.shape[1]
            inputs, targets = F.pad(inputs, (0, extra)), F.pad(targets, (0, extra), value=IGNORE_INDEX)
            capacity = max(capacity, self.pad_capacity)
        key = (*inputs.shape, capacity)
        if key not in self.graphs:
            self.graphs[key] = self._build(key, inputs, targets, capacity)
        graph, static_inputs, static_targets, capacity = self.graphs[key]
        static_inputs.copy_(inputs)
        static_targets.copy_(targets)
        if graph is not None:
            graph.replay()
        else:
            with _uncaptured_ok():
                self._body(static_inputs, static_targets, capacity)
        self.stats.steps += 1

    def _body(self, inputs: Tensor, targets: Tensor, capacity: int) -> None:
        """The step as device work only: what a capture records (see the module header)."""
        torch._foreach_zero_([p.grad for p in self.params if p.grad is not None])
        last = self.lr_table.numel() - 1
        self.lr.copy_(self.lr_table.index_select(0, self.step_t.clamp(max=last))[0])
        loss_sum, aux = forward_backward(self.model_fn, self.model, inputs, targets, capacity, self.cfg.accumulation,
                                         self.amp, lm_loss=self.cfg.lm_loss)
        grad_norm = clip_gradients(self.params, self.cfg.grad_clip)
        bad = ~(torch.isfinite(loss_sum) & torch.isfinite(grad_norm))
        first = bad & (self.bad_step < 0)
        self.bad_step.copy_(torch.where(first, self.step_t[0], self.bad_step))
        self.bad_values.copy_(torch.where(first, torch.stack([loss_sum, grad_norm.float()]), self.bad_values))
        self.found_inf.copy_((self.bad_step >= 0).float())
        self.optimizer.step()
        self.stats.add(loss_sum, aux, grad_norm)
        self.step_t += 1

    # -- capture
    def _build(self, key: tuple, inputs: Tensor, targets: Tensor, capacity: int) -> tuple:
        """(graph or None, static inputs, static targets, capacity) for one (batch, length, capacity)."""
        static_inputs, static_targets = inputs.clone(), targets.clone()
        where = f"batch shape {tuple(key[:2])} with logits at {capacity} positions"
        if len([g for g in self.graphs.values() if g[0] is not None]) >= MAX_GRAPHS:
            log.warning("cuda_graph: more than %d batch shapes; %s runs eagerly", MAX_GRAPHS, where)
            self._warm_up(static_inputs, static_targets, capacity, passes=0)  # the optimiser state, if new
            return None, static_inputs, static_targets, capacity
        self._warm_up(static_inputs, static_targets, capacity)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                self._body(static_inputs, static_targets, capacity)
        except torch.OutOfMemoryError:
            raise  # the trainer reports it with the batch size and length
        except Exception as err:
            if self.strict:
                raise RuntimeError(f"cuda_graph: capturing the training step at {where} failed: {err}. "
                                   f"Set train.cuda_graph=auto (falls back to eager) or false") from err
            log.warning("cuda_graph: capture at %s failed (%s: %s); it runs eagerly", where, type(err).__name__, err)
            return None, static_inputs, static_targets, capacity
        log.info("cuda_graph: captured the training step at %s", where)
        return graph, static_inputs, static_targets, capacity

    def _warm_up(self, inputs: Tensor, targets: Tensor, capacity: int, passes: int = WARMUP) -> None:
        """Run the forward and backward (and clipping) eagerly on a side stream, as CUDA graph capture
        requires; the optimiser state is created by a skipped step, so nothing here changes the weights."""
        with side_stream(self.device):
            for _ in range(passes):
                forward_backward(self.model_fn, self.model, inputs, targets, capacity, self.cfg.accumulation, self.amp,
                                 lm_loss=self.cfg.lm_loss)
                clip_gradients(self.params, self.cfg.grad_clip)
            self.stats.ensure(self.model.aux_losses())
            if not self._optimizer_ready:  # creates AdamW's state without updating anything
                saved = self.found_inf.clone()
                self.found_inf.fill_(1.0)
                with _uncaptured_ok():
                    self.optimizer.step()
                self.found_inf.copy_(saved)
                self._optimizer_ready = True

    # -- reading back
    def read(self, step: int) -> Window:
        """The statistics since the last read; raises NonFinite when a step since the run (re)started was."""
        values = self.stats.values()
        host = torch.cat([torch.stack(values).double(), self._bad()]).tolist()
        self._raise_if_bad(host[len(values):], step)
        return self.stats.window(host)

    def check(self, step: int) -> None:
        """Wait for the GPU; raise NonFinite when a step since the run (re)started was not finite."""
        self._raise_if_bad(self._bad().tolist(), step)

    def _bad(self) -> Tensor:
        return torch.cat([self.bad_step.double()[None], self.bad_values.double()])  # (3,)

    def _raise_if_bad(self, bad: list[float], step: int) -> None:
        bad_step, loss, norm = int(bad[0]), bad[1], bad[2]
        if bad_step >= 0:
            what, value = ("loss", loss) if not math.isfinite(loss) else ("gradient norm", norm)
            raise NonFinite(bad_step + 1, what, value, self.cfg.lr * lr_factor(bad_step, self.cfg), detected_at=step)

    def evaluation_stats(self, task: Any) -> Any:
        """Evaluation statistics replayed from CUDA graphs in this step's memory pool."""
        from hybrid.training.evaluation import GraphedStats  # noqa: PLC0415

        return GraphedStats(self.model, task, self.device, self.amp, self.pool)

    def state_dicts(self, step: int) -> tuple[dict, dict]:
        """(optimizer, scheduler) state dicts after `step` steps, as an eager run would save them: plain
        float learning rates and a scheduler that has stepped `step` times (this step never steps it)."""
        lr = self.cfg.lr * lr_factor(step, self.cfg)
        optimizer = self.optimizer.state_dict()
        for group in optimizer["param_groups"]:
            group["lr"], group["capturable"] = lr, False
        scheduler = dict(self.scheduler.state_dict(), last_epoch=step, _step_count=step + 1,
                         _last_lr=[lr] * len(optimizer["param_groups"]))
        return optimizer, scheduler


@contextlib.contextmanager
def side_stream(device: torch.device):
    """Run the block on a fresh stream ordered after, and before, the current one: warm-ups ahead of
    a capture run there, as CUDA graph capture requires."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        yield
    torch.cuda.current_stream(device).wait_stream(side)


@contextlib.contextmanager
def _uncaptured_ok():
    """AdamW warns when a capturable instance steps outside a graph; here that is meant."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*capturable=True.*")
        yield
