"""Data-parallel training on the GPUs there are: `hybrid train` itself, in one process and under torchrun.

Every case trains the same model on the same global batch and seed (byte-level LM on the Python
standard library's source, 8 x 2048 tokens a step, bf16 autocast) for --steps steps without evaluation:

    none           one process, eager steps (and graphed: CUDA graphs, the single-process default)
    ddp / fsdp     torchrun, N ranks (DDP; FSDP2's fully_shard per block), eager steps; one rank
                   wraps nothing and trains as one process does (its row is torchrun's own cost)
    + compile      the same with train.compile (torch.compile of the model)

On a machine with fewer GPUs than ranks the ranks share them through gloo (NCCL allows one rank per
GPU): that checks correctness, not speed. Reported per case: tokens/s over the second half of the run
(from metrics.jsonl's clock, so start-up, compilation and capture are left out), rank 0's peak memory,
the last logged loss, and its difference from the one-process eager run's (the same global batch:
equal up to the order of the gradient reductions).

    python benchmarks/bench_distributed.py [--ranks 1,2] [--steps 200] [--only 'none, eager;fsdp x2'] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """\
defaults: [trainers/gpu]
model:
  d_model: {d_model}
  vocab_size: 320  # the byte-level task's 257, padded
  layers:
    M: {{type: mamba, d_state: 16}}
    A: {{type: attention, n_heads: {heads}}}
    F: {{type: mlp, expand: 4}}
  layout: "{layout}"
task: {{type: lm, seq_len: 2048, eval_batches: 1, eval_batch_size: 8}}
train:
  steps: {steps}
  batch_size: 8
  lr: 3.0e-4
  warmup: 10
  eval_every: 0
  final_eval: false
  checkpoint_every: 0
  log_every: 10
  progress: false
  tensorboard: false
"""


def cases(ranks: list[int]) -> list[tuple[str, int, list[str]]]:
    """(label, ranks, overrides); ranks 0: a plain process (no torchrun)."""
    out = [("none, eager", 0, ["train.cuda_graph=false"]), ("none, graphed", 0, []),
           ("none, eager + compile", 0, ["train.cuda_graph=false", "train.compile=true"])]
    for n in ranks:
        if n == 1:  # one rank wraps nothing (hybrid.training.distributed.setup): torchrun's own cost
            out.append(("torchrun x1, ddp asked", 1, ["train.parallel=ddp"]))
            continue
        out += [(f"ddp x{n}", n, ["train.parallel=ddp"]), (f"fsdp x{n}", n, ["train.parallel=fsdp"]),
                (f"ddp x{n} + compile", n, ["train.parallel=ddp", "train.compile=true"])]
    return out


def run_case(config: Path, out: Path, ranks: int, overrides: list[str], timeout: int, logs: Path | None = None) -> dict:
    """Train one case; its results.json plus the steady-state rate, or {"error": ...}. With `logs`, the
    case's output (its last 400 lines) is kept there."""
    run_dir = out / f"run{len(list(out.iterdir()))}"
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
              if ranks else [sys.executable])
    cmd = [*launch, "-m", "hybrid", "train", str(config), f"train.run_dir={run_dir}", *overrides]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    except subprocess.TimeoutExpired:
        return {"error": f"not done in {timeout} s (--timeout)", "wall": time.perf_counter() - start}
    wall = time.perf_counter() - start
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
        lines = (proc.stdout + proc.stderr).splitlines()[-400:]
        (logs / f"{run_dir.name}.log").write_text(" ".join(cmd) + "\n" + "\n".join(lines) + "\n")
    if proc.returncode or not (run_dir / "results.json").is_file():
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        said = [ln for ln in lines if re.match(r"(\[rank\d+\]: )?(\w+(Error|Exception)\b|error: )", ln)]
        error = said[0] if said else (lines[-1] if lines else "?")
        return {"error": error.strip()[:300], "wall": wall}
    results = json.loads((run_dir / "results.json").read_text())
    logged = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    logged = [m for m in logged if "train/loss" in m]
    half = logged[(len(logged) - 1) // 2]  # the second half of the logged steps
    tokens = 8 * 2048 * (logged[-1]["step"] - half["step"])
    return {**results, "rate": tokens / (logged[-1]["time"] - half["time"]), "loss": logged[-1]["train/loss"],
            "wall": wall}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", default="1,2", help="torchrun world sizes to measure (more than the GPUs: shared)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--layout", default="(M F M F M F A F) x2")
    p.add_argument("--timeout", type=int, default=300, help="seconds allowed per case")
    p.add_argument("--only", default=None, help="case labels to run, ';' between them (default: all), "
                   "e.g. 'none, eager;fsdp x2'")
    p.add_argument("--logs", default=None, help="folder keeping each case's output (run<i>.log)")
    p.add_argument("--out", default=None, help="markdown file (default benchmarks/results/distributed_<gpus>x_<device>.md)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_distributed measures GPUs; the CPU paths are tested in tests/training/test_distributed.py")
    gpus, name = torch.cuda.device_count(), torch.cuda.get_device_name()
    ranks = [int(r) for r in args.ranks.split(",")]
    rows = ["| case | ranks on GPUs | backend | train step | tokens/s | vs none, eager | peak GiB (rank 0) "
            "| last loss | loss - one process's | wall s |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    path = Path(args.out or ROOT / "benchmarks" / "results" / f"distributed_{gpus}x_{name.split()[-1].lower()}.md")
    head = [f"# Data-parallel training: {gpus} x {name}, torch {torch.__version__}\n",
            f"`python benchmarks/bench_distributed.py --ranks {args.ranks} --steps {args.steps}`: `hybrid train` on "
            f"the byte-level LM task (Python standard library source), d_model {args.d_model}, layout "
            f"`{args.layout}`, global batch 8 x 2048, bf16 autocast, {args.steps} steps, no evaluation. tokens/s "
            f"over the second half of each run (start-up, compilation and graph capture excluded). The loss column "
            f"compares each case's last logged loss (the same global batches) with the one-process eager run's.\n"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = tmp / "bench.yaml"
        config.write_text(CONFIG.format(d_model=args.d_model, heads=max(1, args.d_model // 64), layout=args.layout,
                                        steps=args.steps))
        (tmp / "runs").mkdir()
        base = None
        chosen = cases(ranks)
        if args.only:
            wanted = [w.strip() for w in args.only.split(";")]
            unknown = [w for w in wanted if w not in {label for label, _, _ in chosen}]
            if unknown:
                sys.exit(f"--only: no case {unknown}; the cases are: " + "; ".join(label for label, _, _ in chosen))
            chosen = [c for c in chosen if c[0] in wanted]
        for label, n, overrides in chosen:
            r = run_case(config, tmp / "runs", n, overrides, args.timeout, Path(args.logs) if args.logs else None)
            where = "1 process" if not n else f"{n} on {min(n, gpus)}"
            shared = "-" if n <= 1 else ("nccl" if n <= gpus else "gloo (shared GPU)")
            if "error" in r:
                rows.append(f"| {label} | {where} | {shared} | failed: {r['error']} | | | | | | {r['wall']:.0f} |")
            else:
                base = base or r
                rows.append(f"| {label} | {where} | {shared} | {r['train_step']} | {r['rate']:,.0f} | "
                            f"{r['rate'] / base['rate']:.2f}x | {r.get('peak_memory_gib', float('nan')):.2f} | "
                            f"{r['loss']:.4f} | {r['loss'] - base['loss']:+.1e} | {r['wall']:.0f} |")
            print(rows[-1], flush=True)
            path.write_text("\n".join(head + rows) + "\n")  # after every case: a cut run keeps its rows
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
