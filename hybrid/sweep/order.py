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

from typing import Any

from hybrid.sweep.spec import RunSpec, SweepSpec
from hybrid.training.run_dir import RunDir


def _config_of(spec: SweepSpec, run: RunSpec) -> tuple:
    return tuple((a, v) for a, v in run.axes.items() if a not in spec.select_over and a != "seed")


def _choice_of(spec: SweepSpec, run: RunSpec) -> tuple:
    return tuple(run.axes.get(a, "") for a in spec.select_over)


def scheduled(spec: SweepSpec, runs: list[RunSpec]) -> list[RunSpec]:
    """`runs` in sweep order, or with `select.enough`: by the rank of their choice among their
    configuration's choices in sweep order (every configuration's first choice first), then sweep order."""
    if spec.enough is None:
        return list(runs)
    ranks: dict[tuple, dict[tuple, int]] = {}
    for run in spec.runs:
        choices = ranks.setdefault(_config_of(spec, run), {})
        choices.setdefault(_choice_of(spec, run), len(choices))
    position = {run.name: i for i, run in enumerate(spec.runs)}
    return sorted(runs, key=lambda r: (ranks[_config_of(spec, r)][_choice_of(spec, r)], position[r.name]))


def _good_enough(spec: SweepSpec, results: dict[str, Any]) -> bool:
    value = (results.get("final") or {}).get(spec.metric)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    return value >= spec.enough if spec.mode == "max" else value <= spec.enough


def satisfied_by(spec: SweepSpec, run: RunSpec, run_dir) -> str | None:
    """With `select.enough`: the name of a finished run whose choice makes `run` unnecessary (a run of
    the same configuration, another choice, every seed of which finished at `enough` or better), else
    None. `run_dir(spec, run)` gives a run's RunDir."""
    if spec.enough is None:
        return None
    config, own = _config_of(spec, run), _choice_of(spec, run)
    by_choice: dict[tuple, list[RunSpec]] = {}
    for other in spec.runs:
        if _config_of(spec, other) == config and _choice_of(spec, other) != own:
            by_choice.setdefault(_choice_of(spec, other), []).append(other)
    for others in by_choice.values():
        dirs: list[RunDir] = [run_dir(spec, o) for o in others]
        if all(d.finished and _good_enough(spec, d.results()) for d in dirs):
            return others[0].name
    return None
