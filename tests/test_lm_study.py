"""experiments/lm_study/probe.py: the loss-by-position bins are the positions' losses and average to the
task's own validation loss, and a recall prompt's answer is the value its dict literal binds to the
repeated key (the probe's accuracy on a 3-step model is only checked to be a fraction of its prompts)."""
from __future__ import annotations

import ast
import importlib.util
import random
from pathlib import Path

import pytest
import torch

pytest.importorskip("omegaconf", reason="configs are read with omegaconf")

from hybrid.config import load_config  # noqa: E402
from hybrid.model import HybridLM  # noqa: E402
from hybrid.training.build import build_task_of  # noqa: E402
from hybrid.training.evaluation import run_evaluation  # noqa: E402
from hybrid.training.trainer import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "experiments" / "lm_study"


def _probe_module():
    spec = importlib.util.spec_from_file_location("lm_probe", STUDY / "probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recall_prompt_answers_the_repeated_key():
    probe, rng = _probe_module(), random.Random(3)
    for pairs in (1, 4, 64):
        prompt, answer = probe.recall_prompt(pairs, rng)
        literal, query = prompt.split("\n")
        binding = ast.literal_eval(literal.removeprefix("d = "))
        key = query.removeprefix("d = {'").removesuffix("': '")
        assert len(binding) == pairs and binding[key] == answer and len(answer) == 2


def test_loss_by_position_averages_to_the_validation_loss(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(40):  # enough documents that the validation split holds some of length >= 128
        (docs / f"doc{i}.txt").write_text(f"document {i}: " + "the quick brown fox jumps over the lazy dog. " * 8)
    run = tmp_path / "run"
    overrides = ["model.d_model=32", "model.layout=M F A F", "model.layers.A.n_heads=2", f"task.paths=[{docs}]",
                 "task.seq_len=32", "task.val_fraction=0.2", "task.eval_batches=1", "task.eval_batch_size=2",
                 "train.steps=3", "train.batch_size=2", "train.eval_every=0", "train.checkpoint_every=3",
                 "train.device=cpu", "train.dtype=float32", "train.progress=false", "train.tensorboard=false",
                 f"train.run_dir={run}"]
    train(load_config(str(STUDY / "config.yaml"), overrides))
    probe = _probe_module()
    root = load_config(str(run / "config.yaml"))
    model = HybridLM.from_config(root.model)
    probe.load_weights(model, str(run / "checkpoint.pt"), trust=True)
    model.eval()
    cpu = torch.device("cpu")
    rows = probe.loss_by_position(model, run, 128, 2, 4, cpu, None)
    assert [(r["from"], r["to"]) for r in rows] == [(0, 32), (32, 64), (64, 96), (96, 128)]
    task = build_task_of(load_config(str(run / "config.yaml"), ["task.seq_len=128", "task.eval_batch_size=2"]))
    whole = run_evaluation(model, task, cpu, None, max_batches=1)
    assert sum(r["loss"] for r in rows) / 4 == pytest.approx(whole["eval/val/loss"], rel=1e-5)
    assert all("bpb" in r for r in rows)
    batch = task.eval_sets(cpu)["val"][0]  # the bins are positions: the last one is positions 96..127
    with torch.no_grad():
        nll = torch.nn.functional.cross_entropy(model(batch.inputs).transpose(1, 2), batch.targets, reduction="none")
    assert rows[3]["loss"] == pytest.approx(nll[:, 96:].double().mean().item(), rel=1e-5)
    hits = probe.recall(model, task.tokenizer, 4, 5, cpu, None)
    assert 0.0 <= hits <= 1.0 and hits * 5 == int(hits * 5)


def test_summarize_tables_and_plots_the_best_lr_probes(tmp_path, monkeypatch):
    import yaml  # noqa: PLC0415

    from hybrid.sweep.runner import run_sweep  # noqa: PLC0415
    from hybrid.sweep.spec import load_sweep  # noqa: PLC0415

    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(30):
        (docs / f"doc{i}.txt").write_text(f"doc {i} " + "pack my box with five dozen liquor jugs. " * 6)
    sweep = {"name": "lm_tiny", "config": str(STUDY / "config.yaml"),
             "overrides": {"model.d_model": 32, "model.layers.A.n_heads": 2, "task.paths": [str(docs)],
                           "task.seq_len": 32, "task.val_fraction": 0.2, "task.eval_batches": 1,
                           "task.eval_batch_size": 2, "train.steps": 2, "train.batch_size": 2, "train.eval_every": 0,
                           "train.checkpoint_every": 2, "train.device": "cpu", "train.dtype": "float32",
                           "train.progress": False, "train.tensorboard": False},
             "grid": {"arch": {"transformer": {"model.layout": "A F"}, "mamba": {"model.layout": "M"}},
                      "train.lr": [1.0e-3, 3.0e-3]},
             "select": {"over": ["train.lr"], "metric": "eval/val/loss", "mode": "min"}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    states = run_sweep(load_sweep(path), jobs=1, progress=False)
    assert set(states.values()) == {"completed"}
    probe = _probe_module()
    for run in (tmp_path / "runs").iterdir():  # probe.py's main on each run, small settings
        monkeypatch.setattr("sys.argv", ["probe.py", str(run), "--lengths", "32,64", "--windows", "2", "--bins", "2",
                                         "--pairs", "2,4", "--examples", "3"])
        probe.main()
    spec = importlib.util.spec_from_file_location("lm_summarize", STUDY / "summarize.py")
    summarize = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summarize)
    monkeypatch.setattr("sys.argv", ["summarize.py", str(tmp_path)])
    summarize.main()
    md = (tmp_path / "report" / "probe.md").read_text()
    assert "| arch=transformer | 1 |" in md and "| arch=mamba | 1 |" in md and "recall @ 4 pairs" in md
    for png in ("loss_by_position.png", "recall.png"):
        assert (tmp_path / "report" / png).stat().st_size > 1000
