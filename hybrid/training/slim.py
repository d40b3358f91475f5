"""Finished runs' checkpoints without their optimiser state: for run folders that are checked in or
shipped, where a checkpoint is read for its weights (evaluation, probes, export) and never resumed.

AdamW keeps two moments per parameter, so the optimiser state is about two thirds of a checkpoint.
`slim_run` rewrites a finished (completed or early-stopped) run's checkpoint.pt with `optimizer: None`
(atomically, as every checkpoint is written), marks it `extra["slimmed"]` and deletes checkpoint.prev.pt.
The run stays finished: `hybrid train` and `hybrid sweep` return its results as before. Only a run that is not
finished needs the optimiser state to resume, and those are never slimmed; a slimmed checkpoint
that a resume meets anyway gets a CheckpointError that says so (trainer._restore).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch

from hybrid.training.checkpoint import CHECKPOINT, PREVIOUS, atomic_write, read_checkpoint
from hybrid.training.run_dir import DONE, STATUS, RunDir
from hybrid.training.sharded import is_sharded



@dataclass
class Slimmed:
    run: Path
    before: int  # bytes of checkpoint.pt and checkpoint.prev.pt before
    after: int  # bytes of checkpoint.pt after (the same as before on a dry run or a skip)
    skipped: str = ""  # why the run was left as it is ("" when slimmed)


def run_folders(root: Path) -> list[Path]:
    """`root` itself when it is a run directory (a status.json beside a checkpoint.pt), else every such
    directory below it, sorted."""
    root = Path(root)
    if (root / STATUS).is_file() and (root / CHECKPOINT).is_file():
        return [root]
    return sorted(p.parent for p in root.rglob(CHECKPOINT) if (p.parent / STATUS).is_file())


def _size(*paths: Path) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


def slim_run(run_dir: Path, dry_run: bool = False) -> Slimmed:
    """Drop the optimiser state of a finished run's checkpoint (see the module header)."""
    run_dir = Path(run_dir)
    path, previous = run_dir / CHECKPOINT, run_dir / PREVIOUS
    before = _size(path, previous)
    state = RunDir(run_dir).status().get("state")
    if state not in DONE:
        return Slimmed(run_dir, before, before, f"{state or 'no state'}, not {' or '.join(DONE)}: resuming needs "
                                                "its optimiser state")
    blob = read_checkpoint(path)
    if is_sharded(blob):
        return Slimmed(run_dir, before, before, "a sharded (FSDP) checkpoint: its optimiser state is in the shards")
    if blob["optimizer"] is None and not previous.exists():
        return Slimmed(run_dir, before, before, "already slimmed")
    blob["optimizer"] = None
    if dry_run:
        return Slimmed(run_dir, before, len(_serialised(blob)))
    blob["extra"] = {**blob.get("extra", {}), "slimmed": True}
    atomic_write(path, lambda f: torch.save(blob, f))
    previous.unlink(missing_ok=True)
    return Slimmed(run_dir, before, _size(path))


def _serialised(blob: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    return buffer.getvalue()
