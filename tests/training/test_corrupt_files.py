"""Damaged run files: a bad latest checkpoint falls back to the previous one; anything else is an
`error:` naming the file and saying what to do, and no file of the run is lost or rewritten."""
from __future__ import annotations

import hashlib
import json
import logging

import pytest
import torch

from hybrid.cli import main
from hybrid.config import load_config
from hybrid.errors import CheckpointError, RunFileError
from hybrid.training.checkpoint import PREVIOUS, load_checkpoint, read_checkpoint
from hybrid.training.logging import read_metrics
from hybrid.training.run_dir import RunDir
from hybrid.training.trainer import train


class Killed(Exception):
    pass


def _kill_at(step_to_die):
    def on_step(step):
        if step == step_to_die:
            raise Killed()
    return on_step


def _digests(folder):
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def _losses(run_dir):
    return [(m["step"], m["train/loss"]) for m in read_metrics(run_dir / "metrics.jsonl") if "train/loss" in m]


@pytest.fixture
def cut(tiny, tmp_path):
    """A run killed at step 10 of 12: checkpoint.pt at step 8, checkpoint.prev.pt at step 4."""
    config = tiny()
    with pytest.raises(Killed):
        train(load_config(config, ["name=cut"]), on_step=_kill_at(10))
    return config, tmp_path / "runs" / "cut"


def test_checkpoints_rotate(cut):
    _, run = cut
    assert read_checkpoint(run / "checkpoint.pt")["step"] == 8
    assert read_checkpoint(run / PREVIOUS)["step"] == 4


def test_damaged_latest_checkpoint_falls_back_to_the_previous(cut, tmp_path, caplog):
    config, run = cut
    whole = train(load_config(config, ["name=whole"]))
    damaged = (run / "checkpoint.pt").read_bytes()[:5000]
    (run / "checkpoint.pt").write_bytes(damaged)
    with caplog.at_level(logging.WARNING):
        assert main(["train", "--resume", str(run)]) == 0
    assert "checkpoint.pt: is truncated or corrupt" in caplog.text and "resuming from checkpoint.prev.pt (step 4)" \
        in caplog.text
    assert (run / "checkpoint.corrupt-1.pt").read_bytes() == damaged  # kept, never deleted
    assert _losses(run) == _losses(tmp_path / "runs" / "whole")  # steps 5..12 again, the same losses
    assert json.loads((run / "results.json").read_text())["final"] == whole["final"]


def test_both_checkpoints_damaged_is_an_error_that_touches_nothing(cut, capsys):
    _, run = cut
    for name in ("checkpoint.pt", PREVIOUS):
        (run / name).write_bytes((run / name).read_bytes()[:300])
    before = _digests(run)
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run / 'checkpoint.pt'}: is truncated or corrupt (")
    assert "checkpoint.prev.pt is damaged too" in err and "delete checkpoint.pt to restart the run from step 0" in err
    after = _digests(run)
    assert {k: v for k, v in after.items() if k != "status.json"} == {k: v for k, v in before.items()
                                                                      if k != "status.json"}


@pytest.mark.parametrize("content", [b"", b"\0" * 64, b"not a checkpoint at all"])
def test_generate_with_a_damaged_checkpoint(cut, capsys, content):
    _, run = cut
    (run / "checkpoint.pt").write_bytes(content)
    assert main(["generate", str(run / "config.yaml"), "--checkpoint", str(run / "checkpoint.pt"),
                 "--prompt-ids", "1,2", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run / 'checkpoint.pt'}: --checkpoint: is truncated or corrupt")


def test_a_checkpoint_of_something_else_is_named(tmp_path):
    torch.save({"weights": 1}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="is not a checkpoint of `hybrid train` .missing step"):
        load_checkpoint(tmp_path)


def test_stale_previous_checkpoint_of_an_overwritten_run_is_dropped(cut, tiny):
    config, run = cut
    (run / "checkpoint.pt").unlink()  # as --overwrite does; checkpoint.prev.pt is the old run's
    train(load_config(config, ["name=cut", "train.steps=2", "train.checkpoint_every=1"]), overwrite=True)
    assert read_checkpoint(run / PREVIOUS)["step"] == 1 and read_checkpoint(run / "checkpoint.pt")["step"] == 2


@pytest.fixture
def done(tiny, tmp_path):
    """A completed 3-step run."""
    train(load_config(tiny(steps=3), ["name=done"]))
    return tmp_path / "runs" / "done"


@pytest.mark.parametrize("name,content,fragment", [
    pytest.param("status.json", '{"state": "runn', "cannot be read as JSON", id="status-torn"),
    pytest.param("status.json", "[]", "holds list where a JSON object belongs", id="status-list"),
    pytest.param("status.json", '{"state": 3}', "a state is a string", id="status-state"),
    pytest.param("results.json", '{"final": 5}', "lacks name, state, step, final, wall_time_s", id="results-final"),
    pytest.param("results.json", '{"name": "done", "sta', "cannot be read as JSON", id="results-torn"),
])
def test_damaged_run_files_are_errors_naming_the_file(done, capsys, name, content, fragment):
    (done / name).write_text(content)
    before = _digests(done)
    assert main(["train", "--resume", str(done)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {done / name}: ") and fragment in err and "intact" in err
    assert _digests(done) == before  # nothing rewritten, nothing lost


def test_a_damaged_metrics_line_stops_the_resume_before_the_log_is_rewritten(cut, capsys):
    _, run = cut
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(lines[:3] + ['{"step": 4, "tra\n'] + lines[3:]))
    before = _digests(run)
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run / 'metrics.jsonl'}: line 4 is not a metrics record")
    after = _digests(run)
    assert all(after[f] == before[f] for f in ("metrics.jsonl", "checkpoint.pt", PREVIOUS))


def test_torn_last_metrics_line_is_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "train/loss": 2.0}\n{"step": 2, "tr')
    assert read_metrics(path) == [{"step": 1, "train/loss": 2.0}]
    path.write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(RunFileError, match="line 2 is not a metrics record"):
        read_metrics(path)


@pytest.mark.parametrize("plan", ["{", "[]", '{"runs": 5}', '{"runs": [{"name": 3}]}', '{"select": {"mode": "up"}}'])
def test_report_of_a_damaged_sweep_plan(cut, capsys, plan):
    _, run = cut
    root = run.parent.parent
    (root / "sweep.json").write_text(plan)
    assert main(["report", str(root), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {root / 'sweep.json'}: ") and "delete it" in err


def test_run_directory_that_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFileError, match="train.run_dir: cannot create the run directory"):
        RunDir(tmp_path / "file" / "run").create()
