"""What a run writes to its log when no terminal shows a progress bar (a sweep worker's train.log, a
`hybrid train ... > file` redirect): plain lines, no bar frames."""
from __future__ import annotations

from hybrid.config import load_config
from hybrid.training.trainer import train


def test_without_a_terminal_a_run_logs_plain_lines_and_no_bar(tiny, caplog, capsys):
    """train.progress on, stderr captured (not a terminal): no tqdm frame reaches stderr; the log has a
    line per evaluation with its accuracy and loss, and training lines (the first and the last step's)."""
    with caplog.at_level("INFO", logger="hybrid.training.trainer"):
        result = train(load_config(tiny(progress=True), ["name=plain", "train.steps=10", "train.eval_every=4"]))
    assert result["state"] == "completed"
    assert "\r" not in capsys.readouterr().err
    lines = [r.getMessage() for r in caplog.records]
    evaluations = [m for m in lines if ", evaluation: " in m]
    assert [m.split(", evaluation")[0] for m in evaluations] == ["plain: step 4/10", "plain: step 8/10"]
    assert all("eval/all/accuracy" in m and "eval/all/loss" in m for m in evaluations)
    training = [m for m in lines if "tokens/s" in m]
    assert training[0].startswith("plain: step 1/10, loss ") and training[-1].startswith("plain: step 10/10, loss ")


def test_resuming_cuts_the_metrics_past_the_checkpoint_atomically(tmp_path, monkeypatch):
    """MetricsLogger.truncate_after (a resume from a checkpoint at `step`): the records past it go; a write that
    fails midway leaves the file as it was, never half of it; with nothing past the step the file is not
    rewritten at all."""
    import json  # noqa: PLC0415
    import os  # noqa: PLC0415

    import pytest  # noqa: PLC0415

    from hybrid.training.logging import MetricsLogger, read_metrics  # noqa: PLC0415

    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.path.write_text("".join(json.dumps({"step": s, "train/loss": 1.0 / s}) + "\n" for s in range(1, 11)))
    before = logger.path.read_bytes()
    real_replace = os.replace

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        logger.truncate_after(6)
    assert logger.path.read_bytes() == before and not list(tmp_path.glob(".metrics*.tmp"))
    monkeypatch.setattr(os, "replace", real_replace)
    logger.truncate_after(6)
    assert [r["step"] for r in read_metrics(logger.path)] == [1, 2, 3, 4, 5, 6]
    mtime = logger.path.stat().st_mtime_ns
    logger.truncate_after(8)  # nothing past step 8: untouched
    assert logger.path.stat().st_mtime_ns == mtime
