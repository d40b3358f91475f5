"""`hybrid show CONFIG`: the expanded stack of a config as a table."""
from __future__ import annotations

import json

from hybrid.config import load_config
from hybrid.layout import hf_layer_types, megatron_pattern
from hybrid.summary import format_table, human, stack_rows


def add_parser(sub) -> None:
    p = sub.add_parser("show", help="print the expanded layer stack of a config",
                       description="Compile a config's layout and print one row per residual sublayer: index, "
                                   "alias, layer type, arguments that differ from the defaults, parameters and "
                                   "the kind of inference state, then totals by type and the memory a "
                                   "training step needs at the config's train settings (see hybrid/estimate.py)."
                                   "\n\n"
                                   "example: hybrid show configs/layouts/jamba.yaml model.d_model=512 --megatron")
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model.d_model=512")
    p.add_argument("--megatron", action="store_true", help="also print Megatron-LM's hybrid pattern string")
    p.add_argument("--hf", action="store_true", help="also print an HF-style layer_types list (JSON) and the transformers class "
                                                        "the layout exports to (or what does not fit)")
    p.set_defaults(run=run)


def run(args) -> int:
    from hybrid.estimate import estimate, meta_model  # noqa: PLC0415

    root = load_config(args.config, args.overrides)
    m = root.model
    model = meta_model(root)
    rows, totals, total = stack_rows(m, root.layout, model)
    print(f"{root.name}: d_model={m.d_model} vocab={m.vocab_size} sublayers={len(root.layout)} "
          f"parameters={human(total)} ({total:,})\n")
    print(format_table(["#", "alias", "type", "arguments (non-default)", "params", "state"], rows, align_right={0, 4}))
    print()
    print(format_table(["type", "count", "params", "share"],
                       [[t, c, human(p), f"{100 * p / total:.1f}%"] for t, (c, p) in totals.items()],
                       align_right={1, 2, 3}))
    print(f"\nlayout: {root.layout.text}")
    print(estimate(root, model=model).describe())
    if args.megatron:
        try:
            print(f"megatron pattern: {megatron_pattern(root.layout)}")
        except ValueError as err:
            print(f"megatron pattern: not expressible: {err}")
    if args.hf:
        print(f"layer_types: {json.dumps(hf_layer_types(root.layout))}")
        from hybrid.hf import HFMismatch, hf_class_for  # noqa: PLC0415

        try:
            print(f"transformers class: {hf_class_for(m)} (hybrid export --format hf writes it)")
        except HFMismatch as err:
            print(f"transformers class: none: {err}")
    return 0
