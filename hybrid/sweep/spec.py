"""Sweep files: a base config, overrides shared by every run, and the axes that vary.

    # experiments/quickstart/sweep.yaml
    name: quickstart
    config: ../../configs/experiments/quickstart.yaml   # relative to this file
    overrides: {train.steps: 300}                       # every run
    grid:                                               # cartesian product of the axes
      arch:                                             # a named axis: label -> several keys at once
        transformer: {model.layout: "(A F) x2"}
        mamba: {model.layout: "M x4"}
      model.d_model: [32, 64]                           # a plain axis: one key, a list of values
      train.lr: [1.0e-3, 3.0e-3]
    zip:                                                # lists of one length, varied together;
      task.vocab_size: [64, 128]                        #   crossed with the grid
      model.vocab_size: [64, 128]
    select: {over: [train.lr], metric: eval/all/accuracy, mode: max}   # best-of-lr in reports
    # select.enough: 0.99 would run the first-listed learning rate of every configuration first and skip
    # a configuration's other learning rates once one reached 0.99 on every seed; select.seeds: best runs
    # the first seed at every learning rate and the other seeds at its best only (hybrid/sweep/order.py)
    gpus_per_run: 2                                     # each run data-parallel over 2 GPUs (torchrun)

Keys are dotted config paths (any override `hybrid train` accepts); values may be mappings or
lists (written into the run's config as they are) of plain YAML data. A sweep has at most
MAX_RUNS runs, counted before any is made. A run is named after its axis values in order,
e.g. "arch=mamba,d_model=32,lr=0.003,vocab_size=64" (a named axis gives its label; a plain axis the
last part of its key, or the whole key where two would clash). Results go to `<out>/runs/<name>/`,
`out` being the sweep file's folder unless given.
"""
from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hybrid.config import COMMAND_LINE, RootConfig, _is_file, _read_yaml, load_config
from hybrid.errors import ConfigError, did_you_mean, shown

TOP_KEYS = ("name", "config", "overrides", "grid", "zip", "select", "out", "jobs", "gpus_per_run")
SELECT_KEYS = ("over", "metric", "mode", "enough", "seeds")
MAX_RUNS = 10_000


@dataclass
class RunSpec:
    name: str
    overrides: dict[str, Any]  # dotted key -> value, shared overrides first
    axes: dict[str, str]  # axis name -> value label, as in the run name
    group: str  # the name without the `select.over` axes: runs of one configuration


@dataclass
class SweepSpec:
    path: Path
    name: str
    config: Path
    runs: list[RunSpec]
    select_over: list[str] = field(default_factory=lambda: ["train.lr"])
    metric: str = "eval/all/accuracy"
    mode: str = "max"
    enough: float | None = None  # select.enough: a configuration whose choice reached it needs no other
    seeds_best: bool = False  # select.seeds: best: the seeds after the first run at the first seed's best choice
    out: Path | None = None
    jobs: int | str = 1
    gpus_per_run: int = 1  # > 1: each run is a torchrun job of that many ranks (data-parallel)
    varied: dict[str, str] = field(default_factory=dict)  # dotted key an axis sets -> that axis, e.g. "grid.setting"

    def axis_setting(self, key: str) -> str | None:
        """The axis that sets `key` (or a key above or below it), e.g. "grid.model.d_model"; None if no axis does."""
        for varied, where in self.varied.items():
            if key == varied or key.startswith(varied + ".") or varied.startswith(key + "."):
                return where
        return None

    @property
    def out_dir(self) -> Path:
        return self.out or self.path.parent

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "sweep_file": str(self.path), "config": _below_cwd(self.config),
                "select": {"over": self.select_over, "metric": self.metric, "mode": self.mode,
                           **({"enough": self.enough} if self.enough is not None else {}),
                           **({"seeds": "best"} if self.seeds_best else {})},
                "runs": [{"name": r.name, "overrides": r.overrides, "axes": r.axes, "group": r.group} for r in self.runs]}


