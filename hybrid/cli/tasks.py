"""`hybrid tasks`: every registered task with its arguments, defaults and docs."""
from __future__ import annotations

from hybrid.cli.layers import check_names
from hybrid.config import check_plugins
from hybrid.registry import load_plugins
from hybrid.summary import entry_help
from hybrid.tasks.base import TASKS


def add_parser(sub) -> None:
    p = sub.add_parser("tasks", help="list registered tasks and their arguments",
                       description="List every registered task (synthetic recall tasks, language modelling) with "
                                   "its arguments. Use the names as `task: {type: <name>, ...}` in a config.")
    p.add_argument("names", nargs="*", help="only these tasks")
    p.add_argument("--plugins", nargs="*", default=[], help="modules to import first (custom tasks)")
    p.set_defaults(run=run)


def run(args) -> int:
    load_plugins(check_plugins(args.plugins, "--plugins"), key="--plugins")
    entries = [TASKS.get(n) for n in check_names(args.names, TASKS) or TASKS.names()]
    print("\n\n".join(entry_help(f"{e.name}\n  {e.doc}", e.config_cls) for e in entries))
    return 0
