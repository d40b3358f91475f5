"""`hybrid layers`: every registered layer with its arguments, defaults and docs."""
from __future__ import annotations

from hybrid.config import check_plugins
from hybrid.errors import ConfigError, did_you_mean, shown
from hybrid.registry import LAYERS, load_plugins
from hybrid.summary import layer_help


def add_parser(sub) -> None:
    p = sub.add_parser("layers", help="list registered layers and their arguments",
                       description="List every registered layer type: its role, inference state and arguments "
                                   "(type, default, meaning). Use the names as `type:` in a config's layers.")
    p.add_argument("names", nargs="*", help="only these layer types")
    p.add_argument("--plugins", nargs="*", default=[], help="modules to import first (custom layers)")
    p.set_defaults(run=run)


def check_names(names: list[str], registry) -> list[str]:
    """`names` if each is registered in `registry`, else a ConfigError naming the first that is not."""
    for name in names:
        if name not in registry:
            raise ConfigError(f"unknown {registry.kind} type {shown(name)}{did_you_mean(name, registry.names())}; "
                              f"registered: {', '.join(registry.names())}", key="names")
    return names


def run(args) -> int:
    load_plugins(check_plugins(args.plugins, "--plugins"), key="--plugins")
    names = check_names(args.names, LAYERS) or LAYERS.names()
    print("\n\n".join(layer_help(LAYERS.get(n)) for n in names))
    return 0
