"""The training step's modes: which one a run gets and why (CPU), and the CUDA-graphed step against
the eager one (cuda): the same losses to fp32 tolerance, padding, resume, a non-finite step,
graphed evaluation, and the refusals of layers that cannot be captured."""
from __future__ import annotations

import json
import math

import pytest
import torch

from hybrid.config import load_config
from hybrid.errors import ConfigError
from hybrid.model import HybridLM
from hybrid.tasks.metrics import _dense_example_stats, example_stats
from hybrid.training.logging import read_metrics
from hybrid.training.modes import graph_refusal, pad_shape, use_graphs
from hybrid.training.trainer import TrainingDiverged, resume_run, train


def _losses(run_dir):
    return [(m["step"], m["train/loss"]) for m in read_metrics(run_dir / "metrics.jsonl") if "train/loss" in m]


def _model(layout: str, layers: dict) -> HybridLM:
    return HybridLM.from_config({"model": {"d_model": 16, "vocab_size": 32, "layers": layers, "layout": layout}})


# ---- CPU: the decision and its messages --------------------------------------------------------

def test_auto_on_the_cpu_trains_eagerly_and_says_why(tiny):
    root = load_config(tiny())
    model = HybridLM(root.model, root.layout)
    graphed, why = use_graphs(root.train, model, torch.device("cpu"), None)
    assert not graphed and "cpu" in why and "CUDA" in why


def test_cuda_graph_true_without_a_gpu_is_a_config_error(tiny):
    root = load_config(tiny(cuda_graph=True))
    with pytest.raises(ConfigError, match=r"train.cuda_graph.*CUDA graphs need a CUDA device"):
        train(root)


def test_cuda_graph_false_says_so(tiny):
    root = load_config(tiny(cuda_graph=False))
    assert use_graphs(root.train, HybridLM(root.model, root.layout), torch.device("cuda"), None) == (False, "cuda_graph false")


def test_a_plugin_layer_that_does_not_declare_capture_is_refused_by_name(monkeypatch):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "fixtures"))
    import plugin_pkg.scaled_identity  # noqa: F401  (registers "test_scale")

    model = _model("A S", {"A": {"type": "attention", "n_heads": 2}, "S": {"type": "test_scale"}})
    why = graph_refusal(model, torch.device("cuda"), torch.bfloat16)
    assert why.startswith("sublayer 1 'S' (test_scale)") and "capturable=True" in why


def test_moe_with_capacity_refuses_capture_and_names_the_setting():
    model = _model("A E", {"A": {"type": "attention", "n_heads": 2},
                           "E": {"type": "moe", "n_experts": 4, "capacity_factor": 1.25}})
    why = graph_refusal(model, torch.device("cuda"), torch.bfloat16)
    assert "sublayer 1 'E' (moe)" in why and "capacity_factor" in why


def test_every_built_in_layer_declares_capture():
    model = _model("A F M S M2", {"A": {"type": "attention", "n_heads": 2}, "F": "mlp", "M": "mamba", "S": "s4d",
                                  "M2": {"type": "mamba2", "d_state": 8, "headdim": 16}})
    assert graph_refusal(model, torch.device("cuda"), torch.bfloat16) is None


def test_pad_shape_is_the_longest_input_and_the_most_logits_of_the_mixture():
    from hybrid.tasks.base import build_task

    task = build_task({"type": "mqar", "vocab_size": 64, "train": [{"length": 16, "num_kv_pairs": 2},
                                                                    {"length": 48, "num_kv_pairs": 4}],
                       "test": [{"length": 16, "num_kv_pairs": 2}]})
    assert pad_shape(task, 32) == (48, 128)  # 4 queries x 32 examples = 128 scored positions


@pytest.mark.parametrize("vocab,length", [pytest.param(7, 1, id="V7-L1"), pytest.param(33, 13, id="V33-L13")])
def test_dense_statistics_equal_the_gathered_ones(vocab, length):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, length, vocab, generator=gen)
    targets = torch.randint(0, vocab, (5, length), generator=gen)
    targets[torch.rand(5, length, generator=gen) < 0.6] = -100
    targets[2] = -100  # an example with nothing scored
    token_bytes = torch.randint(1, 4, (vocab,), generator=gen)
    sparse, dense = example_stats(logits, targets, token_bytes), _dense_example_stats(logits, targets, token_bytes)
    assert sparse.keys() == dense.keys()
    for k in sparse:
        torch.testing.assert_close(dense[k], sparse[k], rtol=1e-12, atol=1e-12)  # float64 sums, other order


def test_dense_statistics_in_chunks(monkeypatch):
    import hybrid.tasks.metrics as metrics

    logits, targets = torch.randn(7, 3, 5), torch.randint(0, 5, (7, 3))
    whole = _dense_example_stats(logits, targets, None)
    monkeypatch.setattr(metrics, "DENSE_CHUNK", 16)  # one row (3 x 5 elements) at a time
    chunked = _dense_example_stats(logits, targets, None)
    assert all(torch.equal(whole[k], chunked[k]) for k in whole)


# ---- GPU: graphed against eager ----------------------------------------------------------------

MIXED = {"type": "mqar", "vocab_size": 64, "train": [{"length": 16, "num_kv_pairs": 2},
                                                       {"length": 32, "num_kv_pairs": 4}],
         "test": [{"length": 16, "num_kv_pairs": 2}, {"length": 64, "num_kv_pairs": 8}],
         "eval_examples": 64, "eval_batch_size": 24}
LAYOUTS = {"attention": "(A F) x2", "mamba": "M x2", "hybrid": "M F A F", "s4d": "S F", "mamba2": "M2 F"}


