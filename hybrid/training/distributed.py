"""Data-parallel training on PyTorch's own engine: torchrun, DDP and FSDP2 around a single-device model.

    torchrun --nproc-per-node 2 -m hybrid train CONFIG train.parallel=ddp

`train.parallel`: none | ddp | fsdp | auto (none in one process; ddp under torchrun; fsdp when the
weights, gradients and AdamW state would take over FSDP_SHARE of one device's memory). The model code
stays single-device; this module wraps it (STYLE 10):

    ddp    the step calls `DistributedDataParallel(model)`; evaluation and checkpoints use the model itself
    fsdp   `fully_shard` on every block, then on the whole model (FSDP2: parameters become DTensors)

What keeps N ranks equal to one process with the same global batch (`train.batch_size`):
  * each rank draws the global batch of step s (a pure function of seed and s, as in one process)
    and takes its rows [rank * B / N, (rank + 1) * B / N);
  * the loss is normalised by the scored positions of the whole global batch (an all-reduce of the
    count), and multiplied by N before the backward, since DDP and FSDP average gradients over ranks;
  * the logged loss is the sum of the ranks' parts (an all-reduce), the global batch's mean.
Auxiliary losses (MoE load balancing) are each rank's own, averaged with the gradients: close to,
not equal to, the whole batch's.

Checkpoints: under ddp (and in one process) full state dicts written by rank 0 (the optimiser's
state by parameter name); under fsdp every rank writes its shards through torch.distributed.checkpoint
(`hybrid.training.sharded`). Either resumes on any number of ranks, 1 included. The ranks share the
held-out batches (batch i of a set on rank i mod N) and add up their sums, so evaluation takes 1/N of
the time; under fsdp a rank with fewer batches runs a discarded forward to keep in step (each forward
gathers the sharded weights). Rank 0 alone writes logs, metrics, status and results. CUDA graphs are not captured under ddp or fsdp (eager steps); `train.compile` wraps the model
under both, each Triton launch a graph break (benchmarks/bench_distributed.py measures the cases). More
ranks than GPUs on a node share them through gloo (NCCL allows one rank per GPU): slow, for tests and
measurements. A sweep runs each of its runs as such a job with `gpus_per_run: N` (`hybrid.sweep.runner`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from hybrid.errors import ConfigError

log = logging.getLogger(__name__)

FSDP_SHARE = 0.5  # auto picks fsdp when weights + gradients + AdamW state exceed this share of a device


@dataclass
class Parallel:
    """This process's place in the job: rank, world size, local rank and the wrapping mode."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    mode: str = "none"  # none | ddp | fsdp
    owns_group: bool = False  # this run started the process group (and ends it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def rows(self, t: Tensor) -> Tensor:
        """This rank's share of a global batch (rows along dim 0)."""
        if self.world == 1:
            return t
        n = t.shape[0] // self.world
        return t[self.rank * n:(self.rank + 1) * n]

    def total(self, t: Tensor) -> Tensor:
        """The sum of `t` over the ranks (a new tensor; `t` itself when alone)."""
        if self.world == 1:
            return t
        t = t.detach().clone()
        dist.all_reduce(t)
        return t

    def eval_split(self):
        """How the ranks share the held-out batches (`hybrid.tasks.evaluate.Split`), None alone. Under
        fsdp every rank runs as many forwards as the busiest (each forward gathers the sharded weights)."""
        if self.world == 1:
            return None
        from hybrid.tasks.evaluate import Split  # noqa: PLC0415

        return Split(self.rank, self.world, merge_totals, lockstep=self.mode == "fsdp")

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def end(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def merge_totals(totals: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Every rank's evaluation sums added up, {group: {statistic: sum}} (sums in float64 on the host:
    an all-gather of the small dicts, whose groups may differ from rank to rank)."""
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, totals)
    merged: dict[str, dict[str, float]] = {}
    for part in gathered:
        for group, sums in part.items():
            into = merged.setdefault(group, {})
            for key, value in sums.items():
                into[key] = into.get(key, 0.0) + value
    return merged


def world_from_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) outside torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def setup(parallel: str, batch_size: int, accumulation: int, device: torch.device) -> Parallel:
    """Join the torchrun job (initialising the process group if nobody has) and resolve the mode;
    ConfigErrors for a mode that needs ranks it does not have, or a batch the ranks cannot share."""
    rank, world, local = world_from_env()
    if world == 1:
        if parallel in ("ddp", "fsdp"):  # a data-parallel run resumed in one process, say
            log.warning("train.parallel %s in a single process: training without data parallelism (launch with "
                        "`torchrun --nproc-per-node N -m hybrid train ...` for %s)", parallel, parallel)
        return Parallel()
    if parallel == "none":
        raise ConfigError(f"train.parallel none, but this is rank {rank} of {world} processes: every rank would "
                          f"train its own copy; set train.parallel auto, ddp or fsdp", key="train.parallel")
    if batch_size % (world * accumulation):
        raise ConfigError(f"train.batch_size {batch_size} must be divisible by the world size {world} times "
                          f"train.accumulation {accumulation}, so that every rank gets the same number of rows per "
                          f"micro-batch", key="train.batch_size")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend(device, rank))
    return Parallel(rank, world, local, parallel, owns)


def backend(device: torch.device, rank: int) -> str:
    """nccl with a GPU per local rank; gloo on the CPU, and where ranks must share a GPU (NCCL refuses
    two ranks on one device), which is for testing and measuring only: it is slow."""
    if device.type != "cuda":
        return "gloo"
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))
    if local_world <= torch.cuda.device_count():
        return "nccl"
    if rank == 0:
        log.warning("%d ranks on this node but %d GPU(s): ranks share GPUs, communicating through gloo (NCCL "
                    "allows one rank per GPU); use this to test, not to train fast", local_world,
                    torch.cuda.device_count())
    return "gloo"


def rank_device(device: torch.device, p: Parallel) -> torch.device:
    """Each rank's own GPU (cuda:LOCAL_RANK); the CPU stays the CPU."""
    if device.type != "cuda" or p.world == 1:
        return device
    device = torch.device("cuda", p.local_rank % torch.cuda.device_count())  # shared past the count: `backend`
    torch.cuda.set_device(device)
    return device


def resolve_mode(p: Parallel, state_bytes: int, device: torch.device) -> Parallel:
    """auto -> ddp, or fsdp when `state_bytes` (weights + gradients + optimiser) would not fit FSDP_SHARE."""
    if p.mode != "auto":
        return p
    capacity = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    p.mode = "fsdp" if capacity is not None and state_bytes > FSDP_SHARE * capacity else "ddp"
    return p


def wrap(model: nn.Module, p: Parallel, device: torch.device) -> nn.Module:
    """The module the training step calls: DDP around `model`, or `model` itself sharded in place (FSDP2)."""
    if p.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel  # noqa: PLC0415

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if p.mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh  # noqa: PLC0415
        from torch.distributed.fsdp import fully_shard  # noqa: PLC0415

        mesh = init_device_mesh(device.type, (p.world,))
        for block in {id(b): b for b in model.blocks}.values():  # a shared block (model.shared) once
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
    return model


def load_model_state(model: nn.Module, state: dict[str, Tensor], p: Parallel) -> None:
    if p.mode != "fsdp":
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict  # noqa: PLC0415

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, plain: dict[str, Any]) -> dict[str, Any]:
    """The optimiser's state for a full checkpoint: `plain` (optimizer.state_dict(), as the training step
    made it) with the parameters named instead of numbered, so that any world size can read it back."""
    names = _names_in_order(model, optimizer)
    return {"state": {names[i]: v for i, v in plain["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in plain["param_groups"]]}


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                         p: Parallel) -> None:
    """Restore a checkpoint's optimiser state: parameters by name (any world size) or by number (older)."""
    by_name = any(isinstance(k, str) for k in state["state"]) or any(
        isinstance(i, str) for g in state["param_groups"] for i in g["params"])
    if p.mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,  # noqa: PLC0415
                                                             set_optimizer_state_dict)

        if not by_name:
            state = optimizer_state(model, optimizer, state)  # numbers -> names, the same order
        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
        return
    if by_name:
        index = {name: i for i, name in enumerate(_names_in_order(model, optimizer))}
        state = {"state": {index[k]: v for k, v in state["state"].items()},
                 "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]}
    optimizer.load_state_dict(state)


def _names_in_order(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the optimiser's numbering (its groups' order, as state_dict() numbers them)."""
    name_of = {id(t): n for n, t in model.named_parameters()}
    return [name_of[id(t)] for g in optimizer.param_groups for t in g["params"]]
