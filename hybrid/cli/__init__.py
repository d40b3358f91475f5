"""The `hybrid` command. Each subcommand lives in its own module with `add_parser` and `run`."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from hybrid.errors import ConfigError

# Order shown in --help.
SUBCOMMANDS = ["show", "layers", "tasks", "train", "sweep", "report", "slim", "generate", "export", "hf_import"]

DESCRIPTION = """\
Compose sequence-model layers (Mamba, attention, MLP/MoE, your own) through YAML layouts, train
them on recall tasks or language modelling, and compare them.

examples:
  hybrid layers                                   every registered layer and its arguments
  hybrid show configs/layouts/jamba.yaml          the expanded stack, parameters by type
  hybrid show configs/layouts/jamba.yaml model.d_model=512 --megatron
  hybrid train configs/experiments/quick.yaml train.steps=200
  hybrid sweep experiments/quickstart/sweep.yaml && hybrid report experiments/quickstart
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybrid", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"hybrid.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"hybrid.cli.{name}":
                continue  # subcommand not part of this build
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow the options: "hybrid sweep S.yaml --out D k=v"
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides or []) + extra
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not args.command:
        parser.print_help(sys.stderr)
        commands = ", ".join("import" if n == "hf_import" else n for n in SUBCOMMANDS)
        print(f"error: no command given; choose one of {commands}", file=sys.stderr)
        return 2
    try:
        return args.run(args) or 0
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
