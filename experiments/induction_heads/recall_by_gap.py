"""Recall against the distance it spans: accuracy binned by the gap between the token to recall and the query.

    python experiments/induction_heads/recall_by_gap.py experiments/induction_heads/runs/arch=mamba,seed=0 \\
        --length 262144 --examples 16

The trigger (the first special token) lies uniformly in the input, so at length L the token to recall
was seen anywhere from 2 to L - 2 tokens before the query. Binning the held-out accuracy by that gap
shows how far back a model recalls, which the accuracy at L (a mean over gaps) hides. Examples are
drawn as the task's generator draws them (seed 1, not the run's held-out sets) and scored in float32;
on a CPU (one thread) 16 examples at 2^18 take about 6 minutes for the 2-layer models.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hybrid.cli.generate import load_weights  # noqa: E402
from hybrid.config import load_config  # noqa: E402
from hybrid.model import HybridLM  # noqa: E402
from hybrid.tasks.induction_heads import induction_heads  # noqa: E402


def recall(model: HybridLM, length: int, vocab_size: int, examples: int, batch: int, device: torch.device
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct, gap) per example: whether the answer's argmax over the content tokens is right, and the
    distance from the token to recall to the query."""
    inputs, targets, _ = induction_heads(examples, length, vocab_size, torch.Generator().manual_seed(1),
                                         torch.device("cpu"))
    trigger = (inputs[:, :-1] == vocab_size - 1).float().argmax(1)
    correct = []
    with torch.no_grad():
        for i in range(0, examples, batch):
            logits = model(inputs[i:i + batch].to(device))[:, -1, :vocab_size - 2]
            correct.append((logits.argmax(-1).cpu() == targets[i:i + batch, -1]))
    return torch.cat(correct).float(), (length - 2 - trigger).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run directory holding config.yaml and checkpoint.pt")
    parser.add_argument("--length", type=int, required=True, help="input length")
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--bins", type=int, default=4, help="gap bins, each twice as wide as the one before")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    run = Path(args.run)
    root = load_config(str(run / "config.yaml"), [])
    device = torch.device(args.device)
    model = HybridLM.from_config(root.model).to(device).eval()
    load_weights(model, str(run / "checkpoint.pt"), trust=True)  # our own run's checkpoint
    start = time.perf_counter()
    correct, gap = recall(model, args.length, root.task["vocab_size"], args.examples, args.batch, device)
    print(f"{run.name} at length {args.length}: accuracy {correct.mean():.3f} over {args.examples} examples "
          f"({time.perf_counter() - start:.0f} s); chance 1/{root.task['vocab_size'] - 2}")
    edges = [0] + [args.length >> (args.bins - 1 - i) for i in range(args.bins)]
    print("| gap | examples | accuracy |\n| --- | ---: | ---: |")
    for lo, hi in zip(edges, edges[1:]):
        inside = (gap >= lo) & (gap < hi)
        value = f"{correct[inside].mean():.2f}" if inside.any() else "-"
        print(f"| [{lo:,}, {hi:,}) | {int(inside.sum())} | {value} |")


if __name__ == "__main__":
    main()
