"""SSD (Mamba-2 scan) benchmark: ours (Triton, hybrid/kernels/ssd/triton_ssd.py) and our chunked PyTorch
backend against mamba_ssm's Triton `mamba_chunk_scan_combined` (when importable), all in the same run.

    PYTHONPATH=. python3 benchmarks/bench_ssd.py [--peer .peers/mamba] [--quick] [--chunked main]
                                                 [--modes eager,graph] [--out FILE]

Times are medians of triton.testing.do_bench (CUDA events) in ms, in two modes for every implementation:
"eager" (each call launched from Python, so host-side work is in the time where it exceeds the
kernels') and "graph" (one call captured in a CUDA graph and its replays timed, graph_timing.py: the
kernels alone). At small shapes mamba_ssm's eager time is its host-side work (five kernels behind
Triton's autotuner dispatch, more in the backward), so only the graph rows compare the kernels.
Inputs: bf16 x, dt, B, C, z; fp32 A, D (per head), dt_bias; softplus on, z and D given (the Mamba-2 block's call),
one B/C group, chunk 256. "fwd" is the forward under no_grad; "fwd+bwd" the forward and the backward of
<y, dy> (every input a leaf). The first shape is (batch 4, length 2048, heads 32, headdim 64, state 128);
the sweep varies the length (512..32K), the state (64..256) and the head dimension (64, 128) around it.
An implementation that runs out of memory at a shape gets a note instead of a row; the chunked backend is
not run past 8K steps. The table is rewritten after every shape, so a run cut short keeps what it measured.
The first call of each implementation at a shape includes Triton's compilation (and mamba_ssm's autotuning)
in do_bench's warm-up, not in the times. Without CUDA it prints a message and exits.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybrid.kernels.ssd.chunked import ssd_chunked  # noqa: E402
from graph_timing import graphed_ms  # noqa: E402  (benchmarks/, the script's folder)
from peer_import import peer_function  # noqa: E402

CHUNK = 256
# (batch, length, heads, headdim, state)
MAIN = (4, 2048, 32, 64, 128)
SWEEP = [(4, 512, 32, 64, 128), (4, 8192, 32, 64, 128), (2, 32768, 32, 64, 128),
         (4, 2048, 32, 64, 64), (4, 2048, 32, 64, 256), (4, 2048, 16, 128, 128), (4, 2048, 16, 128, 256)]
PASSES = [("fwd", False), ("fwd+bwd", True)]
CHUNKED_MAX_LENGTH = 8192


def make(batch, length, heads, headdim, dstate, device="cuda", dtype=torch.bfloat16):
    r = lambda *s: torch.randn(*s, device=device)  # noqa: E731
    return {"x": r(batch, length, heads, headdim).to(dtype), "dt": (r(batch, length, heads) * 0.5 - 1).to(dtype),
            "A": -(torch.rand(heads, device=device) + 0.5), "B": r(batch, length, 1, dstate).to(dtype),
            "C": r(batch, length, 1, dstate).to(dtype), "D": r(heads), "z": r(batch, length, heads, headdim).to(dtype),
            "dt_bias": r(heads) * 0.5}


def implementations(peer: str | None):
    from hybrid.kernels.ssd.triton_ssd import ssd_triton

    impls = [("ours (Triton)", lambda i: ssd_triton(i["x"], i["dt"], i["A"], i["B"], i["C"], CHUNK, D=i["D"], z=i["z"],
                                                    dt_bias=i["dt_bias"], dt_softplus=True)),
             ("ours (chunked torch)", lambda i: ssd_chunked(i["x"], i["dt"], i["A"], i["B"], i["C"], CHUNK, D=i["D"],
                                                            z=i["z"], dt_bias=i["dt_bias"], dt_softplus=True))]
    combined, note = peer_function(peer, "mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined")
    if combined is not None:
        impls.insert(0, ("mamba_ssm mamba_chunk_scan_combined", lambda i: combined(
            i["x"], i["dt"], i["A"], i["B"], i["C"], CHUNK, D=i["D"], z=i["z"], dt_bias=i["dt_bias"],
            dt_softplus=True)))
    return impls, note


def leaves_and_dout(inputs, seed: int | None = None):
    """Every input as a fresh leaf, and a random gradient for y (from `seed` when given)."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    gen = torch.Generator("cuda").manual_seed(seed) if seed is not None else None
    return leaves, torch.randn(inputs["x"].shape, device="cuda", dtype=inputs["x"].dtype, generator=gen)


def default_out(stem: str, device_name: str) -> str:
    """benchmarks/results/<stem>_<device name, lower case, underscores>.md"""
    tag = device_name.lower().replace(" ", "_").replace("(", "").replace(")", "")
    return os.path.join(os.path.dirname(__file__), "results", f"{stem}_{tag}.md")


def bench(fn, inputs, backward: bool, mode: str = "eager") -> float:
    """Median ms of fn's forward (under no_grad) or forward and backward, eager or graphed."""
    import triton

    if mode == "graph":
        return bench_graphed(fn, inputs, backward)
    if not backward:
        def run():
            with torch.no_grad():
                fn(inputs)
        return triton.testing.do_bench(run, warmup=10, rep=50, return_mode="median")
    leaves, dy = leaves_and_dout(inputs)

    def run_bwd():
        fn(leaves).backward(dy)
    return triton.testing.do_bench(run_bwd, warmup=10, rep=50, return_mode="median",
                                   grad_to_none=list(leaves.values()))


