"""`hybrid slim`: finished runs' checkpoints without the optimiser state, still evaluable and still done."""
from __future__ import annotations

import json

import pytest
import torch

from hybrid.cli import main
from hybrid.config import load_config
from hybrid.errors import CheckpointError
from hybrid.training.checkpoint import PREVIOUS
from hybrid.training.slim import run_folders, slim_run
from hybrid.training.trainer import resume_run, train


def _checkpoint(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)


def test_a_slimmed_run_keeps_its_weights_and_results_and_stays_done(tiny, tmp_path):
    first = train(load_config(tiny(steps=6), ["name=done"]))
    run_dir = tmp_path / "runs" / "done"
    before = _checkpoint(run_dir)
    assert (run_dir / PREVIOUS).exists() and before["optimizer"] is not None
    result = slim_run(run_dir)
    after = _checkpoint(run_dir)
    assert not result.skipped and result.after < result.before
    assert after["optimizer"] is None and after["extra"]["slimmed"] and not (run_dir / PREVIOUS).exists()
    assert after["step"] == before["step"] and all(torch.equal(after["model"][k], v) for k, v in before["model"].items())
    from hybrid.cli.generate import load_weights
    from hybrid.model import HybridLM
    load_weights(HybridLM.from_config(load_config(tiny(steps=6)).model), str(run_dir / "checkpoint.pt"))
    assert resume_run(run_dir) == first  # still finished: its results, no training
    assert slim_run(run_dir).skipped == "already slimmed"


def test_an_unfinished_run_is_kept_and_a_slimmed_checkpoint_cannot_resume_it(tiny, tmp_path):
    train(load_config(tiny(steps=6), ["name=cut"]))
    run_dir = tmp_path / "runs" / "cut"
    status = json.loads((run_dir / "status.json").read_text())
    (run_dir / "status.json").write_text(json.dumps({**status, "state": "interrupted", "step": 4}))
    size = (run_dir / "checkpoint.pt").stat().st_size
    result = slim_run(run_dir)
    assert "interrupted" in result.skipped and (run_dir / "checkpoint.pt").stat().st_size == size
    blob = _checkpoint(run_dir)  # slimmed by hand (or copied from a finished run): a resume refuses it
    torch.save({**blob, "optimizer": None}, run_dir / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="no optimiser state.*cannot resume"):
        resume_run(run_dir)


def test_the_command_finds_runs_below_a_folder_and_a_dry_run_changes_nothing(tiny, tmp_path, capsys):
    for name in ("a", "b"):
        train(load_config(tiny(steps=3), [f"name={name}"]))
    runs = tmp_path / "runs"
    assert run_folders(runs) == [runs / "a", runs / "b"] and run_folders(runs / "a") == [runs / "a"]
    sizes = {p: p.stat().st_size for p in runs.rglob("*.pt")}
    assert main(["slim", str(runs), "--dry-run"]) == 0
    assert {p: p.stat().st_size for p in runs.rglob("*.pt")} == sizes
    assert "2 of 2 runs; would save" in capsys.readouterr().out
    assert main(["slim", str(runs)]) == 0
    assert "2 of 2 runs; saved" in capsys.readouterr().out
    assert all(_checkpoint(runs / n)["optimizer"] is None for n in ("a", "b"))
    assert main(["slim", str(tmp_path / "nothing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
