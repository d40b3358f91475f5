"""Sweep files: expansion and names, clear rejection of bad files, skip/resume, failure isolation."""
from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
import yaml

from hybrid.cli import main
from hybrid.errors import ConfigError
from hybrid.sweep.runner import run_sweep
from hybrid.sweep.spec import load_sweep


def write_sweep(tmp_path, body: dict, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"config": "tiny.yaml", **body}, sort_keys=False))
    return path


def test_grid_zip_and_names(tiny, tmp_path):
    tiny()
    path = write_sweep(tmp_path, {
        "overrides": {"train.steps": 2},
        "grid": {"arch": {"attn": {"model.layout": "(A F) x2"}, "attn1": {"model.layout": "A F"}},
                 "train.lr": [1e-3, 3e-3]},
        "zip": {"model.d_model": [32, 64], "model.layers.A.n_heads": [2, 4]},
    })
    spec = load_sweep(path)
    names = [r.name for r in spec.runs]
    assert len(names) == 8
    assert names[0] == "arch=attn,lr=0.001,d_model=32,n_heads=2"
    assert spec.runs[0].group == "arch=attn,d_model=32,n_heads=2"  # lr is the selection axis by default
    assert spec.runs[-1].overrides == {"train.steps": 2, "model.layout": "A F", "train.lr": 3e-3,
                                       "model.d_model": 64, "model.layers.A.n_heads": 4}


@pytest.mark.parametrize("body,match", [
    pytest.param({"gird": {}}, r"sweep.yaml: gird: unknown key 'gird' \(did you mean 'grid'\?\)", id="top-key"),
    pytest.param({"grid": {"train.lr": 0.001}}, r"sweep.yaml: grid.train.lr: expected a list", id="scalar-axis"),
    pytest.param({"grid": {"train.lr": []}}, r"grid.train.lr: an axis needs at least one value", id="empty-axis"),
    pytest.param({"zip": {"train.lr": [1, 2], "seed": [1]}}, r"sweep.yaml: zip: zipped lists must have one length",
                 id="zip-lengths"),
    pytest.param({"grid": {"train.stpes": [1, 2]}}, r"sweep.yaml: train.stpes: unknown key 'stpes' "
                 r"\(did you mean 'steps'\?\).*in grid.train.stpes", id="bad-override-key"),
    pytest.param({"grid": {"arch": {"a": {"model.layers.A.n_hedas": 2}}}},
                 r"sweep.yaml: model.layers.A.n_hedas: .*n_hedas.*in grid.arch", id="bad-key-in-named-axis"),
    pytest.param({"select": {"over": ["train.lr"]}}, r"select.over: select.over names 'train.lr'", id="select-axis"),
    pytest.param({"config": "nope.yaml"}, r"sweep.yaml: config: base config 'nope.yaml' not found", id="no-config"),
    pytest.param({"grid": {f"train.seed{i}": list(range(100)) for i in range(3)}},
                 r"sweep.yaml: grid: the axes make 1,000,000 runs, more than the 10,000", id="too-many-runs"),
    pytest.param({"select": {"over": 5}}, r"select.over: expected an axis name", id="select-over-int"),
    pytest.param({"select": {"metric": ["a"]}}, r"select.metric: expected a logged metric name", id="metric-list"),
    pytest.param({"grid": {"train.lr": [datetime.date(2024, 1, 1)]}}, r"grid.train.lr\[0\]: expected a string, number",
                 id="date-value"),
    pytest.param({"jobs": True}, r"jobs: expected a positive integer or auto, got True", id="jobs-bool"),
    pytest.param({"out": 5}, r"out: expected a folder path", id="out-int"),
    pytest.param({"overrides": ["train.steps=["]}, r"overrides\[0\]: '\[' is not a YAML value", id="override-yaml"),
    pytest.param({"grid": {"model.d_model": [32, 64]}, "zip": {"model.d_model": [16, 24], "train.lr": [1e-3, 2e-3]}},
                 r"sweep.yaml: zip.model.d_model: model.d_model is set by two axes, grid.model.d_model and "
                 r"zip.model.d_model", id="grid-zip-clash"),
    pytest.param({"grid": {"arch": {"a b/c": {"train.lr": 1e-3}}}},
                 r"sweep.yaml: grid.arch.a b/c: label 'a b/c' cannot be part of a run's folder name", id="label-slash"),
    pytest.param({"grid": {"arch": {"a": {"train.lr": 1e-3}}, "train.lr": [1e-3, 2e-3]}},
                 r"grid.train.lr: train.lr is set by two axes, grid.arch and grid.train.lr", id="named-plain-clash"),
])
def test_bad_sweep_files_are_rejected(tiny, tmp_path, body, match):
    tiny()
    with pytest.raises(ConfigError, match=match):
        load_sweep(write_sweep(tmp_path, body))


