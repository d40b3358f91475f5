"""Tables describing a compiled stack (`hybrid show`) and the registered layers (`hybrid layers`)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

from hybrid.model_config import ModelConfig
from hybrid.registry import LAYERS, LayerEntry
from hybrid.typed_config import describe_fields, non_default_items


def format_table(headers: list[str], rows: list[list[Any]], align_right: set[int] = frozenset()) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "  ".join(c.rjust(w) if i in align_right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def short(value: Any, limit: int = 40) -> str:
    """repr(value), cut to `limit` characters for tables."""
    text = value if isinstance(value, str) and value == "required" else repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _args_text(config: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in non_default_items(config).items())


def stack_rows(model_config: ModelConfig, layout, model: torch.nn.Module | None = None
               ) -> tuple[list[list[Any]], dict[str, list[int]], int]:
    """Rows (index, alias, type, arguments that differ from defaults, parameters, state kind),
    totals by type {type: [sublayers, parameters]}, and the total parameter count. `model`: the
    config's HybridLM already built (on the meta device, see `hybrid.estimate.meta_model`)."""
    from hybrid.model import HybridLM  # noqa: PLC0415

    if model is None:
        with torch.device("meta"):  # counts parameters without allocating them
            model = HybridLM(model_config, layout)
    seen: set[int] = set()
    rows, totals = [], OrderedDict()
    for spec, block in zip(layout, model.blocks):
        first_use = id(block) not in seen
        seen.add(id(block))
        params = sum(p.numel() for p in block.parameters()) if first_use else 0
        kinds = [LAYERS.get(b.type).state_kind(b.config) for b in spec.branches]
        args = "; ".join(f"{b.alias}: {_args_text(b.config)}" if spec.is_parallel else _args_text(b.config)
                         for b in spec.branches)
        alias = spec.alias if spec.shared is None else f"{spec.shared}.{spec.alias}"
        rows.append([spec.index, alias, spec.type, args or "-",
                     human(params) if first_use else "(shared)", "+".join(kinds)])
        t = totals.setdefault(spec.type, [0, 0])
        t[0] += 1
        t[1] += params
    embedding = model.embedding.weight.numel()
    totals["embedding"] = [1, embedding]
    if not model_config.tie_embeddings:
        totals["lm_head"] = [1, model.lm_head.weight.numel()]
    return rows, totals, model.num_parameters()


def entry_help(head: str, config_cls: type) -> str:
    """A registered entry's heading, then its arguments as an indented table."""
    rows = [[name, tp if len(tp) <= 40 else tp[:37] + "...", short(default), doc]
            for name, tp, default, doc in describe_fields(config_cls)]
    table = format_table(["argument", "type", "default", "meaning"], rows)
    return head + "\n" + "\n".join("  " + line for line in table.splitlines())


def layer_help(entry: LayerEntry) -> str:
    state = entry.state if isinstance(entry.state, str) else "depends on arguments"
    return entry_help(f"{entry.name}  ({entry.role}; inference state: {state})\n  {entry.doc}", entry.config_cls)
