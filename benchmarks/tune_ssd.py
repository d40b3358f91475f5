"""Tile sizes and launch options of our SSD kernels, one kernel at a time, timed on the GPU.

    PYTHONPATH=. python3 benchmarks/tune_ssd.py [--shape 4,8192,32,64,128] [--kernels scan_fwd,dx]
                                                [--peer .peers/mamba] [--out FILE]

Every candidate overrides one kernel's settings (`triton_ssd.TUNING`, the HYBRID_SSD_TUNING variable's
format) and times the whole SSD call in a CUDA graph (graph_timing.py: the kernels alone, no host work)
against the defaults in the same run: the forward (under no_grad) for the forward's kernels, the forward
and backward for the backward's. A candidate that does not compile (shared memory or registers) gets a
note, and so does one whose outputs (y and every gradient) differ from the defaults' by more than 1e-2
relative; neither is used. Last, the best candidate of every kernel that beat the defaults is timed
together (and checked the same way), and printed as a HYBRID_SSD_TUNING string. mamba_ssm's
`mamba_chunk_scan_combined` is timed the same way right after the defaults when --peer is given. The 76
candidates take a few minutes; --kernels picks some. Inputs as bench_ssd.py's (bf16; softplus, D and z
on; one group; chunk 256). The table is rewritten after every candidate, so a run cut short keeps what it
measured. Without CUDA it prints a message and exits.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_ssd import (CHUNK, bench_graphed, default_out, implementations, leaves_and_dout, make,  # noqa: E402
                       parse_shape)


def _grid(**axes) -> list[dict]:
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*axes.values())]


# kernel -> (timed pass: backward?, candidate overrides). A candidate overrides only the keys it names: the
# others are the kernel's defaults (_config, then MEASURED, whose launch options and row tiles came from
# the first round of this search: benchmarks/results/tune_ssd_nvidia_h200.md). This second round varies
# the tiles the first left at _config's (the channel tile BP, the state tile BN, the K tile) around them.
CANDIDATES = {
    "scan_fwd": (False, _grid(BM=[32, 64], BK=[16, 32], BP=[32, 64], BN=[64, 128])),
    "states": (False, _grid(warps=[4, 8], BP=[32, 64], BN=[32, 64, 128])),
    "cb": (False, _grid(warps=[4, 8], BM=[32, 64, 128])),
    "dprev": (True, _grid(warps=[4, 8], BP=[32, 64], BN=[32, 64, 128])),
    "dx": (True, _grid(BM_DX=[32, 64], BP=[32, 64], BN=[32, 64, 128])),
    "dcb": (True, _grid(BM=[32, 64, 128], BP=[32, 64])),
    "dbc": (True, _grid(BM=[32, 64], BN=[32, 64, 128], BK=[32, 64])),
}


def outputs(fn, inputs) -> list[torch.Tensor]:
    """y and the gradient of every input of <y, dy> (a fixed dy), for comparing settings: every kernel's
    result reaches one of them, the forward's through what it saves for the backward too."""
    leaves, dy = leaves_and_dout(inputs, seed=0)
    y = fn(leaves)
    return [y.detach(), *torch.autograd.grad(y, list(leaves.values()), dy)]


def mismatch(got: list[torch.Tensor], want: list[torch.Tensor], tol: float = 1e-2) -> float | None:
    """The largest relative error of `got` against `want` when above tol, else None."""
    worst = max(((g.double() - w.double()).norm() / w.double().norm().clamp_min(1e-30)).item()
                for g, w in zip(got, want))
    return worst if not worst <= tol else None  # `not <=` also catches NaN


