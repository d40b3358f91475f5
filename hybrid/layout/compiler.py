"""Compile a model's `layers`, `shared`, `layout` and `overrides` into a frozen `Layout`.

    layers:                        alias -> {type: <registered layer>, <its arguments>}
      M: {type: mamba, d_state: 16}  or {parallel: [alias, ...]} (branches on one pre-norm, summed)
      MA: {parallel: [M, A]}         or just a type name: `F: mlp`
    shared:                        alias -> body (list of aliases or a layout string); every use
      Z: [A, F]                      of the alias reuses one set of weights (Zamba)
    layout: "(M F M F M F A F) x4" (or a shorthand, see shorthands.py)
    overrides:                     applied in order, each to the sublayers it selects
      - {at: "A#0", n_heads: 4}      at: index "3", "-1"; slice "8:16", "::2"; "alias#k" (k-th use,
      - {at: "8:16", select: F,          negative from the end); "alias" (every use); or a list
         expand: 2}                  select: keep only sublayers of this alias or type
                                     branch: which branch of a parallel sublayer (alias or index)

A registered type name may be used directly as an alias with default arguments: "(mamba mlp) x2".
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from hybrid.errors import ConfigError, did_you_mean, shown
from hybrid.layout.parser import MAX_SUBLAYERS, Occurrence, is_valid_alias, parse_layout
from hybrid.layout.shorthands import expand_shorthand
from hybrid.layout.spec import Layout, ModuleSpec, SublayerSpec
from hybrid.registry import LAYERS

_SLICE_RE = re.compile(r"(-?\d*):(-?\d*)(?::(-?\d+))?")
_NTH_RE = re.compile(r"(.+)#(-?\d+)")


def _module_spec(alias: str, definition: Any, key: str) -> ModuleSpec:
    if isinstance(definition, str):
        definition = {"type": definition}
    if isinstance(definition, dict) and "type" in definition and (not isinstance(definition["type"], str)
                                                                  or len(definition["type"]) > 100):
        raise ConfigError(f"expected a layer type name (one of {', '.join(LAYERS.names())}), "
                          f"got {shown(definition['type'])}", key=f"{key}.type")
    entry, args = LAYERS.get_typed(definition, key, "a layer alias ({type: <layer>, <arguments>}, "
                                                     "{parallel: [aliases]} or a type name)")
    return ModuleSpec(alias, entry.name, entry.make_config(args, key))


class _Compiler:
    def __init__(self, layers: dict, shared: dict, key: str):
        self.key = key
        self.layers = layers or {}
        self.shared = shared or {}
        for section, table in (("layers", self.layers), ("shared", self.shared)):
            if not isinstance(table, dict):
                raise ConfigError(f"expected a mapping of aliases, got {table!r}", key=f"{key}.{section}")
            for alias in table:
                if not is_valid_alias(str(alias)):
                    raise ConfigError(f"{shown(alias)} cannot be an alias: use letters, digits, '_', '-', '.', "
                                      "starting with a letter, and not a repeat like 'x4'",
                                      key=f"{key}.{section}.{str(alias)[:40]}")
        both = set(self.layers) & set(self.shared)
        if both:
            raise ConfigError(f"alias(es) {sorted(both)} defined both in layers and in shared", key=f"{key}.shared")
        self._modules: dict[str, tuple[ModuleSpec, ...]] = {}

    def branches(self, alias: str, key: str, column: int | None, text: str | None) -> tuple[ModuleSpec, ...]:
        """The module specs an alias stands for (one, or several for a parallel alias)."""
        if alias in self._modules:
            return self._modules[alias]
        if alias in self.layers:
            definition = self.layers[alias]
            dkey = f"{self.key}.layers.{alias}"
            if isinstance(definition, dict) and "parallel" in definition:
                extra = set(definition) - {"parallel"}
                if extra:
                    raise ConfigError(f"a parallel alias takes only `parallel`, got also {sorted(extra)}", key=dkey)
                names = definition["parallel"]
                if not isinstance(names, list) or len(names) < 2:
                    raise ConfigError("parallel needs a list of at least two aliases", key=f"{dkey}.parallel")
                specs = []
                for i, name in enumerate(names):
                    bkey = f"{dkey}.parallel[{i}]"
                    if not isinstance(name, str):
                        raise ConfigError(f"expected a layer alias (a string), got {shown(name)}", key=bkey)
                    if name in self.shared:
                        raise ConfigError(f"{name!r} is a shared block; parallel branches must be layer aliases", key=bkey)
                    sub = self.branches(name, bkey, None, None) if name != alias else None
                    if sub is None or len(sub) != 1:
                        raise ConfigError(f"branch {name!r} must be a plain layer alias (not parallel itself)", key=bkey)
                    specs.append(sub[0])
                result = tuple(specs)
            else:
                result = (_module_spec(alias, definition, dkey),)
        elif alias in LAYERS:
            result = (_module_spec(alias, {"type": alias}, key),)
        else:
            known = sorted(set(self.layers) | set(self.shared))
            raise ConfigError(f"unknown alias {shown(alias)}{did_you_mean(alias, known + LAYERS.names())}; "
                              "defined aliases: "
                              f"{', '.join(known) or 'none'}; registered layer types usable directly: "
                              f"{', '.join(LAYERS.names())}", key=key, column=column, text=text)
        self._modules[alias] = result
        return result

    def expand(self, occurrences: list[Occurrence], key: str, text: str, inside: tuple[str, ...] = ()) -> list[dict]:
        """Occurrences -> sublayer records, expanding shared blocks (with cycle detection); the result
        stays within MAX_SUBLAYERS, checked before each block's sublayers are added."""
        out: list[dict] = []
        for occ in occurrences:
            if occ.alias in self.shared:
                if occ.alias in inside:
                    chain = " -> ".join(inside + (occ.alias,))
                    raise ConfigError(f"shared block {occ.alias!r} refers to itself ({chain})", key=key,
                                      column=occ.column, text=text)
                bkey = f"{self.key}.shared.{occ.alias}"
                body_text = self.body(occ.alias, bkey)
                inner = self.expand(parse_layout(body_text, bkey), bkey, body_text, inside + (occ.alias,))
                if len(out) + len(inner) > MAX_SUBLAYERS:
                    raise ConfigError(f"with shared block {occ.alias!r} ({len(inner)} sublayers) expanded here, the "
                                      f"layout has more than the {MAX_SUBLAYERS} sublayers a layout may have "
                                      "(hybrid.layout.parser.MAX_SUBLAYERS)", key=key, column=occ.column, text=text)
                for position, record in enumerate(inner):
                    if record["shared"] is None:  # the innermost shared block owns the weights
                        record = {**record, "shared": occ.alias, "tie": (occ.alias, position)}
                    out.append({**record, "column": occ.column if not inside else record["column"]})
            else:
                out.append({"alias": occ.alias, "branches": self.branches(occ.alias, key, occ.column, text),
                            "shared": None, "tie": None, "column": occ.column})
        return out

    def body(self, name: str, key: str) -> str:
        """The layout string of shared block `name`."""
        body = self.shared[name]
        if isinstance(body, list):
            for i, alias in enumerate(body):
                if not isinstance(alias, str):
                    raise ConfigError(f"expected an alias (a string), got {shown(alias)}", key=f"{key}[{i}]")
            return " ".join(body)
        if not isinstance(body, str):
            raise ConfigError(f"a shared block is a list of aliases or a layout string, got {shown(body)}", key=key)
        return body

    def check_unused(self, used: set[str]) -> None:
        """Compile the aliases and shared blocks the layout does not use, so that a typo in one is
        found now, not when a sweep's layout first uses it."""
        for alias in self.layers:
            if alias not in used:
                self.branches(alias, f"{self.key}.layers.{alias}", None, None)
        for name in self.shared:
            if name not in used:
                bkey = f"{self.key}.shared.{name}"
                body_text = self.body(name, bkey)
                self.expand(parse_layout(body_text, bkey), bkey, body_text, (name,))


