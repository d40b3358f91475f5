"""Registries of named, typed building blocks: layers here, tasks in `hybrid.tasks`.

A layer is an `nn.Module` class constructed as `cls(d_model, config)` where `config` is an
instance of its dataclass. The registry also records what the generation cache needs to know
(the kind of inference state the layer keeps) and how the layer is named in other projects'
layout notations (Megatron's hybrid pattern symbols, HF `layer_types`).

Third-party layers register the same way, from a module named in a config's `plugins:` list or
from an installed package's entry point in the group `hybrid.layers`.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import threading
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, Iterator, Literal, TypeVar

from hybrid.errors import ConfigError, closest
from hybrid.typed_config import from_dict

log = logging.getLogger(__name__)
_LOADING = threading.RLock()  # one thread loads the built-in layers and plugins; the others wait for them

StateKind = Literal["none", "kv", "kv_window", "recurrent"]
STATE_KINDS = ("none", "kv", "kv_window", "recurrent")
# "mixer": mixes information across positions (Mamba, attention); "channel": per-position (MLP, MoE).
Role = Literal["mixer", "channel"]

E = TypeVar("E")


class Registry(Generic[E]):
    """Name -> entry, with helpful errors and lazy loading of entry-point plugins."""

    def __init__(self, kind: str, entry_point_group: str | None = None, builtins: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self.builtins = builtins  # module whose import registers the built-in entries
        self._entries: dict[str, E] = {}
        self._entry_points_loaded = False
        self._loading = False

    def add(self, name: str, entry: E, *, override: bool = False) -> None:
        if name in self._entries and not override:
            raise ValueError(f"{self.kind} {name!r} is already registered (by "
                             f"{_origin(self._entries[name])}); pass override=True to replace it")
        self._entries[name] = entry

    def get(self, name: str) -> E:
        self._load_entry_points()
        if name not in self._entries:
            match = closest(name, self._entries)
            hint = f"; closest match: {match!r}" if match else ""
            raise ConfigError(f"unknown {self.kind} type {name!r}{hint}. Registered {self.kind}s: "
                              f"{', '.join(sorted(self._entries))}. A custom {self.kind} is "
                              f"registered by a module named under `plugins:`")
        return self._entries[name]

    def get_typed(self, spec: Any, key: str, what: str) -> tuple[E, dict[str, Any]]:
        """(entry, arguments) of a `{type: name, <arguments>}` mapping; errors name `key`."""
        if not isinstance(spec, dict) or "type" not in spec:
            raise ConfigError(f"expected {what}: a mapping with a `type` (one of {', '.join(self.names())}) and "
                              f"its arguments; got {spec!r}", key=key)
        try:
            entry = self.get(spec["type"])
        except ConfigError as err:
            raise err.located(key=f"{key}.type") from None
        return entry, {k: v for k, v in spec.items() if k != "type"}

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[E]:
        return iter(self._entries[n] for n in self.names())

    def _load_entry_points(self) -> None:
        """Import the built-in entries and the plugins' once. Another thread asking meanwhile waits for them
        (a sweep resolves its runs' configs from several); the loading thread itself, asking again from a
        module it imports, goes on with what is registered so far."""
        if self._entry_points_loaded:
            return
        with _LOADING:
            if self._entry_points_loaded or self._loading:
                return
            self._loading = True
            try:
                self._import_entries()
            finally:
                self._loading = False
                self._entry_points_loaded = True

    def _import_entries(self) -> None:
        if self.builtins:
            importlib.import_module(self.builtins)
        if self.entry_point_group is None:
            return
        for ep in entry_points(group=self.entry_point_group):
            try:
                ep.load()
            except Exception as err:  # a broken plugin must not break every command
                log.warning("could not load %s plugin %s (%s): %s", self.kind, ep.name, ep.value, err)


def _origin(entry: Any) -> str:
    cls = getattr(entry, "cls", entry)
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', '?')}"


@dataclass(frozen=True)
class LayerEntry:
    name: str
    cls: type
    config_cls: type
    state: StateKind | Callable[[Any], StateKind]  # fixed, or decided by the layer's config
    role: Role
    megatron_symbol: str | None  # Megatron hybrid pattern: M mamba, * attention, - MLP, E MoE
    hf_type: str | None  # HF-style `layer_types` entry, e.g. "mamba", "full_attention"
    capturable: bool = False  # its training step can be captured in a CUDA graph (see `graph_refusal`)

    @property
    def doc(self) -> str:
        return (self.cls.__doc__ or "").strip().splitlines()[0] if self.cls.__doc__ else ""

    def state_kind(self, config: Any) -> StateKind:
        return self.state(config) if callable(self.state) else self.state

    def make_config(self, args: dict[str, Any], key: str = "") -> Any:
        """The layer's typed config from `args`; errors name the layer, the argument and the accepted ones."""
        return from_dict(self.config_cls, args, key, what=f"layer {self.name!r}")

    def build(self, d_model: int, config: Any):
        return self.cls(d_model, config)

    def graph_refusal(self, module: Any, device: Any, dtype: Any) -> str | None:
        """Why `module` (an instance of this layer) cannot run inside a CUDA graph on `device` with
        activations of `dtype`, or None. A layer registered with capturable=True may still refuse
        for some configurations through a method `cuda_graph_refusal(device, dtype) -> str | None`."""
        if not self.capturable:
            return (f"layer type {self.name!r} does not declare itself capturable (register_layer(..., "
                    f"capturable=True) once its forward and backward have no host synchronisation and "
                    f"no data-dependent shapes)")
        check = getattr(module, "cuda_graph_refusal", None)
        return check(device, dtype) if check is not None else None


LAYERS: Registry[LayerEntry] = Registry("layer", entry_point_group="hybrid.layers", builtins="hybrid.layers")


def register_layer(name: str, *, config: type, state: StateKind | Callable[[Any], StateKind] = "none",
                   role: Role = "mixer",
                   megatron_symbol: str | None = None, hf_type: str | None = None,
                   capturable: bool = False, override: bool = False) -> Callable[[type], type]:
    """Class decorator: make an `nn.Module` available to layouts as `{type: name}`.

    The class is built as `cls(d_model, config)`, `config` an instance of the dataclass `config`,
    and is called as `forward(x, state=None)` with x of shape (batch, length, d_model). Layers whose
    `state` kind is not "none" also implement `init_state(batch_size, max_length, device, dtype)`;
    `state` may be a function of the config (attention with a window keeps a "kv_window" cache).
    A layer with an auxiliary loss (MoE load balancing) implements `aux_losses() -> dict[str, Tensor]`,
    returning the already-weighted losses of its latest forward; the model sums them for the trainer.
    `capturable=True` declares that a training step through the layer may be captured in one CUDA
    graph (`train.cuda_graph`): no host synchronisation (`.item()`, `.tolist()`, a Python `if` on a
    tensor), no data-dependent shapes, and no tensor cached on the module that a later call frees.
    A configuration that breaks this is refused by a method `cuda_graph_refusal(device, dtype)`.
    Undeclared layers train eagerly.
    """
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"register_layer({name!r}): config must be a dataclass, got {config!r}")
    if not callable(state) and state not in STATE_KINDS:
        raise ValueError(f"register_layer({name!r}): state must be one of {STATE_KINDS}, got {state!r}")

    def decorate(cls: type) -> type:
        LAYERS.add(name, LayerEntry(name, cls, config, state, role, megatron_symbol, hf_type, capturable),
                   override=override)
        cls.layer_type = name
        return cls

    return decorate


def load_plugins(modules: list[str], *, key: str = "plugins", file: str | None = None) -> None:
    """Import each module so that its `@register_*` decorators run."""
    for i, module in enumerate(modules):
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ConfigError(f"cannot import plugin module {module!r}: {err}. It must be importable "
                              f"(installed, or on PYTHONPATH)", key=f"{key}[{i}]", file=file) from None
