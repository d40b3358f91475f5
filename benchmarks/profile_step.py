"""Where one training step's GPU time goes: CUDA kernels grouped by name, milliseconds per step.

Two sources of steps:
  --config FILE [OVERRIDES]   `hybrid train`'s own loop on that config (its task, its mode: eager or
                              CUDA-graphed as the config says), profiled over --steps steps after
                              --skip steps (warm-up, capture), in a throw-away run directory;
  --lm LAYOUT                 bench_model.py's ~130M language model (d_model 768, vocab 50304) with that
                              layout, eager, at --batch x --length, as bench_model.py measures it.

The first table lists kernels by total time with their share of the step; names are cut to --width
characters, so instances of one kernel with different template arguments fold together. The second
lists the operators (aten ops, autograd Functions) by the GPU time of the kernels each launched itself,
so that an anonymous `elementwise_kernel` row can be traced to the op behind it; --shapes splits each op
by its input shapes. The GPU is synchronised at every step boundary, so a step's kernels are counted in
that step (the CPU runs ahead of the GPU otherwise, and a window catches the tail of the step before it).

    python benchmarks/profile_step.py --config experiments/selective_copying/config.yaml model.layout="M x2"
    python benchmarks/profile_step.py --lm "M x24" --out benchmarks/results/profile_mamba.md
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def kernel_table(prof: profile, steps: int, width: int, top: int) -> tuple[list[tuple[str, float, float]], float]:
    """[(kernel name, ms per step, launches per step)] by time, and the total GPU ms per step."""
    total_us, count = defaultdict(float), defaultdict(int)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            name = event.name[:width]
            total_us[name] += event.device_time
            count[name] += 1
    rows = sorted(((name, us / 1e3 / steps, count[name] / steps) for name, us in total_us.items()),
                  key=lambda r: -r[1])
    return rows[:top], sum(total_us.values()) / 1e3 / steps


def op_table(prof: profile, steps: int, width: int, top: int,
             by_shape: bool) -> list[tuple[str, str, float, float]]:
    """[(operator, input shapes or "", GPU ms per step of the kernels it launched itself, calls per step)]."""
    rows = []
    for avg in prof.key_averages(group_by_input_shape=by_shape):
        if avg.device_type != torch.autograd.DeviceType.CPU or avg.key.startswith("ProfilerStep"):
            continue  # the kernels themselves are the first table's rows; a step's marker is no operator
        ms = avg.self_device_time_total / 1e3 / steps
        if ms > 0:
            shapes = str(avg.input_shapes)[:width] if by_shape else ""
            rows.append((avg.key[:width], shapes, ms, avg.count / steps))
    return sorted(rows, key=lambda r: -r[2])[:top]


def _synced_step(prof: profile) -> None:
    torch.cuda.synchronize()
    prof.step()


def _activities() -> list:
    return [ProfilerActivity.CPU, ProfilerActivity.CUDA]


def profile_config(args: argparse.Namespace) -> tuple[profile, str]:
    from hybrid.training.trainer import train  # noqa: PLC0415

    plan = schedule(wait=args.skip, warmup=2, active=args.steps, repeat=1)
    steps = args.skip + 2 + args.steps
    with tempfile.TemporaryDirectory() as tmp, profile(activities=_activities(), schedule=plan,
                                                          record_shapes=args.shapes) as prof:
        overrides = [*args.overrides, f"train.steps={steps}", "train.eval_every=0", "train.checkpoint_every=0",
                     "train.final_eval=false", f"train.run_dir={tmp}/run", "train.progress=false"]
        train(args.config, overrides, on_step=lambda _: _synced_step(prof))
    return prof, f"`hybrid train {args.config} {' '.join(args.overrides)}`"


def profile_lm(args: argparse.Namespace) -> tuple[profile, str]:
    from bench_model import build  # noqa: PLC0415

    model = build(args.lm).cuda()
    opt = torch.optim.AdamW(model.param_groups(0.1), lr=1e-4, fused=True)
    ids = torch.randint(0, 50304, (args.batch, args.length + 1), device="cuda")
    plan = schedule(wait=args.skip, warmup=2, active=args.steps, repeat=1)
    with profile(activities=_activities(), schedule=plan, record_shapes=args.shapes) as prof:
        for _ in range(args.skip + 2 + args.steps):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(ids[:, :-1])
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
            with torch.autograd.set_multithreading_enabled(False):
                loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            _synced_step(prof)
    return prof, f"`{args.lm}`, d_model 768, vocab 50304, batch {args.batch} x {args.length}, eager, bf16 autocast"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="a `hybrid train` config; OVERRIDES (key=value) follow")
    src.add_argument("--lm", help="a layout for bench_model.py's ~130M language model")
    ap.add_argument("overrides", nargs="*", help="config overrides, as `hybrid train` takes them")
    ap.add_argument("--steps", type=int, default=5, help="profiled steps")
    ap.add_argument("--skip", type=int, default=10, help="steps before profiling (warm-up, graph capture)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--width", type=int, default=60, help="characters of a kernel name kept")
    ap.add_argument("--top", type=int, default=25, help="rows in each table")
    ap.add_argument("--shapes", action="store_true", help="split the operator table by input shapes")
    ap.add_argument("--out", help="markdown file to write")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("profile_step: no CUDA device; this profiles GPU kernels")
    if args.lm and args.overrides:
        ap.error("OVERRIDES go with --config, not --lm")
    prof, what = profile_config(args) if args.config else profile_lm(args)
    rows, total = kernel_table(prof, args.steps, args.width, args.top)
    lines = [f"# One training step's CUDA kernels ({torch.cuda.get_device_name()}, torch {torch.__version__})", "",
             f"{what}; {args.steps} steps profiled after {args.skip + 2}; GPU kernel time per step: "
             f"**{total:.2f} ms**", "", "| kernel | ms / step | share | launches / step |", "|---|---:|---:|---:|"]
    lines += [f"| `{name}` | {ms:.3f} | {ms / total:.1%} | {n:g} |" for name, ms, n in rows]
    lines += ["", "Operators by the GPU time of the kernels they launched themselves:", "",
              "| operator | " + ("input shapes | " if args.shapes else "") + "ms / step | share | calls / step |",
              "|---|" + ("---|" if args.shapes else "") + "---:|---:|---:|"]
    for name, shapes, ms, n in op_table(prof, args.steps, args.width, args.top, args.shapes):
        lines.append(f"| `{name}` | " + (f"`{shapes}` | " if args.shapes else "") + f"{ms:.3f} | {ms / total:.1%} | {n:g} |")
    text = "\n".join(lines)
    print(text, flush=True)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
