"""Data parallelism on the CPU: two gloo ranks (DDP, FSDP2) log the losses of one process with the same
global batch, and a checkpoint written on two ranks resumes on one and on two with an uninterrupted run's
losses. Each job is two spawned processes joined as torchrun would (RANK, WORLD_SIZE, MASTER_ADDR...)."""
from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from hybrid.config import load_config
from hybrid.errors import ConfigError
from hybrid.training.logging import read_metrics
from hybrid.training.trainer import resume_run, train

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, config: str, overrides: list[str], resume_dir: str | None, kill_at: int | None):
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)

    def die(step):
        if step == kill_at:
            # every rank stops after this step with no clean-up at all, as a killed job does (with a
            # SystemExit, Python's exit ran, and in one CI run a rank never finished it)
            os._exit(17)

    if resume_dir:
        resume_run(resume_dir)
    else:
        train(load_config(config, overrides), on_step=die if kill_at else None)


def _job(config, overrides=(), resume_dir=None, kill_at=None) -> list[int]:
    """Run one two-rank job; the ranks' exit codes."""
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, str(config), list(overrides), resume_dir and str(resume_dir),
                                               kill_at)) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    return [p.exitcode for p in procs]


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux: from /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        except OSError:  # ended meanwhile
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def _losses(run_dir):
    return [(m["step"], m["train/loss"]) for m in read_metrics(run_dir / "metrics.jsonl") if "train/loss" in m]


