"""Registers, spills and shared memory of our Triton kernels compiled for a GPU that need not be here.

    PYTHONPATH=. python3 benchmarks/kernel_resources.py ssd  [--shape 4,8192,32,64,128] [--arch 90]
    PYTHONPATH=. python3 benchmarks/kernel_resources.py scan [--shape 4,2048,2048,16]
    HYBRID_SSD_TUNING="scan_fwd:BN=128" PYTHONPATH=. python3 benchmarks/kernel_resources.py ssd

Runs the host code of one bf16 forward and backward on CPU tensors of the given shape (zeros; the
layout the layers pass), with every FastLauncher launch recorded instead of made (the recorded arguments
are what the GPU would get: grids, strides, tiles), then compiles each kernel for CUDA compute capability --arch
with Triton's own specialisation of those arguments (dtypes, 16-byte alignment, integers equal to 1 or
divisible by 16) and their launch options, and reads the compiled kernel's resources with the cuobjdump
that ships with Triton: registers per thread, local memory (spilled registers: anything above 0 is slow),
static and dynamic shared memory. The tiles are the GPU's (`_config`, MEASURED, HYBRID_SSD_TUNING), so a
tuning can be checked for spills before device time is spent timing it. A CPU machine with Triton suffices;
the numbers are the local Triton's compiler's, which may differ from another version's.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

assert os.environ.get("TRITON_INTERPRET") != "1", "compiles kernels: run without TRITON_INTERPRET=1"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.6's behaviour (the GPU machine's), quietly

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, compile as triton_compile, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_ssd import parse_shape  # noqa: E402  (benchmarks/, the script's folder)
from hybrid.kernels import launch  # noqa: E402

RESOURCES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
SHAPES = {"ssd": ("batch,length,heads,headdim,state", "4,8192,32,64,128"),  # (--shape's names, its default)
          "scan": ("batch,dim,length,state", "4,2048,2048,16")}


@contextmanager
def recorded_launches():
    """Every FastLauncher call inside the block appends (kernel, grid, args, kwargs) and launches nothing."""
    calls = []
    original = launch.FastLauncher.__call__

    def record(self, grid, *args, **kwargs):
        calls.append((self.kernel, tuple(grid), args, kwargs))

    launch.FastLauncher.__call__ = record
    try:
        yield calls
    finally:
        launch.FastLauncher.__call__ = original


def compiled(kernel, args, kwargs, target: GPUTarget):
    """The kernel compiled for `target` as Triton would compile it for these arguments."""
    if not hasattr(kernel, "_pack_args"):  # Triton's own argument packing, read from 3.9's runtime/jit.py
        raise SystemExit(f"kernel_resources: Triton {triton.__version__} has no JITFunction._pack_args; it uses "
                         "Triton 3.9's compile path")
    backend = make_backend(target)
    kwargs = {"debug": False, **kwargs}
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return triton_compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)


def resources(binary, cuobjdump: str) -> dict[str, int]:
    """{registers, stack, shared, local} of a compiled kernel, from `cuobjdump -res-usage` of its cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(binary.asm["cubin"])
        f.flush()
        text = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    reg, stack, shared, local = map(int, RESOURCES.search(text).groups())
    return {"registers": reg, "stack": stack, "shared": shared, "local": local}


def ssd_calls(shape: tuple[int, ...]) -> list:
    """The launches of one bf16 SSD forward and backward (D, z, dt_bias and softplus on, one group), at
    `shape` = (batch, length, heads, headdim, state), chunk 256."""
    from hybrid.kernels.ssd import triton_ssd  # noqa: PLC0415

    b, length, h, p, n = shape
    bf = torch.bfloat16
    x, z = torch.zeros(b, length, h, p, dtype=bf), torch.zeros(b, length, h, p, dtype=bf)
    dt = torch.zeros(b, length, h, dtype=bf)
    B, C = torch.zeros(b, length, 1, n, dtype=bf), torch.zeros(b, length, 1, n, dtype=bf)
    A, D, bias = -torch.ones(h), torch.ones(h), torch.zeros(h)
    with recorded_launches() as calls:
        y, final, saved = triton_ssd._ssd_fwd(x, dt, A, B, C, 256, D, z, bias, True, triton_ssd.NO_LIMIT, None, None)
        triton_ssd._ssd_bwd(torch.zeros_like(y), None, x, dt, A, B, C, 256, D, z, bias, True, triton_ssd.NO_LIMIT,
                            None, None, *saved)
    return calls


def scan_calls(shape: tuple[int, ...]) -> list:
    """The launches of one bf16 selective scan forward and backward (D, z, delta_bias and softplus on), at
    `shape` = (batch, dim, length, state)."""
    from hybrid.kernels.selective_scan.triton_scan import selective_scan_triton  # noqa: PLC0415

    b, d, length, n = shape
    bf = torch.bfloat16
    leaf = lambda *s, dtype=bf: torch.zeros(*s, dtype=dtype, requires_grad=True)  # noqa: E731
    u, delta, z = leaf(b, d, length), leaf(b, d, length), leaf(b, d, length)
    A, B, C = leaf(d, n, dtype=torch.float32), leaf(b, n, length), leaf(b, n, length)
    D, bias = leaf(d, dtype=torch.float32), leaf(d, dtype=torch.float32)
    with recorded_launches() as calls:
        out = selective_scan_triton(u, delta, A, B, C, D, z, bias, delta_softplus=True)
        out.sum().backward()
    return calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["ssd", "scan"], help="ssd: Mamba-2's SSD kernels; scan: Mamba-1's selective scan")
    ap.add_argument("--shape", default=None, help="ssd: batch,length,heads,headdim,state (default 4,8192,32,64,128); "
                                                  "scan: batch,dim,length,state (default 4,2048,2048,16)")
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 90 (H100, H200), 80 (A100)")
    args = ap.parse_args()
    names, default = SHAPES[args.what]
    shape = parse_shape(ap, args.shape or default, names)
    if args.arch < 75:
        ap.error(f"--arch: expected a CUDA compute capability of 75 or more (what Triton compiles for), got {args.arch}")
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    calls = ssd_calls(shape) if args.what == "ssd" else scan_calls(shape)
    target = GPUTarget("cuda", args.arch, 32)
    print(f"{args.what} at {shape}, bf16, compiled for sm_{args.arch} by triton {triton.__version__}")
    print("| kernel | warps | stages | grid | registers | local (spills) | shared (static) | shared (dynamic) |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    seen = set()
    for kernel, grid, kargs, kwargs in calls:
        key = (kernel.__name__, tuple(sorted(kwargs.items(), key=lambda kv: kv[0])), grid)
        if key in seen:
            continue
        seen.add(key)
        binary = compiled(kernel, kargs, kwargs, target)
        r = resources(binary, cuobjdump)
        print(f"| `{kernel.__name__}` | {kwargs.get('num_warps', 4)} | {kwargs.get('num_stages', 3)} | {grid} | "
              f"{r['registers']} | {r['local']} | {r['shared']} | {binary.metadata.shared} |", flush=True)


if __name__ == "__main__":
    main()
