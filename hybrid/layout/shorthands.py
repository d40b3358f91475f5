"""Shorthands other projects use, compiled to the same layout strings.

`every` (Jamba's period/offset, Lieber et al. 2024): `blocks` blocks of the same few sublayers, in
which the sublayer at `slot` is replaced by another alias every `period` blocks, from `offset`.
Jamba (attn_layer_period 8, attn_layer_offset 4, expert_layer_period 2, expert_layer_offset 1):

    layout:
      blocks: 8
      block: "M F"
      every:
        A: {period: 8, offset: 4, slot: 0}
        E: {period: 2, offset: 1, slot: 1}

`ratio` (Megatron-LM's --hybrid-attention-ratio / --hybrid-mlp-ratio): `layers` sublayers, of
which round(layers * attention) are attention, spread evenly with Mamba at both ends, then
round(layers * mlp) of the remaining Mamba positions become MLPs, spread evenly and right-aligned.

    layout:
      ratio: {layers: 24, attention: 0.125, mlp: 0.5}
      aliases: {mamba: M, attention: A, mlp: F}     # optional; these are the defaults
"""
from __future__ import annotations

import math
from typing import Any

from hybrid.errors import ConfigError, shown
from hybrid.layout.parser import MAX_SUBLAYERS, is_valid_alias


def megatron_allocation(layers: int, attention_ratio: float, mlp_ratio: float) -> list[str]:
    """Megatron's layer allocation as a list of "mamba" / "attention" / "mlp"."""
    kinds = ["mamba"] * layers
    n_attention = round(layers * attention_ratio)
    n_mamba = layers - n_attention
    # attention evenly between n_attention + 1 Mamba sections
    section = n_mamba / (n_attention + 1)
    budget = section
    for i in range(layers):
        if budget < 0.5:
            kinds[i] = "attention"
            budget += section
        else:
            budget -= 1
    n_mlp = round(layers * mlp_ratio)
    if n_mlp > 0:
        spacing = (n_mamba - n_mlp) / n_mlp
        budget = spacing
        for i in range(layers):
            if kinds[i] != "mamba":
                continue
            if budget < 0.5:
                kinds[i] = "mlp"
                budget += spacing
            else:
                budget -= 1
    return kinds


def _need(mapping: dict, name: str, key: str, kind: type, default: Any = None) -> Any:
    """mapping[name] as an int or a finite number; `default` when absent (None: required)."""
    if name not in mapping:
        if default is None:
            raise ConfigError(f"missing {name!r}", key=key)
        return default
    value = mapping[name]
    if kind is int and not (isinstance(value, int) and not isinstance(value, bool)):
        raise ConfigError(f"expected an integer, got {shown(value)}", key=f"{key}.{name}")
    if kind is float and not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
        raise ConfigError(f"expected a number, got {shown(value)}", key=f"{key}.{name}")
    return value


def _size(count: int, key: str, what: str) -> None:
    if count > MAX_SUBLAYERS:
        raise ConfigError(f"{what} makes {count:,} sublayers, more than the {MAX_SUBLAYERS} a layout may have "
                          "(hybrid.layout.parser.MAX_SUBLAYERS)", key=key)


def every_to_layout(spec: dict, key: str) -> str:
    unknown = set(spec) - {"blocks", "block", "every"}
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)} in an `every` layout; expected blocks, block, every", key=key)
    blocks = _need(spec, "blocks", key, int)
    if blocks < 1:
        raise ConfigError(f"blocks must be at least 1, got {blocks}", key=f"{key}.blocks")
    block = spec.get("block")
    if isinstance(block, str):
        block = block.split()
    if not block or not isinstance(block, list) or not all(isinstance(b, str) for b in block):
        raise ConfigError("block must be a list of aliases or a string like \"M F\"", key=f"{key}.block")
    _size(blocks * len(block), f"{key}.blocks", f"blocks: {blocks} of {len(block)} sublayers")
    rules = spec.get("every") or {}
    if not isinstance(rules, dict):
        raise ConfigError("every must map an alias to {period, offset, slot}", key=f"{key}.every")
    checked = [(alias, *_every_rule(alias, rule, len(block), f"{key}.every.{alias}")) for alias, rule in rules.items()]
    out = []
    for i in range(blocks):
        current = list(block)
        for alias, period, offset, slot in checked:
            if i % period == offset:
                current[slot] = alias
        out.extend(current)
    return " ".join(out)