def _select(at: Any, records: list[dict], key: str) -> list[int]:
    """Indices of the sublayers an override's `at` names."""
    if isinstance(at, list):
        picked: list[int] = []
        for i, item in enumerate(at):
            picked += [j for j in _select(item, records, f"{key}[{i}]") if j not in picked]
        return picked
    n = len(records)
    if isinstance(at, bool) or not isinstance(at, (int, str)):
        raise ConfigError(f"`at` is an index, a slice 'i:j', 'alias#k', an alias, or a list of these; got {shown(at)}",
                          key=key)
    text = str(at).strip()
    if any(len(d) > 9 for d in re.findall(r"\d+", text)):  # no index that long is meant (and int() would refuse it)
        raise ConfigError(f"index {shown(text, 30)} is outside the {n} sublayers", key=key)
    if re.fullmatch(r"-?\d+", text):
        i = int(text)
        if not -n <= i < n:
            raise ConfigError(f"index {i} is outside the {n} sublayers", key=key)
        return [i % n]
    m = _SLICE_RE.fullmatch(text)
    if m:
        start, stop, step = (int(g) if g else None for g in m.groups())
        if step == 0:
            raise ConfigError("slice step cannot be 0", key=key)
        return list(range(n))[slice(start, stop, step)]
    m = _NTH_RE.fullmatch(text)
    name, k = (m.group(1), int(m.group(2))) if m else (text, None)
    matches = [i for i, r in enumerate(records) if name in (r["alias"], r["shared"])]
    if not matches:
        names = sorted({r["alias"] for r in records} | {r["shared"] for r in records if r["shared"]})
        raise ConfigError(f"no sublayer is {name!r}{did_you_mean(name, names)}; the layout uses {', '.join(names)}", key=key)
    if k is None:
        return matches
    if not -len(matches) <= k < len(matches):
        raise ConfigError(f"{name!r} occurs {len(matches)} time(s); #{k} does not exist", key=key)
    return [matches[k]]


