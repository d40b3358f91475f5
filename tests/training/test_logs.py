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
