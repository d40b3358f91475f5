"""Checkpoints that survive a crash: everything a resumed run needs, written atomically.

A checkpoint holds the model, optimiser and scheduler state, every RNG state (Python, NumPy, torch
CPU and CUDA), the step (the data position: batches are a pure function of the step) and the
early-stopping bookkeeping. It is written to a temporary file in the same folder, flushed to
disk, then renamed over the old one (`os.replace` is atomic on POSIX): a kill -9 at any moment
leaves either the previous checkpoint or the new one, never a torn file.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT = "checkpoint.pt"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    # torch wants CPU byte tensors here, and a checkpoint loaded with map_location="cuda" has moved them
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(_cpu_bytes(state["torch"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_cpu_bytes(s) for s in state["cuda"]])


def _cpu_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.to(device="cpu", dtype=torch.uint8)


def atomic_write(path: Path, write) -> None:
    """Call `write(file_object)` on a temporary file next to `path`, fsync it, rename it to `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def save_checkpoint(run_dir: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, step: int, extra: dict[str, Any] | None = None) -> Path:
    """Write `run_dir/checkpoint.pt` atomically. `step` is the number of optimiser steps done."""
    state = {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "extra": extra or {},
    }
    path = Path(run_dir) / CHECKPOINT
    atomic_write(path, lambda f: torch.save(state, f))
    return path


def load_checkpoint(run_dir: Path, map_location: Any = "cpu") -> dict[str, Any] | None:
    """The checkpoint of `run_dir`, or None when it has none."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None
    return torch.load(path, map_location=map_location, weights_only=False)