def override_strings(overrides: dict[str, Any]) -> list[str]:
    """`{"a.b": [1, 2]}` -> `["a.b=[1, 2]"]` (values as JSON, which the dotlist parser reads back)."""
    out = []
    for key, value in overrides.items():
        text = value if isinstance(value, str) and not _needs_quoting(value) else json.dumps(value)
        out.append(f"{key}={text}")
    return out


def _needs_quoting(text: str) -> bool:
    # strings the dotlist parser would read as another type, or as an interpolation
    if text == "" or text.startswith(("[", "{", "'", '"')) or "${" in text:
        return True
    try:
        return not isinstance(yaml.safe_load(text), str)
    except yaml.YAMLError:
        return True


def _label(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, separators=(",", ":"))
    else:
        text = str(value)
    text = re.sub(r"[^A-Za-z0-9.+\-_=]+", "_", text).strip("_")
    return text[:40] or "_"


def _short_names(keys: list[str]) -> dict[str, str]:
    tails = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (t if tails.count(t) == 1 else k) for k, t in zip(keys, tails)}


def _plain(value: Any, file: str, key: str) -> Any:
    """`value` if it is plain YAML data (what a config can hold), else a ConfigError."""
    if isinstance(value, dict):
        for k, v in value.items():
            _plain(v, file, f"{key}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _plain(v, file, f"{key}[{i}]")
    elif not isinstance(value, (str, int, float, bool, type(None))):
        raise ConfigError(f"expected a string, number, boolean, list or mapping, got {shown(value)} "
                          f"({type(value).__name__}); quote it to pass it as a string", key=key, file=file)
    return value


def parse_value(text: str, file: str, key: str) -> Any:
    """The YAML value of the right-hand side of a key=value override."""
    try:
        return yaml.safe_load(text) if text.strip() else text
    except (yaml.YAMLError, ValueError) as err:
        raise ConfigError(f"{shown(text)} is not a YAML value ({str(err).splitlines()[0]}); quote it to pass a "
                          "string", key=key, file=file) from None


def parse_jobs(value: Any, file: str | None = None, key: str = "--jobs") -> int | str:
    """A positive integer (or an integer string) or "auto", else a ConfigError."""
    if value == "auto":
        return "auto"
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) < 6:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ConfigError(f"expected a positive integer or auto, got {shown(value)}", key=key, file=file)


def _as_overrides(value: Any, file: str, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): _plain(v, file, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, list) and all(isinstance(v, str) and "=" in v for v in value):
        out = {}
        for i, item in enumerate(value):
            k, _, v = item.partition("=")
            out[k.strip()] = parse_value(v, file, f"{key}[{i}]")
        return out
    raise ConfigError("expected a mapping of dotted keys to values ({train.steps: 300}) or a list of "
                      f"key=value strings, got {shown(value)}", key=key, file=file)


def _axes(section: Any, file: str, where: str) -> list[tuple[str, list[tuple[str, dict[str, Any]]]]]:
    """[(axis name, [(value label, overrides), ...]), ...] of a `grid:` section."""
    if section is None:
        return []
    if not isinstance(section, dict):
        raise ConfigError(f"expected a mapping of axes, e.g. {{train.lr: [1e-3, 3e-3]}}, got {shown(section)}",
                          key=where, file=file)
    axes = []
    for name, values in section.items():
        key = f"{where}.{name}"
        if isinstance(values, dict):  # named axis: label -> {dotted key: value}
            if not values:
                raise ConfigError("a named axis needs at least one labelled value", key=key, file=file)
            for label in values:
                if "/" in str(label) or "\\" in str(label) or "\0" in str(label) or str(label) in ("", ".", ".."):
                    raise ConfigError(f"label {str(label)!r} cannot be part of a run's folder name (no / or \\, "
                                      "not empty, . or ..)", key=f"{key}.{label}", file=file)
            options = [(str(label), _as_overrides(bundle, file, f"{key}.{label}")) for label, bundle in values.items()]
        elif isinstance(values, list):
            if not values:
                raise ConfigError("an axis needs at least one value", key=key, file=file)
            options = [(_label(v), {str(name): _plain(v, file, f"{key}[{i}]")}) for i, v in enumerate(values)]
        else:
            raise ConfigError(f"expected a list of values (or a mapping label -> overrides for a named axis), "
                              f"got {shown(values)}; write [{shown(values)}] for a single value", key=key, file=file)
        axes.append((str(name), options))
    return axes


