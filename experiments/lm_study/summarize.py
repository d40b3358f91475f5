"""The LM study's probe results, per layout at its best learning rate: a table and two plots.

    python experiments/lm_study/summarize.py [experiments/lm_study]   (after probe.py on the runs)

Reads every run's `probe.json` (experiments/lm_study/probe.py) in the sweep folder, keeps for each
layout the runs of the learning rate `hybrid report` picks (best validation loss), and writes to
<folder>/report/: `probe.md` (recall accuracy per number of pairs and the loss of the last position bin
per window length, the mean over the seeds that have a probe), `loss_by_position.png` (the loss per
position bin at the longest window, one line per layout) and `recall.png` (accuracy against pairs).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hybrid.report.tables import best_rows, collect  # noqa: E402
from hybrid.errors import ConfigError  # noqa: E402
from hybrid.training.checkpoint import atomic_write  # noqa: E402
from hybrid.training.run_dir import read_json  # noqa: E402


def probes(folder: Path) -> dict[str, list[dict]]:
    """{layout label: the probe.json of each of its best-lr runs that has one}."""
    out = {}
    for row in best_rows(collect(folder)):
        found = [read_json(run.path / "probe.json", expect=dict, what="run experiments/lm_study/probe.py on the run again")
                 for run in row.runs if (run.path / "probe.json").is_file()]
        if found:
            out[row.label] = found
    return out


def _mean(values: list[float]) -> float:
    return statistics.fmean(values)


def table(by_layout: dict[str, list[dict]]) -> str:
    first = next(iter(by_layout.values()))[0]
    lengths, pairs = list(first["loss_by_position"]), list(first["recall"])
    head = (["layout", "seeds"] + [f"loss, last bin @ {n}" for n in lengths] + [f"recall @ {p} pairs" for p in pairs])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, found in by_layout.items():
        cells = [label, str(len(found))]
        cells += [f"{_mean([p['loss_by_position'][n][-1]['loss'] for p in found]):.4f}" for n in lengths]
        cells += [f"{_mean([p['recall'][k] for p in found]):.3f}" for k in pairs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _finish(fig, ax, xlabel: str, ylabel: str, title: str, path: Path) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_loss_by_position(by_layout: dict[str, list[dict]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    longest = max(int(n) for n in next(iter(by_layout.values()))[0]["loss_by_position"])
    for label, found in by_layout.items():
        bins = found[0]["loss_by_position"][str(longest)]
        centres = [(b["from"] + b["to"]) / 2 for b in bins]
        ax.plot(centres, [_mean([p["loss_by_position"][str(longest)][i]["loss"] for p in found])
                          for i in range(len(bins))], marker="o", label=label)
    _finish(fig, ax, f"position in a {longest}-token window", "validation loss (nats/token)",
            "loss by position (training length: the first bins)", path)


def plot_recall(by_layout: dict[str, list[dict]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, found in by_layout.items():
        pairs = sorted(int(k) for k in found[0]["recall"])
        ax.plot(pairs, [_mean([p["recall"][str(k)] for p in found]) for k in pairs], marker="o", label=label)
    ax.set_xscale("log", base=2)
    _finish(fig, ax, "key-value pairs in the prompt", "recall accuracy", "dict-literal recall probe", path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", nargs="?", default=str(Path(__file__).resolve().parent), help="the sweep's folder")
    folder = Path(p.parse_args().folder)
    try:
        by_layout = probes(folder)
    except ConfigError as err:  # a damaged run file or probe.json, named by the error
        sys.exit(f"error: {err}")
    if not by_layout:
        sys.exit(f"error: {folder}: no run has a probe.json yet; run experiments/lm_study/probe.py on finished runs")
    out = folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    text = table(by_layout)
    atomic_write(out / "probe.md", lambda f: f.write(text.encode()))
    plot_loss_by_position(by_layout, out / "loss_by_position.png")
    plot_recall(by_layout, out / "recall.png")
    print(text + f"wrote {out}/probe.md, loss_by_position.png, recall.png")


if __name__ == "__main__":
    main()
