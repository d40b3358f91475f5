"""`hybrid report` on fixture results: best-of-lr selection, Markdown and CSV tables, plots."""
from __future__ import annotations

import csv
import io
import json
import shutil

import pytest

from hybrid.cli import main
from hybrid.report.tables import best_rows, collect, markdown_table


def _run(root, name, axes, acc, state="completed", lengths=(64, 128, 256), kv=(4, 8)):
    d = root / "runs" / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(f"name: {name}\n")
    (d / "status.json").write_text(json.dumps({"state": state, **({"error": "boom"} if state == "failed" else {})}))
    if state == "failed":
        return
    final = {"eval/all/accuracy": acc}
    final.update({f"eval/length={n}/accuracy": acc * 64 / n for n in lengths})
    final.update({f"eval/num_kv_pairs={n}/accuracy": acc * 4 / n for n in kv})
    (d / "results.json").write_text(json.dumps({"name": name, "state": state, "final": final, "parameters": 12345,
                                                "state_size": 4096,
                                                "tokens_per_s": 1000.0, "wall_time_s": 12.0, "step": 10}))
    logged = [{"step": s, "train/loss": 3.0 / s} for s in range(1, 11)]
    logged += [{"step": s, "time": 1.5 * s, "eval/all/accuracy": acc * s / 10} for s in (5, 10)]  # periodic
    (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in logged))
    return d


def _fixture(tmp_path):
    runs = []
    for arch, base in (("attention", 0.9), ("mamba", 0.6)):
        for d_model in (32, 64):
            for lr, bump in (("0.001", 0.0), ("0.003", 0.05)):
                name = f"arch={arch},d_model={d_model},lr={lr}"
                runs.append({"name": name, "axes": {"arch": arch, "model.d_model": str(d_model), "train.lr": lr},
                             "group": f"arch={arch},d_model={d_model}", "overrides": {}})
                acc = min(1.0, base + bump + (0.02 if d_model == 64 else 0.0))
                failed = arch == "mamba" and d_model == 64 and lr == "0.003"
                _run(tmp_path, name, None, acc, state="failed" if failed else "completed")
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": runs, "select": {"over": ["train.lr"],
                                                     "metric": "eval/all/accuracy", "mode": "max"}}))


def test_best_of_lr(tmp_path):
    _fixture(tmp_path)
    rows = {r.label: r for r in best_rows(collect(tmp_path))}
    assert set(rows) == {f"arch={a},model.d_model={d}" for a in ("attention", "mamba") for d in (32, 64)}
    assert rows["arch=attention,model.d_model=32"].chosen == {"train.lr": "0.003"}
    assert abs(rows["arch=attention,model.d_model=32"].value - 0.95) < 1e-12
    assert rows["arch=mamba,model.d_model=64"].chosen == {"train.lr": "0.001"}  # the failed lr never wins


def _plan(root, runs, over=("train.lr",)):
    (root / "sweep.json").write_text(json.dumps({"runs": runs, "select": {"over": list(over),
                                                                          "metric": "eval/all/accuracy"}}))


def test_a_sweep_in_pieces_shows_its_finished_seeds(tmp_path):
    """Before every seed of any learning rate has finished, the row shows the best mean over the
    finished ones and says how many; a learning rate whose seeds all finished wins over partial ones."""
    runs = []
    for lr, seed, acc in [("0.001", 0, 0.9), ("0.001", 1, None), ("0.003", 0, None), ("0.003", 1, None)]:
        name = f"arch=m,lr={lr},seed={seed}"
        runs.append({"name": name, "axes": {"arch": "m", "train.lr": lr, "seed": str(seed)}})
        _run(tmp_path, name, None, acc, state="completed" if acc else "failed")
    _plan(tmp_path, runs)
    (row,) = best_rows(collect(tmp_path))
    assert row.chosen == {"train.lr": "0.001"} and row.value == 0.9 and row.finished == 1 and row.seeds == 2
    assert "| 1 of 2 |" in markdown_table(collect(tmp_path))
    for seed in (0, 1):  # lr 0.003 finishes both seeds, lower: complete beats partial
        shutil.rmtree(tmp_path / "runs" / f"arch=m,lr=0.003,seed={seed}")
        _run(tmp_path, f"arch=m,lr=0.003,seed={seed}", None, 0.5)
    (row,) = best_rows(collect(tmp_path))
    assert row.chosen == {"train.lr": "0.003"} and row.value == 0.5 and row.finished == 2


