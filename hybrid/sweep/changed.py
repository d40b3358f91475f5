"""Whether a finished run was made with the config its sweep would give it now.

A sweep names a run by its axis values only, so a run folder from before a change to the base config,
the sweep's shared overrides or a command-line override keeps its name and its old results. The sweep
does not run it again (its results are kept, never overwritten), but says what differs, so that a table
is not read as the new configuration's. Keys absent on either side (a setting added to the framework
since the run, or dropped) and the ones that do not change what a run computes are not compared.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

# where the run was written and how it reported: not what it computed
IGNORED = ("name", "train.run_dir", "train.out_dir", "train.progress", "train.tensorboard", "train.log_every")
SHOWN = 3  # differences named per run


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    return a == b


def config_changes(recorded: Path, planned: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """[(dotted key, recorded value, planned value), ...] where the run's config.yaml and the config the sweep
    plans for it (RootConfig.to_dict()) disagree; [] when the file is missing or unreadable (nothing to say)."""
    try:
        old = _flat(yaml.safe_load(recorded.read_text()) or {})
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return []
    new = _flat(planned)
    return [(key, old[key], new[key]) for key in sorted(old.keys() & new.keys())
            if not key.startswith(IGNORED) and not _same(old[key], new[key])]


def describe(changes: list[tuple[str, Any, Any]]) -> str:
    """"train.lr 0.003 -> 0.01, model.d_model 32 -> 48 (and 2 more)"."""
    shown = ", ".join(f"{key} {old!r} -> {new!r}" for key, old, new in changes[:SHOWN])
    return shown + (f" (and {len(changes) - SHOWN} more)" if len(changes) > SHOWN else "")


def stale_runs(spec: Any, runs: list[Any], planned: dict[str, Any]) -> dict[str, str]:
    """{run name: its differences, described} for the finished runs among `runs` whose recorded config differs
    from the one planned now (`planned`: run name -> RootConfig)."""
    from hybrid.sweep.runner import run_dir  # noqa: PLC0415

    out = {}
    for run in runs:
        rd = run_dir(spec, run)
        if rd.finished and run.name in planned:
            changes = config_changes(rd.file("config.yaml"), planned[run.name].to_dict())
            if changes:
                out[run.name] = describe(changes)
    return out