def _every_rule(alias: Any, rule: Any, block_size: int, key: str) -> tuple[int, int, int]:
    """(period, offset, slot) of one `every` rule, checked."""
    if not isinstance(alias, str) or not is_valid_alias(alias):
        raise ConfigError(f"{shown(alias)} cannot be an alias: use letters, digits, '_', '-', '.', starting with "
                          "a letter", key=key)
    if not isinstance(rule, dict) or set(rule) - {"period", "offset", "slot"}:
        raise ConfigError(f"expected {{period: N, offset: K, slot: S}}, got {shown(rule)}", key=key)
    period = _need(rule, "period", key, int)
    offset, slot = _need(rule, "offset", key, int, 0), _need(rule, "slot", key, int, 0)
    if period < 1 or not 0 <= offset < period:
        raise ConfigError(f"need period >= 1 and 0 <= offset < period, got period {period}, offset {offset}", key=key)
    if not 0 <= slot < block_size:
        raise ConfigError(f"slot {slot} is outside the block of {block_size} sublayers (0 to {block_size - 1})",
                          key=f"{key}.slot")
    return period, offset, slot


def ratio_to_layout(spec: dict, key: str) -> str:
    unknown = set(spec) - {"ratio", "aliases"}
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)} in a `ratio` layout; expected ratio, aliases", key=key)
    ratio = spec["ratio"]
    rkey = f"{key}.ratio"
    if not isinstance(ratio, dict) or set(ratio) - {"layers", "attention", "mlp"}:
        raise ConfigError(f"expected {{layers: N, attention: r, mlp: r}}, got {shown(ratio)}", key=rkey)
    layers = _need(ratio, "layers", rkey, int)
    attention = float(_need(ratio, "attention", rkey, float, 0.0))
    mlp = float(_need(ratio, "mlp", rkey, float, 0.0))
    if layers < 1 or attention < 0 or mlp < 0 or attention + mlp > 1:
        raise ConfigError(f"need layers >= 1, ratios >= 0 and attention + mlp <= 1; got {shown(ratio)}", key=rkey)
    _size(layers, f"{rkey}.layers", f"layers: {layers}")
    aliases = {"mamba": "M", "attention": "A", "mlp": "F"}
    given = spec.get("aliases") or {}
    if not isinstance(given, dict):
        raise ConfigError(f"expected {{mamba: M, attention: A, mlp: F}}, got {shown(given)}", key=f"{key}.aliases")
    for kind, alias in given.items():
        if kind not in aliases:
            raise ConfigError(f"unknown kind {shown(kind)}; aliases has mamba, attention, mlp", key=f"{key}.aliases")
        if not isinstance(alias, str):
            raise ConfigError(f"expected an alias (a string), got {shown(alias)}", key=f"{key}.aliases.{kind}")
        aliases[kind] = alias
    return " ".join(aliases[k] for k in megatron_allocation(layers, attention, mlp))


def expand_shorthand(layout: Any, key: str = "model.layout") -> str:
    """A layout string, from a string or one of the shorthand mappings."""
    if isinstance(layout, str):
        return layout
    if isinstance(layout, list) and all(isinstance(a, str) for a in layout):
        return " ".join(layout)
    if isinstance(layout, dict):
        if "ratio" in layout:
            return ratio_to_layout(layout, key)
        if "blocks" in layout or "every" in layout:
            return every_to_layout(layout, key)
    raise ConfigError("a layout is a string like \"(M F) x4\", a list of aliases, or a shorthand mapping "
                      "with `blocks`/`block`/`every` (Jamba) or `ratio` (Megatron)", key=key)
