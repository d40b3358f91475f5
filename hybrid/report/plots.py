"""Plots of a sweep (matplotlib, Agg backend: no display needed), one PNG each:

    metric_vs_config.png     the selection metric per configuration: lines over d_model when
                             d_model is an axis (one line per remaining configuration; a panel per
                             value of the first other axis when two or more remain, as Zoology's
                             Figure 2 draws MQAR), else bars; accuracies on a [0, 1] axis
    loss_curves.png          training loss against step, each configuration at its best lr
    metric_curves.png        the selection metric of the periodic evaluations against step and against
                             the run's wall-clock time (resumed runs count only the time they trained)
    metric_vs_length.png     the metric per held-out length (extrapolation beyond the training length)
    metric_vs_num_kv_pairs.png   the metric per number of key-value pairs (MQAR)

Slices come from the final evaluation's "eval/<key>=<value>/<metric>" entries; a plot whose data
no run has is not drawn.
"""
from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hybrid.report.tables import Row, Sweep, best_rows  # noqa: E402


def _numeric(label: str) -> float | None:
    try:
        return float(label)
    except ValueError:
        return None


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _bounded(metric: str) -> bool:
    """A metric in [0, 1] (accuracy, exact match): its axis spans [0, 1], so that 0.997 against 0.9968
    reads as the tie it is and not as a gap filling the plot."""
    return metric.rsplit("/", 1)[-1] in ("accuracy", "exact_match")


def _width_panels(rows: list[Row], x_axis: str, panel_axis: str | None) -> dict[str, dict[str, list]]:
    """panel -> line -> [(d_model, value)]: a panel per value of `panel_axis` (one panel without it),
    a line per configuration of the remaining axes."""
    panels: dict[str, dict[str, list]] = {}
    for r in rows:
        panel = f"{panel_axis}={r.config.get(panel_axis, '')}" if panel_axis else ""
        line = ",".join(f"{k}={v}" for k, v in r.config.items() if k not in (x_axis, panel_axis)) or "all"
        value = r.value if r.value is not None else float("nan")
        panels.setdefault(panel, {}).setdefault(line, []).append((_numeric(r.config[x_axis]), value))
    return panels


def _plot_widths(sweep: Sweep, rows: list[Row], x_axis: str):
    """Zoology's Figure 2 layout: the metric against d_model (log 2), a line per architecture, a panel
    per value of the first other axis when there are two or more (e.g. the (length, pairs) setting)."""
    others = [a for a in sweep.config_axes() if a != x_axis]
    panels = _width_panels(rows, x_axis, others[0] if len(others) >= 2 else None)
    cols = min(4, len(panels))
    n_rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(4.4 * cols if cols > 1 else 6.4, 3.8 * n_rows + 0.4),
                             sharey=True, squeeze=False)
    for ax, (title, lines) in zip(axes.flat, panels.items()):
        for label, points in lines.items():
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("d_model")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    return fig, axes.flat[0]


def metric_vs_config(sweep: Sweep, rows: list[Row], out: Path) -> Path | None:
    values = [(r, r.value) for r in rows]
    if not any(v is not None for _, v in values):
        return None
    name = sweep.metric.split("/")[-1]
    x_axis = next((a for a in sweep.config_axes() if a.rsplit(".", 1)[-1] == "d_model"), None)
    if x_axis is not None and all(_numeric(r.config.get(x_axis, "")) is not None for r in rows):
        fig, ax = _plot_widths(sweep, rows, x_axis)
    else:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        labels = [r.label for r, _ in values]
        ax.bar(range(len(values)), [v if v is not None else 0 for _, v in values])
        ax.set_xticks(range(len(values)), labels, rotation=30, ha="right", fontsize=7)
        ax.grid(alpha=0.3)
    if _bounded(sweep.metric):
        ax.set_ylim(-0.02, 1.02)  # the axes share y
    ax.set_ylabel(f"{name} (best {', '.join(sweep.select_over) or 'run'})")
    fig.suptitle(f"{sweep.metric} by configuration", fontsize=11)
    return _save(fig, out / "metric_vs_config.png")


def loss_curves(rows: list[Row], out: Path) -> Path | None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    drawn = False
    for r in rows:
        run = r.runs[0]
        points = [(m["step"], m["train/loss"]) for m in run.metrics if isinstance(m.get("train/loss"), (int, float))]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], label=r.label, linewidth=1)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_yscale("log")
    ax.set_title("training loss (each configuration at its best lr)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, out / "loss_curves.png")


def metric_curves(sweep: Sweep, rows: list[Row], out: Path) -> Path | None:
    """The selection metric against step and against wall-clock seconds, each configuration at its
    best lr (the seed with the most periodic evaluations): how fast each gets there, in steps and in time."""
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(10.0, 4.2), sharey=True)
    drawn = False
    for r in rows:
        per_run = [[(m["step"], m.get("time"), m[sweep.metric]) for m in run.metrics
                    if isinstance(m.get(sweep.metric), (int, float)) and not m.get("final")] for run in r.runs]
        points = max(per_run, key=len, default=[])
        if len(points) < 2:
            continue
        line, = by_step.plot([p[0] for p in points], [p[2] for p in points], label=r.label, linewidth=1)
        timed = [p for p in points if isinstance(p[1], (int, float))]
        by_time.plot([p[1] for p in timed], [p[2] for p in timed], color=line.get_color(), linewidth=1)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    by_step.set_xlabel("step")
    by_time.set_xlabel("wall-clock seconds")
    by_step.set_ylabel(sweep.metric)
    by_step.legend(fontsize=7)
    for ax in (by_step, by_time):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{sweep.metric} during training (each configuration at its best lr)")
    return _save(fig, out / "metric_curves.png")


def _slice_points(run, pattern: re.Pattern) -> dict[float, float]:
    """{slice value: the metric} from one run's final evaluation."""
    final = run.results.get("final") or {}
    return {x: v for k, v in final.items()
            if (m := pattern.match(k)) and (x := _numeric(m.group(1))) is not None and isinstance(v, (int, float))}


def metric_vs_slice(sweep: Sweep, rows: list[Row], key: str, out: Path, xlabel: str) -> Path | None:
    """The metric per value of slice `key` (e.g. length, num_kv_pairs), one line per configuration:
    the mean over its finished seeds, with their range shaded when there are several."""
    metric = sweep.metric.split("/")[-1]
    pattern = re.compile(rf"^eval/{re.escape(key)}=([^/]+)/{re.escape(metric)}$")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    drawn = False
    for r in rows:
        per_run = [p for p in (_slice_points(run, pattern) for run in r.runs) if p]
        xs = sorted(set.intersection(*(set(p) for p in per_run))) if per_run else []
        if len(xs) < 2:
            continue
        values = [[p[x] for p in per_run] for x in xs]
        label = r.label + (f" ({len(per_run)} seeds)" if len(per_run) > 1 else "")
        line, = ax.plot(xs, [sum(v) / len(v) for v in values], marker="o", label=label)
        if len(per_run) > 1:
            ax.fill_between(xs, [min(v) for v in values], [max(v) for v in values], color=line.get_color(), alpha=0.15)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by {xlabel}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, out / f"metric_vs_{key}.png")


def all_plots(sweep: Sweep, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    rows = best_rows(sweep)
    made = [metric_vs_config(sweep, rows, out), loss_curves(rows, out), metric_curves(sweep, rows, out),
            metric_vs_slice(sweep, rows, "length", out, "sequence length"),
            metric_vs_slice(sweep, rows, "num_kv_pairs", out, "key-value pairs")]
    return [p for p in made if p is not None]
