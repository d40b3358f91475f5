"""What a run is built from, before any training: its device and autocast dtype, its run directory,
its task (checked against the model's vocabulary and the evaluation sets the config names), and the
inference-state size its results report."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hybrid.config import RootConfig, origin_of
from hybrid.errors import ConfigError
from hybrid.model import HybridLM
from hybrid.training.config import TrainConfig

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available; use train.device=cpu or auto",
                          key="train.device")
    return device


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """None means no autocast (float32)."""
    if cfg.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"float32": None, "bfloat16": torch.bfloat16}[cfg.dtype]


def run_dir_of(root: RootConfig) -> Path:
    return Path(root.train.run_dir) if root.train.run_dir else Path(root.train.out_dir) / (root.name or "run")


def inference_state_size(model: HybridLM, length: int) -> int:
    """Elements of the inference state one sequence of `length` tokens leaves behind (KV caches grow
    with the length; recurrent states do not), as Zoology's "state size" compares architectures."""
    def count(obj: Any) -> int:
        if isinstance(obj, Tensor):
            return obj.numel()
        if isinstance(obj, (list, tuple)):
            return sum(count(o) for o in obj)
        if isinstance(obj, dict):
            return sum(count(o) for o in obj.values())
        if dataclasses.is_dataclass(obj):
            return sum(count(getattr(obj, f.name)) for f in dataclasses.fields(obj))
        if hasattr(obj, "__dict__"):
            return sum(count(o) for o in vars(obj).values())
        return 0

    try:
        with torch.device("meta"):
            return count(model.init_state(1, length, device="meta"))
    except Exception as err:  # a custom layer without a meta-friendly init_state
        log.debug("state size unavailable: %s", err)
        return -1


def check_vocab(root: RootConfig, task: Any) -> None:
    if task.vocab_size > root.model.vocab_size:
        raise ConfigError(f"the task's tokens go up to {task.vocab_size - 1} but the model's vocabulary has "
                          f"{root.model.vocab_size} entries; set model.vocab_size: {task.vocab_size} (or "
                          f"`vocab_size: ${{task.vocab_size}}` under model: when the task sets vocab_size)",
                          key="model.vocab_size", file=origin_of("model.vocab_size", root.origins))


def check_eval_sets(root: RootConfig, task: Any) -> None:
    wanted = root.train.eval_sets or []
    names = list(task.eval_sets("cpu")) if wanted else []
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise ConfigError(f"unknown held-out set(s) {', '.join(map(repr, unknown))}; the task has: {', '.join(names)}",
                          key="train.eval_sets", file=origin_of("train.eval_sets", root.origins))


def build_task_of(root: RootConfig) -> Any:
    from hybrid.tasks.base import build_task  # noqa: PLC0415

    if not root.task:
        raise ConfigError("no task: add `task: {type: mqar, ...}` (see `hybrid tasks`)", key="task")
    try:
        return build_task(root.task, root.seed)
    except ConfigError as err:
        raise err.located(file=origin_of(err.key, root.origins)) from None
