"""Evaluate a run's checkpoint at chosen lengths in float32 and under bf16 autocast, side by side.

    python experiments/induction_heads/evaluate_checkpoint.py experiments/induction_heads/runs/arch=mamba,seed=0 \\
        --lengths 4096,16384 --examples 16

Held-out examples as the run's own evaluation draws them (the task's held-out sets at these lengths).
On a CPU, 16 examples at 2^14 take about a minute per dtype for the 2-layer models.
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
from hybrid.training.build import build_task_of  # noqa: E402
from hybrid.training.evaluation import run_evaluation  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run directory holding config.yaml and checkpoint.pt")
    parser.add_argument("--lengths", required=True, help="comma list of input lengths")
    parser.add_argument("--examples", type=int, default=16, help="examples per length")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma list of: " + ", ".join(DTYPES))
    args = parser.parse_args()
    lengths = [int(n) for n in args.lengths.split(",")]
    run = Path(args.run)
    root = load_config(str(run / "config.yaml"), [f"task.eval_lengths={lengths}", f"task.eval_examples={args.examples}",
                                                  f"task.eval_batch_size={min(args.examples, 8)}"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = HybridLM.from_config(root.model)
    load_weights(model, str(run / "checkpoint.pt"), trust=True)  # our own run (older files hold numpy state)
    model.to(device)
    task = build_task_of(root)
    for name in args.dtypes.split(","):
        start = time.perf_counter()
        result = run_evaluation(model, task, device, DTYPES[name], None)
        accuracies = " ".join(f"{k.split('/')[1]}:{v:.3f}" for k, v in result.items()
                              if k.startswith("eval/L") and k.endswith("/accuracy"))
        print(f"{run.name} {name} ({device}): {accuracies}  [{time.perf_counter() - start:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