def test_plan_names_its_base_config_relative_to_the_working_directory(tiny, tmp_path, monkeypatch):
    """sweep.json is checked in with a study: a base config below the working directory is named
    relative to it, not by the absolute path of the machine that ran the sweep; one elsewhere whole."""
    tiny()
    path = write_sweep(tmp_path, {"grid": {"model.layers.A.n_heads": [2]}})
    monkeypatch.chdir(tmp_path.parent)
    plan = load_sweep(Path(tmp_path.name) / path.name).to_dict()
    assert plan["config"] == str(Path(tmp_path.name) / "tiny.yaml")
    assert plan["sweep_file"] == str(Path(tmp_path.name) / path.name)
    monkeypatch.chdir(tmp_path)
    assert load_sweep(path.resolve()).to_dict()["config"] == "tiny.yaml"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert load_sweep(path).to_dict()["config"] == str((tmp_path / "tiny.yaml").resolve())


def test_skip_resume_and_failure_isolation(tiny, tmp_path):
    tiny()
    path = write_sweep(tmp_path, {
        "overrides": {"train.steps": 6, "train.checkpoint_every": 2},
        # the "broken" task raises at training step 3, after the run has started and checkpointed
        "grid": {"model.layers.A.n_heads": [2, 4], "data": {"ok": {}, "broken": {"task.type": "mqar_failing",
                                                                                  "task.fail_at": 3}}},
    })
    spec = load_sweep(path)
    states = run_sweep(spec, jobs=1, progress=False)
    assert states == {"n_heads=2,data=ok": "completed", "n_heads=2,data=broken": "failed",
                      "n_heads=4,data=ok": "completed", "n_heads=4,data=broken": "failed"}
    failed = json.loads((tmp_path / "runs" / "n_heads=4,data=broken" / "status.json").read_text())
    assert "simulated failure at step 3" in failed["error"] and failed["step"] == 2
    plan = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["name"] for r in plan["runs"]] == list(states)

    # An interrupted run: cut its log and checkpoint back to step 2 and mark it running, as a kill would leave it.
    victim = tmp_path / "runs" / "n_heads=2,data=ok"
    done = tmp_path / "runs" / "n_heads=4,data=ok"
    losses_before = [m for m in map(json.loads, (victim / "metrics.jsonl").read_text().splitlines()) if "train/loss" in m]
    done_mtime = (done / "results.json").stat().st_mtime_ns
    from hybrid.config import load_config
    from hybrid.training.trainer import train
    (victim / "status.json").unlink()
    for f in ("metrics.jsonl", "checkpoint.pt", "results.json", "config.yaml"):
        (victim / f).unlink()

    class Killed(Exception):
        pass

    def die(step):
        if step == 3:
            raise Killed()

    root = load_config(tmp_path / "tiny.yaml", ["train.steps=6", "train.checkpoint_every=2", f"train.run_dir={victim}",
                                                "name=n_heads=2,data=ok", "model.layers.A.n_heads=2"])
    with pytest.raises(Killed):
        train(root, on_step=die)

    states = run_sweep(load_sweep(path), jobs=1, progress=False)
    assert states["n_heads=2,data=ok"] == "completed"
    assert (done / "results.json").stat().st_mtime_ns == done_mtime  # finished runs are skipped
    assert states["n_heads=4,data=broken"] == "failed"  # retried, fails again, still isolated
    losses_after = [m for m in map(json.loads, (victim / "metrics.jsonl").read_text().splitlines()) if "train/loss" in m]
    assert [(m["step"], m["train/loss"]) for m in losses_after] == [(m["step"], m["train/loss"]) for m in losses_before]
    meta = json.loads((victim / "meta.json").read_text())
    assert [r["at_step"] for r in meta["resumes"]] == [2]  # the first start's record kept, the resume's appended


def test_dry_run_prints_the_plan(tiny, tmp_path, capsys):
    tiny()
    path = write_sweep(tmp_path, {"grid": {"train.lr": [1e-3, 3e-3], "seed": [0, 1]}})
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 runs" in out and "lr=0.001,seed=1" in out and "run" in out
    assert not (tmp_path / "runs").exists()


def test_a_command_line_override_of_an_axis_is_refused_and_of_a_named_axis_key_said(tiny, tmp_path, capsys, caplog):
    """An override of a plain axis's key would run every run at one value under names that say otherwise:
    refused, naming the axis. One of a key a named axis's labels set (a quick try of the whole grid) runs,
    with a warning."""
    tiny()
    path = write_sweep(tmp_path, {"grid": {"arch": {"a": {"train.steps": 3}, "b": {"train.steps": 4}},
                                           "model.d_model": [32, 64]}})
    assert main(["sweep", str(path), "--dry-run", "model.d_model=48"]) == 2
    err = capsys.readouterr().err
    assert "<command line>: model.d_model: is an axis of the sweep (grid.model.d_model" in err
    with caplog.at_level("WARNING"):
        assert main(["sweep", str(path), "--dry-run", "train.steps=2"]) == 0
    assert "train.steps=2 overrides the value grid.arch gives each run" in caplog.text
    assert "train.steps=2" in capsys.readouterr().out


