"""Where each configuration of a sweep is drawn, so that plots of many configurations stay readable.

Up to FEW configurations share one panel, a colour and a legend entry each. More are split: a panel
per value of the first axis that varies (when two or more vary, e.g. MQAR's (length, pairs) setting),
a colour per value of the next (e.g. the architecture, the same colour in every panel) and a line
style per value of the rest (e.g. d_model), with one legend for the colours and one for the styles.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from hybrid.report.tables import Row  # noqa: E402

FEW = 10
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", ":", "-.")
WIDTHS = (1.0, 1.8)  # line widths, once the line styles have been used


@dataclass
class Facets:
    panels: list[str]  # panel titles, in order ("" for a single panel)
    where: dict[str, tuple[int, dict]] = field(default_factory=dict)  # row label -> (panel, plot kwargs)
    legend: list[tuple[str, dict]] = field(default_factory=list)  # (text, kwargs of its sample line)

    @property
    def texts(self) -> list[str]:
        return [text for text, _ in self.legend]

    def handles(self) -> tuple[list[Line2D], list[str]]:
        return [Line2D([], [], **kw) for _, kw in self.legend], self.texts


def cycle_colors() -> list:
    """matplotlib's colour cycle."""
    return plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])


def hue(i: int, colors: list) -> dict:
    """The style of the i-th colour: the colour cycle's, with a marker once the cycle has been used."""
    if i < len(colors):
        return dict(color=colors[i])
    return dict(color=colors[i % len(colors)], marker=MARKERS[(i // len(colors) - 1) % len(MARKERS)], markevery=0.1,
                markersize=4)


def _short(axis: str) -> str:
    return axis.rsplit(".", 1)[-1]


def _ordered(values) -> list:
    return list(dict.fromkeys(values))


def facets(rows: list[Row], axes: list[str]) -> Facets:
    """The panels, styles and legend for `rows`, whose configurations vary along `axes`."""
    colors = cycle_colors()
    varying = [a for a in axes if len({r.config.get(a, "") for r in rows}) > 1]
    if len(rows) <= FEW or not varying:
        out = Facets([""])
        for i, r in enumerate(rows):
            out.where[r.label] = (0, hue(i, colors))
            out.legend.append((r.label, hue(i, colors)))
        return out
    panel_axis = varying[0] if len(varying) >= 2 else None
    color_axis = varying[1] if panel_axis else varying[0]
    rest = [a for a in varying if a not in (panel_axis, color_axis)]
    panels = _ordered(r.config.get(panel_axis, "") for r in rows) if panel_axis else [""]
    hues = _ordered(r.config.get(color_axis, "") for r in rows)
    kinds = _ordered(tuple(r.config.get(a, "") for a in rest) for r in rows)
    hue_of = {h: hue(i, colors) for i, h in enumerate(hues)}
    kind_of = {k: dict(linestyle=LINESTYLES[i % len(LINESTYLES)],
                       linewidth=WIDTHS[(i // len(LINESTYLES)) % len(WIDTHS)]) for i, k in enumerate(kinds)}
    out = Facets([f"{panel_axis}={p}" for p in panels] if panel_axis else [""])
    for r in rows:
        panel = panels.index(r.config.get(panel_axis, "")) if panel_axis else 0
        kind = tuple(r.config.get(a, "") for a in rest)
        out.where[r.label] = (panel, {**hue_of[r.config.get(color_axis, "")], **kind_of[kind]})
    out.legend = [(f"{_short(color_axis)}={h}", hue_of[h]) for h in hues]
    if rest:
        out.legend += [(",".join(f"{_short(a)}={v}" for a, v in zip(rest, k)), dict(color="0.3", **kind_of[k]))
                       for k in kinds]
    return out


def legend_columns(texts: list[str], fig_width: float) -> int:
    """Columns of a legend of `texts` at font size 7 that fit a figure `fig_width` inches wide."""
    entry = max((len(t) for t in texts), default=1) * 0.055 + 0.6  # inches an entry takes
    return max(1, min(len(texts), int(fig_width / entry)))


def panel_grid(n_panels: int, legend: list[str], kinds: int = 1, width: float = 4.4, height: float = 3.4,
               sharey: bool | str = "row"):
    """A figure of `kinds` rows of up to 4 panels each per `n_panels` (e.g. by step, then by time),
    with room at the bottom for a legend of the texts `legend`; returns (figure, [[axes of kind k for
    each panel]], the tight_layout rect that keeps the panels above the legend)."""
    cols = min(4, n_panels)
    per_kind = -(-n_panels // cols)
    fig_width = max(width * cols, 6.4)
    legend_rows = -(-len(legend) // legend_columns(legend, fig_width)) if legend else 0
    bottom = 0.2 + 0.17 * legend_rows  # inches
    fig, grid = plt.subplots(kinds * per_kind, cols, figsize=(fig_width, height * kinds * per_kind + bottom),
                             squeeze=False, sharey=sharey)
    flat = list(grid.flat)
    by_kind = []
    for k in range(kinds):
        cells = flat[k * per_kind * cols:(k + 1) * per_kind * cols]
        for ax in cells[n_panels:]:
            ax.set_visible(False)
        by_kind.append(cells[:n_panels])
    return fig, by_kind, (0, bottom / fig.get_figheight(), 1, 1)


def add_legend(fig, handles: list, texts: list[str]) -> None:
    fig.legend(handles, texts, loc="lower center", fontsize=7, frameon=False,
               ncol=legend_columns(texts, fig.get_figwidth()))