def test_a_sweep_nested_in_another_is_left_to_its_own_report(tmp_path):
    """A study's investigation sweep lives in a folder of the study (its own sweep.json): the study's
    report covers its own runs only, and the investigation's report its own."""
    _fixture(tmp_path)
    nested = tmp_path / "investigation"
    _run(nested, "variant=wd0", None, 0.8)
    (nested / "sweep.json").write_text(json.dumps({"runs": [{"name": "variant=wd0", "axes": {"variant": "wd0"}}],
                                                   "select": {"over": [], "metric": "eval/all/accuracy"}}))
    assert "variant=wd0" not in {r.name for r in collect(tmp_path).runs}
    assert [r.name for r in collect(nested).runs] == ["variant=wd0"]
    _run(tmp_path / "extra", "plain", None, 0.5)  # a sweep's folder (runs/ in it): its runs/ only
    assert "plain" not in {r.name for r in collect(tmp_path).runs}
    top = tmp_path / "all"  # a folder of studies (no runs/ of its own): every run below it
    _run(top / "a", "r1", None, 0.5)
    _run(top / "b", "r2", None, 0.5)
    assert sorted(r.name for r in collect(top).runs) == ["r1", "r2"]


def test_evaluations_csv_holds_every_evaluation_per_set(tmp_path):
    from hybrid.report.tables import evaluations_csv  # noqa: PLC0415

    d = _run(tmp_path, "arch=mamba", None, 0.9)
    logged = [{"step": 5, "eval/all/accuracy": 0.5, "eval/L64/accuracy": 0.6, "eval/L64/loss": 1.0},
              {"step": 10, "eval/all/accuracy": 0.9, "eval/L64/accuracy": 0.9, "final": 1}]
    (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in logged))
    rows = list(csv.reader(io.StringIO(evaluations_csv(collect(tmp_path)))))
    assert rows == [["run", "step", "evaluation", "set", "accuracy"],
                    ["arch=mamba", "5", "periodic", "all", "0.500000"], ["arch=mamba", "5", "periodic", "L64", "0.600000"],
                    ["arch=mamba", "10", "final", "all", "0.900000"], ["arch=mamba", "10", "final", "L64", "0.900000"]]


def test_report_cli_writes_tables_and_plots(tmp_path, capsys):
    _fixture(tmp_path)
    assert main(["report", str(tmp_path)]) == 0
    out = tmp_path / "report"
    md = (out / "report.md").read_text()
    assert "| arch | model.d_model | best lr | accuracy |" in md
    assert "| attention | 64 | 0.003 | 0.9700 |" in md
    assert "12.35K" in md and "4.10K" in md
    assert "failed" in md and "boom" in md
    table = list(csv.DictReader(io.StringIO((out / "table.csv").read_text())))
    assert len(table) == 4 and table[0]["best lr"] == "0.003"
    assert len((out / "runs.csv").read_text().splitlines()) == 9
    for png in ("metric_vs_config.png", "loss_curves.png", "metric_curves.png", "metric_vs_length.png",
                "metric_vs_num_kv_pairs.png"):
        assert (out / png).stat().st_size > 1000, png
    assert "| attention | 32 | 0.003 | 0.9500 |" in capsys.readouterr().out


def test_report_without_sweep_plan_and_empty_dir(tmp_path, capsys):
    _run(tmp_path, "lonely", None, 0.5)
    assert main(["report", str(tmp_path), "--no-plots"]) == 0
    assert "| lonely |" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    assert "no runs" in capsys.readouterr().err


