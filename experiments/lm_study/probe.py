"""Probe a trained language model of the LM study: loss by position at longer contexts, and recall.

    python experiments/lm_study/probe.py experiments/lm_study/runs/arch=mamba,lr=0.003,seed=0 \\
        [--lengths 512,1024,2048,4096] [--windows 16] [--bins 8] [--pairs 4,16,64] [--examples 200]

1. Loss by position: windows of each length from the run's validation split (documents held out by
   name, as in training), the next-token loss averaged over position bins of equal width: how each
   layout uses context past its training length (Samba's and Mamba's length-extrapolation plots).
   Reported in nats per token and bits per byte (the tokens' UTF-8 bytes; the separator counts 0).
2. Recall: an associative lookup written in the corpus's own syntax, a Python dict literal of random
   two-letter keys and values, then the start of a second literal that repeats one key:

       d = {'kq': 'xv', 'ab': 'cd', ...}
       d = {'ab': '          -> the model should continue with cd

   A hit is both value characters predicted (greedy, teacher-forced). As MQAR (`hybrid.tasks.mqar`), it
   needs the key-value bindings kept in context; --pairs sets how many. Chance: 1/26^2.

Writes `probe.json` into the run directory (or --out) and prints a summary.
"""
from __future__ import annotations

import argparse
import math
import random
import string
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hybrid.cli.generate import load_weights  # noqa: E402
from hybrid.config import load_config  # noqa: E402
from hybrid.errors import ConfigError  # noqa: E402
from hybrid.model import HybridLM  # noqa: E402
from hybrid.training.build import build_task_of  # noqa: E402
from hybrid.training.run_dir import write_json  # noqa: E402


@torch.no_grad()
def loss_by_position(model, run: Path, length: int, windows: int, bins: int, device, amp) -> list[dict]:
    """[{"from", "to", "loss", "bpb"}] over `bins` equal position bins of `windows` validation windows."""
    root = load_config(str(run / "config.yaml"), [f"task.seq_len={length}", "task.eval_batches=1",
                                                  f"task.eval_batch_size={windows}"])
    task = build_task_of(root)
    batch = task.eval_sets(device)["val"][0]
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        logits = model(batch.inputs)
    nll = F.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten(), reduction="none").view_as(batch.targets)
    nbytes = task.token_bytes.to(device)[batch.targets].double() if task.token_bytes is not None else None
    edges = [round(i * length / bins) for i in range(bins + 1)]
    rows = []
    for a, b in zip(edges, edges[1:]):
        part = nll[:, a:b].double()
        row = {"from": a, "to": b, "loss": part.mean().item()}
        if nbytes is not None and nbytes[:, a:b].sum() > 0:
            row["bpb"] = part.sum().item() / (math.log(2) * nbytes[:, a:b].sum().item())
        rows.append(row)
    return rows


def recall_prompt(pairs: int, rng: random.Random) -> tuple[str, str]:
    """(prompt, the two characters that should follow it)."""
    letters = string.ascii_lowercase
    keys = rng.sample([a + b for a in letters for b in letters], pairs)
    values = ["".join(rng.choices(letters, k=2)) for _ in keys]
    query = rng.randrange(pairs)
    body = ", ".join(f"'{k}': '{v}'" for k, v in zip(keys, values))
    return f"d = {{{body}}}\nd = {{'{keys[query]}': '", values[query]


@torch.no_grad()
def recall(model, tokenizer, pairs: int, examples: int, device, amp, seed: int = 0) -> float:
    rng, hits = random.Random(seed), 0
    for _ in range(examples):
        prompt, answer = recall_prompt(pairs, rng)
        ids = torch.as_tensor(tokenizer.encode(prompt + answer), dtype=torch.long, device=device)[None]
        answer_ids = tokenizer.encode(answer)
        n = len(answer_ids)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(ids[:, :-1])
        predicted = logits[0, -n:].argmax(-1).tolist()
        hits += predicted == list(ids[0, -n:].tolist())
    return hits / examples


MAX_PAIRS = 26 * 26  # distinct two-letter keys


def _positive_ints(text: str) -> list[int]:
    """A comma list of integers >= 1, for argparse."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers >= 1, e.g. 512,1024; got {text!r}")
    return values


def _positive(text: str) -> int:
    """An integer >= 1, for argparse."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run directory holding config.yaml and checkpoint.pt")
    p.add_argument("--lengths", type=_positive_ints, default="512,1024,2048,4096",
                   help="window lengths for the loss by position")
    p.add_argument("--windows", type=_positive, default=16, help="validation windows per length")
    p.add_argument("--bins", type=_positive, default=8, help="position bins per length")
    p.add_argument("--pairs", type=_positive_ints, default="4,16,64",
                   help=f"key-value pairs per recall prompt (at most {MAX_PAIRS})")
    p.add_argument("--examples", type=_positive, default=200, help="recall prompts per pair count")
    p.add_argument("--out", default=None, help="JSON file (default RUN/probe.json)")
    args = p.parse_args()
    if max(args.pairs) > MAX_PAIRS:
        p.error(f"--pairs: at most {MAX_PAIRS} (distinct two-letter keys), got {max(args.pairs)}")
    return args


def probe_run(args: argparse.Namespace) -> None:
    run = Path(args.run)
    root = load_config(str(run / "config.yaml"))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = torch.bfloat16 if device.type == "cuda" else None
    model = HybridLM.from_config(root.model)
    load_weights(model, str(run / "checkpoint.pt"), trust=True)  # our own run's checkpoint
    model.to(device).eval()
    tokenizer = build_task_of(root).tokenizer
    out = {"run": run.name, "device": str(device), "loss_by_position": {}, "recall": {}}
    for length in args.lengths:
        rows = loss_by_position(model, run, length, args.windows, args.bins, device, amp)
        out["loss_by_position"][str(length)] = rows
        print(f"{run.name} L{length}: " + " ".join(f"{r['loss']:.3f}" for r in rows), flush=True)
    for pairs in args.pairs:
        out["recall"][str(pairs)] = recall(model, tokenizer, pairs, args.examples, device, amp)
        print(f"{run.name} recall, {pairs} pairs: {out['recall'][str(pairs)]:.3f}", flush=True)
    write_json(Path(args.out or run / "probe.json"), out)


def main() -> None:
    args = parse_args()
    try:
        probe_run(args)
    except ConfigError as err:  # a missing or damaged run file, named by the error
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
