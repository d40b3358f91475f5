"""Mamba-2's gated RMSNorm: our Triton pass, the checkpointed PyTorch ops it replaces and mamba_ssm's
Triton `rmsnorm_fn` (the peer), with a memory-copy lower bound, in one run.

    PYTHONPATH=. python3 benchmarks/bench_gated_rms_norm.py [--peer .peers/mamba] [--out FILE]

Shapes: the ~130M Mamba-2 model's norm in a training step (8 x 2048 rows of d_ssm 1536, one group and
eight; 2 x 8192 is the same work), bf16 x and z with z a column slice of a wider in_proj output as the layer passes
it, fp32 weight, the gate before the norm (mamba_ssm's default, norm_before_gate=False). "torch" is
what the layer ran before the fused op: the fp32 PyTorch ops under activation checkpointing. Times are
medians of triton.testing.do_bench in ms, eager. "copy" moves the bytes the op must: forward x and z
in, y out; forward+backward adds dy and x and z again in, dx and dz out.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybrid.kernels.gated_rms_norm import gated_rms_norm  # noqa: E402
from peer_import import peer_function  # noqa: E402  (benchmarks/, the script's folder)

SHAPES = [(8 * 2048, 1536, 1536, "8 x 2048, one group"), (8 * 2048, 1536, 192, "8 x 2048, 8 groups"),
          (8 * 2048, 4096, 4096, "8 x 2048, d 4096")]  # the op sees rows: 2 x 8192 is the first shape again
IN_PROJ_EXTRA = 1536 + 2 * 128 + 24  # in_proj's other columns beside z (x, B, C, dt at the 130M shape)


def _bench(fn) -> float:
    import triton.testing  # noqa: PLC0415

    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def implementations(peer: str | None):
    impls = [(name, (lambda b: lambda x, z, w, g: gated_rms_norm(x, z, w, 1e-5, g, False, backend=b))(b))
             for name, b in (("ours (Triton)", "triton"), ("torch, checkpointed", "torch"))]
    rmsnorm_fn, note = peer_function(peer, "mamba_ssm.ops.triton.layernorm_gated", "rmsnorm_fn")
    if rmsnorm_fn is not None:
        impls.append(("mamba_ssm rmsnorm_fn", lambda x, z, w, g: rmsnorm_fn(x, w, None, z=z, eps=1e-5, group_size=g,
                                                                           norm_before_gate=False)))
    return impls, note


def _case(rows: int, d: int):
    """x, in_proj's output holding z in its first d columns, the weight."""
    x = torch.randn(rows, d, device="cuda", dtype=torch.bfloat16)
    wide = torch.randn(rows, d + IN_PROJ_EXTRA, device="cuda", dtype=torch.bfloat16)
    return x, wide, 1 + 0.1 * torch.randn(d, device="cuda")


def _timed(fn, x, wide, w, group: int, backward: bool) -> float:
    d = x.shape[1]
    if not backward:
        def run():
            with torch.no_grad():
                fn(x, wide[:, :d], w, group)
        return _bench(run)
    xl, wl, ww = (t.detach().clone().requires_grad_() for t in (x, wide, w))
    dy = torch.randn_like(x)

    def run_bwd():
        fn(xl, wl[:, :d], ww, group).backward(dy)  # z a strided slice of the leaf, as in the layer
    return _bench(run_bwd)


def _copy_ms(n_bytes: int) -> float:
    src = torch.empty(n_bytes // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return _bench(lambda: dst.copy_(src))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer", default=".peers/mamba", help="folder holding the mamba_ssm package (the peer)")
    ap.add_argument("--no-peer", action="store_true", help="ours only")
    ap.add_argument("--out", default=None, help="markdown file (default benchmarks/results/gated_rms_norm_<device>.md)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gated_rms_norm measures the GPU; the CPU path is the PyTorch one (tests/kernels/test_gated_rms_norm.py)")
    impls, note = implementations(None if args.no_peer else args.peer)
    name = torch.cuda.get_device_name()
    rows = ["| rows x d, groups | pass | copy ms | " + " | ".join(f"{n} ms" for n, _ in impls)
            + " | torch / ours | peer / ours | ours / copy |", "|---|---|---:|" + "---:|" * (len(impls) + 3)]
    for n, d, group, label in SHAPES:
        x, wide, w = _case(n, d)
        for backward in (False, True):
            copy = _copy_ms(n * d * 2 * (3 + (6 if backward else 0)))  # bf16 tensors of (rows, d) moved
            times = [_timed(fn, x, wide, w, group, backward) for _, fn in impls]
            peer = f"{times[2] / times[0]:.2f}x" if len(times) > 2 else "-"
            rows.append(f"| {label} | {'fwd+bwd' if backward else 'fwd'} | {copy:.4f} | "
                        + " | ".join(f"{t:.4f}" for t in times)
                        + f" | {times[1] / times[0]:.2f}x | {peer} | {times[0] / copy:.2f}x |")
            print(rows[-1], flush=True)
    text = [f"# Gated RMSNorm on {name}, torch {torch.__version__}\n", __doc__.split("\n\n", 2)[2], *rows]
    if note:
        text.append(f"\n{note}")
    slug = name.split()[-1].lower()
    path = Path(args.out or Path(__file__).parent / "results" / f"gated_rms_norm_{slug}.md")
    path.write_text("\n".join(text) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
