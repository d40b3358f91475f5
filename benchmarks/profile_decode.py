"""Where an eager decoding step's host time goes: the Python functions and the PyTorch ops of one step.

An eager step of a small model at batch 1 is bound by the host (every op and kernel launch costs
microseconds of Python and dispatch while the GPU idles), so the table is of host time: cProfile's own
time per function (tottime) and calls, per step, over --steps steps of bench_generate.py's models
(d_model 768, vocabulary 50304, bf16 weights), after a prefill of 128 tokens and a warm-up; and the
count of ATen ops a step dispatches.

    python benchmarks/profile_decode.py [--models mamba,mamba2,transformer,jamba] [--out FILE]
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_generate import device_slug, model_config, sync  # noqa: E402
from count_decode_ops import CountOps  # noqa: E402

from hybrid.generation import StepDecoder, prefill  # noqa: E402
from hybrid.model import HybridLM  # noqa: E402


@torch.inference_mode()
def profile_model(name: str, device: torch.device, steps: int, top: int) -> list[str]:
    torch.manual_seed(0)
    model = HybridLM(model_config(name, 768, 50304)).to(device, torch.bfloat16).eval()
    state = model.init_state(1, 128 + 3 * steps + 16, device=device)
    prefill(model, torch.randint(0, 50304, (1, 128), device=device), state)
    step, tokens = StepDecoder(model, state, 1), torch.randint(0, 50304, (1,), device=device)
    for _ in range(5):
        step(tokens)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(tokens)
    sync(device)
    ms = (time.perf_counter() - start) / steps * 1e3
    with CountOps() as counter:
        step(tokens)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        step(tokens)
    sync(device)
    profiler.disable()
    stats = pstats.Stats(profiler)
    rows = sorted(((v[2], v[1], f"{Path(k[0]).name}:{k[1]}({k[2]})") for k, v in stats.stats.items()), reverse=True)
    lines = [f"## {name}: {ms:.2f} ms a step eager, {counter.count} ATen ops a step", "",
             "Most dispatched ops: " + ", ".join(f"{op} {n}" for op, n in counter.ops.most_common(12)), "",
             "| function | own ms / step | calls / step |", "|---|---:|---:|"]
    lines += [f"| `{where}` | {t / steps * 1e3:.3f} | {calls / steps:.0f} |" for t, calls, where in rows[:top]]
    del model, state, step
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return lines + [""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mamba,mamba2,transformer,jamba")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--top", type=int, default=25, help="functions listed per model")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="markdown file (default benchmarks/results/profile_decode_<device>.md)")
    args = p.parse_args()
    device = torch.device(args.device)
    title = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [f"# Eager decoding step, host time: {title}, torch {torch.__version__}", "",
             "Batch 1 after a 128-token prefill, bf16 weights; cProfile over "
             f"{args.steps} steps (its own overhead inflates the Python rows; the ms a step above each table "
             "is timed without it).", ""]
    for name in args.models.split(","):
        section = profile_model(name, device, args.steps, args.top)
        lines += section
        print("\n".join(section), flush=True)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"profile_decode_{device_slug(title)}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