def _gpu_config(tiny, layout, **train_):
    path = tiny(**{"device": "cuda", "dtype": "float32", "steps": 10, "checkpoint_every": 4, "eval_every": 5, **train_})
    layers = {"A": {"type": "attention", "n_heads": 2}, "F": {"type": "mlp", "expand": 2},
              "M": {"type": "mamba", "d_state": 8}, "S": {"type": "s4d"},
              "M2": {"type": "mamba2", "d_state": 8, "headdim": 16, "chunk_size": 8}}
    import yaml
    cfg = yaml.safe_load(path.read_text())
    cfg["model"].update(layers=layers, layout=layout)
    cfg["task"] = MIXED
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _close(a, b, rtol=2e-4):
    assert [s for s, _ in a] == [s for s, _ in b]
    for (step, x), (_, y) in zip(a, b):
        assert math.isclose(x, y, rel_tol=rtol), (step, x, y)


@pytest.mark.cuda
@pytest.mark.parametrize("layout", list(LAYOUTS.values()), ids=list(LAYOUTS))
def test_graphed_run_logs_the_eager_losses(tiny, tmp_path, layout):
    # float32 (no autocast): both runs differ only by atomics' summation order in the backward kernels
    config = _gpu_config(tiny, layout)
    eager = train(load_config(config, ["name=eager", "train.cuda_graph=false"]))
    graphed = train(load_config(config, ["name=graphed", "train.cuda_graph=true"]))
    assert (eager["train_step"], graphed["train_step"]) == ("eager", "graphed")
    _close(_losses(tmp_path / "runs" / "eager"), _losses(tmp_path / "runs" / "graphed"))
    for k, v in eager["final"].items():  # graphed evaluation (dense statistics) against eager
        assert math.isclose(v, graphed["final"][k], rel_tol=1e-3, abs_tol=1e-3), k


@pytest.mark.cuda
def test_padded_graph_logs_the_eager_losses(tiny, tmp_path):
    config = _gpu_config(tiny, LAYOUTS["hybrid"])
    train(load_config(config, ["name=eager", "train.cuda_graph=false"]))
    train(load_config(config, ["name=pad", "train.cuda_graph=true", "train.graph_shapes=pad"]))
    _close(_losses(tmp_path / "runs" / "eager"), _losses(tmp_path / "runs" / "pad"), rtol=1e-3)


@pytest.mark.cuda
def test_graphed_run_resumes_from_its_checkpoint(tiny, tmp_path):
    config = _gpu_config(tiny, LAYOUTS["hybrid"], cuda_graph=True)
    train(load_config(config, ["name=whole"]))

    class Killed(Exception):
        pass

    def die(step):
        if step == 7:
            raise Killed()

    with pytest.raises(Killed):
        train(load_config(config, ["name=cut"]), on_step=die)
    assert json.loads((tmp_path / "runs" / "cut" / "status.json").read_text())["step"] == 4
    resumed = resume_run(tmp_path / "runs" / "cut")
    assert resumed["train_step"] == "graphed"
    _close(_losses(tmp_path / "runs" / "whole"), _losses(tmp_path / "runs" / "cut"))


@pytest.mark.cuda
def test_non_finite_graphed_step_stops_with_the_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    import hybrid.training.graphed as graphed

    poison = torch.ones((), device="cuda")
    real = graphed.forward_backward

    def poisoned(*args, **kwargs):
        loss_sum, aux = real(*args, **kwargs)
        return loss_sum * poison, aux  # read at every replay: NaN once the test fills it

    def at_step(step):
        if step == 4:
            poison.fill_(float("nan"))  # step 5 is the first non-finite one

    monkeypatch.setattr(graphed, "forward_backward", poisoned)
    config = _gpu_config(tiny, LAYOUTS["attention"], cuda_graph=True, checkpoint_every=3, eval_every=0, log_every=100)
    with pytest.raises(TrainingDiverged, match=r"loss nan at step 5 .*found at step 6.*skipped step 5"):
        train(load_config(config, ["name=nan"]), on_step=at_step)
    run = tmp_path / "runs" / "nan"
    assert json.loads((run / "status.json").read_text())["state"] == "diverged"
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["step"] == 3  # the check before the step-6 checkpoint stopped the run
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.cuda
def test_cuda_graph_true_with_an_uncapturable_layer_names_it(tiny, tmp_path):
    config = _gpu_config(tiny, "A E", cuda_graph=True)
    overrides = ["model.layers.E={type: moe, n_experts: 4, capacity_factor: 1.5}", "name=moe"]
    with pytest.raises(ConfigError, match=r"sublayer 1 'E' \(moe\).*capacity_factor"):
        train(load_config(config, overrides))
    auto = train(load_config(config, overrides[:1] + ["name=auto", "train.cuda_graph=auto"]))
    assert auto["train_step"] == "eager"


@pytest.mark.parametrize("accumulation", [1, 2])
def test_loss_over_the_scored_positions_equals_the_full_cross_entropy(accumulation):
    from hybrid.training.step import _batch_loss, scored_capacity

    model = _model("A F", {"A": {"type": "attention", "n_heads": 2}, "F": "mlp"})
    inputs = torch.randint(0, 32, (4, 9))
    targets = torch.full((4, 9), -100)
    targets[:, 3], targets[1, 7] = inputs[:, 4], 5  # 5 scored positions
    capacity = scored_capacity(targets, accumulation)
    assert capacity == min(64, 4 * 9 // accumulation)
    scored = torch.tensor(5)
    full = torch.nn.functional.cross_entropy(model(inputs).flatten(0, 1), targets.flatten(), reduction="sum") / 5
    torch.testing.assert_close(_batch_loss(model, inputs, targets, scored, 8), full)  # 8 < 36: gathered
    torch.testing.assert_close(_batch_loss(model, inputs, targets, scored, capacity), full)
