"""Checkpoints that survive a crash: everything a resumed run needs, written atomically.

A checkpoint holds the model, optimiser and scheduler state, every RNG state (Python, NumPy, torch
CPU and CUDA), the step (the data position: batches are a pure function of the step) and the
early-stopping bookkeeping. It is written to a temporary file in the same folder, flushed to
disk, then renamed over the old one (`os.replace` is atomic on POSIX): a kill -9 at any moment
leaves either the previous checkpoint or the new one, never a torn file.

The one before is kept as `checkpoint.prev.pt` (rotated atomically: a hard link of the old
checkpoint replaces the previous one, then the new file replaces the old; `checkpoint.pt` exists
at every moment). A latest checkpoint that cannot be read (truncated or damaged on disk, copied
half-way) does not destroy the run: `load_checkpoint` sets it aside as `checkpoint.corrupt-<n>.pt`,
logs a warning and resumes from the previous one. Without a readable previous one it raises a
`CheckpointError` that names the file and says what to do; no file of the run is touched.
"""
from __future__ import annotations

import logging
import os
import pickle
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from hybrid.errors import CheckpointError

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
KEYS = ("step", "model", "optimizer", "scheduler", "rng", "extra")  # what save_checkpoint writes


def rng_state() -> dict[str, Any]:
    # numpy's state as a tensor and plain values, so that `torch.load(weights_only=True)` reads the file
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    # torch wants CPU byte tensors here, and a checkpoint loaded with map_location="cuda" has moved them
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]  # keys: a tensor, or an ndarray in checkpoints before this format
    keys = keys.cpu().numpy() if isinstance(keys, torch.Tensor) else keys
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(_cpu_bytes(state["torch"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_cpu_bytes(s) for s in state["cuda"]])


def _cpu_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.to(device="cpu", dtype=torch.uint8)


def atomic_write(path: Path, write: Callable[[Any], None], keep_previous: Path | None = None) -> None:
    """Call `write(file_object)` on a temporary file next to `path`, fsync it, rename it to `path`.
    With `keep_previous`, the file `path` held before is kept there (see the module header)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous is not None and path.is_file():
            _rotate(path, Path(keep_previous))
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


def _rotate(path: Path, previous: Path) -> None:
    """`previous` <- the current `path`, atomically, leaving `path` in place."""
    link = previous.with_name(f".{previous.name}.link")
    link.unlink(missing_ok=True)
    try:
        os.link(path, link)
    except OSError:  # no hard links on this filesystem: copy (slower, as safe)
        shutil.copyfile(path, link)
    os.replace(link, previous)


def save_checkpoint(run_dir: Path, *, model: torch.nn.Module | dict[str, Any], optimizer: dict[str, Any],
                    scheduler: dict[str, Any], step: int, extra: dict[str, Any] | None = None,
                    rotate: bool = True) -> Path:
    """Write `run_dir/checkpoint.pt` atomically, keeping the one before as checkpoint.prev.pt.
    `model` is the module or its (full) state dict; `optimizer` and `scheduler` are state dicts (the
    training step makes them: a graphed step saves its tensor learning rate as the float an eager run
    would); `step` is the optimiser steps done."""
    state = {
        "step": step,
        "model": model if isinstance(model, dict) else model.state_dict(),
        "optimizer": optimizer,
        "scheduler": scheduler,
        "rng": rng_state(),
        "extra": extra or {},
    }
    path, previous = Path(run_dir) / CHECKPOINT, Path(run_dir) / PREVIOUS
    if not path.exists():  # a previous checkpoint without a latest one is of an earlier run (--overwrite)
        previous.unlink(missing_ok=True)
    # rotate=False replaces the latest in place (the same step again, say with the final evaluation's best)
    atomic_write(path, lambda f: torch.save(state, f), keep_previous=previous if rotate else None)
    return path


def read_checkpoint(path: Path | str, map_location: Any = "cpu", *, weights_only: bool = False,
                    keys: tuple[str, ...] = KEYS) -> Any:
    """torch.load(path), or a CheckpointError that says what is wrong with the file. `keys`: the
    entries a checkpoint must have (() accepts any object, e.g. a bare state_dict)."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location=map_location, weights_only=weights_only)
    except FileNotFoundError:
        raise CheckpointError("no such checkpoint file", file=str(path)) from None
    except IsADirectoryError:
        raise CheckpointError("is a folder, not a checkpoint file", file=str(path)) from None
    except pickle.UnpicklingError as err:
        if weights_only and "can still be loaded" in str(err):  # objects beyond tensors: a trust question
            raise
        raise CheckpointError(f"is truncated or corrupt ({_reason(err)})", file=str(path)) from None
    except Exception as err:  # zip, pickle and storage errors of a damaged file have many types
        raise CheckpointError(f"is truncated or corrupt ({_reason(err)})", file=str(path)) from None
    missing = [k for k in keys if not isinstance(blob, dict) or k not in blob]
    if missing or (keys and not isinstance(blob.get("step"), int)):
        found = ", ".join(map(str, list(blob)[:8])) if isinstance(blob, dict) else type(blob).__name__
        raise CheckpointError(f"is not a checkpoint of `hybrid train` (missing {', '.join(missing) or 'an int step'}; "
                              f"found: {found})", file=str(path))
    return blob


def _reason(err: BaseException) -> str:
    text = (str(err).splitlines() or [""])[0][:160]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def state_dict_mismatch(expected: dict[str, Any], weights: dict[str, Any], tied: set[str] = frozenset()) -> str | None:
    """What keeps `weights` from loading into a model whose state dict is `expected` (missing and
    unexpected names, wrong shapes), or None when it fits. `tied`: names that may be absent (a tied head)."""
    missing = [k for k in expected if k not in weights and k not in tied]
    unexpected = [k for k in weights if k not in expected]
    wrong = [f"{k} {tuple(v.shape)} (model: {tuple(expected[k].shape)})" for k, v in weights.items()
             if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    problems = [f"{what} {names[:4]}{' ...' if len(names) > 4 else ''}" for what, names in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if names]
    return "; ".join(problems) or None


def load_checkpoint(run_dir: Path, map_location: Any = "cpu") -> dict[str, Any] | None:
    """The checkpoint of `run_dir`, or None when it has none. A damaged latest checkpoint falls back
    to checkpoint.prev.pt (the damaged file set aside, see the module header); a CheckpointError
    when neither can be read."""
    run_dir = Path(run_dir)
    path, previous = run_dir / CHECKPOINT, run_dir / PREVIOUS
    if not path.exists():
        return None
    try:
        return read_checkpoint(path, map_location)
    except CheckpointError as err:
        latest_error = err
    try:
        state = read_checkpoint(previous, map_location) if previous.is_file() else None
    except CheckpointError:
        state = None
    if state is None:
        also = " (and checkpoint.prev.pt is damaged too)" if previous.exists() else ""
        raise CheckpointError(f"{latest_error.message}{also}. The run's other files (config.yaml, metrics.jsonl, "
                              f"status.json) are intact: delete {path.name} to restart the run from step 0, or put "
                              f"back a copy of it", file=str(path)) from None
    aside = _set_aside(path)
    log.warning("%s: %s; resuming from %s (step %d) instead; the damaged file is kept as %s", path,
                latest_error.message, previous.name, state["step"], aside.name)
    return state


def _set_aside(path: Path) -> Path:
    """Move a damaged checkpoint out of the way (kept, never deleted); the previous one takes its place."""
    n = 1
    while (aside := path.with_name(f"checkpoint.corrupt-{n}.pt")).exists():
        n += 1
    os.replace(path, aside)
    _rotate(path.with_name(PREVIOUS), path)  # checkpoint.pt <- checkpoint.prev.pt (both kept)
    return aside
