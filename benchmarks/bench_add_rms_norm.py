"""Residual add + RMSNorm: the Triton pass against the PyTorch ops it replaces, with a memory-copy
lower bound, in one run.

    PYTHONPATH=. python3 benchmarks/bench_add_rms_norm.py [--out FILE]

Shapes: a training step's sublayer (8 x 2048 rows of 768: fp32 residual, bf16 sublayer output, as
under autocast with residual_in_fp32) and decoding steps (1 and 64 rows). "torch" is what the model
ran before the fused op: `x + out.to(x.dtype)`, then F.rms_norm in fp32 and the cast back. Times are
medians of triton.testing.do_bench in ms; the decoding rows' forward, where launches are the cost, and
the "fwd+bwd, CUDA graph" rows time one call captured in a CUDA graph (graph_timing.py, the L2 cleared
before each replay), without the host's time that the eager fwd+bwd rows include. "copy" moves the
bytes the op must: forward residual and out in, normed and new residual out; forward+backward adds
the two incoming gradients, the saved residual, and the two gradients out.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graph_timing import graphed_ms  # noqa: E402  (benchmarks/, the script's folder)
from hybrid.kernels.add_rms_norm import add_rms_norm  # noqa: E402

SHAPES = [((8 * 2048, 768), "training step, d 768"), ((8 * 2048, 2048), "training step, d 2048"),
          ((64, 768), "decoding, batch 64"), ((1, 768), "decoding, batch 1")]


def _bench(fn, graphed: bool) -> float:
    """Median ms: eager (do_bench), or one call captured in a CUDA graph and its replays timed."""
    import triton.testing  # noqa: PLC0415

    if graphed:
        return graphed_ms(fn)
    return triton.testing.do_bench(fn, return_mode="median")


def _case(rows: int, d: int):
    residual = torch.randn(rows, d, device="cuda")
    out = torch.randn(rows, d, device="cuda", dtype=torch.bfloat16)
    weight = torch.ones(d, device="cuda")
    return out, residual, weight


def _step(backend: str, out, residual, weight, backward: bool):
    if not backward:
        return lambda: add_rms_norm(out, residual, weight, 1e-5, backend=backend)
    leaves = [t.detach().clone().requires_grad_() for t in (out, residual, weight)]
    g = torch.randn_like(residual)

    def run():  # fresh gradients each call (no accumulation into .grad), so a graph can replay it
        normed, new = add_rms_norm(*leaves, 1e-5, backend=backend)
        return torch.autograd.grad([normed, new], leaves, [g, g])
    return run


def _copy_ms(n_bytes: int, graphed: bool) -> float:
    src = torch.empty(n_bytes // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return _bench(lambda: dst.copy_(src), graphed)


def _sweep(top: int = 8) -> list[str]:
    """The Triton backward kernel alone (its autograd Function bypassed) at the training shapes, for every
    (rows per tile, warps, programs per SM): the fastest `top` and the default, in ms."""
    import itertools  # noqa: PLC0415

    from hybrid.kernels.add_rms_norm import triton_add_rms_norm as tk  # noqa: PLC0415

    lines = ["", "Backward kernel alone (fp32 residual, bf16 out; `--sweep`), ms:", "",
             "| rows x d | rows per tile | warps | programs per SM | ms | vs default |", "|---|---:|---:|---:|---:|---:|"]
    for (n, d), _label in SHAPES[:2]:
        out, residual, weight = _case(n, d)
        _, new, rstd = tk._add_rms_norm_fwd(out, residual, weight, 1e-5)
        dy, dr_out = torch.randn_like(residual), torch.randn_like(residual)
        default = tk.bwd_config(d)
        configs = sorted(set(itertools.product((1, 2, 4, 8, 16), (2, 4, 8, 16), (1, 2, 4, 8))) | {default})
        times = {}
        for c in configs:
            try:
                times[c] = _bench(lambda c=c: tk._add_rms_norm_bwd(dy, dr_out, new, weight, rstd, out.dtype, c), False)
            except Exception as err:  # a tile that does not compile (registers, shared memory): skip it
                print(f"{n} x {d} {c}: {type(err).__name__}: {str(err)[:100]}", flush=True)
        fastest = sorted(times, key=times.get)[:top]
        shown = [f"| {n} x {d} | {c[0]} | {c[1]} | {c[2]}{' (default)' if c == default else ''} | {times[c]:.4f} "
                 f"| {times[default] / times[c]:.2f}x |" for c in fastest + ([default] if default not in fastest else [])]
        print("\n".join(shown), flush=True)
        lines += shown
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="markdown file (default benchmarks/results/add_rms_norm_<device>.md)")
    ap.add_argument("--sweep", action="store_true",
                    help="also time the Triton backward alone over tiles, warps and programs per SM (training shapes)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_add_rms_norm measures the GPU; the CPU path is the PyTorch one (tests/kernels/test_add_rms_norm.py)")
    name = torch.cuda.get_device_name()
    sweep = _sweep() if args.sweep else []
    rows = ["| rows x d | case | pass | copy ms | torch ms | triton ms | torch / triton | triton / copy |",
            "|---|---|---|---:|---:|---:|---:|---:|"]
    for (n, d), label in SHAPES:
        out, residual, weight = _case(n, d)
        decoding = n <= 64
        # (backward, graphed): the forward graphed where launches are the cost; forward+backward eager
        # (through autograd, the host's time included) and from one CUDA graph (the GPU's time alone)
        for backward, graphed in ((False, decoding), (True, False), (True, True)):
            # bytes: fp32 residual in, bf16 out in, fp32 normed and new residual out; backward: two fp32
            # gradients and the saved residual in, an fp32 and a bf16 gradient out
            n_bytes = n * d * ((4 + 2 + 4 + 4) + ((4 + 4 + 4 + 4 + 2) if backward else 0))
            copy = _copy_ms(n_bytes, graphed)
            kind = ("fwd+bwd, CUDA graph" if graphed else "fwd+bwd") if backward else "fwd"
            try:
                times = {b: _bench(_step(b, out, residual, weight, backward), graphed) for b in ("torch", "triton")}
            except RuntimeError as err:  # a capture that fails: say so, and go on with the other rows
                rows.append(f"| {n} x {d} | {label} | {kind} | {copy:.4f} | failed: {str(err).splitlines()[0][:120]} "
                            f"| | | |")
                print(rows[-1], flush=True)
                continue
            rows.append(f"| {n} x {d} | {label} | {kind} | {copy:.4f} | {times['torch']:.4f} "
                        f"| {times['triton']:.4f} | {times['torch'] / times['triton']:.2f}x | {times['triton'] / copy:.2f}x |")
            print(rows[-1], flush=True)
    text = [f"# Residual add + RMSNorm on {name}, torch {torch.__version__}\n", __doc__.split("\n\n", 2)[2], *rows, *sweep]
    slug = name.split()[-1].lower()
    path = Path(args.out or Path(__file__).parent / "results" / f"add_rms_norm_{slug}.md")
    path.write_text("\n".join(text) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
