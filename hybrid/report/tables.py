"""Collect runs from a folder and tabulate them: one row per configuration, at its best learning rate.

Best-of-learning-rate selection follows Zoology: for each configuration (the sweep's axes other
than `select.over`, normally `train.lr`, and `seed`) every learning rate's metric is averaged over
seeds, the best learning rate is kept, and the row reports that learning rate's mean (and spread,
with several seeds). A run that diverged or failed counts as the worst value, so it never wins.
Numbers come from `<run>/results.json` (the final evaluation on every held-out batch). A sweep file
that cannot be read is a `RunFileError` naming it (see `hybrid.training.run_dir`); a run's damaged
status, results or metrics file is logged and that run listed as unreadable, the others reported.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybrid.errors import RunFileError
from hybrid.training.logging import METRICS, read_metrics
from hybrid.training.run_dir import CONFIG, FINAL_STATES, STATUS, RunDir, read_json

log = logging.getLogger(__name__)
SWEEP_PLAN = "sweep.json"
UNREADABLE = "unreadable"  # the state of a run whose status.json or results.json cannot be read


@dataclass
class RunRecord:
    name: str
    path: Path
    axes: dict[str, str]
    state: str
    results: dict[str, Any]
    error: str = ""
    _metrics: list[dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def metrics(self) -> list[dict[str, Any]]:
        if self._metrics is None:
            try:
                self._metrics = read_metrics(self.path / METRICS)
            except RunFileError as err:  # one damaged log leaves the others' curves and tables
                log.warning("%s; the report leaves out this run's curves", err)
                self._metrics = []
        return self._metrics

    def final(self, metric: str) -> float | None:
        value = (self.results.get("final") or {}).get(metric)
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


@dataclass
class Sweep:
    """The runs under a folder and how to select among them."""
    root: Path
    runs: list[RunRecord]
    axes: list[str]
    select_over: list[str]
    metric: str
    mode: str
    planned: list[dict[str, Any]] = field(default_factory=list)  # the plan's runs: {name, axes}
    plan_select: dict[str, Any] = field(default_factory=dict)  # the plan's select: {over, metric, mode, enough}

    @property
    def seeds_best(self) -> bool:
        """The plan's select.seeds: best (the first seed chooses; the others run at its choice)."""
        return self.plan_select.get("seeds") == "best"

    @property
    def enough(self) -> float | None:
        """The plan's select.enough: a configuration at it needs no other choice (None without one)."""
        value = self.plan_select.get("enough")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def config_axes(self) -> list[str]:
        return [a for a in self.axes if a not in self.select_over and a != "seed"]


@dataclass
class Row:
    """One configuration at its best value of the selection axes."""
    config: dict[str, str]
    label: str
    chosen: dict[str, str]  # selection axis -> best label
    value: float | None
    spread: float | None
    seeds: int
    runs: list[RunRecord]
    tried: int  # values of the selection axes tried
    finished: int = 0  # runs (seeds) of the chosen values with a final metric: value is their mean


def read_plan(path: Path) -> dict[str, Any]:
    """A sweep's sweep.json (written by `hybrid sweep`), checked: {runs: [{name, axes}], select: {...}}."""
    what = "it is rewritten by running the sweep again (`hybrid sweep SWEEP.yaml --dry-run` does not)"
    plan = read_json(path, {}, expect=dict, what=f"delete it to tabulate the runs without their axes, or {what}") or {}
    runs, select = plan.get("runs", []), plan.get("select", {})
    ok = isinstance(runs, list) and all(isinstance(r, dict) and isinstance(r.get("name"), str)
                                        and isinstance(r.get("axes", {}), dict) for r in runs)
    ok = ok and isinstance(select, dict) and isinstance(select.get("over", []), list) \
        and all(isinstance(a, str) for a in select.get("over", [])) \
        and isinstance(select.get("metric", ""), str) and select.get("mode", "max") in ("max", "min")
    if not ok:
        raise RunFileError("is not a sweep plan ({runs: [{name, axes}, ...], select: {over, metric, mode}}); delete "
                           f"it to tabulate the runs without their axes, or {what}", file=str(path))
    return plan


def _in_another_sweep(run: Path, root: Path) -> bool:
    """Whether `run` lies in a sweep folder of its own below `root` (a study's investigation under the study)."""
    return any((folder / SWEEP_PLAN).is_file() for folder in run.parents if folder != root and root in folder.parents)