def _apply_override(records: list[dict], override: Any, key: str) -> None:
    if not isinstance(override, dict) or "at" not in override:
        raise ConfigError("an override is {at: <where>, [select: alias], [branch: b], <arguments>}", key=key)
    selected = _select(override["at"], records, f"{key}.at")
    select = override.get("select")
    if select is not None and not isinstance(select, str):
        raise ConfigError(f"`select` is an alias or a layer type name, got {shown(select)}", key=f"{key}.select")
    branch = override.get("branch")
    if branch is not None and (isinstance(branch, bool) or not isinstance(branch, (int, str))):
        raise ConfigError(f"`branch` is a branch's alias or its index, got {shown(branch)}", key=f"{key}.branch")
    if select is not None:
        selected = [i for i in selected
                    if select == records[i]["alias"] or select in [b.type for b in records[i]["branches"]]]
    if not selected:
        raise ConfigError(f"this override selects no sublayer (at: {override['at']!r}"
                          + (f", select: {select!r}" if select is not None else "") + ")", key=key)
    args = {k: v for k, v in override.items() if k not in ("at", "select", "branch")}
    if not args:
        raise ConfigError("this override sets no argument", key=key)
    # Tied sublayers share weights, so an override must reach every use of them.
    for tie in {records[i]["tie"] for i in selected if records[i]["tie"]}:
        group = [j for j, r in enumerate(records) if r["tie"] == tie]
        missed = [j for j in group if j not in selected]
        if missed:
            raise ConfigError(f"selects some uses of shared block {tie[0]!r} but not sublayers {missed}: its weights "
                              f"are shared, so override every use (e.g. at: {tie[0]!r})", key=key)
    for i in selected:
        record = records[i]
        branches = list(record["branches"])
        targets = range(len(branches))
        if len(branches) > 1:
            if branch is None:
                raise ConfigError(f"sublayer {i} ({record['alias']!r}) is parallel: say which branch with "
                                  f"`branch:` ({', '.join(b.alias for b in branches)} or an index)", key=key)
            names = [b.alias for b in branches]
            if isinstance(branch, int) and 0 <= branch < len(branches):
                targets = [branch]
            elif branch in names:
                targets = [names.index(branch)]
            else:
                raise ConfigError(f"branch {shown(branch)} is not one of {names} (or an index below {len(names)})",
                                  key=f"{key}.branch")
        for b in targets:
            spec = branches[b]
            entry = LAYERS.get(spec.type)
            merged = {**dataclasses.asdict(spec.config), **args}
            branches[b] = ModuleSpec(spec.alias, spec.type, entry.make_config(merged, key))
        record["branches"] = tuple(branches)


def compile_layout(layers: dict | None, layout: Any, shared: dict | None = None, overrides: list | None = None,
                   key: str = "model") -> Layout:
    """The frozen stack of sublayers a model config describes (see the module docstring)."""
    text = expand_shorthand(layout, f"{key}.layout")
    compiler = _Compiler(layers or {}, shared or {}, key)
    records = compiler.expand(parse_layout(text, f"{key}.layout"), f"{key}.layout", text)
    compiler.check_unused({r["alias"] for r in records} | {r["shared"] for r in records if r["shared"]})
    if overrides is not None and not isinstance(overrides, list):
        raise ConfigError("overrides must be a list of {at: ..., <arguments>}", key=f"{key}.overrides")
    for i, override in enumerate(overrides or []):
        _apply_override(records, override, f"{key}.overrides[{i}]")
    sublayers = tuple(SublayerSpec(index=i, alias=r["alias"], branches=r["branches"], shared=r["shared"],
                                   tie=r["tie"], column=r["column"]) for i, r in enumerate(records))
    return Layout(sublayers, " ".join(s.alias for s in sublayers))