def test_a_finished_run_made_with_another_config_is_kept_and_said(tiny, tmp_path, capsys, caplog):
    """A run folder from before a change of the shared config keeps its name: the sweep does not run it again
    (its results stay), but the plan and the log say what differs, so that its table is not read as the new
    config's. The same config again says nothing."""
    tiny()
    path = write_sweep(tmp_path, {"overrides": {"train.steps": 2}, "grid": {"seed": [0, 1]}})
    assert main(["sweep", str(path), "--no-progress"]) == 0
    results = tmp_path / "runs" / "seed=0" / "results.json"
    before = results.stat().st_mtime_ns
    capsys.readouterr()
    with caplog.at_level("WARNING"):
        assert main(["sweep", str(path), "--dry-run", "train.lr=0.01"]) == 0
    assert "skip (completed; made with another config: train.lr 0.003 -> 0.01)" in capsys.readouterr().out
    assert "run seed=1 finished with another config than the sweep now gives it (train.lr 0.003 -> 0.01)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert main(["sweep", str(path), "--no-progress", "train.lr=0.01"]) == 0
        assert "2 finished run(s) made with another config" in caplog.text
        caplog.clear()
        assert main(["sweep", str(path), "--no-progress"]) == 0
    assert results.stat().st_mtime_ns == before and "another config" not in caplog.text


def test_config_changes_compare_the_keys_both_sides_have():
    """A setting added to the framework since the run (absent from its config.yaml) and where a run was written
    are not differences; 1 and 1.0 are the same value."""
    from hybrid.sweep.changed import config_changes, describe  # noqa: PLC0415

    def changes(recorded: dict, planned: dict, tmp=Path(__import__("tempfile").mkdtemp())):
        (tmp / "config.yaml").write_text(yaml.safe_dump(recorded))
        return config_changes(tmp / "config.yaml", planned)

    recorded = {"name": "a", "train": {"lr": 1, "run_dir": "/x/a", "steps": 5}, "model": {"d_model": 32}}
    planned = {"name": "b", "train": {"lr": 1.0, "run_dir": "/y/b", "steps": 5, "new_setting": 3},
               "model": {"d_model": 32}, "task": {"type": "mqar"}}
    assert changes(recorded, planned) == []
    planned["model"]["d_model"] = 48
    planned["train"]["steps"] = 6
    assert describe(changes(recorded, planned)) == "model.d_model 32 -> 48, train.steps 5 -> 6"
    assert config_changes(Path("/nonexistent/config.yaml"), planned) == []


def test_an_out_folder_that_is_a_file_is_refused(tiny, tmp_path, capsys):
    tiny()
    path = write_sweep(tmp_path, {"grid": {"seed": [0]}})
    (tmp_path / "afile").write_text("")
    assert main(["sweep", str(path), "--dry-run", "--out", str(tmp_path / "afile")]) == 2
    err = capsys.readouterr().err
    assert "<command line>: --out: " in err and "is a file; give a folder" in err
    assert not (tmp_path / "afile").is_dir()


def test_cli_reports_bad_sweep_with_file_and_key(tiny, tmp_path, capsys):
    tiny()
    path = write_sweep(tmp_path, {"grid": {"model.d_modle": [32]}})
    assert main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "sweep.yaml" in err and "model.d_modle" in err and "d_model" in err