def _assert_close_losses(a, b):
    assert [s for s, _ in a] == [s for s, _ in b]
    torch.testing.assert_close(torch.tensor([v for _, v in a]), torch.tensor([v for _, v in b]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_log_the_losses_of_one_process(tiny, tmp_path, mode):
    config = tiny(steps=6, checkpoint_every=3, eval_every=3)
    train(load_config(config, ["name=one"]))
    assert _job(config, ["name=two", f"train.parallel={mode}"]) == [0, 0]
    _assert_close_losses(_losses(tmp_path / "runs" / "two"), _losses(tmp_path / "runs" / "one"))
    one = json.loads((tmp_path / "runs" / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "runs" / "two" / "results.json").read_text())
    assert two["state"] == "completed" and two["final"]["eval/all/accuracy"] == pytest.approx(
        one["final"]["eval/all/accuracy"], abs=1e-6)
    # the ranks share the held-out batches (one batch of a set each at eval_batches 1: under fsdp one
    # rank runs a discarded forward) and add up: every evaluation equals one process's
    evals = [[(m["step"], k, v) for m in read_metrics(tmp_path / "runs" / name / "metrics.jsonl")
              for k, v in m.items() if k.startswith("eval/") and not k.endswith("/examples")] for name in ("one", "two")]
    assert [e[:2] for e in evals[1]] == [e[:2] for e in evals[0]] and evals[0]
    torch.testing.assert_close(torch.tensor([e[2] for e in evals[1]]), torch.tensor([e[2] for e in evals[0]]),
                               rtol=1e-5, atol=1e-6)


def test_fsdp_shards_a_shared_block_once_and_logs_one_process_losses(tiny, tmp_path):
    """A block used at several places (model.shared) is one module: sharded once (a second fully_shard
    of it raised), its weights gathered at each use."""
    config = tiny(steps=4, checkpoint_every=0, eval_every=0)
    shared = ["model.shared={Z: [A, F]}", "model.layout=Z A Z"]
    train(load_config(config, ["name=one", *shared]))
    assert _job(config, ["name=two", "train.parallel=fsdp", *shared]) == [0, 0]
    _assert_close_losses(_losses(tmp_path / "runs" / "two"), _losses(tmp_path / "runs" / "one"))


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_a_two_rank_checkpoint_resumes_on_one_and_on_two(tiny, tmp_path, mode):
    config = tiny(steps=8, checkpoint_every=4, eval_every=0)
    train(load_config(config, ["name=whole"]))
    codes = _job(config, ["name=cut", f"train.parallel={mode}"], kill_at=6)
    assert codes == [17, 17]
    cut = tmp_path / "runs" / "cut"
    assert json.loads((cut / "status.json").read_text())["step"] == 4  # the last checkpoint
    sharded = torch.load(cut / "checkpoint.pt", weights_only=True)["model"]
    assert (sharded == {"sharded": "checkpoint.dcp.4"}) == (mode == "fsdp")  # FSDP: each rank's shards
    assert (cut / "checkpoint.dcp.4").is_dir() == (mode == "fsdp")
    again = tmp_path / "runs" / "again"
    shutil.copytree(cut, again)
    resume_run(cut)  # one process
    assert _job(config, resume_dir=again) == [0, 0]  # two ranks
    whole = _losses(tmp_path / "runs" / "whole")
    _assert_close_losses(_losses(cut), whole)
    _assert_close_losses(_losses(again), whole)
    if mode == "fsdp":  # only the shards that checkpoint.pt and checkpoint.prev.pt name are kept
        assert sorted(p.name for p in again.glob("checkpoint.dcp.*")) == ["checkpoint.dcp.4", "checkpoint.dcp.8"]
        from hybrid.cli.generate import load_weights  # a sharded checkpoint loads whole in one process
        from hybrid.model import HybridLM

        root = load_config(config)
        load_weights(HybridLM(root.model, root.layout), str(again / "checkpoint.pt"))


def test_a_world_size_that_does_not_divide_the_batch_is_a_config_error(tiny, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="divisible by the world size 3"):
        train(load_config(tiny(), ["name=odd", "train.parallel=ddp"]))


def test_ddp_in_one_process_trains_alone_and_says_so(tiny, tmp_path, caplog):
    config = tiny(steps=3)
    alone = train(load_config(config, ["name=alone", "train.parallel=ddp"]))
    plain = train(load_config(config, ["name=plain"]))
    assert "without data parallelism" in caplog.text
    assert _losses(tmp_path / "runs" / "alone") == _losses(tmp_path / "runs" / "plain")
    assert alone["final"] == plain["final"]


def test_kill_9_of_one_rank_ends_the_job_with_the_last_checkpoint_intact(tiny, tmp_path):
    """torchrun, two gloo ranks: SIGKILL rank 1 mid-run; the job ends, checkpoint.pt is whole, --resume finishes."""
    import signal
    import subprocess
    import sys
    import time

    config = tiny(steps=400, checkpoint_every=20, eval_every=0, log_every=20)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "hybrid",
           "train", str(config), "name=killed", "train.parallel=ddp"]
    job = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    run = tmp_path / "runs" / "killed"
    try:
        deadline = time.time() + 120
        while not (run / "checkpoint.pt").exists() and time.time() < deadline and job.poll() is None:
            time.sleep(0.2)
        pids = _children(job.pid)  # torchrun's workers
        assert len(pids) == 2, pids
        os.kill(max(pids), signal.SIGKILL)  # the one started last: rank 1
        assert job.wait(timeout=120) != 0  # torchrun ends the job
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    step = torch.load(run / "checkpoint.pt", weights_only=False)["step"]
    assert step > 0 and step % 20 == 0
    resumed = resume_run(run)
    assert resumed["state"] == "completed" and resumed["step"] == 400


def test_the_fused_lm_loss_under_fsdp_is_refused(tiny, tmp_path):
    config = tiny(steps=2)
    # both ranks stop with the ConfigError before any step (the CLI prints it with its key)
    assert _job(config, ["name=fused", "train.parallel=fsdp", "train.lm_loss=fused"]) == [1, 1]
    assert not (tmp_path / "runs" / "fused" / "checkpoint.pt").exists()


@pytest.mark.parametrize("local_world, gpus, expected", [(2, 2, "nccl"), (2, 4, "nccl"), (2, 1, "gloo"), (8, 4, "gloo")])
def test_ranks_sharing_a_gpu_communicate_through_gloo(monkeypatch, local_world, gpus, expected):
    """NCCL refuses two ranks on one GPU; past the GPU count the ranks share them through gloo."""
    from hybrid.training import distributed  # noqa: PLC0415

    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert distributed.backend(torch.device("cuda"), rank=0) == expected
    assert distributed.backend(torch.device("cpu"), rank=0) == "gloo"
    parallel = distributed.Parallel(rank=local_world - 1, world=local_world, local_rank=local_world - 1, mode="ddp")
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    assert distributed.rank_device(torch.device("cuda"), parallel) == torch.device("cuda", (local_world - 1) % gpus)


@pytest.mark.parametrize("count, world, lockstep, expected", [
    (5, 2, False, [[0, 2, 4], [1, 3]]),
    (5, 2, True, [[0, 2, 4], [1, 3, "0*"]]),   # rank 1 repeats batch 0, unscored, to keep in step
    (1, 3, True, [[0], ["0*"], ["0*"]]),
    (0, 2, True, [[], []]),
])
def test_ranks_share_the_held_out_batches(count, world, lockstep, expected):
    from hybrid.tasks.evaluate import Split, _batches_of  # noqa: PLC0415

    got = [[b if scored else f"{b}*" for b, scored in _batches_of(list(range(count)), count,
                                                                    Split(rank, world, merge=dict, lockstep=lockstep))]
           for rank in range(world)]
    assert got == expected