def collect(root: Path | str, metric: str | None = None, mode: str | None = None) -> Sweep:
    """The run directories of `root`: those in `root/runs/` when it has one (a sweep's output folder), else
    every one below it (any depth) but another sweep's (a folder with its own sweep.json); with the axes
    of `root/sweep.json` when present."""
    root = Path(root)
    plan = read_plan(root / SWEEP_PLAN)
    planned = {r["name"]: r for r in plan.get("runs", [])}
    select = plan.get("select", {})
    runs = []
    order = {name: i for i, name in enumerate(planned)}
    # a sweep's own folder: its runs/ only; any other folder: every run below it but another sweep's. A run
    # is a folder with a status.json and a config.yaml, or one of the sweep's planned runs with a status
    # alone (one that failed before its config was written: a device or memory check)
    candidates = (root / "runs").glob(f"*/{STATUS}") if (root / "runs").is_dir() else root.rglob(STATUS)
    found = [c.parent for c in candidates if ((c.parent / CONFIG).is_file() or c.parent.name in planned)
             and not _in_another_sweep(c.parent, root)]
    for folder in sorted(found, key=lambda c: (order.get(c.name, len(order)), str(c))):
        rd = RunDir(folder)
        name = folder.name
        axes = planned.get(name, {}).get("axes") or {"run": name}
        try:
            status, results = rd.status(), rd.results()
        except RunFileError as err:  # one damaged file must not hide every other run: listed as unreadable
            log.warning("%s; the report lists this run as unreadable", err)
            status, results = {"state": UNREADABLE, "error": str(err)}, {}
        runs.append(RunRecord(name, folder, {str(k): str(v) for k, v in axes.items()},
                              status.get("state", "unknown"), results, str(status.get("error", ""))))
    if plan.get("runs"):
        axes = list(plan["runs"][0]["axes"])
    else:
        axes = ["run"]
    return Sweep(root, runs, axes, list(select.get("over", [])), metric or select.get("metric", "eval/all/accuracy"),
                 mode or select.get("mode", "max"),
                 [{"name": r["name"], "axes": {str(k): str(v) for k, v in (r.get("axes") or {}).items()}}
                  for r in plan.get("runs", [])], dict(select))


def best_rows(sweep: Sweep) -> list[Row]:
    """One Row per configuration, in the order the configurations first appear. The best values of the
    selection axes are chosen among those whose every seed has finished; while none has (a sweep run in
    pieces), among those with some finished seeds, by their mean, and the row says how many finished.
    With the plan's select.seeds: best, by the first seed's value alone (as the runner chose)."""
    sign = 1 if sweep.mode == "max" else -1
    groups: dict[tuple, dict[tuple, list[RunRecord]]] = {}
    for run in sweep.runs:
        key = tuple(run.axes.get(a, "") for a in sweep.config_axes())
        sel = tuple(run.axes.get(a, "") for a in sweep.select_over)
        groups.setdefault(key, {}).setdefault(sel, []).append(run)
    rows = []
    for key, by_sel in groups.items():
        scored = []
        for sel, runs in by_sel.items():
            usable = [v for v in (r.final(sweep.metric) for r in runs) if v is not None]
            mean = statistics.fmean(usable) if usable else None
            if sweep.seeds_best:  # the better first seed: what chose the value the other seeds ran at
                lead = runs[0].final(sweep.metric)
                rank = (lead is not None, sign * lead if lead is not None else 0.0)
            else:  # complete before partial before nothing; then the better mean
                rank = (len(usable) == len(runs) and bool(usable), bool(usable), sign * mean if usable else 0.0)
            scored.append((rank, mean, sel, runs, usable))
        _, value, sel, runs, usable = max(scored, key=lambda t: t[0])
        config = dict(zip(sweep.config_axes(), key))
        rows.append(Row(config, ",".join(f"{k}={v}" for k, v in config.items()) or "all",
                        dict(zip(sweep.select_over, sel)), value,
                        statistics.stdev(usable) if len(usable) > 1 else None, len(runs), runs, len(by_sel),
                        finished=len(usable)))
    return rows


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def human(n: float | None) -> str:
    if n is None or n < 0:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def _mean(runs: list[RunRecord], key: str) -> float | None:
    values = [r.results.get(key) for r in runs if isinstance(r.results.get(key), (int, float))]
    return statistics.fmean(values) if values else None


def table_data(sweep: Sweep) -> tuple[list[str], list[list[Any]]]:
    """Headers and raw cells of the per-configuration table (numbers unformatted)."""
    rows = best_rows(sweep)
    metric_name = sweep.metric.split("/")[-1]
    headers = [*sweep.config_axes(), *(f"best {a.rsplit('.', 1)[-1]}" for a in sweep.select_over),
               metric_name, *(["± std", "seeds"] if any(r.seeds > 1 for r in rows) else []),
               "params", "state size", "tokens/s", "wall s", "state"]
    out = []
    for r in rows:
        states = sorted({run.state for run in r.runs})
        cells = [*(r.config.get(a, "") for a in sweep.config_axes()), *(r.chosen.get(a, "") for a in sweep.select_over),
                 r.value]
        if "seeds" in headers:
            cells += [r.spread, r.seeds if r.finished in (0, r.seeds) else f"{r.finished} of {r.seeds}"]
        cells += [_mean(r.runs, "parameters"), _mean(r.runs, "state_size"), _mean(r.runs, "tokens_per_s"),
                  _mean(r.runs, "wall_time_s"), "/".join(states)]
        out.append(cells)
    return headers, out