def test_more_jobs_than_gpus_share_them(tiny, tmp_path, monkeypatch):
    """With 1 GPU and 3 jobs, every run gets GPU 0 (none fails for want of a free slot)."""
    import threading
    import time

    from hybrid.sweep import runner

    tiny()
    path = write_sweep(tmp_path, {"grid": {"model.layers.A.n_heads": [1, 2, 4]}})
    spec = load_sweep(path)
    seen, lock = [], threading.Lock()

    def fake_subprocess(spec_, run, gpu, stop=None):
        with lock:
            seen.append(gpu)
        time.sleep(0.05)  # overlap the workers
        rd = runner.run_dir(spec_, run).create()
        rd.set_status("completed")

    monkeypatch.setattr(runner.torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(runner, "_run_subprocess", fake_subprocess)
    states = run_sweep(spec, jobs=3, progress=False)
    assert sorted(seen) == [[0], [0], [0]]
    assert set(states.values()) == {"completed"}


def test_jobs_auto_packs_small_runs_per_gpu_by_their_memory_estimate(tiny, tmp_path, monkeypatch):
    from hybrid import estimate as estimate_module
    from hybrid.sweep import runner

    tiny()
    path = write_sweep(tmp_path, {"grid": {"train.lr": [1e-3, 3e-3]}})
    spec = load_sweep(path)
    monkeypatch.setattr(runner.torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(runner.torch.cuda, "get_device_properties", lambda i: type("P", (), {"total_memory": 10 * 2**30}))
    sizes = {"gib": 1.0}
    real = estimate_module.estimate

    def fake(root):
        est = real(root)
        return type("E", (), {"total_bytes": int(sizes["gib"] * 2**30), "parameters": est.parameters})()

    monkeypatch.setattr(estimate_module, "estimate", fake)
    assert runner.resolve_jobs("auto", spec) == 2 * 8  # 8 GiB of room per GPU, capped at 8 runs
    sizes["gib"] = 3.0
    assert runner.resolve_jobs("auto", spec) == 2 * 2  # two 3 GiB runs fit in 8 GiB
    sizes["gib"] = 30.0
    assert runner.resolve_jobs("auto", spec) == 2  # never fewer than one per GPU
    monkeypatch.setattr(runner.torch.cuda, "device_count", lambda: 0)
    assert runner.resolve_jobs("auto", spec) == 1


def test_runs_of_several_gpus_get_groups_of_them(tiny, tmp_path, monkeypatch):
    """gpus_per_run 2 on 4 GPUs: two runs at a time (jobs auto), each on its own pair."""
    import threading
    import time

    from hybrid.sweep import runner

    tiny()
    spec = load_sweep(write_sweep(tmp_path, {"grid": {"seed": [0, 1, 2, 3]}, "gpus_per_run": 2}))
    seen, lock = [], threading.Lock()

    def fake_subprocess(spec_, run, gpus, stop=None):
        with lock:
            seen.append(tuple(gpus))
        time.sleep(0.05)
        runner.run_dir(spec_, run).create().set_status("completed")

    monkeypatch.setattr(runner.torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(runner, "_run_subprocess", fake_subprocess)
    run_sweep(spec, jobs="auto", progress=False)
    assert sorted(seen) == [(0, 1), (0, 1), (2, 3), (2, 3)]
    monkeypatch.setattr(runner.torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="gpus_per_run 2, but this machine has 1 GPU"):
        run_sweep(load_sweep(write_sweep(tmp_path, {"grid": {"seed": [5]}, "gpus_per_run": 2}, "more.yaml")),
                  progress=False)


def test_a_two_rank_sweep_run_on_the_cpu_logs_one_process_losses(tiny, tmp_path):
    """gpus_per_run 2 without GPUs: each run is a torchrun job of two gloo ranks."""
    from hybrid.config import load_config
    from hybrid.training.logging import read_metrics
    from hybrid.training.trainer import train

    config = tiny(steps=4, eval_every=0, checkpoint_every=2)
    spec = load_sweep(write_sweep(tmp_path, {"grid": {"seed": [3]}, "gpus_per_run": 2, "out": "two"}))
    assert run_sweep(spec, progress=False) == {"seed=3": "completed"}
    train(load_config(config, ["name=one"]))

    def losses(run_dir):
        return [(m["step"], round(m["train/loss"], 5)) for m in read_metrics(run_dir / "metrics.jsonl")
                if "train/loss" in m]

    assert losses(tmp_path / "two" / "runs" / "seed=3") == losses(tmp_path / "runs" / "one")
    assert "ddp over 2 ranks" in (tmp_path / "two" / "runs" / "seed=3" / "train.log").read_text()


def test_only_runs_the_chosen_runs_and_counts_them(tiny, tmp_path, caplog):
    tiny()
    spec = load_sweep(write_sweep(tmp_path, {"overrides": {"train.steps": 2}, "grid": {"model.layers.A.n_heads": [2, 4]}}))
    chosen = [r for r in spec.runs if r.name == "n_heads=4"]
    with caplog.at_level("INFO", logger="hybrid.sweep.runner"):
        states = run_sweep(spec, jobs=1, progress=False, only=chosen)
    assert states == {"n_heads=4": "completed"} and not (tmp_path / "runs" / "n_heads=2").exists()
    assert "2 runs, 1 chosen by --only (0 finished, 1 to run)" in caplog.text


def test_start_until_starts_no_run_past_its_time_and_the_next_sweep_runs_them(tiny, tmp_path, caplog, capsys):
    tiny()
    path = write_sweep(tmp_path, {"overrides": {"train.steps": 2}, "grid": {"model.layers.A.n_heads": [2, 4]}})
    with caplog.at_level("INFO", logger="hybrid.sweep.runner"):
        states = run_sweep(load_sweep(path), jobs=1, progress=False, start_until=0)
    assert states == {"n_heads=2": "not started", "n_heads=4": "not started"}
    assert "not started: past --start-until 0s" in caplog.text and not (tmp_path / "runs" / "n_heads=2").exists()
    assert main(["sweep", str(path), "--no-progress", "--start-until", "0"]) == 0
    assert "2 run(s) not started (past --start-until or at --stop-after)" in capsys.readouterr().out
    assert main(["sweep", str(path), "--no-progress", "--start-until", "600"]) == 0
    assert all(json.loads((tmp_path / "runs" / n / "status.json").read_text())["state"] == "completed"
               for n in ("n_heads=2", "n_heads=4"))
    assert main(["sweep", str(path), "--start-until", "-1"]) == 2
    assert "--start-until" in capsys.readouterr().err


def test_stop_after_stops_the_run_going_with_a_checkpoint_and_the_next_sweep_resumes_it(tiny, tmp_path, caplog,
                                                                                       capsys):
    """--stop-after: at its time the run in flight (a worker process, though one job) gets SIGTERM, writes a
    checkpoint at the step it is on and is left interrupted; the runs not started are 'not started'; the
    next sweep's plan resumes the first from that step. The CLI counts neither as failed."""
    from hybrid.sweep.runner import plan_rows
    tiny(steps=10**7, checkpoint_every=10**7, eval_every=10**7)  # only the stop writes a checkpoint
    path = write_sweep(tmp_path, {"grid": {"model.layers.A.n_heads": [2, 4]}})
    with caplog.at_level("INFO", logger="hybrid.sweep.runner"):
        states = run_sweep(load_sweep(path), jobs=1, progress=False, stop_after=20)  # the worker starts in ~5 s
    assert states == {"n_heads=2": "stopped at --stop-after", "n_heads=4": "not started"}
    status = json.loads((tmp_path / "runs" / "n_heads=2" / "status.json").read_text())
    step = status["step"]
    assert status["state"] == "interrupted"
    assert step > 0 and (tmp_path / "runs" / "n_heads=2" / "checkpoint.pt").is_file()
    assert f"run n_heads=2 stopped by --stop-after at step {step}" in caplog.text
    assert "run n_heads=4 not started: at --stop-after" in caplog.text
    assert [row[:2] for row in plan_rows(load_sweep(path))] == [["n_heads=2", f"resume (step {step})"],
                                                                ["n_heads=4", "run"]]
    assert main(["sweep", str(path), "--no-progress", "--stop-after", "0"]) == 0
    assert "2 run(s) not started (past --start-until or at --stop-after)" in capsys.readouterr().out
    for bad in ("-1", "nan", "inf"):
        assert main(["sweep", str(path), "--stop-after", bad]) == 2
        assert "--stop-after" in capsys.readouterr().err


class _FakeWorker:
    """A stand-in for a run's worker process: `effect(rd)` runs at wait(), which returns `code`."""

    pid = 12345

    def __init__(self, rd, code, effect):
        self.rd, self.code, self.effect, self.signals = rd, code, effect, []

    def send_signal(self, sig):
        self.signals.append(sig)

    def wait(self):
        self.effect(self.rd)
        return self.code


@pytest.mark.parametrize("code,effect,expected", [
    pytest.param(-15, lambda rd: None, "interrupted", id="killed-while-starting"),
    pytest.param(1, lambda rd: rd.set_status("running", step=7), "interrupted", id="torchrun-exits-1"),
    pytest.param(-15, lambda rd: rd.set_status("failed", error="out of memory"), "failed", id="failed-as-it-stopped"),
])
def test_a_worker_ending_after_the_stop_is_interrupted_unless_it_failed(tiny, tmp_path, monkeypatch, code, effect,
                                                                        expected):
    """After --stop-after's time a worker that exits non-zero without having marked itself interrupted (killed
    before its loop listened for the signal, or a torchrun job, which exits 1) is left interrupted for the
    next sweep to resume; one that wrote 'failed' in this attempt stays failed, its error kept."""
    import time as time_mod

    from hybrid.sweep import runner
    tiny()
    spec = load_sweep(write_sweep(tmp_path, {"grid": {"model.layers.A.n_heads": [2]}}))
    stop = runner._Stop(0)
    while not stop.fired:
        time_mod.sleep(0.01)
    rd = runner.run_dir(spec, spec.runs[0])
    workers = []
    monkeypatch.setattr(runner.subprocess, "Popen",
                        lambda *a, **k: workers.append(_FakeWorker(rd, code, effect)) or workers[-1])
    with pytest.raises(RuntimeError):
        runner._run_subprocess(spec, spec.runs[0], None, stop)
    stop.cancel()
    status = json.loads((tmp_path / "runs" / "n_heads=2" / "status.json").read_text())
    assert status["state"] == expected and workers[0].signals == [runner.signal.SIGTERM]  # started late: signalled
    assert (status.get("error") == "out of memory") == (expected == "failed")


def test_worker_devices_count_through_the_sweeps_own_visible_devices():
    from hybrid.sweep.runner import worker_devices
    assert worker_devices([0, 1], None) == "0,1"
    assert worker_devices([1], "3,5") == "5" and worker_devices([0], " 7 ") == "7"


def test_select_enough_runs_rounds_and_skips_configurations_that_reached_it(tiny, tmp_path, monkeypatch, capsys):
    """Every configuration's first learning rate runs before any second one; a configuration whose
    learning rate reached select.enough on every seed runs no other; the rest run them all."""
    tiny()
    path = write_sweep(tmp_path, {"grid": {"model.d_model": [32, 64], "train.lr": [1e-3, 3e-3, 1e-2],
                                           "seed": [0, 1]},
                                  "select": {"metric": "eval/all/accuracy", "enough": 0.99}})
    spec = load_sweep(path)
    # d_model 32 reaches 0.995 on both seeds at its first lr; d_model 64 reaches it on seed 0 only
    accuracy = {"d_model=32,lr=0.001,seed=0": 0.995, "d_model=32,lr=0.001,seed=1": 0.995,
                "d_model=64,lr=0.001,seed=0": 0.995}
    order = []

    def fake_train(spec_, run, progress):
        from hybrid.training.run_dir import RunDir
        order.append(run.name)
        rd = RunDir(spec_.out_dir / "runs" / run.name).create()
        rd.write_config(f"name: {run.name}\n")
        rd.write_results({"name": run.name, "state": "completed", "step": 1, "wall_time_s": 0.1,
                          "final": {"eval/all/accuracy": accuracy.get(run.name, 0.5)}})
        rd.set_status("completed", step=1)

    monkeypatch.setattr("hybrid.sweep.runner._run_inprocess", fake_train)
    states = run_sweep(spec, jobs=1, progress=False)
    assert order[:4] == ["d_model=32,lr=0.001,seed=0", "d_model=32,lr=0.001,seed=1",
                         "d_model=64,lr=0.001,seed=0", "d_model=64,lr=0.001,seed=1"]  # the first round
    assert not any(name.startswith("d_model=32") for name in order[4:])
    assert sorted(order[4:]) == sorted(f"d_model=64,lr={lr},seed={s}" for lr in ("0.003", "0.01") for s in (0, 1))
    assert states["d_model=32,lr=0.01,seed=1"] == "not needed"
    assert states["d_model=64,lr=0.01,seed=1"] == "completed"
    from hybrid.report.tables import collect, not_needed
    assert sorted(not_needed(collect(tmp_path))) == sorted(n for n, s in states.items() if s == "not needed")
    assert main(["sweep", str(path), "--dry-run"]) == 0
    assert "skip (not needed: d_model=32,lr=0.001,seed=0 reached select.enough 0.99)" in capsys.readouterr().out
    assert main(["sweep", str(path)]) == 0  # nothing left to run, nothing failed


def _fake_results(accuracy: dict, order: list, fail: tuple = ()):
    """A stand-in for a run's training: records the order, writes a completed run with the given final
    accuracy (0.5 if not listed), or a failed one for names in `fail`."""
    def fake(spec_, run, *_):
        from hybrid.training.run_dir import RunDir
        order.append(run.name)
        rd = RunDir(spec_.out_dir / "runs" / run.name).create()
        rd.write_config(f"name: {run.name}\n")
        if run.name in fail:
            rd.set_status("failed", error="boom")
            raise RuntimeError("boom")
        rd.write_results({"name": run.name, "state": "completed", "step": 1, "wall_time_s": 0.1,
                          "final": {"eval/all/accuracy": accuracy.get(run.name, 0.5)}})
        rd.set_status("completed", step=1)
    return fake


# seed 0 of d_model 32 does best at lr 0.003, of d_model 64 at lr 0.01; seed 1 differs (so the report's
# choice by the first seed, not by a mean over unequal seed counts, is visible)
SEED0 = {"d_model=32,lr=0.001,seed=0": 0.6, "d_model=32,lr=0.003,seed=0": 0.9, "d_model=32,lr=0.01,seed=0": 0.8,
         "d_model=64,lr=0.001,seed=0": 0.6, "d_model=64,lr=0.003,seed=0": 0.8, "d_model=64,lr=0.01,seed=0": 0.95,
         "d_model=32,lr=0.003,seed=1": 0.5, "d_model=64,lr=0.01,seed=1": 0.85}


def _seeds_best_sweep(tmp_path, **select):
    return load_sweep(write_sweep(tmp_path, {"grid": {"model.d_model": [32, 64], "train.lr": [1e-3, 3e-3, 1e-2],
                                                      "seed": [0, 1]},
                                             "select": {"metric": "eval/all/accuracy", "seeds": "best", **select}}))


def test_select_seeds_best_runs_later_seeds_at_the_first_seeds_best_only(tiny, tmp_path, monkeypatch, capsys):
    tiny()
    spec = _seeds_best_sweep(tmp_path)
    order = []
    monkeypatch.setattr("hybrid.sweep.runner._run_inprocess", _fake_results(SEED0, order))
    states = run_sweep(spec, jobs=1, progress=False)
    assert all(name.endswith("seed=0") for name in order[:6])  # every first seed before any other
    assert order[6:] == ["d_model=32,lr=0.003,seed=1", "d_model=64,lr=0.01,seed=1"]
    assert sorted(n for n, s in states.items() if s == "not needed") == sorted(
        f"d_model={d},lr={lr},seed=1" for d, lrs in ((32, ("0.001", "0.01")), (64, ("0.001", "0.003"))) for lr in lrs)
    from hybrid.report.tables import best_rows, collect, not_needed
    sweep = collect(tmp_path)
    assert sorted(not_needed(sweep)) == sorted(n for n, s in states.items() if s == "not needed")
    rows = {r.label: r for r in best_rows(sweep)}
    # chosen by the first seed (0.9 at 0.003), though 0.01's one seed (0.8) beats 0.003's mean over two (0.7)
    assert rows["model.d_model=32"].chosen == {"train.lr": "0.003"}
    assert rows["model.d_model=32"].value == pytest.approx(0.7) and rows["model.d_model=32"].seeds == 2
    assert rows["model.d_model=64"].chosen == {"train.lr": "0.01"}
    assert main(["sweep", str(spec.path), "--dry-run"]) == 0
    assert "skip (not needed: the first seed did best at d_model=32,lr=0.003,seed=0)" in capsys.readouterr().out
    assert main(["report", str(tmp_path)]) == 0
    assert "Not needed (a later seed away from the value its configuration's first seed did best at " \
           "(select.seeds: best)): " in (tmp_path / "report" / "report.md").read_text()


def test_select_seeds_best_with_enough_counts_the_first_seed(tiny, tmp_path, monkeypatch):
    tiny()
    spec = _seeds_best_sweep(tmp_path, enough=0.9)
    order = []
    monkeypatch.setattr("hybrid.sweep.runner._run_inprocess", _fake_results(
        {"d_model=32,lr=0.001,seed=0": 0.95, "d_model=64,lr=0.003,seed=0": 0.92}, order))
    run_sweep(spec, jobs=1, progress=False)
    assert order == ["d_model=32,lr=0.001,seed=0", "d_model=64,lr=0.001,seed=0",  # round 1
                     "d_model=64,lr=0.003,seed=0",  # round 2: d_model 32 reached 0.9 on its first seed
                     "d_model=32,lr=0.001,seed=1", "d_model=64,lr=0.003,seed=1"]


def test_select_seeds_best_with_enough_runs_later_seeds_at_the_best_first_seed(tiny, tmp_path, monkeypatch):
    """When first seeds of several choices finished (an earlier piece ran them), the later seed runs at the
    best of them, even where an earlier choice already reached select.enough."""
    tiny()
    spec = _seeds_best_sweep(tmp_path, enough=0.9)
    order = []
    accuracy = {"d_model=32,lr=0.001,seed=0": 0.95, "d_model=32,lr=0.003,seed=0": 0.99,
                "d_model=32,lr=0.01,seed=0": 0.5, "d_model=64,lr=0.001,seed=0": 0.95}
    fake = _fake_results(accuracy, order)
    for run in spec.runs:  # an earlier piece that ran every first seed of d_model 32
        if run.name.startswith("d_model=32") and run.name.endswith("seed=0"):
            fake(spec, run)
    order.clear()
    monkeypatch.setattr("hybrid.sweep.runner._run_inprocess", fake)
    states = run_sweep(spec, jobs=1, progress=False)
    assert order[0] == "d_model=64,lr=0.001,seed=0"
    assert sorted(order[1:]) == ["d_model=32,lr=0.003,seed=1", "d_model=64,lr=0.001,seed=1"]
    assert states["d_model=32,lr=0.001,seed=1"] == "not needed"


def test_select_seeds_best_waits_for_first_seeds_in_parallel(tiny, tmp_path, monkeypatch):
    """With several jobs, a later seed's run waits until its configuration's first seeds have finished."""
    import time as time_mod
    tiny()
    spec = _seeds_best_sweep(tmp_path)
    order = []
    fake = _fake_results(SEED0, order)

    def slow(spec_, run, *args):
        time_mod.sleep(0.05 if run.name.endswith("seed=0") else 0.0)
        fake(spec_, run, *args)
    monkeypatch.setattr("hybrid.sweep.runner._run_subprocess", slow)
    monkeypatch.setattr("hybrid.sweep.runner.WAIT_POLL_S", 0.01)
    states = run_sweep(spec, jobs=4, progress=False)
    later = [n for n in order if n.endswith("seed=1")]
    assert sorted(later) == ["d_model=32,lr=0.003,seed=1", "d_model=64,lr=0.01,seed=1"]
    for name in later:  # started after every first seed of its configuration had finished
        config = name.split(",")[0]
        leads = [i for i, n in enumerate(order) if n.startswith(config + ",") and n.endswith("seed=0")]
        assert len(leads) == 3 and max(leads) < order.index(name), order
    assert sum(s == "completed" for s in states.values()) == 8


def test_select_enough_in_parallel_starts_no_choice_beside_an_earlier_one(tiny, tmp_path, monkeypatch):
    """With more jobs than the first round has runs, a configuration's next learning rate waits for its
    first to finish (and is skipped if that reached select.enough) instead of starting beside it."""
    import time as time_mod
    tiny()
    spec = load_sweep(write_sweep(tmp_path, {"grid": {"model.d_model": [32, 64, 128], "train.lr": [1e-3, 3e-3]},
                                             "select": {"metric": "eval/all/accuracy", "enough": 0.99}}))
    events = []
    fake = _fake_results({"d_model=32,lr=0.001": 0.995}, [])

    def slow(spec_, run, *args):
        events.append(("start", run.name))
        time_mod.sleep(0.1 if "lr=0.001" in run.name else 0.0)
        fake(spec_, run, *args)
        events.append(("end", run.name))
    monkeypatch.setattr("hybrid.sweep.runner._run_subprocess", slow)
    monkeypatch.setattr("hybrid.sweep.runner.WAIT_POLL_S", 0.01)
    states = run_sweep(spec, jobs=4, progress=False)
    assert ("start", "d_model=32,lr=0.003") not in events  # its first rate reached 0.99
    assert states["d_model=32,lr=0.003"] == "not needed"
    for d in (64, 128):
        assert events.index(("end", f"d_model={d},lr=0.001")) < events.index(("start", f"d_model={d},lr=0.003"))
    assert sum(s == "completed" for s in states.values()) == 5


def test_select_seeds_best_defers_later_seeds_while_a_first_seed_failed(tiny, tmp_path, monkeypatch):
    tiny()
    spec = _seeds_best_sweep(tmp_path)
    order = []
    monkeypatch.setattr("hybrid.sweep.runner._run_inprocess",
                        _fake_results(SEED0, order, fail=("d_model=32,lr=0.01,seed=0",)))
    states = run_sweep(spec, jobs=1, progress=False)
    assert order[6:] == ["d_model=64,lr=0.01,seed=1"]  # d_model 32's later seeds wait for the failed run
    assert states["d_model=32,lr=0.003,seed=1"] == "deferred"  # not "not needed", and not counted as failed
    order.clear()
    monkeypatch.setattr("hybrid.sweep.runner._run_inprocess", _fake_results(SEED0, order))
    run_sweep(spec, jobs=1, progress=False)  # the retry succeeds: d_model 32 decides
    assert order == ["d_model=32,lr=0.01,seed=0", "d_model=32,lr=0.003,seed=1"]


@pytest.mark.parametrize("select,match", [
    pytest.param({"enough": "high"}, r"select.enough: expected a number", id="not-a-number"),
    pytest.param({"enough": float("nan")}, r"select.enough: expected a number", id="nan"),
    pytest.param({"enough": 0.9, "over": []}, r"select.enough: select.enough skips .* selects over no axis",
                 id="no-selection-axis"),
    pytest.param({"seeds": "some"}, r"select.seeds: expected all .* or best", id="seeds-neither-all-nor-best"),
    pytest.param({"seeds": "best", "over": ["model.d_model"]}, r"select.seeds: .* has no seed axis",
                 id="seeds-best-without-seeds"),
    pytest.param({"seeds": "best"}, r"select.seeds: .* selects over no axis", id="seeds-best-without-choices"),
])
def test_bad_select_enough_is_rejected(tiny, tmp_path, select, match):
    tiny()
    with pytest.raises(ConfigError, match=match):
        load_sweep(write_sweep(tmp_path, {"grid": {"model.d_model": [32]}, "select": select}))


EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
CHECKED_IN = sorted(p for p in EXPERIMENTS.rglob("*.yaml")
                    if "runs" not in p.parts and "grid" in (yaml.safe_load(p.read_text()) or {}))


@pytest.mark.parametrize("path", CHECKED_IN, ids=lambda p: str(p.relative_to(EXPERIMENTS)))
def test_every_checked_in_sweep_file_loads_and_its_first_and_last_runs_resolve(path):
    """The studies' sweep files stay valid as the config schema moves: each loads, and its first and last
    runs' configs resolve (every run of the small ones)."""
    from hybrid.sweep.spec import resolve_run
    spec = load_sweep(path, check=False)
    for run in spec.runs if len(spec.runs) <= 20 else (spec.runs[0], spec.runs[-1]):
        resolve_run(spec, run)