def _zip(section: Any, file: str) -> list[tuple[str, list[tuple[str, dict[str, Any]]]]]:
    """The zipped keys as one compound axis, or nothing."""
    if section is None:
        return []
    if not isinstance(section, dict) or not section:
        raise ConfigError(f"expected a mapping of keys to lists of one length, got {shown(section)}", key="zip",
                          file=file)
    section = {str(k): v for k, v in section.items()}
    lengths = {}
    for k, v in section.items():
        if not isinstance(v, list) or not v:
            raise ConfigError(f"expected a non-empty list, got {shown(v)}", key=f"zip.{k}", file=file)
        _plain(v, file, f"zip.{k}")
        lengths[k] = len(v)
    if len(set(lengths.values())) > 1:
        raise ConfigError("zipped lists must have one length; got " + ", ".join(f"{k}: {n}" for k, n in lengths.items()),
                          key="zip", file=file)
    keys = list(section)
    short = _short_names(keys)
    n = next(iter(lengths.values()))
    options = []
    for i in range(n):
        bundle = {k: section[k][i] for k in keys}
        options.append((",".join(f"{short[k]}={_label(v)}" for k, v in bundle.items()), bundle))
    return [("zip", options)]


def _varied_keys(axes: list[tuple[str, list[tuple[str, dict[str, Any]]]]], file: str) -> dict[str, str]:
    """{dotted key: the axis that sets it ("grid.<axis>" or "zip.<key>")}; a key set by two axes is an error
    (the later would silently win over the earlier in every run)."""
    varied: dict[str, str] = {}
    for axis, options in axes:
        keys = {k for _, bundle in options for k in bundle}
        for key in sorted(keys):
            where = f"zip.{key}" if axis == "zip" else f"grid.{axis}"
            for other, other_where in varied.items():
                if key == other or key.startswith(other + ".") or other.startswith(key + "."):
                    raise ConfigError(f"{key} is set by two axes, {other_where} and {where}; a key may vary in one "
                                      "place only (the later would silently replace the earlier in every run)",
                                      key=where, file=file)
            varied[key] = where
    return varied


def _select(select: Any, file: str) -> dict[str, Any]:
    """The `select:` section, its keys and the types of their values checked."""
    select = select or {}
    if not isinstance(select, dict):
        raise ConfigError(f"expected {{over: [train.lr], metric: eval/all/accuracy, mode: max}}, got {shown(select)}",
                          key="select", file=file)
    for key in select:
        if key not in SELECT_KEYS:
            raise ConfigError(f"unknown key {key!r}{did_you_mean(key, SELECT_KEYS)}; select has: "
                              f"{', '.join(SELECT_KEYS)}", key=f"select.{key}", file=file)
    if select.get("mode", "max") not in ("max", "min"):
        raise ConfigError(f"expected max or min, got {shown(select['mode'])}", key="select.mode", file=file)
    if not isinstance(select.get("metric", ""), str):
        raise ConfigError(f"expected a logged metric name like eval/all/accuracy, got {shown(select['metric'])}",
                          key="select.metric", file=file)
    enough = select.get("enough")
    if enough is not None and (isinstance(enough, bool) or not isinstance(enough, (int, float))
                               or not math.isfinite(enough)):
        raise ConfigError(f"expected a number, the metric's value at which a configuration needs no more of its "
                          f"choices (e.g. 0.99 for accuracy with mode max), got {shown(enough)}",
                          key="select.enough", file=file)
    if select.get("seeds", "all") not in ("all", "best"):
        raise ConfigError(f"expected all (every seed at every choice) or best (the first seed at every choice, "
                          f"the others at its best), got {shown(select['seeds'])}", key="select.seeds", file=file)
    over = select.get("over")
    if over is not None and not (isinstance(over, str) or (isinstance(over, list)
                                                            and all(isinstance(o, str) for o in over))):
        raise ConfigError(f"expected an axis name or a list of them, e.g. [train.lr], got {shown(over)}",
                          key="select.over", file=file)
    return select