def test_width_plot_has_a_panel_per_setting_and_a_line_per_arch(tmp_path):
    """Zoology's Figure 2 layout: with setting, arch and d_model axes, a panel per setting, a line per
    arch over d_model; with arch and d_model alone, one panel."""
    from hybrid.report.plots import _bounded, _width_panels, metric_vs_config  # noqa: PLC0415

    runs = []
    for setting in ("L64", "L128"):
        for arch in ("attention", "mamba"):
            for d_model in (64, 128):
                name = f"setting={setting},arch={arch},d_model={d_model}"
                runs.append({"name": name, "axes": {"setting": setting, "arch": arch, "model.d_model": str(d_model)}})
                _run(tmp_path, name, None, 0.5 + 0.1 * (d_model == 128) + 0.2 * (arch == "attention"))
    _plan(tmp_path, runs, over=())
    sweep = collect(tmp_path)
    metric = "eval/all/accuracy"
    panels = _width_panels(best_rows(sweep), "model.d_model", "setting", metric)
    assert sorted(panels) == ["setting=L128", "setting=L64"]
    assert sorted(panels["setting=L64"]) == ["arch=attention", "arch=mamba"]
    # (d_model, value, lowest seed, highest seed): one seed here
    assert sorted(panels["setting=L64"]["arch=attention"]) == [(64.0, 0.7, 0.7, 0.7),
                                                               (128.0, pytest.approx(0.8), pytest.approx(0.8),
                                                                pytest.approx(0.8))]
    assert list(_width_panels(best_rows(sweep), "model.d_model", None, metric)) == [""]
    assert metric_vs_config(sweep, best_rows(sweep), tmp_path).stat().st_size > 1000
    assert _bounded("eval/all/accuracy") and _bounded("eval/L64/exact_match") and not _bounded("eval/all/loss")


