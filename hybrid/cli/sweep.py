"""`hybrid sweep SWEEP.yaml`: run every configuration of a sweep file."""
from __future__ import annotations

import argparse
import fnmatch
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sweep", help="run a grid of configurations (skips finished runs, resumes unfinished ones)",
        description="Run every configuration of a sweep file: a base config crossed with `grid:` axes and "
                    "`zip:` lists of overrides (see hybrid/sweep/spec.py for the format). Runs go to "
                    "<out>/runs/<run name>/; finished runs are skipped, interrupted ones resume from their "
                    "checkpoint, a failed run is recorded and the others go on. With `select: {enough: 0.99}` "
                    "every configuration's first learning rate runs first, and a configuration whose rate "
                    "reached 0.99 on every seed runs no other (its runs are 'not needed'); its next rate "
                    "starts only once the earlier ones have finished, and free jobs meanwhile take other "
                    "configurations' runs. With "
                    "`select: {seeds: best}` the first seed runs at every learning rate and the other seeds "
                    "only at the one where it did best, once it has finished everywhere.\n\nexamples:\n"
                    "  hybrid sweep experiments/quickstart/sweep.yaml --dry-run\n"
                    "  hybrid sweep experiments/mqar_layouts/sweep.yaml --jobs auto --out /data/mqar\n"
                    "  hybrid sweep SWEEP.yaml train.steps=100     # an override for every run",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", help="sweep YAML file")
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    p.add_argument("--dry-run", action="store_true", help="print the runs and what would happen to each, run nothing")
    p.add_argument("--jobs", default=None, help="runs at a time: an integer (more than the GPUs shares them round-robin), or auto "
                                                "(per GPU, as many runs as fit in 80%% of its free memory by their "
                                                "memory estimate, at most 8; 1 without a GPU). "
                                                "Default: the sweep file's `jobs:`, else 1 (in this process)")
    p.add_argument("--out", type=Path, help="where runs go (default: the sweep file's folder)")
    p.add_argument("--only", action="append", default=[], metavar="GLOB",
                   help="run only the runs whose name matches this shell pattern, e.g. 'arch=*,lr=0.003,seed=0' "
                        "(repeatable: a run matching any is kept); the report still covers every finished run")
    p.add_argument("--start-until", type=float, default=None, metavar="SECONDS",
                   help="start no run after this many seconds (runs already going go on): for a sweep run in pieces "
                        "under a time limit, so that the last minutes finish runs instead of starting ones that "
                        "would be cut")
    p.add_argument("--stop-after", type=float, default=None, metavar="SECONDS",
                   help="after this many seconds stop every run still going (each writes a checkpoint at the step "
                        "it is on and is left interrupted: the next sweep resumes it) and start no other; for a "
                        "job with a wall-clock limit (a scheduler's, a shared GPU's). With it, runs go in worker "
                        "processes even one at a time")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def _check_against_axes(spec, extra: dict) -> None:
    """A command-line override of a key that names the runs (a plain axis's or a zipped key) would give every
    run the same value under names that say otherwise: refused. One of a key a named axis sets (a label's
    bundle, e.g. the train.steps of a setting) is allowed, for a quick try of the whole grid, and said."""
    from hybrid.config import COMMAND_LINE  # noqa: PLC0415
    from hybrid.errors import ConfigError  # noqa: PLC0415
    for key in extra:
        where = spec.axis_setting(key)
        if where is None:
            continue
        axis = where.partition(".")[2]
        if where.startswith("zip.") or spec.varied.get(axis) == where:  # a plain axis: its key names the runs
            raise ConfigError(f"is an axis of the sweep ({where} in {spec.path}); an override would give every "
                              f"run the same value under names that say otherwise. Drop the axis from the sweep "
                              f"file, or pick runs with --only (e.g. --only '*{key.rsplit('.', 1)[-1]}=...*')",
                              key=key, file=COMMAND_LINE)
        log.warning("%s=%s overrides the value %s gives each run, in every run", key, extra[key], where)


def _say_stale(stale: dict[str, str], spec) -> None:
    """Finished runs made with another config than the sweep now gives them are kept and not run again (their
    folder holds their results); the log says so, so that a table is not read as the new config's."""
    for name, changes in list(stale.items())[:10]:
        log.warning("run %s finished with another config than the sweep now gives it (%s); kept, not run again",
                    name, changes)
    if stale:
        log.warning("%d finished run(s) made with another config%s: to run the new one, give another --out, or "
                    "delete those folders under %s, or make the changed key an axis", len(stale),
                    f" ({len(stale) - 10} not listed)" if len(stale) > 10 else "", spec.out_dir / "runs")


