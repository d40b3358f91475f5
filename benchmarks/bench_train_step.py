"""Training steps per second through `hybrid train`'s own loop: eager, compiled, CUDA-graphed, both.

Each row is one `hybrid.training.trainer.train` run on MQAR (the batches drawn by the task, the
step built by `hybrid.training.modes`, logging every 25 steps as configs/trainers/gpu.yaml), timed
from the end of its warm-up steps to its last step with the GPU synchronised at both ends, so
capture and compile time are excluded and reported apart (`setup s`: the wall time of the warm-up
steps). Models:

    tiny     d_model 64, batch 128 x 128, MQAR vocabulary 8192:  "(A F) x2", "M x2", "M F A F M F M F"
    d256     d_model 256, batch 64 x 256:                         "M F A F M F M F"
    mixture  d_model 64, batch 128, Zoology's MQAR training mixture (lengths 64-256, five settings):
             graphed per shape against padded to one shape ("graphed-pad", train.graph_shapes: pad)
    130m     d_model 768, vocab 50304, batch 8 x 2048 (bench_model.py's shapes; MQAR at length 2048 gives
             the data, the cross-entropy runs over every position as in language modelling)

Also measured: one evaluation (5 held-out sets of 1,000 examples, batch 250) eager against graphed,
and --concurrency N: N tiny runs at once on one GPU (separate processes), their steps/s summed.

    python benchmarks/bench_train_step.py --models tiny,d256 --modes eager,graphed,compiled,compiled+graphed
    python benchmarks/bench_train_step.py --concurrency 1,4,8,16
    python benchmarks/bench_train_step.py --device cpu --models tiny --modes eager --steps 30
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hybrid.config import load_config  # noqa: E402
from hybrid.training.trainer import train  # noqa: E402

LAYERS = {"A": {"type": "attention", "n_heads": 4}, "M": {"type": "mamba", "d_state": 16},
          "F": {"type": "mlp", "expand": 4, "activation": "gelu"}}
HYBRID = "M F A F M F M F"
MODELS = {  # name: (layout, d_model, batch, length, vocab)
    "tiny": [("(A F) x2", 64, 128, 128, 8192), ("M x2", 64, 128, 128, 8192), (HYBRID, 64, 128, 128, 8192)],
    "d256": [(HYBRID, 256, 64, 256, 8192)],
    "mixture": [(HYBRID, 64, 128, 0, 8192)],  # length 0: Zoology's mixture (the MQAR task's defaults)
    "130m": [("(A F) x12", 768, 8, 2048, 50304), ("M x24", 768, 8, 2048, 50304),
             ("(M F M F M F A F) x3", 768, 8, 2048, 50304)],
}
MODES = {"eager": (False, False), "compiled": (True, False), "graphed": (False, True), "compiled+graphed": (True, True),
         "graphed-pad": (False, True)}


def config(layout: str, d_model: int, batch: int, length: int, vocab: int, mode: str, steps: int, device: str,
           out: Path) -> dict:
    compile_, graph = MODES[mode]
    heads = 12 if d_model == 768 else 4
    task = {"type": "mqar", "vocab_size": vocab, "eval_examples": 16, "eval_batch_size": 16}
    if length:
        task.update(train=[{"length": length, "num_kv_pairs": length // 16}],
                    test=[{"length": length, "num_kv_pairs": length // 16}])
    return {
        "name": "bench",
        "model": {"d_model": d_model, "vocab_size": vocab, "layout": layout, "residual_in_fp32": True,
                  "layers": {**LAYERS, "A": {"type": "attention", "n_heads": heads}}},
        "task": task,
        "train": {"steps": steps, "batch_size": batch, "lr": 1e-4, "warmup": 0, "eval_every": 0, "final_eval": False,
                  "checkpoint_every": 0, "log_every": 25, "device": device, "compile": compile_,
                  "cuda_graph": graph if device == "cuda" else False, "progress": False, "tensorboard": False,
                  "graph_shapes": "pad" if mode == "graphed-pad" else "each",
                  "run_dir": str(out)},
    }


def measure(layout, d_model, batch, length, vocab, mode, warmup, steps, device) -> dict:
    """Steady-state steps/s of one `train()` run, timed by its on_step hook."""
    marks: dict[str, float] = {}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def on_step(step: int) -> None:
        if step == warmup:
            sync()
            marks["start"] = time.perf_counter()
        elif step == warmup + steps:
            sync()
            marks["end"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        root = load_config(config(layout, d_model, batch, length, vocab, mode, warmup + steps, device, Path(tmp) / "run"))
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()  # the whole run: graph pools are allocated at capture
        t0 = time.perf_counter()
        results = train(root, on_step=on_step)
    rate = steps / (marks["end"] - marks["start"])
    mean_length = results["tokens_per_s"] / results["steps_per_s"] / batch if length == 0 else length
    return {"layout": layout, "d_model": d_model, "batch": batch, "length": length, "mode": mode,
            "step": results["train_step"] + ("-pad" if mode == "graphed-pad" else ""), "steps_per_s": rate,
            "tokens_per_s": rate * batch * mean_length,
            "setup_s": marks["start"] - t0, "params": results["parameters"],
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")}


def measure_eval(layout: str, d_model: int, vocab: int) -> dict:
    """Seconds per evaluation of Zoology's five MQAR test sets (1,000 examples each), eager vs graphed."""
    from hybrid.model import HybridLM  # noqa: PLC0415
    from hybrid.tasks.base import build_task  # noqa: PLC0415
    from hybrid.training.evaluation import GraphedStats, run_evaluation  # noqa: PLC0415

    root = load_config(config(layout, d_model, 128, 128, vocab, "eager", 1, "cuda", Path("unused")))
    model = HybridLM(root.model, root.layout).cuda()
    task = build_task({"type": "mqar", "vocab_size": vocab}, 0)
    device, amp = torch.device("cuda"), torch.bfloat16
    row = {"layout": layout}
    for label, stats in [("eager", None), ("graphed", GraphedStats(model, task, device, amp, torch.cuda.graph_pool_handle()))]:
        run_evaluation(model, task, device, amp, None, stats)  # warm-up (and capture)
        torch.cuda.synchronize()
        t = time.perf_counter()
        result = run_evaluation(model, task, device, amp, None, stats)
        torch.cuda.synchronize()
        row[label] = time.perf_counter() - t
        row[f"{label}_accuracy"] = result["eval/all/accuracy"]
    return row