def call_of(fn, inputs, backward: bool):
    """One forward (under no_grad) or forward and backward, returning fresh gradients of <y, dy>, as a
    function of no arguments."""
    if not backward:
        def run():
            with torch.no_grad():
                return fn(inputs)
        return run
    leaves, dy = leaves_and_dout(inputs)

    def run_bwd():
        return torch.autograd.grad(fn(leaves), list(leaves.values()), dy)
    return run_bwd


def bench_graphed(fn, inputs, backward: bool) -> float:
    """One call captured in a CUDA graph, its replays timed (the warm-up calls before the capture run
    Triton's compilation and mamba_ssm's autotuning)."""
    return graphed_ms(call_of(fn, inputs, backward))


def parse_shape(ap: argparse.ArgumentParser, text: str, names: str = "batch,length,heads,headdim,state") -> tuple:
    """--shape's positive integers, one per name in `names`, else argparse's error naming them."""
    parts = text.split(",")
    if len(parts) != len(names.split(",")) or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        ap.error(f"--shape: expected {len(names.split(','))} positive integers {names}, got {text!r}")
    return tuple(int(p) for p in parts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peer", default=".peers/mamba", help="folder holding the mamba_ssm package (the peer)")
    ap.add_argument("--no-peer", action="store_true", help="ours only")
    ap.add_argument("--quick", action="store_true", help="the first shape only")
    ap.add_argument("--chunked", choices=["all", "main"], default="all",
                    help="where our chunked PyTorch backend is timed: at every shape (to 8K), or at the first only "
                         "(a shorter sweep of the Triton kernels against the peer)")
    ap.add_argument("--modes", default="eager,graph",
                    help="comma-separated: eager (launched from Python), graph (one call in a CUDA graph)")
    ap.add_argument("--out", default=None, help="markdown file to write (default benchmarks/results/...)")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - {"eager", "graph"}:
        ap.error(f"--modes: expected a comma-separated list of eager and graph, got {args.modes!r}")
    if not torch.cuda.is_available():
        print("bench_ssd: no CUDA device, nothing to measure (the Triton kernels and the peer need a GPU)")
        return
    impls, note = implementations(None if args.no_peer else args.peer)
    notes = [note] if note else []
    if args.chunked == "main":
        notes.append("ours (chunked torch): timed at the first shape only (--chunked main)")
    name = torch.cuda.get_device_name()
    out = args.out or default_out("ssd", name)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    rows = []
    for shape in [MAIN] + ([] if args.quick else SWEEP):
        inputs = make(*shape)
        for (label, backward), mode in [(p, m) for p in PASSES for m in modes]:
            times = {}
            for impl, fn in impls:
                if impl == "ours (chunked torch)" and args.chunked == "main" and shape != MAIN:
                    continue
                if impl == "ours (chunked torch)" and shape[1] > CHUNKED_MAX_LENGTH:
                    notes.append(f"{impl} at {shape} {label}: not run past {CHUNKED_MAX_LENGTH} steps, to keep the "
                                 "run short (its fp32 (batch, chunks, Q, Q, heads) tensors: 2 GB each at 2 x 32K)")
                    continue
                try:
                    times[impl] = bench(fn, inputs, backward, mode)
                except torch.OutOfMemoryError:
                    notes.append(f"{impl} at {shape} {label} ({mode}): out of memory")
                    torch.cuda.empty_cache()
                    continue
                except Exception as err:  # noqa: BLE001  (a peer refusing a shape must not end the run)
                    notes.append(f"{impl} at {shape} {label} ({mode}): {type(err).__name__}: "
                                 f"{(str(err).splitlines() or [''])[0]}")
                    continue
            base = times.get("ours (Triton)")
            for impl, ms in times.items():
                ratio = f"{ms / base:.2f}x" if base else "-"
                rows.append(f"| {shape} | {label} | {mode} | {impl} | {ms:.3f} | {ratio} |")
                print(rows[-1], flush=True)
        del inputs
        torch.cuda.empty_cache()
        write(out, name, rows, notes)  # after every shape: a run cut short keeps what it measured
    print(open(out).read())


def write(path: str, name: str, rows: list[str], notes: list[str]) -> None:
    import triton

    text = "\n".join([
        f"# SSD (Mamba-2 chunked scan) on {name}",
        "",
        f"torch {torch.__version__}, triton {triton.__version__}; bf16 x, dt, B, C, z; fp32 A, D, dt_bias; "
        f"softplus, D and z on; groups 1; chunk {CHUNK}. Median of triton.testing.do_bench, all "
        "implementations in the same run; mode \"eager\": launched from Python, \"graph\": one call captured "
        "in a CUDA graph, its replays timed (the kernels alone). \"x ours\" is each row's time over ours "
        "(Triton) at the same shape, pass and mode (> 1: slower than ours).",
        "",
        "| (batch, length, heads, headdim, state) | pass | mode | implementation | ms | x ours |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        *[f"- {n}" for n in notes],
        "",
    ])
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