def _check_count(axes: list[tuple[str, list]], file: str) -> None:
    """At most MAX_RUNS runs, counted before any is made."""
    count = 1
    for _, options in axes:
        count *= len(options)
    if count > MAX_RUNS:
        raise ConfigError(f"the axes make {count:,} runs, more than the {MAX_RUNS:,} a sweep may have "
                          f"(hybrid.sweep.spec.MAX_RUNS): " + " x ".join(f"{n} ({len(o)})" for n, o in axes),
                          key="grid", file=file)


def _select_over(select: dict[str, Any], axis_names: list[str], file: str) -> list[str]:
    """select.over as a list of the sweep's axes (default: train.lr when it is one), checked against the
    axes together with what needs it (select.enough; select.seeds: best, which also needs a seed axis)."""
    over = select.get("over")
    if over is None:  # default: best of the learning rates, when the learning rate is an axis
        over = ["train.lr"] if "train.lr" in axis_names else []
    over = [over] if isinstance(over, str) else list(over)
    for name in over:
        if name not in axis_names:
            raise ConfigError(f"select.over names {name!r}, which is not an axis of the sweep; axes: "
                              f"{', '.join(axis_names) or 'none'}{did_you_mean(name, axis_names)}",
                              key="select.over", file=file)
    if select.get("enough") is not None and not over:
        raise ConfigError("select.enough skips a configuration's remaining choices of select.over, but the sweep "
                          "selects over no axis (no train.lr axis and no select.over)", key="select.enough", file=file)
    if select.get("seeds") == "best" and not (over and "seed" in axis_names):
        raise ConfigError("select.seeds: best runs the first seed at every choice of select.over and the other "
                          "seeds at its best, but the sweep " + ("selects over no axis" if not over else
                          "has no seed axis (grid: {seed: [0, 1]})"), key="select.seeds", file=file)
    return over


