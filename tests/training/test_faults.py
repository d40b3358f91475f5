"""Faults at run time: out of memory in a step (injected on the CPU) and SIGINT/SIGTERM during training."""
from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from hybrid.cli import main
from hybrid.config import load_config
from hybrid.training.interrupt import Interrupted
from hybrid.training.logging import read_metrics
from hybrid.training.step import EagerStep
from hybrid.training.trainer import OutOfMemory, resume_run, train


def _losses(run_dir):
    return [(m["step"], m["train/loss"]) for m in read_metrics(run_dir / "metrics.jsonl") if "train/loss" in m]


@pytest.fixture
def oom_at_step_3(monkeypatch):
    real = EagerStep.__call__

    def step(self, s, *args):
        if s == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)")
        return real(self, s, *args)

    monkeypatch.setattr(EagerStep, "__call__", step)


def test_out_of_memory_fails_the_run_with_the_sizes_and_keeps_the_checkpoint(tiny, tmp_path, oom_at_step_3):
    with pytest.raises(OutOfMemory, match=r"train.batch_size 8 in 1 micro-batch\(es\) of sequences of 16 tokens.*"
                                          r"Tried to allocate 2.00 GiB.*train.accumulation.*--resume"):
        train(load_config(tiny(checkpoint_every=2), ["name=oom"]))
    run = tmp_path / "runs" / "oom"
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and "out of memory" in status["error"]
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 2


def test_out_of_memory_exits_1_from_the_command_line(tiny, oom_at_step_3, capsys):
    assert main(["train", str(tiny()), "name=oomcli"]) == 1
    assert "error: out of memory" in capsys.readouterr().err


def test_out_of_memory_in_a_sweep_fails_that_run_only(tiny, tmp_path, oom_at_step_3, monkeypatch):
    import yaml

    from hybrid.sweep.runner import run_sweep
    from hybrid.sweep.spec import load_sweep

    tiny()
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"name": "s", "config": "tiny.yaml",
                                                         "grid": {"train.steps": [2, 4]}}))
    states = run_sweep(load_sweep(tmp_path / "sweep.yaml"), jobs=1, progress=False)
    assert states == {"steps=2": "completed", "steps=4": "failed"}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_checkpoints_and_resume_continues_bitwise(tiny, tmp_path, sig):
    config = tiny(checkpoint_every=100)
    train(load_config(config, ["name=whole"]))
    before = signal.getsignal(sig)  # SIG_IGN for SIGINT when the suite runs in the background

    def send(step):
        if step == 5:
            os.kill(os.getpid(), sig)

    with pytest.raises(Interrupted, match=r"at step 5: checkpoint written.*--resume"):
        train(load_config(config, ["name=cut"]), on_step=send)
    cut = tmp_path / "runs" / "cut"
    assert json.loads((cut / "status.json").read_text())["state"] == "interrupted"
    assert torch.load(cut / "checkpoint.pt", weights_only=False)["step"] == 5
    assert signal.getsignal(sig) == before  # the handler restored
    resume_run(cut)
    assert _losses(cut) == _losses(tmp_path / "runs" / "whole")
