"""Plots of a sweep (matplotlib, Agg backend: no display needed), one PNG each:

    metric_vs_config.png     the selection metric per configuration: lines over d_model when
                             d_model is an axis (one line per remaining configuration; a panel per
                             value of the first other axis when two or more remain, as Zoology's
                             Figure 2 draws MQAR), else bars; accuracies on a [0, 1] axis
    loss_curves.png          training loss against step, each configuration at its best lr
    metric_curves.png        the selection metric of the periodic evaluations against step and against
                             the run's wall-clock time (resumed runs count only the time they trained)
                             (these two: past facets.FEW configurations, a panel per value of the first
                             axis, a colour per value of the next, a line style per value of the rest)
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

from hybrid.report.facets import MARKERS, add_legend, cycle_colors, facets, panel_grid  # noqa: E402
from hybrid.report.tables import Row, Sweep, best_rows  # noqa: E402


def _numeric(label: str) -> float | None:
    try:
        return float(label)
    except ValueError:
        return None


def _save(fig, path: Path, rect: tuple[float, float, float, float] | None = None) -> Path:
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _bounded(metric: str) -> bool:
    """A metric in [0, 1] (accuracy, exact match): its axis spans [0, 1], so that 0.997 against 0.9968
    reads as the tie it is and not as a gap filling the plot."""
    return metric.rsplit("/", 1)[-1] in ("accuracy", "exact_match")


def _width_panels(rows: list[Row], x_axis: str, panel_axis: str | None, metric: str) -> dict[str, dict[str, list]]:
    """panel -> line -> [(d_model, value, lowest seed, highest seed)]: a panel per value of `panel_axis`
    (one panel without it), a line per configuration of the remaining axes."""
    panels: dict[str, dict[str, list]] = {}
    for r in rows:
        panel = f"{panel_axis}={r.config.get(panel_axis, '')}" if panel_axis else ""
        line = ",".join(f"{k}={v}" for k, v in r.config.items() if k not in (x_axis, panel_axis)) or "all"
        value = r.value if r.value is not None else float("nan")
        seeds = [v for v in (run.final(metric) for run in r.runs) if v is not None] or [value]
        panels.setdefault(panel, {}).setdefault(line, []).append((_numeric(r.config[x_axis]), value, min(seeds),
                                                                  max(seeds)))
    return panels


def _plot_widths(sweep: Sweep, rows: list[Row], x_axis: str):
    """Zoology's Figure 2 layout: the metric against d_model (log 2), a line per architecture, a panel
    per value of the first other axis when there are two or more (e.g. the (length, pairs) setting).
    A line keeps its colour and marker in every panel and is nudged sideways a little, so that lines
    meeting at 1.0 stay apart; a bar spans the seeds' range where a point has several; one legend."""
    others = [a for a in sweep.config_axes() if a != x_axis]
    panels = _width_panels(rows, x_axis, others[0] if len(others) >= 2 else None, sweep.metric)
    labels = list(dict.fromkeys(label for lines in panels.values() for label in lines))
    colors = cycle_colors()
    style = {label: dict(color=colors[i % len(colors)], marker=MARKERS[i % len(MARKERS)])
             for i, label in enumerate(labels)}
    fig, (cells,), rect = panel_grid(len(panels), labels, height=3.8, sharey=True)
    handles = {}
    for ax, (title, lines) in zip(cells, panels.items()):
        for label, points in lines.items():
            points.sort()
            nudge = 2 ** (0.04 * (labels.index(label) - (len(labels) - 1) / 2))
            xs = [p[0] * nudge for p in points]
            below = [max(0.0, p[1] - p[2]) for p in points]  # the mean can lie an ulp outside equal seeds
            above = [max(0.0, p[3] - p[1]) for p in points]
            handles[label] = ax.errorbar(xs, [p[1] for p in points], yerr=[below, above], capsize=2, markersize=5,
                                         linewidth=1.2, **style[label])
        ax.set_xscale("log", base=2)
        ax.set_xlabel(x_axis.rsplit(".", 1)[-1])
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    add_legend(fig, [handles[label] for label in labels], labels)
    return fig, cells[0], rect


def metric_vs_config(sweep: Sweep, rows: list[Row], out: Path) -> Path | None:
    values = [(r, r.value) for r in rows]
    if not any(v is not None for _, v in values):
        return None
    name = sweep.metric.split("/")[-1]
    x_axis = next((a for a in sweep.config_axes() if a.rsplit(".", 1)[-1] == "d_model"), None)
    rect = None
    if x_axis is not None and all(_numeric(r.config.get(x_axis, "")) is not None for r in rows):
        fig, ax, rect = _plot_widths(sweep, rows, x_axis)
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
    return _save(fig, out / "metric_vs_config.png", rect)


def loss_curves(sweep: Sweep, rows: list[Row], out: Path) -> Path | None:
    found = facets(rows, sweep.config_axes())
    fig, (panels,), rect = panel_grid(len(found.panels), found.texts)
    drawn = False
    for r in rows:
        run = r.runs[0]
        points = [(m["step"], m["train/loss"]) for m in run.metrics if isinstance(m.get("train/loss"), (int, float))]
        if points:
            panel, style = found.where[r.label]
            panels[panel].plot([p[0] for p in points], [p[1] for p in points], **{"linewidth": 1, **style})
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    for ax, title in zip(panels, found.panels):
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    panels[0].set_ylabel("training loss (nats/token)")
    fig.suptitle("training loss (each configuration at its best lr)", fontsize=11)
    add_legend(fig, *found.handles())
    return _save(fig, out / "loss_curves.png", rect)


def metric_curves(sweep: Sweep, rows: list[Row], out: Path) -> Path | None:
    """The selection metric against step (top) and against wall-clock seconds (below), each configuration
    at its best lr (the seed with the most periodic evaluations): how fast each gets there, in steps and in time."""
    found = facets(rows, sweep.config_axes())
    fig, (by_step, by_time), rect = panel_grid(len(found.panels), found.texts, kinds=2)
    drawn = False
    for r in rows:
        per_run = [[(m["step"], m.get("time"), m[sweep.metric]) for m in run.metrics
                    if isinstance(m.get(sweep.metric), (int, float)) and not m.get("final")] for run in r.runs]
        points = max(per_run, key=len, default=[])
        if not points:
            continue
        panel, style = found.where[r.label]
        style = {"linewidth": 1, **style, **({"marker": "o", "markersize": 3} if len(points) == 1 else {})}
        by_step[panel].plot([p[0] for p in points], [p[2] for p in points], **style)
        timed = [p for p in points if isinstance(p[1], (int, float))]
        by_time[panel].plot([p[1] for p in timed], [p[2] for p in timed], **style)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    for kind, xlabel in ((by_step, "step"), (by_time, "wall-clock seconds")):
        for ax, title in zip(kind, found.panels):
            ax.set_xlabel(xlabel)
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3)
            if _bounded(sweep.metric):
                ax.set_ylim(-0.02, 1.02)
        kind[0].set_ylabel(sweep.metric.rsplit("/", 1)[-1])
    fig.suptitle(f"{sweep.metric} during training (each configuration at its best lr)", fontsize=11)
    add_legend(fig, *found.handles())
    return _save(fig, out / "metric_curves.png", rect)


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
    made = [metric_vs_config(sweep, rows, out), loss_curves(sweep, rows, out), metric_curves(sweep, rows, out),
            metric_vs_slice(sweep, rows, "length", out, "sequence length"),
            metric_vs_slice(sweep, rows, "num_kv_pairs", out, "key-value pairs")]
    return [p for p in made if p is not None]