def test_runs_that_select_enough_made_unnecessary_are_listed_apart(tmp_path):
    """The runner's rule (hybrid/sweep/order.py): a configuration with a learning rate whose every seed
    finished at select.enough has its other runs 'not needed', started or never started; one short of
    it (a seed below, as d's 1.0 and 0.985 whose mean passes, or a seed to go) keeps them pending."""
    from hybrid.report.tables import not_needed, unfinished
    runs = []
    for arch, lr, seed, acc, state in [("a", "0.001", 0, 0.995, "completed"), ("a", "0.003", 0, None, "interrupted"),
                                       ("a", "0.01", 0, None, None),
                                       ("b", "0.001", 0, 0.5, "completed"), ("b", "0.003", 0, None, "interrupted"),
                                       ("c", "0.001", 0, 0.999, "completed"), ("c", "0.001", 1, None, "interrupted"),
                                       ("c", "0.003", 0, None, "interrupted"),
                                       ("d", "0.001", 0, 1.0, "completed"), ("d", "0.001", 1, 0.985, "completed"),
                                       ("d", "0.003", 0, None, "interrupted")]:
        name = f"arch={arch},lr={lr},seed={seed}"
        runs.append({"name": name, "axes": {"arch": arch, "train.lr": lr, "seed": str(seed)}})
        if state is None:
            continue  # planned, never started: no run directory
        d = _run(tmp_path, name, None, acc if acc is not None else 0.0, state=state)
        if acc is None:
            (d / "results.json").unlink()  # an interrupted run has no results yet
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": runs, "select": {
        "over": ["train.lr"], "metric": "eval/all/accuracy", "mode": "max", "enough": 0.99}}))
    sweep = collect(tmp_path)
    assert not_needed(sweep) == ["arch=a,lr=0.003,seed=0", "arch=a,lr=0.01,seed=0"]
    assert [r.name for r in unfinished(sweep)] == ["arch=b,lr=0.003,seed=0", "arch=c,lr=0.001,seed=1",
                                                  "arch=c,lr=0.003,seed=0", "arch=d,lr=0.003,seed=0"]
    assert not_needed(collect(tmp_path, "eval/all/loss", "min")) == not_needed(sweep)  # the plan's metric decides
    assert main(["report", str(tmp_path), "--no-plots"]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Not needed (another train.lr of the configuration reached select.enough 0.99 on every seed): " \
           "arch=a,lr=0.003,seed=0, arch=a,lr=0.01,seed=0" in report


def test_many_configurations_get_a_panel_per_setting_a_colour_per_arch_and_a_style_per_width(tmp_path):
    """Past FEW configurations the curves are split as the width plot is: a panel per value of the first
    axis, one colour per value of the next in every panel, a line style per value of the rest."""
    from hybrid.report.facets import FEW, facets  # noqa: PLC0415
    from hybrid.report.plots import loss_curves, metric_curves  # noqa: PLC0415

    runs = []
    for setting in ("L64", "L128"):
        for arch in ("attention", "mamba", "hybrid"):
            for d_model in (64, 128):
                name = f"setting={setting},arch={arch},d_model={d_model}"
                runs.append({"name": name, "axes": {"setting": setting, "arch": arch, "model.d_model": str(d_model)}})
                _run(tmp_path, name, None, 0.5)
    _plan(tmp_path, runs, over=())
    sweep = collect(tmp_path)
    rows = best_rows(sweep)
    assert len(rows) == 12 > FEW
    found = facets(rows, sweep.config_axes())
    assert found.panels == ["setting=L64", "setting=L128"]
    panel, style = found.where["setting=L128,arch=mamba,model.d_model=128"]
    same_arch = found.where["setting=L64,arch=mamba,model.d_model=64"][1]
    other_arch = found.where["setting=L128,arch=hybrid,model.d_model=128"][1]
    assert panel == 1 and style["color"] == same_arch["color"] != other_arch["color"]
    assert style["linestyle"] == other_arch["linestyle"] != same_arch["linestyle"]
    assert [text for text, _ in found.legend] == ["arch=attention", "arch=mamba", "arch=hybrid", "d_model=64",
                                                  "d_model=128"]
    few = facets(rows[:3], sweep.config_axes())
    assert few.panels == [""] and [t for t, _ in few.legend] == [r.label for r in rows[:3]]
    assert loss_curves(sweep, rows, tmp_path).stat().st_size > 1000
    assert metric_curves(sweep, rows, tmp_path).stat().st_size > 1000


def test_equal_seeds_and_more_architectures_than_colours_plot(tmp_path):
    """Three seeds of one value (their mean an ulp outside them) draw a zero-length bar, not an error;
    past the colour cycle a line gets a marker too, so that no two look alike."""
    from hybrid.report.facets import facets  # noqa: PLC0415
    from hybrid.report.plots import metric_vs_config  # noqa: PLC0415

    runs = []
    for arch in range(12):
        for d_model in (64, 128):
            for seed in range(3):
                name = f"arch=a{arch},d_model={d_model},seed={seed}"
                runs.append({"name": name, "axes": {"arch": f"a{arch}", "model.d_model": str(d_model),
                                                    "seed": str(seed)}})
                _run(tmp_path, name, None, 0.1)
    _plan(tmp_path, runs, over=())
    sweep = collect(tmp_path)
    rows = best_rows(sweep)
    assert metric_vs_config(sweep, rows, tmp_path).stat().st_size > 1000
    styles = [style for _, style in facets(rows, ["arch"]).legend]
    assert len({(s["color"], s.get("marker")) for s in styles}) == len(styles) == 12


def test_long_run_lists_go_to_files_and_planned_runs_not_started_are_counted(tmp_path):
    """A grid's report names few runs inline: past INLINE names a list is a count in report.md and the
    names in report/<list>.txt. Planned runs without a folder that the sweep would still run are listed
    as not started; those select.enough made unnecessary are not."""
    from hybrid.cli.report import INLINE
    from hybrid.report.tables import collect, not_started
    runs = []
    for arch in range(INLINE + 5):  # each: lr 0.001 done at 0.995 (enough), 0.003 and 0.01 never started
        for lr in ("0.001", "0.003", "0.01"):
            name = f"arch=a{arch},lr={lr},seed=0"
            runs.append({"name": name, "axes": {"arch": f"a{arch}", "train.lr": lr, "seed": "0"}})
            if lr == "0.001":
                _run(tmp_path, name, None, 0.995)
    runs.append({"name": "arch=z,lr=0.001,seed=0", "axes": {"arch": "z", "train.lr": "0.001", "seed": "0"}})
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": runs, "select": {
        "over": ["train.lr"], "metric": "eval/all/accuracy", "mode": "max", "enough": 0.99}}))
    assert not_started(collect(tmp_path)) == ["arch=z,lr=0.001,seed=0"]
    assert main(["report", str(tmp_path), "--no-plots"]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    skipped = 2 * (INLINE + 5)
    assert f"select.enough 0.99 on every seed): {skipped} runs, listed in not_needed.txt." in report
    listed = (tmp_path / "report" / "not_needed.txt").read_text().split()
    assert len(listed) == skipped and "arch=a0,lr=0.003,seed=0" in listed
    assert "Not started (planned, not yet ruled out): arch=z,lr=0.001,seed=0" in report
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": runs[:3], "select": {
        "over": ["train.lr"], "metric": "eval/all/accuracy", "mode": "max", "enough": 0.99}}))
    assert main(["report", str(tmp_path), "--no-plots"]) == 0
    assert not (tmp_path / "report" / "not_needed.txt").exists()  # short again: inline, the old file gone
    assert "arch=a0,lr=0.003,seed=0, arch=a0,lr=0.01,seed=0" in (tmp_path / "report" / "report.md").read_text()


