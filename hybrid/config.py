"""Configs: YAML pieces composed with omegaconf, checked strictly, converted once to dataclasses.

A config file may start with a `defaults:` list naming other config files to merge first (paths
relative to the file, or to the `configs/` folder; ".yaml" may be left out); later pieces win,
the file itself last, then `key=value` overrides from the command line. `${...}` interpolation
works across pieces (e.g. `vocab_size: ${task.vocab_size}`). Every key is checked against the
schema: a misspelt key fails with its path, the file that set it and the nearest valid key; so are
the task's settings, the plugin names and the trainer's device and threads. A file is refused
before it is merged if it holds more than MAX_VALUES values or nests deeper than MAX_NESTING (a
YAML anchor repeated a few levels deep expands to millions).

    # configs/experiments/small_jamba.yaml
    defaults: [layouts/jamba, models/small, tasks/mqar, trainers/cpu]
    model: {d_model: 128}
"""
from __future__ import annotations

import copy
import dataclasses
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hybrid.errors import ConfigError, shown
from hybrid.layout import Layout, compile_layout
from hybrid.model_config import ModelConfig
from hybrid.registry import load_plugins
from hybrid.training.config import TrainConfig
from hybrid.typed_config import from_dict

CONFIG_ROOT_ENV = "HYBRID_CONFIGS"
COMMAND_LINE = "<command line>"
MAX_VALUES = 100_000  # values in one config file, aliases expanded
MAX_NESTING = 50
MAX_THREADS = 1024
MODULE_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d{1,3})?")


@dataclass
class RootConfig:
    """The whole run: model, task, training, and what to import first."""

    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "the model (see ModelConfig)"})
    task: dict[str, Any] = field(default_factory=dict, metadata={"help": "{type: <registered task>, <its arguments>}"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "trainer settings (see TrainConfig)"})
    plugins: list[str] = field(default_factory=list, metadata={"help": "modules to import first (custom layers and tasks)"})
    seed: int = field(default=0, metadata={"help": "seed of parameters, data and sampling"})
    name: str | None = field(default=None, metadata={"help": "run name (default: the config file's stem)"})
    # Filled by load_config: where each key came from, and the compiled layout.
    origins: dict[str, str] = field(default_factory=dict, repr=False, metadata={"internal": True})
    layout: Layout | None = field(default=None, repr=False, metadata={"internal": True})

    def __post_init__(self):
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2^63), got {self.seed}")
        if self.name is not None and (not self.name or "\0" in self.name or len(self.name) > 200
                                      or ".." in self.name.split("/")):
            raise ValueError(f"name must be 1 to 200 characters, usable as a folder name, got {shown(self.name)}")

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (what a run directory records)."""
        out = {}
        for f in dataclasses.fields(self):
            if not f.metadata.get("internal"):
                value = getattr(self, f.name)
                out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        return out


def config_roots(near: Path | None = None) -> list[Path]:
    """Folders that `defaults:` entries are looked up in, after the including file's own folder."""
    roots = []
    if os.environ.get(CONFIG_ROOT_ENV):
        roots.append(Path(os.environ[CONFIG_ROOT_ENV]))
    for start in [near, Path.cwd()]:
        if start is None:
            continue
        for parent in [start, *start.resolve().parents]:
            if (parent / "configs").is_dir():
                roots.append(parent / "configs")
                break
    roots.append(Path(__file__).resolve().parent.parent / "configs")  # a source checkout
    return roots


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long, or with a NUL byte, is no file
        return False


def _find(name: str, base: Path, key: str, file: str) -> Path:
    candidates = [name] if name.endswith((".yaml", ".yml")) else [name + ".yaml", name + ".yml", name]
    for root in [base, *config_roots(base)]:
        for c in candidates:
            p = (root / c)
            if _is_file(p):
                return p
    raise ConfigError(f"cannot find config {shown(name)} (looked in {base} and "
                      f"{', '.join(map(str, config_roots(base)))})", key=key, file=file)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"not UTF-8 text (byte {err.start}): a config is a YAML text file", file=str(path)) from None
    except IsADirectoryError:
        raise ConfigError("is a folder; give a YAML config file", file=str(path)) from None
    except FileNotFoundError:
        raise ConfigError("no such config file", file=str(path)) from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read it: {getattr(err, 'strerror', None) or err}", file=str(path)) from None


_PARSED: dict[tuple[str, str], dict] = {}  # (file, text) -> its checked mapping: a sweep reads one file per run
_BASES: dict[str, tuple[DictConfig, dict[str, str]]] = {}  # repr(pieces) -> (pieces merged, their origins)
CACHED = 32  # entries in each
_MERGING = threading.Lock()
_REMEMBERING = threading.Lock()


def _remember(cache: dict, key: Any, value: Any) -> Any:
    with _REMEMBERING:  # threads may add at once: each drops its own oldest entry
        if len(cache) >= CACHED:
            cache.pop(next(iter(cache)))
        cache[key] = value
    return value


