"""Causal depthwise conv1d + SiLU benchmark: ours (Triton) against PyTorch's depthwise F.conv1d + silu
(cuDNN) and, when importable, the `causal_conv1d` package, with a memory-copy lower bound, all measured
in the same run.

    PYTHONPATH=. python3 benchmarks/bench_causal_conv1d.py [--sweep] [--out FILE]
    PYTHONPATH=. python3 benchmarks/bench_causal_conv1d.py --device cpu     # PyTorch backends only

Times are medians of triton.testing.do_bench (CUDA events) in ms; the "fwd+bwd, CUDA graph" rows replay
one captured forward and backward from a CUDA graph (graph_timing.py; the L2 cache cleared before each
replay, as do_bench does), which leaves out the host's time that the eager fwd+bwd rows include
(autograd and launches: at small sizes most of what they time); bf16 x, weight and bias (the same
dtype for every implementation, as F.conv1d needs), activation SiLU, bias given. "GB/s" counts the
bytes the op must move: forward x in and out out; forward+backward adds x and dout in and dx out (the
weight, bias and their gradients are negligible). "copy" is the lower bound: a device-to-device copy
moving the same number of bytes (read + write), and "x copy" is each row's time over it. The
`causal_conv1d` package reads the channel-last layout natively; F.conv1d gets what it is given.
Ours runs forward+backward twice, with each backward (triton_conv.BACKWARD): "fused" (the default)
and "two_pass" (the row "ours (Triton, two-pass bwd)"; its forward is the same kernel, so it has no
fwd row; its GB/s counts the same bytes, not the fp32 g it writes and reads back).
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

from graph_timing import graphed_ms  # noqa: E402  (benchmarks/, the script's folder)
from hybrid.kernels.causal_conv1d import causal_conv1d_torch  # noqa: E402

# (batch, dim, length, width, layout); "channel-last": the x third of a (batch, length, 3 * dim) projection
SHAPES = [(8, 1536, 2048, 4, "channel-major"), (8, 1536, 2048, 4, "channel-last"), (8, 1536, 2048, 2, "channel-major"),
          (4, 2048, 512, 4, "channel-major"), (1, 4096, 8192, 4, "channel-major"), (16, 768, 1024, 3, "channel-major")]
CPU_SHAPES = [(2, 256, 512, 4, "channel-major"), (2, 256, 512, 4, "channel-last")]
# (label, backward, graphed): eager fwd+bwd through autograd also times the host (Python, launches); the
# graphed row replays the same forward and backward from one CUDA graph, the GPU's time alone
PASSES = [("fwd", False, False), ("fwd+bwd", True, False), ("fwd+bwd, CUDA graph", True, True)]


def make(batch, dim, length, width, layout, device, dtype):
    if layout == "channel-last":
        x = torch.randn(batch, length, 3 * dim, device=device, dtype=dtype)[..., dim:2 * dim].transpose(1, 2)
    else:
        x = torch.randn(batch, dim, length, device=device, dtype=dtype)
    w = (torch.randn(dim, width, device=device) / width ** 0.5).to(dtype)
    return x, w, torch.randn(dim, device=device, dtype=dtype)


def timer(device: str, graphed: bool = False):
    """measure(fn, grads) -> median ms; graphed (CUDA): one call of fn captured in a CUDA graph, its replays
    timed (graph_timing.py; fn must then return fresh gradients rather than accumulate them)."""
    if device == "cuda":
        import triton

        if graphed:
            return lambda fn, grads: graphed_ms(fn)
        return lambda fn, grads: triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median",
                                                         grad_to_none=grads)

    def cpu_time(fn, grads, reps=5):
        fn()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2] * 1e3
    return cpu_time


def bench(measure, fn, x, w, b, backward):
    """Median ms of one call of fn(x, w, b) (and its backward)."""
    if not backward:
        def run():
            with torch.no_grad():
                fn(x, w, b)
        return measure(run, None)
    leaves = [x.detach().requires_grad_(), w.detach().requires_grad_(), b.detach().requires_grad_()]
    g = torch.randn(x.shape, device=x.device, dtype=x.dtype)

    def run_bwd():  # fresh gradients each call (nothing accumulates into .grad), so a graph can replay it
        return torch.autograd.grad(fn(*leaves), leaves, g)
    return measure(run_bwd, None)


def copy_ms(measure, nbytes, device):
    """A device-to-device copy moving nbytes (half read, half written)."""
    src = torch.empty(nbytes // 2, device=device, dtype=torch.uint8)
    dst = torch.empty_like(src)
    return measure(lambda: dst.copy_(src), None)


def ours(method):
    """Our Triton op with the backward `method` (triton_conv.BACKWARD, which each forward reads and keeps
    for its backward: every row of ours sets it before its call)."""
    from hybrid.kernels.causal_conv1d import triton_conv

    def fn(x, w, b):
        triton_conv.BACKWARD = method
        return triton_conv.causal_conv1d_triton(x, w, b, activation="silu")
    return fn


def implementations(device):
    """(name, fn(x, w, b), whether it has a forward-only row)."""
    impls = []
    if device == "cuda":
        impls.append(("ours (Triton)", ours("fused"), True))
        impls.append(("ours (Triton, two-pass bwd)", ours("two_pass"), False))
    impls.append(("ours (torch backend, fp32 math)", lambda x, w, b: causal_conv1d_torch(x, w, b, activation="silu"),
                  True))
    impls.append(("F.conv1d depthwise + silu", lambda x, w, b: F.silu(
        F.conv1d(x, w[:, None], b, padding=w.shape[1] - 1, groups=w.shape[0])[..., :x.shape[-1]]), True))
    try:
        from causal_conv1d import causal_conv1d_fn  # the package (CUDA), when installed
        if device == "cuda":
            impls.append(("causal_conv1d package", lambda x, w, b: causal_conv1d_fn(x, w, b, activation="silu"),
                          True))
    except ImportError:
        pass
    return impls


def sweep(lines, measure):
    """Tile settings (BLOCK_D, BLOCK_L, num_warps) of our kernels at the first shape, both layouts: the
    forward, the fused backward, and the two-pass backward with the setting on its pass A (pass B at its
    default) and then on its pass B (pass A at its default)."""
    from hybrid.kernels.causal_conv1d.triton_conv import _causal_conv1d_bwd, _causal_conv1d_fwd, _config
    configs = {"channel-major": [(4, 128, 4), (8, 128, 4), (16, 128, 4), (16, 128, 8), (8, 256, 8), (32, 64, 4)],
               "channel-last": [(64, 16, 4), (128, 16, 4), (128, 16, 8), (64, 32, 4), (32, 32, 4), (128, 8, 4)]}
    for layout, cfgs in configs.items():
        x, w, b = make(8, 1536, 2048, 4, layout, "cuda", torch.bfloat16)
        dout = torch.randn(x.shape, device="cuda", dtype=x.dtype)
        a0, b0 = _config(x, "two_pass_g"), _config(x, "two_pass_dx")

        def bwd(cfg, method):
            return measure(lambda: _causal_conv1d_bwd(dout, x, w, b, None, None, True, config=cfg,  # noqa: B023
                                                      method=method), None)
        for cfg in cfgs:
            tf = measure(lambda: _causal_conv1d_fwd(x, w, b, None, None, True, config=cfg), None)  # noqa: B023
            tb, ta2, tb2 = bwd(cfg, "fused"), bwd((cfg, b0), "two_pass"), bwd((a0, cfg), "two_pass")
            lines.append(f"sweep (8, 1536, 2048, 4) {layout} BLOCK_D, BLOCK_L, warps = {cfg}: "
                         f"forward {tf:.3f} ms, backward {tb:.3f} ms; two-pass backward with it on pass A "
                         f"{ta2:.3f} ms (B {b0}), on pass B {tb2:.3f} ms (A {a0})")
            print(lines[-1], flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--out", default=None, help="markdown file to write (default benchmarks/results/...)")
    ap.add_argument("--sweep", action="store_true", help="also time tile-size variants of our kernels")
    args = ap.parse_args()
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to measure (try --device cpu for the PyTorch backends)")
        return
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    measure, measure_graphed = timer(device), timer(device, graphed=True)
    passes = [p for p in PASSES if device == "cuda" or not p[2]]
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({os.cpu_count()} threads)"
    rows, notes = [], []
    for shape in SHAPES if device == "cuda" else CPU_SHAPES:
        batch, dim, length, width, layout = shape
        x, w, b = make(*shape, device, dtype)
        n_bytes = x.numel() * x.element_size()
        for label, backward, graphed in passes:
            op_bytes = n_bytes * (5 if backward else 2)  # fwd: x in, out out; bwd: x, dout in, dx out
            timed = measure_graphed if graphed else measure
            bound = copy_ms(timed, op_bytes, device)
            rows.append(f"| {shape[:4]} | {layout} | {label} | copy (lower bound) | {bound:.3f} | "
                        f"{op_bytes / bound / 1e6:.0f} | 1.00x |")
            print(rows[-1], flush=True)
            for impl, fn, has_fwd in implementations(device):
                if not (backward or has_fwd):
                    continue
                try:
                    ms = bench(timed, fn, x, w, b, backward)
                except (RuntimeError, torch.OutOfMemoryError) as err:  # a peer that refuses a layout
                    notes.append(f"{impl} at {shape} {label}: {type(err).__name__}: {str(err).splitlines()[0]}")
                    continue
                rows.append(f"| {shape[:4]} | {layout} | {label} | {impl} | {ms:.3f} | "
                            f"{op_bytes / ms / 1e6:.0f} | {ms / bound:.2f}x |")
                print(rows[-1], flush=True)
        del x
        if device == "cuda":
            torch.cuda.empty_cache()
    if args.sweep and device == "cuda":
        sweep(notes, measure)
    import triton
    text = "\n".join([
        f"# Causal depthwise conv1d + SiLU on {name}",
        "",
        f"torch {torch.__version__}, triton {triton.__version__}; {str(dtype).replace('torch.', '')} x, weight and "
        "bias; SiLU and bias on. Median of triton.testing.do_bench (CPU: median of 5 wall-clock calls); the "
        "\"CUDA graph\" rows: one forward and backward captured in a CUDA graph and its replays timed the same "
        "way (L2 cleared before each), without the host's time (the copy too). GB/s "
        "counts x in + out out (fwd) and additionally x, dout in + dx out (bwd); \"x copy\" is the time over a "
        "device copy of the same bytes, measured in the same run.",
        "",
        "| (batch, dim, length, width) | x layout | pass | implementation | ms | GB/s | x copy |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        *[f"- {n}" for n in notes],
        "",
    ])
    print(text)
    tag = name.replace(" ", "_").replace("(", "").replace(")", "") if device == "cuda" else "cpu"
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"causal_conv1d_{tag}.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
