"""The order of a sweep's runs under `select.enough`, and which runs it makes unnecessary.

With `select: {over: [train.lr], enough: 0.99}` a sweep runs the first-listed learning rate of every
configuration before any configuration's second, and so on down the list; before a run starts, it is
skipped if its configuration already has a learning rate whose every seed finished at 0.99 or better
(mode max; at or below for mode min). The best-of-learning-rate value of such a configuration is then
at least `enough` whatever the skipped runs would have given: a grid that mostly succeeds (attention
on MQAR) costs about one run per configuration instead of one per learning rate. List the likeliest
value first. A configuration is the runs' axes other than `select.over` and `seed`, as in reports.
The check is made when a run starts: with more jobs at a time than the first round has runs, second
choices start beside the first ones and the rounds save nothing.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from hybrid.sweep.spec import RunSpec, SweepSpec


def configurations(runs: Iterable[tuple[str, dict[str, str]]], over: list[str]) -> dict[tuple, dict[tuple, list[str]]]:
    """(name, axes) of runs -> configuration -> choice -> run names, in the runs' order: a configuration is
    the axes other than `over` and `seed`, a choice the values of `over`. (The report uses it on a plan.)"""
    grouped: dict[tuple, dict[tuple, list[str]]] = {}
    for name, axes in runs:
        config = tuple((a, v) for a, v in axes.items() if a not in over and a != "seed")
        grouped.setdefault(config, {}).setdefault(tuple(axes.get(a, "") for a in over), []).append(name)
    return grouped


def meets(value: Any, enough: float, mode: str) -> bool:
    """Whether a final metric value reached `enough` (at or above for mode max, at or below for min)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    return value >= enough if mode == "max" else value <= enough


def reached_by(choices: dict[tuple, list[str]], own: tuple, good: Callable[[str], bool]) -> str | None:
    """The first run of another choice than `own` whose every run (seed) is `good`, else None."""
    for choice, names in choices.items():
        if choice != own and all(good(n) for n in names):
            return names[0]
    return None


def _axes(spec: SweepSpec) -> list[tuple[str, dict[str, str]]]:
    return [(r.name, r.axes) for r in spec.runs]


def _choice_of(spec: SweepSpec, run: RunSpec) -> tuple:
    return tuple(run.axes.get(a, "") for a in spec.select_over)


def scheduled(spec: SweepSpec, runs: list[RunSpec]) -> list[RunSpec]:
    """`runs` in sweep order, or with `select.enough`: by the rank of their choice among their
    configuration's choices in sweep order (every configuration's first choice first), then sweep order."""
    if spec.enough is None:
        return list(runs)
    rank = {name: i for choices in configurations(_axes(spec), spec.select_over).values()
            for i, names in enumerate(choices.values()) for name in names}
    position = {run.name: i for i, run in enumerate(spec.runs)}
    return sorted(runs, key=lambda r: (rank[r.name], position[r.name]))


def satisfied_by(spec: SweepSpec, run: RunSpec, run_dir) -> str | None:
    """With `select.enough`: the name of a finished run whose choice makes `run` unnecessary (a run of
    the same configuration, another choice, every seed of which finished at `enough` or better), else
    None. `run_dir(spec, run)` gives a run's RunDir."""
    if spec.enough is None:
        return None
    by_name = {r.name: r for r in spec.runs}

    def good(name: str) -> bool:
        d = run_dir(spec, by_name[name])
        return d.finished and meets((d.results().get("final") or {}).get(spec.metric), spec.enough, spec.mode)

    config = tuple((a, v) for a, v in run.axes.items() if a not in spec.select_over and a != "seed")
    return reached_by(configurations(_axes(spec), spec.select_over)[config], _choice_of(spec, run), good)