def _below_cwd(path: Path) -> str:
    """`path` relative to the working directory when it lies below it (so that a plan checked in with
    its study names no machine's folders), else whole."""
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def load_sweep(path: Path | str, *, check: bool = True) -> SweepSpec:
    """Read and check a sweep file. With `check`, every run's config is resolved (nothing is built),
    so a misspelt key fails now, naming the sweep file and the axis, not hours into the sweep."""
    path = Path(path)
    if not _is_file(path):
        raise ConfigError("no such sweep file", file=str(path))
    file = str(path)
    data = _read_yaml(path)
    for key in data:
        if key not in TOP_KEYS:
            raise ConfigError(f"unknown key {key!r}{did_you_mean(key, TOP_KEYS)}; a sweep file has: "
                              f"{', '.join(TOP_KEYS)}", key=str(key), file=file)
    if "config" not in data:
        raise ConfigError("missing `config:`, the base config every run starts from (a path relative to this file)",
                          key="config", file=file)
    if not isinstance(data["config"], str):
        raise ConfigError(f"expected a path, got {shown(data['config'])}", key="config", file=file)
    config = path.parent / data["config"]
    if not _is_file(config):
        raise ConfigError(f"base config {shown(data['config'])} not found (looked for {shown(str(config), 200)})",
                          key="config", file=file)
    config = config.resolve()

    select = _select(data.get("select"), file)
    mode = select.get("mode", "max")

    shared = _as_overrides(data.get("overrides"), file, "overrides")
    axes = _axes(data.get("grid"), file, "grid") + _zip(data.get("zip"), file)
    axis_names = [name for name, _ in axes]
    varied = _varied_keys(axes, file)
    over = _select_over(select, axis_names, file)
    _check_count(axes, file)
    short = _short_names([n for n in axis_names if n != "zip"])
    runs, seen = [], {}
    for combo in itertools.product(*[options for _, options in axes]) if axes else [()]:
        overrides = dict(shared)
        labels: dict[str, str] = {}
        parts, group_parts = [], []
        for (axis, _), (label, bundle) in zip(axes, combo):
            overrides.update(bundle)
            labels[axis] = label
            part = label if axis == "zip" else f"{short[axis]}={label}"
            parts.append(part)
            if axis not in over:
                group_parts.append(part)
        name = ",".join(parts) or "base"
        if name in seen:
            raise ConfigError(f"two runs would both be named {name!r}; give the values distinct labels "
                              "(e.g. a named axis)", key="grid", file=file)
        seen[name] = True
        runs.append(RunSpec(name, overrides, labels, ",".join(group_parts) or "base"))

    jobs = parse_jobs(data.get("jobs", 1), file, "jobs")
    gpus_per_run = data.get("gpus_per_run", 1)
    if not isinstance(gpus_per_run, int) or isinstance(gpus_per_run, bool) or gpus_per_run < 1:
        raise ConfigError(f"expected a positive integer, got {shown(gpus_per_run)}", key="gpus_per_run", file=file)
    if data.get("out") is not None and not isinstance(data["out"], str):
        raise ConfigError(f"expected a folder path, got {shown(data['out'])}", key="out", file=file)
    if data.get("name") is not None and not isinstance(data["name"], (str, int)):
        raise ConfigError(f"expected a name, got {shown(data['name'])}", key="name", file=file)
    spec = SweepSpec(path=path, name=str(data.get("name") or path.parent.name), config=config, runs=runs,
                     select_over=over, metric=str(select.get("metric", "eval/all/accuracy")), mode=mode,
                     enough=None if select.get("enough") is None else float(select["enough"]), seeds_best=select.get("seeds") == "best",
                     out=(path.parent / data["out"]).resolve() if data.get("out") else None, jobs=jobs,
                     gpus_per_run=gpus_per_run, varied=varied)
    if check:
        for run in runs:
            resolve_run(spec, run)
    return spec


def _axis_of(spec: SweepSpec, run: RunSpec, key: str | None) -> str:
    """Where in the sweep file the override `key` came from, for error messages."""
    if key:
        data = _read_yaml(spec.path)
        for section in ("grid", "zip"):
            for axis, values in (data.get(section) or {}).items():
                if axis == key or (isinstance(values, dict) and any(
                        key == k or key.startswith(k + ".") for b in values.values() if isinstance(b, dict) for k in b)):
                    return f"{section}.{axis}"
                if key.startswith(str(axis) + "."):
                    return f"{section}.{axis}"
        if key in (data.get("overrides") or {}):
            return f"overrides.{key}"
    return f"run {run.name}"


def resolve_run(spec: SweepSpec, run: RunSpec) -> RootConfig:
    """The checked config of one run: base config + overrides + name and run directory."""
    overrides = override_strings(run.overrides) + [f"name={json.dumps(run.name)}",
                                                    f"train.run_dir={json.dumps(str(spec.out_dir / 'runs' / run.name))}"]
    try:
        return load_config(spec.config, overrides)
    except ConfigError as err:
        if err.file == COMMAND_LINE or err.file is None:
            where = _axis_of(spec, run, err.key)
            raise ConfigError(f"{err.message} (in {where}, run {run.name!r})", key=err.key, file=str(spec.path)) from None
        raise ConfigError(f"{err.message} (run {run.name!r} of sweep {spec.path})", key=err.key, file=err.file) from None