def concurrency(counts: list[int], layout: str, steps: int) -> list[dict]:
    """Aggregate steps/s of N tiny graphed runs sharing the GPU, each in its own process."""
    rows = []
    for n in counts:
        cmd = [sys.executable, __file__, "--single", layout, "--steps", str(steps), "--modes", "graphed"]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(n)]
        t = time.perf_counter()
        results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        rows.append({"runs": n, "aggregate": sum(r["steps_per_s"] for r in results),
                     "per_run": min(r["steps_per_s"] for r in results), "wall_s": time.perf_counter() - t})
        print(rows[-1], flush=True)
    return rows


def table(rows: list[dict], device: str) -> list[str]:
    lines = ["| model | layout | mode | steps/s | tokens/s | vs eager | setup s | peak GiB |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        eager = next((e["steps_per_s"] for e in rows if e["layout"] == r["layout"] and e["d_model"] == r["d_model"]
                      and e["mode"] == "eager"), None)
        ratio = f"{r['steps_per_s'] / eager:.2f}x" if eager else "-"
        shape = f"b{r['batch']}x{r['length']}" if r["length"] else f"b{r['batch']}, MQAR mixture"
        lines.append(f"| d{r['d_model']} {shape} ({r['params'] / 1e6:.1f}M) | `{r['layout']}` | "
                     f"{r['step']} | {r['steps_per_s']:.3g} | {r['tokens_per_s'] / 1e3:.3g}k | {ratio} | "
                     f"{r['setup_s']:.1f} | {r['peak_gib']:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny", help="comma list of: " + ", ".join(MODELS))
    parser.add_argument("--layouts", default=None, help="only these layouts of the chosen models (comma list)")
    parser.add_argument("--modes", default="eager,graphed", help="comma list of: " + ", ".join(MODES))
    parser.add_argument("--steps", type=int, default=300, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=20, help="steps before the timing starts (capture, compile)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--eval", action="store_true", help="also time one evaluation eager vs graphed (tiny layouts)")
    parser.add_argument("--concurrency", default=None, help="comma list of concurrent tiny graphed runs, e.g. 1,4,8,16")
    parser.add_argument("--single", default=None, help=argparse.SUPPRESS)  # one tiny run, JSON on stdout
    parser.add_argument("--out", default=None, help="markdown file to write")
    args = parser.parse_args()
    modes = args.modes.split(",")

    if args.single:
        print(json.dumps(measure(args.single, 64, 128, 128, 8192, modes[0], args.warmup, args.steps, args.device)))
        return
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    lines = [f"# Training steps through `hybrid train` ({name}, torch {torch.__version__})", "",
             f"bf16 autocast on CUDA (float32 on CPU), fused AdamW, gradient clipping, MQAR batches drawn by the task; "
             f"{args.steps} timed steps after {args.warmup} warm-up steps; `setup s` is the wall time of the warm-up "
             f"steps (model build, capture, compile).", ""]
    rows = []
    if not args.concurrency:
        for model in args.models.split(","):
            for spec in MODELS[model]:
                if args.layouts and spec[0] not in args.layouts.split(","):
                    continue
                for mode in modes:
                    rows.append(measure(*spec, mode, args.warmup, args.steps, args.device))
                    print(rows[-1], flush=True)
        lines += table(rows, args.device)
    if args.eval:
        lines += ["", "One evaluation, MQAR's five default test sets (5,000 examples, batch 250), seconds:", "",
                  "| layout | eager | graphed | speed-up |", "|---|---:|---:|---:|"]
        for layout, *_ in MODELS["tiny"]:
            r = measure_eval(layout, 64, 8192)
            print(r, flush=True)
            lines.append(f"| `{layout}` | {r['eager']:.3f} | {r['graphed']:.3f} | {r['eager'] / r['graphed']:.1f}x |")
    if args.concurrency:
        counts = [int(c) for c in args.concurrency.split(",")]
        lines += ["", f"Concurrent graphed runs of `{HYBRID}` (d_model 64, batch 128 x 128) on one GPU, one process each:",
                  "", "| runs | aggregate steps/s | slowest run steps/s | wall s |", "|---:|---:|---:|---:|"]
        for r in concurrency(counts, HYBRID, args.steps):
            lines.append(f"| {r['runs']} | {r['aggregate']:.0f} | {r['per_run']:.0f} | {r['wall_s']:.0f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
