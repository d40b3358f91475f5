"""Selective scan (Mamba-1 S6) benchmark: ours (Triton, the PyTorch backend, sequential reference) against
mamba_ssm's CUDA kernel, measured in the same run; and the decoding step against mamba_ssm's Triton
`selective_state_update`. With --cpu (or without a GPU): the CPU backends against each other.

    python3 .peers/mamba/load.py                      # once per machine: builds the peer's CUDA scan
    PYTHONPATH=. python3 benchmarks/bench_selective_scan.py --peers .peers/mamba [--sweep] [--out FILE]
    PYTHONPATH=. python3 benchmarks/bench_selective_scan.py --sweep-only [--out FILE]   # our tiles only
    PYTHONPATH=. python3 benchmarks/bench_selective_scan.py --cpu [--out FILE]

Times are medians of triton.testing.do_bench (CUDA events) in ms; bf16 u, delta, z, B, C; fp32 A, D,
delta_bias; softplus on, z and D given (the Mamba block's call). "GB/s" counts each input read once
and each output written once (forward: u, delta, z, B, C in, out; backward adds dout in and du,
ddelta, dz, dB, dC out). "peak MiB" is the allocator's peak during one call above what the inputs
already held. The sequential reference is timed at the first shape only: it launches ~10 kernels
per step.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import triton

from hybrid.kernels.selective_scan import selective_scan_ref, selective_scan_torch
from hybrid.kernels.selective_scan.triton_scan import (_backward_config, _forward_config, _selective_scan_bwd,
                                                       _selective_scan_fwd, selective_scan_triton)
from hybrid.kernels.selective_scan.triton_step import selective_state_update_triton

SHAPES = [(4, 2048, 512, 16), (4, 2048, 2048, 16), (4, 2048, 8192, 16), (4, 2048, 32768, 16),
          (1, 4096, 2048, 16), (4, 2048, 2048, 64)]  # (batch, dim, length, state)
# (label, backward, autograd's backward on the calling thread)
PASSES = [("fwd", False, False), ("fwd+bwd", True, False), ("fwd+bwd, 1 thread", True, True)]
STEP_BATCHES = [1, 4, 16, 64]
STEP_DIMS = [1536, 2048]  # d_inner of a ~130M Mamba, and 2048


def make(batch, dim, length, dstate, dtype=torch.bfloat16, dev="cuda"):
    return dict(u=torch.randn(batch, dim, length, device=dev, dtype=dtype),
                delta=(0.5 * torch.randn(batch, dim, length, device=dev) - 1.0).to(dtype),
                A=-(0.1 + 2.0 * torch.rand(dim, dstate, device=dev)),
                B=torch.randn(batch, dstate, length, device=dev, dtype=dtype),
                C=torch.randn(batch, dstate, length, device=dev, dtype=dtype),
                D=torch.randn(dim, device=dev), z=torch.randn(batch, dim, length, device=dev, dtype=dtype),
                delta_bias=0.5 * torch.randn(dim, device=dev))


def call(fn, x, grad=False):
    leaves = {k: v.detach().requires_grad_(grad) for k, v in x.items()}
    out = fn(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], leaves["D"], leaves["z"],
             leaves["delta_bias"], True)
    return out, leaves


def bench(fn, x, backward: bool, rep=200, caller_thread=False):
    """(median ms, peak MiB). With `caller_thread` autograd runs the backward on the calling thread
    (torch.autograd.set_multithreading_enabled(False), as `hybrid train` does on one device) instead
    of handing it to its CUDA worker thread, which costs host time that short calls see."""
    with torch.autograd.set_multithreading_enabled(not caller_thread):
        return _bench(fn, x, backward, rep)


def _bench(fn, x, backward: bool, rep):
    g = torch.randn(x["u"].shape, device="cuda", dtype=x["u"].dtype)
    if backward:
        leaves = {k: v.detach().requires_grad_() for k, v in x.items()}

        def run():
            out = fn(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], leaves["D"], leaves["z"],
                     leaves["delta_bias"], True)
            out.backward(g)
    else:
        def run():
            with torch.no_grad():
                fn(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True)
    run()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    ms = triton.testing.do_bench(run, warmup=25, rep=rep, return_mode="median",
                                 grad_to_none=list(leaves.values()) if backward else None)
    return ms, peak


def io_bytes(batch, dim, length, dstate, backward):
    e = 2  # bf16
    fwd = (4 * batch * dim * length + 2 * batch * dstate * length) * e  # u, delta, z, out; B, C
    return fwd + (fwd + 4 * batch * dim * length * e + 2 * batch * dstate * length * e if backward else 0)


def ours(u, delta, A, B, C, D, z, bias, softplus):
    return selective_scan_triton(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=softplus)


def torch_backend(u, delta, A, B, C, D, z, bias, softplus):
    return selective_scan_torch(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=softplus)


def reference(u, delta, A, B, C, D, z, bias, softplus):
    return selective_scan_ref(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=softplus)


SWEEP_SHAPES = [(8, 1536, 2048, 16), (4, 2048, 2048, 16), (1, 4096, 2048, 16), (4, 2048, 2048, 64),
                (4, 2048, 8192, 16)]  # the first: one layer of bench_model.py's ~130M Mamba
SWEEP_FWD = [(1, 1, 32, 8, None), (1, 1, 32, 8, 96), (1, 1, 32, 8, 64), (2, 1, 16, 8, None), (4, 1, 8, 8, None)]
# several warps a program (BLOCK_D * SEGS = 32 * warps): more channels share one atomic add of dB and dC
SWEEP_BWD = [(1, 1, 32, 8, None), (1, 1, 32, 8, 200), (2, 1, 16, 8, None), (4, 1, 8, 8, None),
             (8, 1, 4, 8, None), (8, 2, 8, 8, None), (16, 4, 8, 8, None), (4, 2, 16, 8, None)]
SWEEP_TOLERANCE = 2e-2  # a candidate's gradients against the default tiles', max |diff| / max |default|


def sweep(lines):
    """Tile settings (BLOCK_D, num_warps, SEGS, ITEMS, MAXNREG) of the forward and backward kernels: a
    chunk is SEGS segments of ITEMS steps, one segment per thread when BLOCK_D * SEGS = 32 * num_warps;
    MAXNREG caps the registers (None: no cap). Each backward candidate runs on states that the default
    forward saved every chunk of that backward, and its gradients are checked against the default
    tiles' (the largest relative difference over the nine is in its line; over SWEEP_TOLERANCE it is
    marked WRONG)."""
    for shape in SWEEP_SHAPES:
        x = make(*shape)
        args = (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"])
        dout = torch.randn_like(x["u"])
        for cfg in SWEEP_FWD:
            tf = triton.testing.do_bench(lambda: _selective_scan_fwd(*args, None, True, False, config=cfg),  # noqa: B023
                                         return_mode="median")
            lines.append(f"sweep {shape} forward BLOCK_D, warps, SEGS, ITEMS, MAXNREG = {cfg}: {tf:.3f} ms")
            print(lines[-1], flush=True)
        fwd_default = _forward_config(shape[1], shape[3])
        expected = None
        for cfg in [_backward_config(shape[1])] + SWEEP_BWD:
            _, _, states = _selective_scan_fwd(*args, None, True, True, config=fwd_default, save_every=cfg[2] * cfg[3])
            grads = _selective_scan_bwd(dout, None, *args, states, True, config=cfg)
            if expected is None:  # the default tiles: the reference for the others
                expected = grads
                continue
            error = max(((g.float() - e.float()).abs().max() / e.float().abs().max().clamp_min(1e-30)).item()
                        for g, e in zip(grads, expected) if e is not None)
            tb = triton.testing.do_bench(lambda: _selective_scan_bwd(dout, None, *args, states, True, config=cfg),  # noqa: B023
                                         return_mode="median")
            flag = " WRONG" if error > SWEEP_TOLERANCE else ""
            lines.append(f"sweep {shape} backward BLOCK_D, warps, SEGS, ITEMS, MAXNREG = {cfg}: {tb:.3f} ms "
                         f"(gradients within {error:.1e} of the default tiles'){flag}")
            print(lines[-1], flush=True)
        del x, dout, expected
        torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peers", default=".peers/mamba", help="folder of the mamba_ssm peer (with load.py)")
    ap.add_argument("--out", default=None, help="markdown file to write (default benchmarks/results/...)")
    ap.add_argument("--sweep", action="store_true", help="also time tile-size variants of our kernels")
    ap.add_argument("--sweep-only", action="store_true",
                    help="only the tile-size variants (no peer, no table), as their own results file")
    ap.add_argument("--no-peer", action="store_true", help="ours only (no peer build), short repetitions")
    ap.add_argument("--rep", type=float, default=200, help="do_bench repetition time per measurement, ms")
    ap.add_argument("--cpu", action="store_true", help="the CPU backends (PyTorch backend, reference) instead")
    args = ap.parse_args()
    if args.cpu or not torch.cuda.is_available():
        return cpu_main(args.out)
    if args.sweep_only:
        return sweep_main(args.out)
    if args.no_peer:
        peer = peer_step = None
    else:
        sys.path.insert(0, args.peers)
        import load  # noqa: E402  (the peer's loader; builds or loads its CUDA extension)
        peer_fn, _ = load.selective_scan()
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update as peer_step

        def peer(u, delta, A, B, C, D, z, bias, softplus):
            return peer_fn(u, delta, A, B, C, D, z, bias, softplus)

    device = torch.cuda.get_device_name()
    rows, notes = [], []
    for i, shape in enumerate(SHAPES):
        x = make(*shape)
        impls = [("peer (mamba_ssm CUDA)", peer), ("ours (Triton)", ours)][1 if peer is None else 0:]
        if shape[2] <= 512:  # one launch a step each way
            impls.append(("PyTorch backend", torch_backend))
        if i == 0:
            impls.append(("sequential reference", reference))
        res = {}
        for name, fn in impls:
            passes = PASSES if name in ("peer (mamba_ssm CUDA)", "ours (Triton)") else PASSES[:2]
            for label, backward, caller_thread in passes:
                rep = 20 if name == "sequential reference" else args.rep
                try:
                    ms, peak = bench(fn, x, backward, rep=rep, caller_thread=caller_thread)
                except torch.OutOfMemoryError:
                    ms, peak = float("nan"), float("nan")
                    torch.cuda.empty_cache()
                res[name, label] = ms
                gbs = io_bytes(*shape, backward) / ms / 1e6
                speed = res.get(("peer (mamba_ssm CUDA)", label), float("nan")) / ms
                rows.append(f"| {shape} | {label} | {name} | {ms:.3f} | {speed:.2f}x | {gbs:.0f} | {peak:.0f} |")
                print(rows[-1], flush=True)
        if ("sequential reference", "fwd") in res:
            for label in ("fwd", "fwd+bwd"):
                notes.append(f"sequential reference / ours (Triton) at {shape} {label}: "
                             f"{res['sequential reference', label] / res['ours (Triton)', label]:.0f}x")
        del x
        torch.cuda.empty_cache()

    step_rows = []
    for dim in STEP_DIMS:
        for batch in STEP_BATCHES:
            dstate = 16
            st = torch.randn(batch, dim, dstate, device="cuda")
            xx, dt, z = (torch.randn(batch, dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            A = -torch.rand(dim, dstate, device="cuda")
            B, C = (torch.randn(batch, dstate, device="cuda", dtype=torch.bfloat16) for _ in range(2))
            D, bias = torch.randn(dim, device="cuda"), torch.randn(dim, device="cuda")
            t = {}
            for name, fn in (("peer (mamba_ssm Triton)", peer_step), ("ours (Triton)", selective_state_update_triton)):
                if fn is None:
                    t[name] = float("nan")
                    continue
                t[name] = triton.testing.do_bench(lambda: fn(st, xx, dt, A, B, C, D=D, z=z, dt_bias=bias,  # noqa: B023
                                                              dt_softplus=True), return_mode="median") * 1e3
            gbs = batch * dim * dstate * 4 * 2 / (t["ours (Triton)"] * 1e-6) / 1e9
            step_rows.append(f"| {batch} | {dim} | {dstate} | {t['peer (mamba_ssm Triton)']:.1f} | "
                             f"{t['ours (Triton)']:.1f} | {t['peer (mamba_ssm Triton)'] / t['ours (Triton)']:.2f}x | "
                             f"{gbs:.0f} |")
            print(step_rows[-1], flush=True)

    if args.sweep:  # last, so that a time limit cuts the sweep and not the table
        sweep(notes)
    text = "\n".join([
        f"# Selective scan on {device}",
        "",
        f"torch {torch.__version__}, triton {triton.__version__}; bf16 inputs, fp32 A/D/delta_bias, softplus, "
        "z and D given. Peer: mamba_ssm `selective_scan_fn` (CUDA), "
        f"{'NOT measured in this run (--no-peer)' if peer is None else 'measured in the same run'}. "
        "Median of triton.testing.do_bench; speedup = peer ms / ms of the same pass. \"1 thread\": autograd "
        "runs the backward on the calling thread (torch.autograd.set_multithreading_enabled(False), as "
        "`hybrid train` does on one device) rather than on its CUDA worker thread; the two differ where the "
        "host's time, not the GPU's, sets the pace.",
        "",
        "| (batch, dim, length, state) | pass | implementation | ms | vs peer | GB/s | peak MiB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        *[f"- {n}" for n in notes if not n.startswith("sweep")],
        "",
        "## Decoding step (state fp32 in place; x, dt, z, B, C bf16)",
        "",
        "Peer: mamba_ssm `selective_state_update` (Triton). Times in us, launch included; GB/s counts the state "
        "read and written.",
        "",
        "| batch | dim | state | peer us | ours us | vs peer | GB/s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *step_rows,
        "",
        *([ "## Tile sweep (ms)", "", *[f"- {n}" for n in notes if n.startswith("sweep")], ""] if args.sweep else []),
    ])
    print(text)
    out = args.out or os.path.join(os.path.dirname(__file__), "results",
                                   f"selective_scan_{device.replace(' ', '_')}.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(text + "\n")


def sweep_main(out: str | None) -> None:
    """--sweep-only: the tile sweep alone, written as its own results file."""
    device = torch.cuda.get_device_name()
    notes = []
    sweep(notes)
    text = "\n".join([f"# Selective scan tile sweep on {device}", "",
                      f"torch {torch.__version__}, triton {triton.__version__}; bf16 u, delta, z, B, C; fp32 A, D, "
                      "delta_bias; softplus, z and D given. Median of triton.testing.do_bench, ms; "
                      "`python benchmarks/bench_selective_scan.py --sweep-only`.", "",
                      *[f"- {n}" for n in notes], ""])
    print(text)
    out = out or os.path.join(os.path.dirname(__file__), "results",
                              f"selective_scan_sweep_{device.replace(' ', '_')}.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(text + "\n")


CPU_SHAPES = [(32, 128, 32, 16), (128, 128, 128, 16), (8, 512, 256, 16), (1, 128, 4096, 16)]  # quickstart, tiny
# models' batch 128 x 128, a wider layer, selective copying's length; d_inner of d_model 64 and 256


def cpu_main(out: str | None) -> None:
    """Forward+backward wall time of the CPU backends, float32, best of three after a warm-up."""
    import platform  # noqa: PLC0415
    import time  # noqa: PLC0415

    rows = []
    for shape in CPU_SHAPES:
        x = make(*shape, dtype=torch.float32, dev="cpu")
        times = {}
        for name, fn in (("sequential reference", reference), ("PyTorch backend", torch_backend)):
            leaves = {k: v.detach().requires_grad_() for k, v in x.items()}
            best = float("inf")
            for i in range(4):
                start = time.perf_counter()
                fn(*(leaves[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")), True).sum().backward()
                best = min(best, time.perf_counter() - start) if i else best
            times[name] = best * 1e3
        rows.append(f"| {shape} | {times['sequential reference']:.0f} | {times['PyTorch backend']:.0f} | "
                    f"{times['sequential reference'] / times['PyTorch backend']:.1f}x |")
        print(rows[-1], flush=True)
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads"
    text = "\n".join([f"# Selective scan on the CPU ({machine})", "",
                      f"torch {torch.__version__}; float32, softplus, z and D given; forward+backward wall time "
                      "in ms, best of three after a warm-up. `auto` takes the PyTorch backend on the CPU.", "",
                      "| (batch, dim, length, state) | sequential reference ms | PyTorch backend ms | speedup |",
                      "| --- | --- | --- | --- |", *rows])
    print(text)
    path = out or os.path.join(os.path.dirname(__file__), "results", f"selective_scan_cpu_{platform.machine()}.md")
    with open(path, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
