"""Where the SSD scan's GPU time goes, kernel by kernel: ours (Triton) and mamba_ssm's
`mamba_chunk_scan_combined`, in the same run, forward and forward+backward, at one shape.

    PYTHONPATH=. python3 benchmarks/profile_ssd.py [--shape 4,8192,32,64,128] [--peer .peers/mamba]
                                                   [--calls 20] [--out FILE]

Inputs as bench_ssd.py's (bf16 x, dt, B, C, z; fp32 A, D, dt_bias; softplus, D and z on; one group;
chunk 256). Each implementation and pass is called a few times first (Triton's compilation, the peer's
autotuning), then --calls times under torch.profiler with the GPU synchronised after each call. The
tables give each kernel's milliseconds per call (names cut to 60 characters, so instances with other
template arguments fold together), its launches per call and its share of the pass; the closing line
gives the kernels' sum per call, which is below an eager call's wall time wherever the host is slower
than the GPU (bench_ssd.py's "graph" rows time the kernels back to back). Without CUDA it prints a
message and exits.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_ssd import PASSES, call_of, default_out, implementations, make, parse_shape  # noqa: E402
from profile_step import kernel_table  # noqa: E402

WARMUP = 3
WIDTH = 60
TOP = 20


def profiled(run, calls: int) -> tuple[list[tuple[str, float, float]], float]:
    """(kernel rows, total GPU ms) per call of `run`, after WARMUP unprofiled calls."""
    for _ in range(WARMUP):
        run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            run()
            torch.cuda.synchronize()
    return kernel_table(prof, calls, WIDTH, TOP)


def section(impl: str, label: str, rows: list[tuple[str, float, float]], total: float) -> list[str]:
    lines = [f"### {impl}, {label}", "", "| kernel | ms per call | launches | share |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| `{name}` | {ms:.3f} | {n:g} | {ms / total:.0%} |" for name, ms, n in rows]
    return lines + ["", f"GPU kernels in all: **{total:.3f} ms** per call.", ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="4,8192,32,64,128", help="batch,length,heads,headdim,state")
    ap.add_argument("--peer", default=".peers/mamba", help="folder holding the mamba_ssm package (the peer)")
    ap.add_argument("--no-peer", action="store_true", help="ours only")
    ap.add_argument("--calls", type=int, default=20, help="profiled calls of each implementation and pass")
    ap.add_argument("--out", default=None, help="markdown file (default benchmarks/results/profile_ssd_<device>.md)")
    args = ap.parse_args()
    shape = parse_shape(ap, args.shape)
    if args.calls < 1:
        ap.error(f"--calls: expected a positive integer, got {args.calls}")
    if not torch.cuda.is_available():
        print("profile_ssd: no CUDA device, nothing to measure (the Triton kernels and the peer need a GPU)")
        return
    import triton

    impls, note = implementations(None if args.no_peer else args.peer)
    impls = [(name, fn) for name, fn in impls if "chunked" not in name]
    device = torch.cuda.get_device_name()
    lines = [f"# SSD kernels, one call profiled, on {device}", "",
             f"torch {torch.__version__}, triton {triton.__version__}; (batch, length, heads, headdim, state) = "
             f"{shape}, chunk 256, bf16, softplus, D and z on, one group; {args.calls} calls each after {WARMUP}, "
             "torch.profiler, the GPU synchronised after every call (benchmarks/profile_ssd.py).", ""]
    lines += [f"- {note}", ""] if note else []
    out = Path(args.out or default_out("profile_ssd", device))
    out.parent.mkdir(parents=True, exist_ok=True)
    inputs = make(*shape)
    for impl, fn in impls:
        for label, backward in PASSES:
            rows, total = profiled(call_of(fn, inputs, backward), args.calls)
            lines += section(impl, label, rows, total)
            print(f"{impl} {label}: {total:.3f} ms of GPU kernels per call", flush=True)
            out.write_text("\n".join(lines))  # after every pass: a run cut short keeps what it measured
    print("\n".join(lines))


if __name__ == "__main__":
    main()
