"""`hybrid report DIR`: tables and plots of the runs under DIR (a sweep's folder or any folder of runs)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report", help="tables (Markdown, CSV) and plots (PNG) of the runs under a folder",
        description="Tabulate the runs under DIR: one row per configuration at its best learning rate "
                    "(the sweep's `select:`), with parameters, inference state size, tokens/s and wall time; "
                    "plot the metric by configuration, the loss curves, and the metric by held-out length "
                    "and by number of key-value pairs. Writes DIR/report/{report.md,table.csv,runs.csv,"
                    "evaluations.csv,*.png} and prints the table; report.md also names the runs unfinished, "
                    "not started and not needed (a list longer than 20 goes to report/<list>.txt)."
                    "\n\nexample:\n  hybrid report experiments/quickstart",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", type=Path, help="a sweep's output folder, or any folder holding run directories")
    p.add_argument("--out", type=Path, help="where the report goes (default: DIR/report)")
    p.add_argument("--metric", help="metric to select and tabulate (default: the sweep's, else eval/all/accuracy)")
    p.add_argument("--mode", choices=["max", "min"], help="whether higher or lower is better (default: the sweep's)")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.set_defaults(run=run)


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):  # a name too long to be a path
        return False


def run(args) -> int:
    from hybrid.errors import ConfigError  # noqa: PLC0415
    from hybrid.report.tables import collect, csv_table, evaluations_csv, markdown_table, runs_csv  # noqa: PLC0415

    if not _is_dir(args.dir):
        raise ConfigError("is not a folder; give a sweep's output folder or any folder of run directories",
                          file=str(args.dir))
    sweep = collect(args.dir, args.metric, args.mode)
    if not sweep.runs:
        raise ConfigError("no runs under this folder (a run directory holds config.yaml and status.json)",
                          file=str(args.dir))
    out = args.out or args.dir / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create the report folder ({err.strerror or err})", key="--out",
                          file=str(out)) from None
    table = markdown_table(sweep)
    plots = []
    if not args.no_plots:
        from hybrid.report.plots import all_plots  # noqa: PLC0415
        plots = all_plots(sweep, out)
    lines = [f"# {args.dir.resolve().name}", "",
             f"{len(sweep.runs)} runs; {sweep.metric} ({sweep.mode}) from the final evaluation"
             + (f", best over {', '.join(sweep.select_over)} per configuration" if sweep.select_over else "") + ".",
             "", table, "", *_run_lists(sweep, out)]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "table.csv").write_text(csv_table(sweep))
    (out / "runs.csv").write_text(runs_csv(sweep))
    (out / "evaluations.csv").write_text(evaluations_csv(sweep))
    print(table)
    lists = [name for name in ("unfinished.txt", "not_started.txt", "not_needed.txt") if (out / name).exists()]
    written = ["table.csv", "runs.csv", "evaluations.csv", *lists, *(p.name for p in plots)]
    print(f"\nwrote {out / 'report.md'}, " + ", ".join(written))
    return 0


INLINE = 20  # a list of more run names than this goes to its own file in the report folder, one a line


def _run_lists(sweep, out: Path) -> list[str]:
    """The report's paragraphs on the runs outside the table: unfinished or failed, planned but not
    started, and not needed (with why); each long list written to report/<name>.txt instead."""
    from hybrid.report.tables import not_needed, not_started, unfinished  # noqa: PLC0415

    why = []
    if sweep.enough is not None:
        why.append(f"another {', '.join(sweep.select_over)} of the configuration reached select.enough "
                   f"{sweep.enough:g} on {'its first seed' if sweep.seeds_best else 'every seed'}")
    if sweep.seeds_best:
        why.append("a later seed away from the value its configuration's first seed did best at (select.seeds: best)")
    skipped = not_needed(sweep)  # the plan's decisions, read once for the three lists
    pending = [f"{r.name} ({r.state}{': ' + r.error[:120] if r.error else ''})"
               for r in unfinished(sweep, set(skipped))]
    return (_listed("Unfinished or failed", pending, out / "unfinished.txt")
            + _listed("Not started (planned, not yet ruled out)", not_started(sweep, set(skipped)),
                      out / "not_started.txt")
            + _listed(f"Not needed ({'; or '.join(why)})", skipped, out / "not_needed.txt"))


def _listed(title: str, names: list[str], file: Path) -> list[str]:
    """`title: a, b, c` for a short list, nothing for an empty one; for a long one the count, the names
    written to `file` (removed otherwise: a list that was long at the last report is short or gone now)."""
    if len(names) <= INLINE:
        file.unlink(missing_ok=True)
        return [f"{title}: " + ", ".join(names), ""] if names else []
    file.write_text("\n".join(names) + "\n")
    return [f"{title}: {len(names)} runs, listed in {file.name}.", ""]