def test_a_planned_run_that_failed_before_its_config_was_written_is_listed_failed(tmp_path):
    """A run that failed in its first checks (device, memory) leaves a status.json alone: the report lists it
    as failed, with its error, not as not started. A folder with a status alone that the plan does not
    name is no run."""
    from hybrid.report.tables import not_started  # noqa: PLC0415

    runs = [{"name": n, "axes": {"device": n.split("=")[1]}} for n in ("device=cpu", "device=cuda")]
    _plan(tmp_path, runs, over=())
    _run(tmp_path, "device=cpu", None, 0.5)
    early = tmp_path / "runs" / "device=cuda"
    early.mkdir()
    (early / "status.json").write_text(json.dumps({"state": "failed", "error": "ConfigError: no CUDA"}))
    stray = tmp_path / "runs" / "stray"
    stray.mkdir()
    (stray / "status.json").write_text(json.dumps({"state": "failed"}))
    sweep = collect(tmp_path)
    assert {r.name: r.state for r in sweep.runs} == {"device=cpu": "completed", "device=cuda": "failed"}
    assert not_started(sweep) == []
    assert [r.error for r in sweep.runs if r.name == "device=cuda"] == ["ConfigError: no CUDA"]
    assert main(["report", str(tmp_path), "--no-plots"]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "device=cuda (failed: ConfigError: no CUDA)" in report and "Not started" not in report


def test_a_damaged_run_file_leaves_the_other_runs_reported(tmp_path, caplog):
    """One torn status.json (or metrics.jsonl) among many runs: the report still covers the others, lists
    that run as unreadable with the file's error, and the log names the file."""
    _fixture(tmp_path)
    torn = tmp_path / "runs" / "arch=attention,d_model=32,lr=0.001"
    (torn / "status.json").write_text('{"state": "compl')
    cut = tmp_path / "runs" / "arch=attention,d_model=64,lr=0.001"
    lines = (cut / "metrics.jsonl").read_text().splitlines(keepends=True)
    (cut / "metrics.jsonl").write_text("".join(lines[:2] + ['{"step": 3, "tra\n'] + lines[2:]))
    with caplog.at_level("WARNING"):
        assert main(["report", str(tmp_path)]) == 0
    assert f"{torn / 'status.json'}: cannot be read as JSON" in caplog.text
    assert f"{cut / 'metrics.jsonl'}: line 3 is not a metrics record" in caplog.text
    sweep = collect(tmp_path)
    assert {r.name: r.state for r in sweep.runs}[torn.name] == "unreadable"
    rows = {r.label: r for r in best_rows(sweep)}
    assert rows["arch=attention,model.d_model=32"].chosen == {"train.lr": "0.003"}  # the readable lr still wins
    report = (tmp_path / "report" / "report.md").read_text()
    assert f"{torn.name} (unreadable: " in report