def _read_yaml(path: Path) -> dict:
    text = _read_text(path)
    if (str(path), text) in _PARSED:
        return copy.deepcopy(_PARSED[str(path), text])
    data = _parse_yaml(path, text)
    _remember(_PARSED, (str(path), text), copy.deepcopy(data))
    return data


def _parse_yaml(path: Path, text: str) -> dict:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        column = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{column}not valid YAML: {getattr(err, 'problem', err)}", file=str(path)) from None
    except ValueError as err:  # an integer of more than 4300 digits
        raise ConfigError(f"not valid YAML: {str(err).split(';')[0]}", file=str(path)) from None
    except RecursionError:
        raise ConfigError(f"not valid YAML: nested deeper than {MAX_NESTING} levels", file=str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"a config file must hold a mapping at the top level, got {shown(data)}", file=str(path))
    _check_size(data, str(path))
    return data


def _check_size(data: Any, file: str) -> None:
    """At most MAX_VALUES values and MAX_NESTING levels, counted without expanding anything."""
    count, stack = 0, [(data, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ConfigError(f"holds more than {MAX_VALUES:,} values (YAML anchors used many times?); a config is "
                              "far smaller", file=file)
        if depth > MAX_NESTING:
            raise ConfigError(f"nests mappings and lists more than {MAX_NESTING} levels deep", file=file)
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((c, depth + 1) for c in children)


def _pieces(path: Path, chain: tuple[Path, ...] = ()) -> list[tuple[str, dict]]:
    """(file, mapping) pieces in merge order: a file's defaults first, then the file."""
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"defaults form a cycle: {' -> '.join(p.name for p in chain + (path,))}", file=str(path))
    data = _read_yaml(path)
    defaults = data.pop("defaults", [])
    if isinstance(defaults, str):
        defaults = [defaults]
    if not isinstance(defaults, list):
        raise ConfigError("defaults must be a list of config files", key="defaults", file=str(path))
    out: list[tuple[str, dict]] = []
    for i, name in enumerate(defaults):
        if not isinstance(name, str):
            raise ConfigError(f"expected a config file name, got {name!r}", key=f"defaults[{i}]", file=str(path))
        out += _pieces(_find(name, path.parent, f"defaults[{i}]", str(path)), chain + (path,))
    out.append((str(path), data))
    return out


def _record_origins(data: Any, file: str, origins: dict[str, str], prefix: str = "") -> None:
    if isinstance(data, dict):
        for k, v in data.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            origins[key] = file
            _record_origins(v, file, origins, key)


def origin_of(key: str | None, origins: dict[str, str]) -> str | None:
    """The file that set `key` (or its nearest parent key)."""
    if not key:
        return None
    key = key.split("[")[0]
    while key:
        if key in origins:
            return origins[key]
        key = key.rpartition(".")[0]
    return None


def _merged(pieces: list[tuple[str, dict]], overrides: list[str], origins: dict[str, str], main_file: str) -> dict:
    """The pieces, then the overrides, merged by omegaconf with interpolations resolved."""
    try:
        confs = [_override(text) for text in overrides]  # first: a malformed override before a clash of files
        with _MERGING:  # every merge deep-copies the remembered base, and omegaconf's copy unlinks its nodes a while
            merged = _with_overrides(_merged_pieces(pieces, origins), confs, origins)
        return OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or None
        raise ConfigError(_first_line(err), key=key, file=origin_of(key, origins) or main_file) from None


def _first_line(err: OmegaConfBaseException) -> str:
    return f"{getattr(err, 'msg', err)}".splitlines()[0][:300]


def _with_overrides(base: DictConfig, confs: list[DictConfig], origins: dict[str, str]) -> DictConfig:
    """A copy of `base` with the overrides merged in, their origins recorded."""
    try:  # all at once: omegaconf copies the base once, not once per override
        together = OmegaConf.merge(base, *confs)
    except (OmegaConfBaseException, TypeError, ValueError):
        together = None
    merged = base
    for conf in confs:
        if together is None:  # again one at a time, for the error: a clash names both sides
            merged = _merge(merged, conf, COMMAND_LINE, origins)
        _record_origins(OmegaConf.to_container(conf), COMMAND_LINE, origins)
    return together if together is not None else merged


def _merged_pieces(pieces: list[tuple[str, dict]], origins: dict[str, str]) -> DictConfig:
    """The pieces merged one at a time (a clash names both files), their origins recorded; remembered,
    since every run of a sweep starts from the same pieces. Not to be changed: merging copies it."""
    key = repr(pieces)
    if key not in _BASES:
        found: dict[str, str] = {}
        merged = None
        try:
            for file, data in pieces:
                conf = OmegaConf.create(data)
                merged = conf if merged is None else _merge(merged, conf, file, found)
                _record_origins(OmegaConf.to_container(conf), file, found)
        finally:
            origins.update(found)
        _remember(_BASES, key, (merged, found))
    merged, found = _BASES[key]
    origins.update(found)
    return merged


def _override(text: str) -> DictConfig:
    """One `key=value` override as a config (its value read as YAML, as omegaconf reads it)."""
    key = text.partition("=")[0]
    if "=" not in text or not key.strip():
        raise ConfigError(f"overrides are key=value, e.g. model.d_model=512; got {shown(text)}", key=text[:60] or None,
                          file=COMMAND_LINE)
    if any(not part.strip() for part in key.split(".")):
        raise ConfigError(f"{shown(key)} has an empty part; keys are dotted names like model.d_model",
                          key=key, file=COMMAND_LINE)
    try:
        dot = OmegaConf.from_dotlist([text])
    except OmegaConfBaseException as err:  # e.g. an interpolation it cannot parse
        raise ConfigError(_first_line(err), key=key, file=COMMAND_LINE) from None
    except (yaml.YAMLError, ValueError, TypeError) as err:  # the YAML reading of the value
        reason = (str(err).splitlines() or [type(err).__name__])[0].split(";")[0][:160]
        raise ConfigError(f"cannot read the value of {shown(text)} ({reason}); quote it to pass a string",
                          key=key, file=COMMAND_LINE) from None
    return dot


def _merge(base: Any, conf: Any, file: str, origins: dict[str, str]) -> Any:
    try:
        return OmegaConf.merge(base, conf)
    except OmegaConfBaseException:
        raise
    except (TypeError, ValueError) as err:  # omegaconf's bare TypeError when a mapping meets a list
        old, new = OmegaConf.to_container(base), OmegaConf.to_container(conf)
        key = _clash(old, new)
        raise ConfigError(f"{err}: {file} gives a {_kind(_at(new, key))} where {origin_of(key, origins) or 'a default'}"
                          f" has a {_kind(_at(old, key))}; write the same kind, or null to drop it", key=key,
                          file=file) from None


def _clash(old: Any, new: Any, prefix: str = "") -> str:
    """The first key where `new` puts a mapping over a list or a list over a mapping."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k, v in new.items():
            if k in old:
                found = _clash(old[k], v, f"{prefix}.{k}" if prefix else str(k))
                if found:
                    return found
        return ""
    return prefix if isinstance(old, (dict, list)) and isinstance(new, (dict, list)) else ""


def _at(data: Any, key: str) -> Any:
    for part in key.split(".") if key else []:
        data = data[part] if isinstance(data, dict) and part in data else None
    return data


def _kind(value: Any) -> str:
    return "mapping" if isinstance(value, dict) else "list" if isinstance(value, list) else type(value).__name__


def load_config(source: Any, overrides: list[str] | None = None) -> RootConfig:
    """A checked RootConfig from a YAML path (or a mapping) plus `key=value` overrides."""
    if isinstance(source, RootConfig):
        source = source.to_dict()
    if isinstance(source, ModelConfig):
        source = {"model": dataclasses.asdict(source)}
    pieces = _pieces(Path(source)) if isinstance(source, (str, Path)) else [("<mapping>", dict(source))]
    main_file = pieces[-1][0]
    origins: dict[str, str] = {}
    data = _merged(pieces, overrides or [], origins, main_file)
    try:
        load_plugins(check_plugins(data.get("plugins"), "plugins"), file=origin_of("plugins", origins))
        root = from_dict(RootConfig, {k: v for k, v in data.items()})
        root.origins = origins
        if root.name is None and isinstance(source, (str, Path)):
            root.name = Path(source).stem
        m = root.model
        root.layout = compile_layout(m.layers, m.layout, m.shared, m.overrides, key="model")
        _check_run_settings(root)
    except ConfigError as err:
        raise err.located(file=origin_of(err.key, origins) or main_file) from None
    return root


def check_plugins(modules: Any, key: str) -> list[str]:
    """`modules` as a list of importable module names (dotted, absolute), else a ConfigError at `key`."""
    if modules is None:
        return []
    if not isinstance(modules, list):
        raise ConfigError(f"expected a list of module names, e.g. [my_pkg.layers], got {shown(modules)}", key=key)
    for i, name in enumerate(modules):
        if not isinstance(name, str) or not MODULE_RE.fullmatch(name):
            raise ConfigError(f"expected a module name like my_pkg.layers (absolute, dotted), got {shown(name)}",
                              key=f"{key}[{i}]")
    return modules


def _check_run_settings(root: RootConfig) -> None:
    """What the dataclasses accept but would fail at run time: the task's settings, device and threads."""
    if root.task:
        from hybrid.tasks.base import check_task  # noqa: PLC0415  (tasks import torch and numpy)
        check_task(root.task)
    device = root.train.device
    if not DEVICE_RE.fullmatch(device):
        raise ConfigError(f"expected auto, cpu, cuda, cuda:<index> or mps, got {shown(device)}", key="train.device")
    threads = root.train.threads
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise ConfigError(f"expected 1 to {MAX_THREADS} CPU threads (or null: torch's default), got {threads}",
                          key="train.threads")


def dump_config(root: RootConfig) -> str:
    """The resolved config as YAML."""
    return OmegaConf.to_yaml(OmegaConf.create(root.to_dict()))


_ = (DictConfig, ListConfig)  # re-exported types users may meet in plugins
