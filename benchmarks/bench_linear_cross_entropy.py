"""LM-head loss benchmark: F.linear + F.cross_entropy on the whole fp32 logits against ours in row
chunks (hybrid.kernels.linear_cross_entropy) and, when importable, Liger-Kernel's fused linear
cross-entropy, all in the same run: forward+backward time and the peak memory above the inputs.

    PYTHONPATH=. python3 benchmarks/bench_linear_cross_entropy.py [--out FILE]
    PYTHONPATH=. python3 benchmarks/bench_linear_cross_entropy.py --device cpu --rows 2048

bf16 autocast over fp32 weights, as training runs; the hidden states arrive in bf16 and the loss is
summed. Times are medians of triton.testing.do_bench (CUDA events) in ms; on the CPU, medians of 5
wall-clock runs.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybrid.kernels.linear_cross_entropy import linear_cross_entropy  # noqa: E402

# (rows = batch x length, d_model, vocab): the ~130M model at 8 x 2048 and 2 x 8192, and a wider one
SHAPES = [(16384, 768, 50304), (16384, 2048, 50304), (16384, 768, 128256)]


def plain(h, w, t):
    return F.cross_entropy(F.linear(h, w).float(), t, reduction="sum")


def implementations():
    impls = {"F.linear + F.cross_entropy (fp32 logits)": plain,
             "ours, row chunks": lambda h, w, t: linear_cross_entropy(h, w, t)}
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy  # noqa: PLC0415
        impls["Liger-Kernel fused linear CE"] = (
            lambda h, w, t: liger_fused_linear_cross_entropy(h, w, t, reduction="sum"))
    except ImportError:
        pass
    return impls


def measure(fn, clear, device: str) -> tuple[float, int]:
    """(ms, peak bytes above what was allocated before) of fn() on device; clear() frees its outputs."""
    if device == "cpu":
        times = []
        for _ in range(5):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return sorted(times)[2], 0
    from triton.testing import do_bench  # noqa: PLC0415

    fn()
    torch.cuda.synchronize()
    clear()  # the previous call's gradients are not part of what the next one allocates
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    return do_bench(fn, warmup=5, rep=50), peak


def bench_shape(rows: int, d: int, vocab: int, device: str) -> list[str]:
    h0 = torch.randn(rows, d, device=device).to(torch.bfloat16)
    w = torch.nn.Parameter(torch.randn(vocab, d, device=device) / d ** 0.5)
    t = torch.randint(0, vocab, (rows,), device=device)
    lines = []
    for name, impl in implementations().items():
        h = h0.clone().requires_grad_()

        def step():
            h.grad, w.grad = None, None
            with torch.autocast(device, dtype=torch.bfloat16):
                loss = impl(h, w, t)
            loss.backward()

        def clear():
            h.grad, w.grad = None, None

        try:
            ms, peak = measure(step, clear, device)
        except torch.OutOfMemoryError:
            lines.append(f"| ({rows}, {d}, {vocab}) | {name} | out of memory | - |")
            continue
        lines.append(f"| ({rows}, {d}, {vocab}) | {name} | {ms:.2f} | {peak / 2**20:,.0f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--rows", type=int, default=None, help="rows for every shape (default: each shape's own)")
    ap.add_argument("--out", default=None, help="markdown file (default benchmarks/results/linear_cross_entropy_<device>.md)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --device cpu")
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({os.cpu_count()} threads)"
    lines = [f"# LM-head loss (linear + cross-entropy), forward+backward, on {name}", "",
             f"torch {torch.__version__}; bf16 autocast, fp32 weight, summed loss. Peak: memory allocated above the "
             "inputs during one step (0 on the CPU, not measured).", "",
             "| (rows, d_model, vocab) | implementation | ms | peak MiB |", "| --- | --- | ---: | ---: |"]
    for rows, d, vocab in SHAPES:
        lines += bench_shape(args.rows or rows, d, vocab, args.device)
    text = "\n".join(lines)
    print(text)
    tag = name.lower().replace(" ", "_") if args.device == "cuda" else "cpu"
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"linear_cross_entropy_{tag}.md")
    Path(out).write_text(text + "\n")


if __name__ == "__main__":
    main()
