"""A run killed mid-way and resumed from its checkpoint gives, bit for bit, the losses of an
uninterrupted run (CPU), and a NaN loss stops the run and keeps the last good checkpoint."""
from __future__ import annotations

import json

import pytest
import torch

from hybrid.config import load_config
from hybrid.training.logging import read_metrics
from hybrid.training.trainer import TrainingDiverged, resume_run, train


class Killed(Exception):
    """Stands in for kill -9: raised from inside the loop, after some steps, before any clean-up."""


def _losses(run_dir):
    return [(m["step"], m["train/loss"]) for m in read_metrics(run_dir / "metrics.jsonl") if "train/loss" in m]


def _kill_at(step_to_die):
    def on_step(step):
        if step == step_to_die:
            raise Killed()
    return on_step


@pytest.mark.parametrize("accumulation,kill_at", [pytest.param(1, 7, id="acc1-kill7"),
                                                  pytest.param(2, 9, id="acc2-kill9")])
def test_resume_is_bitwise(tiny, tmp_path, accumulation, kill_at):
    config = tiny(accumulation=accumulation)
    whole = train(load_config(config, ["name=whole"]))
    with pytest.raises(Killed):
        train(load_config(config, ["name=cut"]), on_step=_kill_at(kill_at))
    cut_dir = tmp_path / "runs" / "cut"
    assert json.loads((cut_dir / "status.json").read_text())["step"] == 4 * (kill_at // 4)  # last checkpoint
    resumed = resume_run(cut_dir)
    a, b = _losses(tmp_path / "runs" / "whole"), _losses(cut_dir)
    assert [s for s, _ in a] == list(range(1, 13))
    assert a == b  # same steps, same float losses: no duplicated or missing steps after the resume
    assert resumed["final"] == whole["final"]
    w = torch.load(tmp_path / "runs" / "whole" / "checkpoint.pt", weights_only=False)["model"]
    r = torch.load(cut_dir / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(w[k], r[k]) for k in w)


def test_resume_of_finished_run_is_a_no_op(tiny, tmp_path):
    config = tiny(steps=3)
    first = train(load_config(config, ["name=done"]))
    again = resume_run(tmp_path / "runs" / "done")
    assert again == first
    assert len(_losses(tmp_path / "runs" / "done")) == 3


def test_nan_loss_stops_with_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    config = tiny(steps=10, checkpoint_every=3)
    import hybrid.training.step as step_module

    real = step_module._batch_loss
    calls = {"n": 0}

    def poisoned(*args):
        calls["n"] += 1
        loss = real(*args)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(step_module, "_batch_loss", poisoned)
    with pytest.raises(TrainingDiverged, match="loss nan at step 5.*checkpoint"):
        train(load_config(config, ["name=nan"]))
    run = tmp_path / "runs" / "nan"
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "diverged" and "lower train.lr" in status["error"]
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["step"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_run_dir_records_what_ran(tiny, tmp_path):
    train(load_config(tiny(steps=2), ["name=rec"]))
    run = tmp_path / "runs" / "rec"
    meta = json.loads((run / "meta.json").read_text())
    assert meta["versions"]["torch"] == torch.__version__ and meta["device"]["device"] == "cpu"
    assert "commit" in meta["git"] or meta["git"] == {}
    results = json.loads((run / "results.json").read_text())
    assert results["parameters"] > 0 and results["state_size"] > 0 and results["tokens_per_s"] > 0
    reloaded = load_config(run / "config.yaml")
    assert reloaded.train.steps == 2 and reloaded.name == "rec"


def test_vocab_too_small_is_a_clear_error(tiny):
    from hybrid.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model.vocab_size.*set model.vocab_size: 32"):
        train(load_config(tiny(), ["model.vocab_size=16", "name=v"]))


def test_rng_state_restores_from_a_checkpoint_mapped_to_another_device():
    # A GPU run loads its checkpoint with map_location="cuda", which moves the RNG byte tensors onto
    # the GPU; torch only accepts CPU byte tensors back. Simulated with a float copy of the state.
    from hybrid.training.checkpoint import rng_state, set_rng_state
    saved = rng_state()
    expected = torch.rand(4)
    moved = dict(saved, torch=saved["torch"].to(torch.float32))
    set_rng_state(moved)
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.cuda
def test_rng_states_restore_from_a_checkpoint_loaded_onto_the_gpu(tmp_path):
    from hybrid.training.checkpoint import rng_state, set_rng_state
    torch.save({"rng": rng_state()}, tmp_path / "state.pt")
    expected_cpu, expected_gpu = torch.rand(4), torch.rand(4, device="cuda")
    state = torch.load(tmp_path / "state.pt", map_location="cuda", weights_only=False)
    set_rng_state(state["rng"])
    assert torch.equal(torch.rand(4), expected_cpu)
    assert torch.equal(torch.rand(4, device="cuda"), expected_gpu)


def test_periodic_evaluations_can_use_some_sets(tiny, tmp_path):
    from hybrid.training.logging import read_metrics

    train(load_config(tiny(steps=5, eval_every=5, eval_sets=["L16-kv2"]), ["name=some", "train.steps=6"]))
    records = read_metrics(tmp_path / "runs" / "some" / "metrics.jsonl")
    periodic = next(r for r in records if r["step"] == 5 and "eval/all/accuracy" in r)
    final = next(r for r in records if r.get("final"))
    assert "eval/L16-kv2/accuracy" in periodic and "eval/L32-kv4/accuracy" not in periodic
    assert "eval/L32-kv4/accuracy" in final


def test_unknown_evaluation_set_is_a_config_error(tiny):
    from hybrid.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train.eval_sets.*'L99'.*the task has: L16-kv2, L32-kv4"):
        train(load_config(tiny(eval_sets=["L99"]), ["name=bad"]))


def test_a_training_checkpoint_loads_as_weights_only(tiny, tmp_path):
    """`hybrid generate --checkpoint runs/x/checkpoint.pt` reads it without --trust-checkpoint: the RNG
    state is tensors and plain values (numpy's state once went in as an ndarray, which a weights-only
    load refuses)."""
    from hybrid.cli.generate import load_weights
    from hybrid.model import HybridLM

    config = load_config(tiny(steps=2), ["name=plain"])
    train(config)
    path = tmp_path / "runs" / "plain" / "checkpoint.pt"
    torch.load(path, weights_only=True)
    load_weights(HybridLM.from_config(config.model), str(path))


def test_rng_state_of_an_older_checkpoint_still_restores():
    import numpy as np

    from hybrid.training.checkpoint import rng_state, set_rng_state

    np.random.seed(5)
    state = rng_state()
    expected = np.random.rand(4)
    name, keys, *rest = state["numpy"]
    state["numpy"] = (name, keys.numpy().astype(np.uint32), *rest)  # the form of older checkpoints: an ndarray
    set_rng_state(state)
    assert np.array_equal(np.random.rand(4), expected)


def _signal_after_first_set(monkeypatch, calls):
    """The final evaluation gets a SIGTERM once its first held-out set is done (as a time cap sends it);
    `calls` collects the sets each final evaluation skipped because an earlier one had done them."""
    import os
    import signal

    import hybrid.training.trainer as trainer_module
    real = trainer_module.run_evaluation

    def evaluation(*args, start=None, after_set=None, **kwargs):
        if after_set is None:  # a periodic evaluation
            return real(*args, start=start, after_set=after_set, **kwargs)
        calls.append(list((start or {}).get("sets", [])))

        def signalled(progress):
            if len(progress["sets"]) == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            after_set(progress)
        return real(*args, start=start, after_set=signalled, **kwargs)

    monkeypatch.setattr(trainer_module, "run_evaluation", evaluation)


def test_a_run_stopped_in_its_final_evaluation_resumes_to_evaluate_only_what_is_left(tiny, tmp_path, monkeypatch):
    """SIGTERM during the final evaluation: it stops after the set in progress, keeps that set's sums
    (final_eval.partial.json) and the run is interrupted at its last step; resumed, it trains no step
    again and evaluates only the other set, giving the metrics of an evaluation run whole."""
    config = tiny()
    whole = train(load_config(config, ["name=whole"]))
    calls = []
    _signal_after_first_set(monkeypatch, calls)
    with pytest.raises(KeyboardInterrupt, match="during the final evaluation, after 1 held-out set"):
        train(load_config(config, ["name=cut"]))
    cut_dir = tmp_path / "runs" / "cut"
    status = json.loads((cut_dir / "status.json").read_text())
    assert status["state"] == "interrupted" and status["step"] == 12
    assert json.loads((cut_dir / "final_eval.partial.json").read_text())["sets"] == ["L16-kv2"]
    monkeypatch.undo()
    resumed = resume_run(cut_dir)
    assert _losses(cut_dir) == _losses(tmp_path / "runs" / "whole")  # no step trained twice
    assert resumed["final"] == whole["final"] and resumed["state"] == "completed"
    assert not (cut_dir / "final_eval.partial.json").exists()
    assert calls == [[]]


def test_an_early_stopped_run_stopped_in_its_final_evaluation_stays_early_stopped(tiny, tmp_path, monkeypatch):
    """The ending is in the checkpoint written before the final evaluation: resumed, the run does not
    train on from the step it stopped at."""
    stop = ["train.early_stop.target=0.0", "train.eval_every=2"]
    whole = train(load_config(tiny(), ["name=whole", *stop]))
    assert whole["state"] == "early_stopped" and whole["step"] == 2
    calls = []
    _signal_after_first_set(monkeypatch, calls)
    with pytest.raises(KeyboardInterrupt):
        train(load_config(tiny(), ["name=cut", *stop]))
    monkeypatch.undo()
    _signal_after_first_set(monkeypatch, calls)  # records where the resumed evaluation starts
    resumed = resume_run(tmp_path / "runs" / "cut")
    assert calls == [[], ["L16-kv2"]]
    assert resumed["state"] == "early_stopped" and resumed["step"] == 2 and resumed["early_stop"] == "target"
    assert resumed["final"] == whole["final"]


def _crash_after_first_set(monkeypatch):
    """A hard crash (kill -9) once the final evaluation's first held-out set is done and saved."""
    import hybrid.training.trainer as trainer_module
    real = trainer_module.run_evaluation

    def evaluation(*args, start=None, after_set=None, **kwargs):
        if after_set is None:  # a periodic evaluation
            return real(*args, start=start, after_set=after_set, **kwargs)

        def crash(progress):
            after_set(progress)
            raise Killed()
        return real(*args, start=start, after_set=crash, **kwargs)

    monkeypatch.setattr(trainer_module, "run_evaluation", evaluation)


def test_a_crash_in_the_final_evaluation_keeps_the_sets_done_but_not_for_another_run(tiny, tmp_path, monkeypatch):
    """Killed after the first set: resumed, the result equals an uninterrupted run's exactly. A partial
    file left in a folder that is then trained afresh (--overwrite, another learning rate) is not used."""
    config = tiny()
    whole = train(load_config(config, ["name=whole"]))
    other = train(load_config(config, ["name=other", "train.lr=0.01"]))
    _crash_after_first_set(monkeypatch)
    with pytest.raises(Killed):
        train(load_config(config, ["name=cut"]))
    monkeypatch.undo()
    cut_dir = tmp_path / "runs" / "cut"
    assert resume_run(cut_dir)["final"] == whole["final"]
    _crash_after_first_set(monkeypatch)
    with pytest.raises(Killed):
        train(load_config(config, ["name=cut"]), overwrite=True)
    monkeypatch.undo()
    assert (cut_dir / "final_eval.partial.json").exists()
    (cut_dir / "status.json").unlink()
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):  # a folder retrained from nothing, the partial kept
        (cut_dir / name).unlink()
    assert train(load_config(config, ["name=cut", "train.lr=0.01"]), resume=True)["final"] == other["final"]


def test_a_signal_in_the_last_set_lets_the_run_finish(tiny, tmp_path, monkeypatch):
    import os
    import signal

    import hybrid.training.trainer as trainer_module
    real = trainer_module.run_evaluation

    def evaluation(*args, start=None, after_set=None, **kwargs):
        def signalled(progress):
            if len(progress["sets"]) == len(progress["planned"]):
                os.kill(os.getpid(), signal.SIGTERM)
            after_set(progress)
        return real(*args, start=start, after_set=signalled if after_set else None, **kwargs)

    monkeypatch.setattr(trainer_module, "run_evaluation", evaluation)
    assert train(load_config(tiny(), ["name=last"]))["state"] == "completed"


def test_a_run_stopped_in_its_final_evaluation_trains_on_if_its_steps_grew(tiny, tmp_path, monkeypatch):
    config = tiny()
    _signal_after_first_set(monkeypatch, [])
    with pytest.raises(KeyboardInterrupt):
        train(load_config(config, ["name=cut"]))
    monkeypatch.undo()
    resumed = resume_run(tmp_path / "runs" / "cut", ["train.steps=16"])
    assert resumed["step"] == 16 and resumed["state"] == "completed"
    assert [s for s, _ in _losses(tmp_path / "runs" / "cut")][-1] == 16


def test_an_evaluation_resumed_with_other_sets_ignores_the_saved_sums():
    from hybrid.tasks import build_task
    from hybrid.tasks.evaluate import evaluate

    task = build_task({"type": "mqar", "vocab_size": 64, "train": [{"length": 16, "num_kv_pairs": 2}],
                       "test": [{"length": 16, "num_kv_pairs": 2}, {"length": 32, "num_kv_pairs": 4}],
                       "eval_examples": 8, "eval_batch_size": 8}, seed=0)
    model = lambda inputs: torch.zeros(*inputs.shape, 64)  # noqa: E731
    seen = []
    whole = evaluate(model, task, after_set=seen.append)
    assert seen[0]["planned"] == ["L16-kv2", "L32-kv4"] and seen[0]["sets"] == ["L16-kv2"]
    assert evaluate(model, task, start=seen[0]) == whole
    stale = {**seen[0], "planned": ["L16-kv2"], "totals": {"all": {"correct": 1e9, "scored": 1.0}}}
    assert evaluate(model, task, start=stale) == whole


def test_a_resume_that_fails_before_training_is_recorded_as_failed(tiny, tmp_path, monkeypatch):
    config = tiny()
    with pytest.raises(Killed):
        train(load_config(config, ["name=cut"]), on_step=_kill_at(5))
    cut_dir = tmp_path / "runs" / "cut"
    status = json.loads((cut_dir / "status.json").read_text())
    (cut_dir / "status.json").write_text(json.dumps({**status, "state": "interrupted"}))  # as after a SIGTERM
    import hybrid.training.trainer as trainer_module

    def broken(state):
        raise RuntimeError("cannot restore")

    monkeypatch.setattr(trainer_module, "set_rng_state", broken)
    with pytest.raises(RuntimeError):
        resume_run(cut_dir)
    status = json.loads((cut_dir / "status.json").read_text())
    assert status["state"] == "failed" and "cannot restore" in status["error"]


def test_resuming_with_another_layout_names_the_checkpoint_and_the_mismatch(tiny, tmp_path):
    from hybrid.errors import CheckpointError

    config = tiny()
    with pytest.raises(Killed):
        train(load_config(config, ["name=cut"]), on_step=_kill_at(5))
    with pytest.raises(CheckpointError, match=r"another layout or size.*missing \['blocks.4"):
        resume_run(tmp_path / "runs" / "cut", ["model.layout=(A F) x3"])


def test_patience_stops_a_plateau_and_counts_on_across_a_resume(tiny, tmp_path):
    """early_stop.patience: stop after that many evaluations without beating the best by min_delta.
    A min_delta no accuracy can beat makes every evaluation after the first a plateau one: with
    evaluations every 2 steps and patience 2 the run stops at step 6, also when killed at 5 and resumed
    from its checkpoint at 4 (the count is in the checkpoint)."""
    stop = ["train.early_stop.patience=2", "train.early_stop.min_delta=2.0", "train.eval_every=2"]
    whole = train(load_config(tiny(checkpoint_every=4), ["name=whole", *stop]))
    assert whole["state"] == "early_stopped" and whole["step"] == 6 and whole["early_stop"] == "plateau"
    with pytest.raises(Killed):
        train(load_config(tiny(checkpoint_every=4), ["name=cut", *stop]), on_step=_kill_at(5))
    resumed = resume_run(tmp_path / "runs" / "cut")
    assert resumed["state"] == "early_stopped" and resumed["step"] == 6
    target = train(load_config(tiny(), ["name=target", "train.early_stop.target=0.0"]))
    assert target["early_stop"] == "target"


def test_patience_must_be_positive(tiny):
    from hybrid.errors import ConfigError  # noqa: PLC0415

    with pytest.raises(ConfigError, match="patience"):
        load_config(tiny(), ["train.early_stop.patience=0"])


def test_an_early_stop_metric_no_evaluation_logs_fails_the_run_at_its_first_evaluation(tiny, tmp_path, caplog):
    """A misspelt train.early_stop.metric would leave its target (or plateau rule) unwatched for the whole
    budget: with a target the first evaluation stops the run, naming the key and the logged metrics; with
    neither a target nor a patience it only picks results.json's best, and the log says so once."""
    from hybrid.errors import ConfigError  # noqa: PLC0415

    bad = ["train.early_stop.metric=eval/al/accuracy", "train.eval_every=2"]
    with pytest.raises(ConfigError, match=r"train.early_stop.metric: 'eval/al/accuracy' is not among the metrics "
                                          r"this run's evaluations log \(did you mean 'eval/all/accuracy'\?\)"):
        train(load_config(tiny(), ["name=target", *bad, "train.early_stop.target=0.99"]))
    status = json.loads((tmp_path / "runs" / "target" / "status.json").read_text())
    assert status["state"] == "failed" and "eval/al/accuracy" in status["error"]
    with caplog.at_level("WARNING"):
        quiet = train(load_config(tiny(), ["name=quiet", *bad]))
    assert quiet["state"] == "completed"
    assert caplog.text.count("'eval/al/accuracy' is not among the metrics") == 1


def test_a_resume_keeps_the_first_starts_record_and_appends_its_own(tiny, tmp_path):
    """meta.json after a resume: the first start's commit, command line and time as they were, and the
    resume's own record (with the step it resumed at) in "resumes"."""
    with pytest.raises(Killed):
        train(load_config(tiny(checkpoint_every=4), ["name=cut"]), on_step=_kill_at(5))
    meta = tmp_path / "runs" / "cut" / "meta.json"
    first = json.loads(meta.read_text())
    resume_run(tmp_path / "runs" / "cut")
    after = json.loads(meta.read_text())
    assert {k: after[k] for k in first} == first
    assert [r["at_step"] for r in after["resumes"]] == [4] and "started" in after["resumes"][0]