def spec(tuning: dict[str, dict[str, int]]) -> str:
    """The HYBRID_SSD_TUNING string of `tuning`."""
    return ";".join(f"{name}:" + ",".join(f"{k}={v}" for k, v in over.items()) for name, over in tuning.items())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="4,8192,32,64,128", help="batch,length,heads,headdim,state")
    ap.add_argument("--kernels", default=",".join(CANDIDATES), help=f"comma-separated, of {', '.join(CANDIDATES)}")
    ap.add_argument("--peer", default=None, help="folder holding the mamba_ssm package, to time it beside ours")
    ap.add_argument("--out", default=None, help="markdown file (default benchmarks/results/tune_ssd_<device>.md)")
    args = ap.parse_args()
    shape = parse_shape(ap, args.shape)
    kernels = [k for k in args.kernels.split(",") if k]
    unknown = sorted(set(kernels) - set(CANDIDATES))
    if unknown or not kernels:
        ap.error(f"--kernels: {unknown or 'none given'}: expected names from {', '.join(CANDIDATES)}")
    if not torch.cuda.is_available():
        print("tune_ssd: no CUDA device, nothing to measure")
        return
    from hybrid.kernels.ssd import triton_ssd  # noqa: PLC0415

    impls, note = implementations(args.peer)
    ours = dict(impls)["ours (Triton)"]
    name = torch.cuda.get_device_name()
    out = args.out or default_out("tune_ssd", name)
    inputs = make(*shape)
    rows, notes = [], [note] if note else []
    triton_ssd.TUNING = {}
    want, base = outputs(ours, inputs), {}
    for backward in (False, True):
        base[backward] = bench_graphed(ours, inputs, backward)
        rows.append(("defaults", "-", "fwd+bwd" if backward else "fwd", base[backward]))
    peer = dict(impls).get("mamba_ssm mamba_chunk_scan_combined")
    if peer is not None:  # early, so that a run cut short keeps it
        for backward in (False, True):
            rows.append(("mamba_ssm mamba_chunk_scan_combined", "-", "fwd+bwd" if backward else "fwd",
                         bench_graphed(peer, inputs, backward), base[backward]))
    best: dict[str, tuple[float, dict]] = {}
    for kernel in kernels:
        backward, candidates = CANDIDATES[kernel]
        for over in candidates:
            triton_ssd.TUNING = {kernel: over}
            try:
                error = mismatch(outputs(ours, inputs), want)
                if error is not None:
                    notes.append(f"{spec({kernel: over})}: outputs differ from the defaults' ({error:.2e} relative); "
                                 "not timed")
                    continue
                ms = bench_graphed(ours, inputs, backward)
            except Exception as err:  # noqa: BLE001  (a candidate that does not compile must not end the run)
                notes.append(f"{spec({kernel: over})}: {type(err).__name__}: {(str(err).splitlines() or [''])[0]}")
                torch.cuda.empty_cache()
                continue
            rows.append((kernel, spec({kernel: over}), "fwd+bwd" if backward else "fwd", ms, base[backward]))
            if ms < best.get(kernel, (base[backward], None))[0]:
                best[kernel] = (ms, over)
            write(out, name, shape, rows, notes, best)
    combined = {kernel: over for kernel, (_, over) in best.items()}
    if combined:
        triton_ssd.TUNING = combined
        error = mismatch(outputs(ours, inputs), want)
        if error is not None:
            notes.append(f"the best settings together: outputs differ from the defaults' ({error:.2e} relative)")
        for backward in (False, True):
            rows.append(("best together", spec(combined), "fwd+bwd" if backward else "fwd",
                         bench_graphed(ours, inputs, backward), base[backward]))
    triton_ssd.TUNING = {}
    write(out, name, shape, rows, notes, best)
    print(open(out).read())


def write(path: str, name: str, shape: tuple, rows: list[tuple], notes: list[str], best: dict) -> None:
    import triton  # noqa: PLC0415

    lines = [f"# SSD kernel settings on {name}", "",
             f"torch {torch.__version__}, triton {triton.__version__}; shape (batch, length, heads, headdim, "
             f"state) = {shape}, chunk {CHUNK}, bf16, softplus, D and z on, one group. Median ms of the whole "
             "SSD call in a CUDA graph (benchmarks/tune_ssd.py); \"x defaults\" is the defaults' time over the "
             "row's (> 1: the row is faster).", "",
             "| kernel | settings (HYBRID_SSD_TUNING) | pass | ms | x defaults |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        kernel, settings, label, ms = row[:4]
        ratio = f"{row[4] / ms:.2f}x" if len(row) > 4 else "1.00x"
        lines.append(f"| {kernel} | `{settings}` | {label} | {ms:.3f} | {ratio} |")
    combined = spec({kernel: over for kernel, (_, over) in best.items()})
    lines += ["", f"Best per kernel: `HYBRID_SSD_TUNING=\"{combined}\"`" if combined else
              "No candidate beat the defaults.", "", *[f"- {n}" for n in notes], ""]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines))
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
