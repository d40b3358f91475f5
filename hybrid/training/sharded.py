"""Sharded checkpoints of FSDP runs through torch.distributed.checkpoint (DCP).

Under `train.parallel: fsdp` every rank writes its own shards of the model and the optimiser state:
nothing is gathered to one rank. The run directory then holds

    checkpoint.dcp.<step>/     the shards (DCP's files: one per rank, plus .metadata)
    checkpoint.pt              everything else (step, scheduler, RNG, data position), written by rank 0
                               with {"sharded": "checkpoint.dcp.<step>"} in place of the model and optimiser

The shards are written to `checkpoint.dcp.<step>.tmp` and renamed once every rank is done; only then is
checkpoint.pt written (atomically, as always), so it never names an unfinished directory. The shard
directories of checkpoint.pt and checkpoint.prev.pt are kept, older ones removed. DCP reshards on load,
so a sharded checkpoint resumes on any number of ranks, and in one process (no process group) as well.
"""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)

from hybrid.errors import CheckpointError
from hybrid.training.checkpoint import CHECKPOINT, PREVIOUS, read_checkpoint

PREFIX = "checkpoint.dcp."
MARK = "sharded"


def is_sharded(state: dict[str, Any]) -> bool:
    return isinstance(state.get("model"), dict) and MARK in state["model"]


def save_shards(run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, main: bool,
                barrier) -> dict[str, str]:
    """Write this rank's shards of step `step` (a collective); returns the marker checkpoint.pt holds. The
    caller writes checkpoint.pt on rank 0 and then waits at a barrier (trainer._checkpoint)."""
    name = f"{PREFIX}{step}"
    tmp = Path(run_dir) / f"{name}.tmp"
    if main and tmp.exists():
        shutil.rmtree(tmp)  # the remains of a save that was killed
    barrier()
    dcp.save({"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)},
             checkpoint_id=str(tmp))
    barrier()
    if main:  # the caller's barrier after checkpoint.pt holds the other ranks until this is done
        final = Path(run_dir) / name
        if final.exists():  # the same step again (after a final evaluation)
            shutil.rmtree(final)
        tmp.rename(final)
    return {MARK: name}


def load_shards(run_dir: Path, marker: dict[str, str], model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load the shards `marker` names into `model` and `optimizer`, resharded to this job's ranks."""
    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    with warnings.catch_warnings():  # in one process DCP warns that it loads without a process group: intended
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(Path(run_dir) / marker[MARK]))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optimizer"])


def shard_names(run_dir: Path, marker: dict[str, str]) -> dict[str, tuple[int, ...]]:
    """The model's parameter names and shapes in a sharded checkpoint (from DCP's metadata)."""
    meta = dcp.FileSystemReader(str(Path(run_dir) / marker[MARK])).read_metadata().state_dict_metadata
    return {k[len("model."):]: tuple(getattr(v, "size", ())) for k, v in meta.items() if k.startswith("model.")}


def remove_stale(run_dir: Path, keep: set[str]) -> None:
    """Shard directories that neither checkpoint.pt nor checkpoint.prev.pt names (rank 0 calls it)."""
    for path in Path(run_dir).glob(f"{PREFIX}*"):
        if path.is_dir() and path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)


def full_model_weights(run_dir: Path, marker: dict[str, str]) -> dict[str, torch.Tensor]:
    """The whole model state dict of a sharded checkpoint, in this one process (hybrid generate, export)."""
    import tempfile  # noqa: PLC0415

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(str(Path(run_dir) / marker[MARK]), str(Path(tmp) / "full.pt"))
        return torch.load(Path(tmp) / "full.pt", map_location="cpu", weights_only=True)["model"]


def referenced_shards(run_dir: Path) -> set[str]:
    """The shard directories that checkpoint.pt and checkpoint.prev.pt name."""
    names = set()
    for file in (CHECKPOINT, PREVIOUS):
        path = Path(run_dir) / file
        try:
            state = read_checkpoint(path, weights_only=True) if path.is_file() else None
        except CheckpointError:  # a damaged file names nothing
            state = None
        if state is not None and is_sharded(state):
            names.add(state["model"][MARK])
    return names