def markdown_table(sweep: Sweep) -> str:
    headers, rows = table_data(sweep)
    formatted = []
    for cells in rows:
        line = []
        for h, c in zip(headers, cells):
            if h in ("params", "state size"):
                line.append(human(c))
            elif h == "tokens/s":
                line.append(f"{c:,.0f}" if c is not None else "-")
            elif h == "wall s":
                line.append(f"{c:.0f}" if c is not None else "-")
            else:
                line.append(_fmt(c))
        formatted.append(line)
    numeric = {i for i, h in enumerate(headers) if h not in sweep.config_axes() and h != "state"}
    sep = ["---:" if i in numeric else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in formatted]
    return "\n".join(lines)


def csv_table(sweep: Sweep) -> str:
    headers, rows = table_data(sweep)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(headers)
    for row in rows:
        w.writerow(["" if c is None else c for c in row])
    return buf.getvalue()


def runs_csv(sweep: Sweep) -> str:
    """Every run: its axes, state, final metric, parameters, state size, tokens/s, wall time, steps, peak GPU
    memory (GiB, where the run had a GPU), error."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["run", *sweep.axes, "state", sweep.metric, "parameters", "state_size", "tokens_per_s",
                "wall_time_s", "steps", "peak_memory_gib", "error"])
    for r in sweep.runs:
        res = r.results
        w.writerow([r.name, *(r.axes.get(a, "") for a in sweep.axes), r.state, _fmt(r.final(sweep.metric), 6),
                    res.get("parameters", ""), res.get("state_size", ""), res.get("tokens_per_s", ""),
                    res.get("wall_time_s", ""), res.get("step", ""), res.get("peak_memory_gib", ""),
                    r.error.replace("\n", " ")[:300]])
    return buf.getvalue()


def evaluations_csv(sweep: Sweep) -> str:
    """Every evaluation of every run, one row per held-out set: run, step, periodic or final, set and
    the sweep's metric there (`eval/<set>/<name>` with the metric's <name>): learning curves per set."""
    name = sweep.metric.rsplit("/", 1)[-1]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["run", "step", "evaluation", "set", name])
    for r in sweep.runs:
        for m in r.metrics:
            kind = "final" if m.get("final") else "periodic"
            for key, value in m.items():
                parts = key.split("/")
                if len(parts) == 3 and parts[0] == "eval" and parts[2] == name and isinstance(value, (int, float)):
                    w.writerow([r.name, m.get("step", ""), kind, parts[1], _fmt(value, 6)])
    return buf.getvalue()


def not_needed(sweep: Sweep) -> list[str]:
    """The planned runs, started or not, that the sweep does not run because of the plan's select.enough
    or select.seeds: best, by the plan's metric and mode (the runner's rule, hybrid/sweep/order.py)."""
    from hybrid.sweep.order import Rules, decide  # noqa: PLC0415

    rules = Rules(sweep.plan_select.get("mode", "max"), sweep.enough, sweep.seeds_best)
    if not rules.active:
        return []
    metric = sweep.plan_select.get("metric", "eval/all/accuracy")
    records = {r.name: r for r in sweep.runs}

    def finished(name: str) -> bool:
        return name in records and records[name].state in FINAL_STATES

    decided = decide([(p["name"], p["axes"]) for p in sweep.planned], sweep.select_over, rules, finished,
                     lambda name: records[name].final(metric) if name in records else None)
    return [p["name"] for p in sweep.planned if p["name"] in decided.unnecessary]


def not_started(sweep: Sweep, skipped: set[str] | None = None) -> list[str]:
    """The planned runs with no run directory yet that the sweep would still run (not those that
    select.enough or select.seeds: best make unnecessary), in the plan's order. `skipped`: `not_needed`'s
    names where the caller has them already."""
    skipped = set(not_needed(sweep)) if skipped is None else skipped
    started = {r.name for r in sweep.runs}
    return [p["name"] for p in sweep.planned if p["name"] not in started and p["name"] not in skipped]


def unfinished(sweep: Sweep, skipped: set[str] | None = None) -> list[RunRecord]:
    """Runs not finished that the sweep would still run (not those select.enough made unnecessary).
    `skipped`: as `not_started`'s."""
    skipped = set(not_needed(sweep)) if skipped is None else skipped
    return [r for r in sweep.runs if r.state not in FINAL_STATES and r.name not in skipped]
