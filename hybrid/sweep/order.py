"""The order of a sweep's runs under `select.enough` and `select.seeds: best`, and which runs they make
unnecessary (or have to wait for).

A configuration is the runs' axes other than `select.over` and `seed`, as in reports; a choice is a
value of `select.over` (a learning rate); a configuration's runs of one choice differ by seed, in the
order the sweep lists its seeds, the first being the choice's lead run.

`select.enough: 0.99`: the first-listed choice of every configuration runs before any configuration's
second, and so on down the list; a run is skipped once another choice of its configuration has every
seed finished at 0.99 or better (mode max; at or below for mode min). The best-of-choice value of such a
configuration is then at least `enough` whatever the skipped runs would have given: a grid that mostly
succeeds (attention on MQAR) costs about one run per configuration instead of one per choice. List the
likeliest value first. A configuration's next choice waits while runs of its earlier choices that decide
it are still to finish in the sweep (`earlier_choices`), so more jobs at a time than the round has runs
do not start choices that would turn out unnecessary: the free jobs take other configurations' runs.

`select.seeds: best`: only the first seed runs at every choice; the other seeds run at the choice
whose first seed did best, once every first-seed run of the configuration has finished (or been made
unnecessary by `enough`, which then counts the first seed alone). The other seeds of every other
choice are unnecessary: tuning on one seed, then the spread at the chosen value, for about
choices + seeds - 1 runs per configuration instead of choices x seeds. Every first-seed run is
scheduled before any other seed's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
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
    return _number(value) and (value >= enough if mode == "max" else value <= enough)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class Rules:
    """What select asks: the mode, `enough` (or None), `seeds: best` (or all)."""
    mode: str = "max"
    enough: float | None = None
    seeds_best: bool = False

    @property
    def active(self) -> bool:
        return self.enough is not None or self.seeds_best


@dataclass
class Decisions:
    """Per run name: why it is not needed (the run that makes it so, and the rule), or that it waits for
    first-seed runs of its configuration to finish (`seeds: best`)."""
    unnecessary: dict[str, str] = field(default_factory=dict)
    waiting: dict[str, list[str]] = field(default_factory=dict)  # run -> the unfinished first-seed runs


def _reached(choices: dict[tuple, list[str]], considered: Callable[[list[str]], list[str]],
             good: Callable[[str], bool]) -> tuple | None:
    """The first choice whose considered runs are all good, else None."""
    return next((c for c, names in choices.items() if all(good(n) for n in considered(names))), None)


def _configuration(choices: dict[tuple, list[str]], rules: Rules, finished: Callable[[str], bool],
                   value: Callable[[str], Any], out: Decisions) -> None:
    """The decisions for one configuration's runs (see the module docstring)."""
    considered = (lambda names: names[:1]) if rules.seeds_best else (lambda names: names)
    if rules.enough is not None:
        reached = _reached(choices, considered,
                           lambda n: finished(n) and meets(value(n), rules.enough, rules.mode))
        if reached is not None:  # (under seeds: best, the later seeds follow the best first seed, below)
            for choice, names in choices.items():
                for name in considered(names) if choice != reached else []:
                    if not finished(name):
                        out.unnecessary[name] = f"{choices[reached][0]} reached select.enough {rules.enough:g}"
    if not rules.seeds_best or all(len(names) < 2 for names in choices.values()):
        return
    leads = {choice: names[0] for choice, names in choices.items()}
    pending = [n for n in leads.values() if not finished(n) and n not in out.unnecessary]
    if pending:
        for names in choices.values():
            for name in names[1:]:
                if name not in out.unnecessary:
                    out.waiting[name] = pending
        return
    sign = 1 if rules.mode == "max" else -1
    done = [c for c, n in leads.items() if finished(n)]
    best = max(done, key=lambda c: sign * value(leads[c]) if _number(value(leads[c])) else float("-inf"),
               default=None)
    for choice, names in choices.items():
        for name in names[1:] if choice != best else []:
            if not finished(name):
                out.unnecessary.setdefault(name, f"the first seed did best at {leads[best]}"
                                           if best is not None else "no first-seed run finished")


def decide(runs: Iterable[tuple[str, dict[str, str]]], over: list[str], rules: Rules,
           finished: Callable[[str], bool], value: Callable[[str], Any]) -> Decisions:
    """Which of `runs` (name, axes) are unnecessary or waiting, given which runs are `finished` (a final
    state) and their final metric `value`. The runner's and the report's one rule."""
    out = Decisions()
    if rules.active:
        for choices in configurations(runs, over).values():
            _configuration(choices, rules, finished, value, out)
    return out


def rules_of(spec: SweepSpec) -> Rules:
    return Rules(spec.mode, spec.enough, spec.seeds_best)


def _axes(spec: SweepSpec) -> list[tuple[str, dict[str, str]]]:
    return [(r.name, r.axes) for r in spec.runs]


def scheduled(spec: SweepSpec, runs: list[RunSpec]) -> list[RunSpec]:
    """`runs` in sweep order; with `select.enough` or `seeds: best`, every first seed before any other
    seed, then by the rank of their choice among their configuration's choices in sweep order (every
    configuration's first choice first), then sweep order."""
    if not rules_of(spec).active:
        return list(runs)
    rank, later = {}, set()
    for choices in configurations(_axes(spec), spec.select_over).values():
        for i, names in enumerate(choices.values()):
            rank.update({name: i for name in names})
            later.update(names[1:] if spec.seeds_best else [])
    position = {run.name: i for i, run in enumerate(spec.runs)}
    return sorted(runs, key=lambda r: (r.name in later, rank[r.name], position[r.name]))


def earlier_choices(spec: SweepSpec) -> dict[str, list[str]]:
    """With `select.enough`: per run, the runs of its configuration's earlier choices whose results decide
    whether it is needed (their first seeds under `seeds: best`, else every seed); {} without it."""
    if spec.enough is None:
        return {}
    out: dict[str, list[str]] = {}
    for choices in configurations(_axes(spec), spec.select_over).values():
        before: list[str] = []
        for names in choices.values():
            out.update({name: list(before) for name in names})
            before += names[:1] if spec.seeds_best else names
    return out


def decisions(spec: SweepSpec, run_dir) -> Decisions:
    """`decide` on the sweep's run folders; `run_dir(spec, run)` gives a run's RunDir."""
    dirs = {r.name: run_dir(spec, r) for r in spec.runs}
    return decide(_axes(spec), spec.select_over, rules_of(spec), lambda n: dirs[n].finished,
                  lambda n: (dirs[n].results().get("final") or {}).get(spec.metric))