def run(args) -> int:
    from hybrid.errors import ConfigError  # noqa: PLC0415
    from hybrid.summary import format_table  # noqa: PLC0415
    from hybrid.sweep.runner import (DEFERRED, NOT_NEEDED, NOT_STARTED, STOPPED, plan_rows, run_sweep,  # noqa: PLC0415
                                     summary_table)
    from hybrid.config import COMMAND_LINE  # noqa: PLC0415
    from hybrid.sweep.changed import stale_runs  # noqa: PLC0415
    from hybrid.sweep.spec import load_sweep, parse_jobs, parse_value, resolve_run  # noqa: PLC0415
    from hybrid.training.run_dir import FINAL_STATES  # noqa: PLC0415

    spec = load_sweep(args.sweep, check=False)
    if args.out:
        if args.out.exists() and not args.out.is_dir():
            raise ConfigError(f"{str(args.out)!r} is a file; give a folder (it gets runs/ and sweep.json)", key="--out",
                              file=COMMAND_LINE)
        spec.out = args.out.resolve()
    if args.overrides:
        bad = [o for o in args.overrides if "=" not in o]
        if bad:
            raise ConfigError(f"overrides are key=value, e.g. train.steps=100; got {bad[0]!r}", file="<command line>")
        extra = {k: parse_value(v, COMMAND_LINE, k) for k, _, v in (o.partition("=") for o in args.overrides)}
        _check_against_axes(spec, extra)
        for r in spec.runs:
            r.overrides.update(extra)
    if args.only:
        kept = [r for r in spec.runs if any(fnmatch.fnmatchcase(r.name, pattern) for pattern in args.only)]
        if not kept:
            raise ConfigError(f"--only {' '.join(args.only)} matches none of the {len(spec.runs)} runs, e.g. "
                              f"{spec.runs[0].name!r}", file=str(args.sweep))
    else:
        kept = spec.runs
    planned = {r.name: resolve_run(spec, r) for r in kept}  # every run's config must resolve before anything starts
    stale = stale_runs(spec, kept, planned)
    _say_stale(stale, spec)
    jobs = None if args.jobs is None else parse_jobs(args.jobs)
    for key, seconds in (("--start-until", args.start_until), ("--stop-after", args.stop_after)):
        if seconds is not None and not 0 <= seconds < 10**9:  # and not nan or inf
            raise ConfigError(f"expected a finite number of seconds >= 0, got {seconds:g}", key=key,
                              file="<command line>")
    if args.dry_run:
        print(f"sweep {spec.name}: {len(spec.runs)} runs from {spec.config} into {spec.out_dir / 'runs'}"
              + (f"; best of {', '.join(spec.select_over)} by {spec.metric} ({spec.mode})" if spec.select_over else ""))
        print(format_table(["run", "action", "overrides"],
                           [r for r in plan_rows(spec, stale) if r[0] in {k.name for k in kept}]))
        return 0
    try:
        states = run_sweep(spec, jobs=jobs, progress=not args.no_progress, only=kept if args.only else None,
                           start_until=args.start_until, stop_after=args.stop_after)
    except KeyboardInterrupt as err:
        print(f"stopped: {str(err) or 'interrupted (Ctrl-C)'}; running the sweep again resumes the interrupted runs",
              file=sys.stderr)
        return 130
    print(summary_table(spec))
    late = [n for n, s in states.items() if s == NOT_STARTED]
    if late:
        print(f"{len(late)} run(s) not started (past --start-until or at --stop-after): run the sweep again to "
              "run them")
    stopped = [n for n, s in states.items() if s == STOPPED]
    if stopped:
        print(f"{len(stopped)} run(s) stopped at --stop-after: {', '.join(stopped)}; run the sweep again to "
              "resume them (from the checkpoint each wrote as it stopped, or its last one)")
    deferred = [n for n, s in states.items() if s == DEFERRED]
    if deferred:
        print(f"{len(deferred)} run(s) deferred (their first seeds are unfinished and not in this sweep): "
              f"{', '.join(deferred)}; run the sweep again once those finish")
    failed = [n for n, s in states.items()
              if s not in (*FINAL_STATES, NOT_NEEDED, NOT_STARTED, DEFERRED, STOPPED)]
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}; their errors are in runs/<name>/status.json. "
              f"Run the sweep again to retry them.")
    return 1 if failed else 0
