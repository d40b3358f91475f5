"""Evaluate a run's checkpoint at chosen lengths in float32 and under bf16 autocast, side by side.

    python experiments/induction_heads/evaluate_checkpoint.py experiments/induction_heads/runs/arch=mamba,seed=0 \\
        --lengths 4096,16384 --examples 16
    python experiments/induction_heads/evaluate_checkpoint.py RUN --lengths 1048576 --examples 32 --chunk 16384
    python experiments/induction_heads/evaluate_checkpoint.py RUN --lengths 256,4096 --trigger-position 5

Held-out examples as the run's own evaluation draws them (the task's held-out sets at these lengths; with
the run's own eval_examples and eval_batch_size, the very examples its final evaluation scored). --trigger-position puts every held-out example's special
token at that position (`task.eval_trigger_position`): each length then scores its longest recall alone.
On a CPU, 16 examples at 2^14 take about a minute per dtype for the 2-layer models. With --chunk, a model
whose layers all keep a recurrent state (Mamba, Mamba-2) reads each input in chunks of that many tokens,
its state carried from one to the next (`hybrid.generation.prefill`), and only the last position, the
task's one scored answer, gets logits: memory no longer grows with the length, so 2^20 fits a CPU (about
30k tokens/s on two cores: 32 examples at 2^20 in about 20 minutes).
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
from hybrid.generation import check_cacheable, prefill  # noqa: E402
from hybrid.model import HybridLM  # noqa: E402
from hybrid.tasks.base import IGNORE_INDEX  # noqa: E402
from hybrid.training.build import build_task_of  # noqa: E402
from hybrid.training.evaluation import run_evaluation  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16}


@torch.no_grad()
def chunked_evaluation(model, task, device: torch.device, amp, chunk: int) -> dict[str, float]:
    """{"eval/L<length>/accuracy": ...} from the last position's logits of each held-out input, read in
    chunks with the state carried; the held-out targets must score the last position only."""
    check_cacheable(model)
    model.eval()
    result = {}
    for name, batches in task.eval_sets(device).items():
        correct = total = 0
        for b in batches:
            scored = b.targets != IGNORE_INDEX
            if not bool(scored[:, -1].all()) or int(scored.sum()) != len(b.targets):
                raise SystemExit(f"{name}: --chunk scores the last position only; this task scores others too")
            state = model.init_state(len(b.inputs), b.inputs.shape[1], device=device)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = prefill(model, b.inputs, state, chunk_size=chunk)  # (batch, vocab)
            correct += int((logits.argmax(-1) == b.targets[:, -1]).sum())
            total += len(b.targets)
        result[f"eval/{name}/accuracy"] = correct / total
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run directory holding config.yaml and checkpoint.pt")
    parser.add_argument("--lengths", required=True, help="comma list of input lengths")
    parser.add_argument("--examples", type=int, default=16, help="examples per length")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma list of: " + ", ".join(DTYPES))
    parser.add_argument("--batch", type=int, default=None, help="examples per batch (default: min(examples, 8))")
    parser.add_argument("--chunk", type=int, default=None,
                        help="read the inputs in chunks of this many tokens, the state carried (recurrent models)")
    parser.add_argument("--trigger-position", type=int, default=None,
                        help="the special token of every held-out example at this position (default: uniform)")
    args = parser.parse_args()
    for flag in ("examples", "batch", "chunk"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag}: expected a positive integer, got {getattr(args, flag)}")
    if not all(n.strip().isdigit() and int(n) >= 4 for n in args.lengths.split(",")):
        parser.error(f"--lengths: expected a comma list of input lengths of 4 or more, got {args.lengths!r}")
    lengths = [int(n) for n in args.lengths.split(",")]
    run = Path(args.run)
    missing = [name for name in ("config.yaml", "checkpoint.pt") if not (run / name).is_file()]
    if missing:
        parser.error(f"{run}: not a run directory (no {' or '.join(missing)})")
    batch = args.batch or min(args.examples, 8)
    root = load_config(str(run / "config.yaml"), [f"task.eval_lengths={lengths}", f"task.eval_examples={args.examples}",
                                                  f"task.eval_batch_size={batch}"]
                       + ([] if args.trigger_position is None else
                          [f"task.eval_trigger_position={args.trigger_position}"]))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = HybridLM.from_config(root.model)
    load_weights(model, str(run / "checkpoint.pt"), trust=True)  # our own run (older files hold numpy state)
    model.to(device)
    task = build_task_of(root)
    for name in args.dtypes.split(","):
        start = time.perf_counter()
        if args.chunk is not None:
            result = chunked_evaluation(model, task, device, DTYPES[name], args.chunk)
        else:
            result = run_evaluation(model, task, device, DTYPES[name], None)
        accuracies = " ".join(f"{k.split('/')[1]}:{v:.3f}" for k, v in result.items()
                              if k.startswith("eval/L") and k.endswith("/accuracy"))
        print(f"{run.name} {name} ({device}): {accuracies}  [{time.perf_counter() - start:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
