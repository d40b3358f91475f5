"""Which training step a run gets: eager, torch.compile'd, CUDA-graphed, or compiled inside graphs.

    train.compile       torch.compile the model (both step kinds call the compiled model)
    train.cuda_graph    auto: graphs on a CUDA device when every sublayer's layer can be captured
                        true: graphs, or a ConfigError naming the first sublayer that cannot be captured
                        false: eager
    train.graph_shapes  each: one graph per batch shape; pad: every batch padded to the longest
                        training length of the task's mixture (one graph)

The choice and its reason are logged once per run, e.g.
    "training step: graphed (cuda_graph auto: every layer is capturable: attention, mlp)"
    "training step: eager (cuda_graph auto: sublayer 3 'E' (moe): capacity_factor drops ...)"
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch import Tensor, nn

from hybrid.errors import ConfigError
from hybrid.registry import LAYERS
from hybrid.training.config import TrainConfig
from hybrid.training.graphed import GraphedStep
from hybrid.training.step import EagerStep, scored_capacity

log = logging.getLogger(__name__)


def graph_refusal(model: nn.Module, device: torch.device, amp: torch.dtype | None) -> str | None:
    """Why a training step of `model` cannot be captured in a CUDA graph on `device`, or None."""
    if device.type != "cuda":
        return f"the device is {device.type}, and CUDA graphs need a CUDA device"
    dtype = amp or torch.float32
    for block in model.blocks:
        for spec, module in zip(block.spec.branches, block.branches):
            why = LAYERS.get(spec.type).graph_refusal(module, device, dtype)
            if why:
                return f"sublayer {block.spec.index} {spec.alias!r} ({spec.type}): {why}"
    return None


def use_graphs(cfg: TrainConfig, model: nn.Module, device: torch.device, amp: torch.dtype | None,
               parallel: str = "none") -> tuple[bool, str]:
    """(capture the step?, why), or a ConfigError when cuda_graph is true and the step cannot be captured."""
    if cfg.cuda_graph is False:
        return False, "cuda_graph false"
    why = (f"train.parallel {parallel}: the data-parallel step is not captured" if parallel != "none"
           else graph_refusal(model, device, amp))
    if why is None:
        types = sorted({spec.type for block in model.blocks for spec in block.spec.branches})
        return True, f"cuda_graph {cfg.cuda_graph}: every layer is capturable: {', '.join(types)}"
    if cfg.cuda_graph is True:
        raise ConfigError(f"cannot capture the training step in a CUDA graph: {why}; set train.cuda_graph: auto "
                          f"(eager where it cannot) or false", key="train.cuda_graph")
    return False, f"cuda_graph auto: {why}"


def pad_shape(task: Any, micro_batch: int) -> tuple[int, int] | None:
    """(longest input, most logits per micro-batch) of the task's training mixture, from one example of
    each setting (None when the task has no mixture to pad)."""
    from hybrid.tasks.sampling import generator  # noqa: PLC0415
    from hybrid.tasks.synthetic import SyntheticTask  # noqa: PLC0415

    if not isinstance(task, SyntheticTask):
        return None
    shapes = []
    for _, setting in task.train_settings():
        inputs, targets, _ = task.make(1, generator(0), torch.device("cpu"), **setting)
        shapes.append((inputs.shape[1], scored_capacity(targets.expand(micro_batch, -1), 1)))
    return max(s[0] for s in shapes), max(s[1] for s in shapes)


def build_step(cfg: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, task: Any,
               amp: torch.dtype | None, device: torch.device, start: int, parallel: Any = None,
               wrapped: nn.Module | None = None) -> EagerStep | GraphedStep:
    """The run's training step (see the module header); logs which and why. Under data parallelism
    (`parallel`, `hybrid.training.distributed`) the step calls `wrapped` (DDP, or the FSDP-sharded model)."""
    called = wrapped if wrapped is not None else model
    model_fn: Callable[[Tensor], Tensor] = torch.compile(called) if cfg.compile else called
    graphed, why = use_graphs(cfg, model, device, amp, parallel.mode if parallel is not None else "none")
    if graphed:
        if cfg.graph_shapes == "pad" and any(hasattr(m, "aux_losses") for m in model.modules() if m is not model):
            raise ConfigError("train.graph_shapes pad would count the padded positions in the auxiliary losses "
                              "(MoE load balancing); use graph_shapes: each", key="train.graph_shapes")
        pad_to = pad_shape(task, cfg.batch_size // cfg.accumulation) if cfg.graph_shapes == "pad" else None
        step = GraphedStep(model, model_fn, optimizer, scheduler, cfg, amp, device, start, pad_to=pad_to,
                           strict=cfg.cuda_graph is True)
    else:
        step = EagerStep(model, model_fn, optimizer, scheduler, cfg, amp, device, parallel)
    step.mode = ("compiled + " if cfg.compile else "") + step.mode  # as the log and results.json name it
    padded = f", batches padded to length {pad_to[0]}, logits at {pad_to[1]} positions" if graphed and pad_to else ""
    log.info("training step: %s (%s)%s", step.mode, why, padded)
    return step
