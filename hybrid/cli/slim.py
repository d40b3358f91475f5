"""`hybrid slim PATH ...`: finished runs' checkpoints without their optimiser state (hybrid.training.slim)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "slim", help="drop the optimiser state from finished runs' checkpoints (a third of the size)",
        description="Rewrite the checkpoint.pt of every completed or early-stopped run under each PATH (a run "
                    "directory, a sweep's folder or any folder of runs) without its optimiser state, and delete "
                    "its checkpoint.prev.pt: the weights stay for evaluation, probes and export, at about a third "
                    "of the size, for runs that are checked in or shipped. Runs that are not finished keep "
                    "everything (they resume from it). `hybrid train` and `hybrid sweep` still return a slimmed "
                    "run's results.\n\nexamples:\n"
                    "  hybrid slim experiments/induction_heads --dry-run    what it would save\n"
                    "  hybrid slim experiments/induction_heads/runs/arch=mamba,seed=0",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="a run directory or a folder of runs")
    p.add_argument("--dry-run", action="store_true", help="say what would be saved; change nothing")
    p.set_defaults(run=run)


def run(args) -> int:
    from hybrid.errors import ConfigError  # noqa: PLC0415
    from hybrid.training.slim import run_folders, slim_run  # noqa: PLC0415

    runs = []
    for path in args.paths:
        if not path.is_dir():
            raise ConfigError("is not a folder; give a run directory or a folder of runs", file=str(path))
        found = run_folders(path)
        if not found:
            raise ConfigError("holds no run with a checkpoint (a run directory holds status.json and checkpoint.pt)",
                              file=str(path))
        runs += found
    runs = list(dict.fromkeys(runs))  # each once, in order
    before = after = slimmed = 0
    for run_dir in runs:
        result = slim_run(run_dir, dry_run=args.dry_run)
        before, after = before + result.before, after + result.after
        if result.skipped:
            print(f"  kept   {run_dir}: {result.skipped}")
        else:
            slimmed += 1
            print(f"  {'would slim' if args.dry_run else 'slimmed'} {run_dir}: {result.before / 1e6:.2f} -> "
                  f"{result.after / 1e6:.2f} MB")
    verb = "would save" if args.dry_run else "saved"
    print(f"{slimmed} of {len(runs)} runs; {verb} {(before - after) / 1e6:.1f} MB "
          f"({before / 1e6:.1f} -> {after / 1e6:.1f} MB)")
    return 0
