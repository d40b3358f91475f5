"""Launching a Triton kernel with less host time per call.

`kernel[grid](*args, **kwargs)` costs about 55 us of Python on an H100 machine's host before the
launch proper, which costs about 12 (measured with the scan's ~50 arguments, Triton 3.6): it binds
the arguments to the signature, derives Triton's specialization of each (the dtype and 16-byte
alignment of a pointer; whether an integer is 1 or a multiple of 16, and its width), turns those
into a cache key and reads its settings. A short scan's kernels take less time than that.

`FastLauncher` keeps, for each kernel, the compiled kernel of every key made of the tensors' dtypes
and alignments, the other arguments' values and the keyword arguments. That key is at least as
fine as Triton's specialization, so the compiled kernel it finds is the one Triton would launch.
The first call with a key goes through `kernel[grid]` (compiling if needed), later ones straight to
the compiled kernel's launcher. The integers are keyed by value, so a kernel called at many lengths
keeps one entry per length: cheap, and bounded by `MAX_ENTRIES`.

The direct call uses the compiled kernel's launcher as Triton 3.6 to 3.9 define it (the sources of
3.6 and 3.9 were read: `CompiledKernel.run(grid x, y, z, stream, function, packed_metadata,
launch_metadata, enter_hook, exit_hook, *every parameter's value)`). Any other version, the
interpreter, or a Triton launch hook (a profiler's) takes `kernel[grid]` every time. Under
torch.compile a launch is a graph break (a `torch.compiler.disable`d `kernel[grid]`): Dynamo could not
trace the key (a tensor's data_ptr), and the kernel runs as it does eagerly, between compiled regions.
The check costs an eager call about 0.2 us; disabling `__call__` itself cost 1.2 us a launch.

`cdiv` and `next_power_of_2` are the launchers' grid and block arithmetic in plain Python. Triton's
(3.6 on) are `ConstexprFunction`s, whose call imports and unwraps constexprs first: 1.5 us a call
against 0.07 (timeit, Triton 3.9, one core of a 2-core CPU machine), and an eager Mamba decoding step
made 192 such calls. Inside `@triton.jit` functions Triton's own stay. `rows_per_tile`, `tile_runs` and
`sm_count` are the row-wise kernels' (the norms') tiling, shared by their launchers; `fill_sms` the
decoding steps' split of a small grid.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
from torch import Tensor

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
MAX_ENTRIES = 1024
DIRECT_VERSIONS = ((3, 6), (3, 9))  # the first and last versions whose launcher convention is used


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for b > 0, as `triton.cdiv` (the same expression, so equal for every integer)."""
    return (a + b - 1) // b


def next_power_of_2(n: int) -> int:
    """The smallest power of 2 >= n for n >= 1 (so 1 for 1), and 0 for n <= 0 (0 for 0 included), as
    `triton.next_power_of_2`. Equal to Triton's for every n <= 2**64; above, Triton's 64-bit bit
    smearing no longer gives a power of 2."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def rows_per_tile(block_cols: int) -> int:
    """Rows of a row-wise kernel's (rows, block_cols) tile: about 4096 elements, 1 to 16 rows."""
    return max(1, min(16, 4096 // block_cols))


def tile_runs(tiles: int, programs: int) -> tuple[int, int]:
    """`tiles` (>= 1) dealt to at most `programs` programs in runs of equal length: (tiles per program,
    programs used)."""
    per = cdiv(tiles, min(tiles, programs))
    return per, cdiv(tiles, per)


def fill_sms(block: int, minimum: int, rows: int, extent: int, device: torch.device, per_sm: int = 4) -> int:
    """`block` halved (not below `minimum`) until a grid of rows x cdiv(extent, block) programs has `per_sm`
    programs per SM of a CUDA device; `block` unchanged elsewhere. For kernels whose small-batch grids
    leave most SMs idle (the decoding steps)."""
    if device.type == "cuda":
        while block > minimum and rows * cdiv(extent, block) < per_sm * sm_count(device):
            block //= 2
    return block


def optional_arg(t: Tensor | None, stand_in: Tensor, ndim: int) -> tuple[Tensor, tuple[int, ...]]:
    """The tensor and strides to pass a kernel for an optional input: `t`'s, or a stand-in the kernel never
    reads (its HAS_... flag off) with `ndim` zero strides."""
    return (t, t.stride()) if t is not None else (stand_in, (0,) * ndim)


@functools.lru_cache(maxsize=None)
def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (read once: the query costs host time every launch)."""
    return torch.cuda.get_device_properties(device).multi_processor_count


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def _launch_hooks_set() -> bool:
    runtime = triton.knobs.runtime
    return bool(runtime.launch_enter_hook.calls or runtime.launch_exit_hook.calls)


@torch.compiler.disable
def _launch_outside_the_graph(kernel, grid, args, kwargs):
    return kernel[grid](*args, **kwargs)


class FastLauncher:
    """`launcher(grid, *args, **kwargs)` does what `kernel[grid](*args, **kwargs)` does.

    The positional arguments must be the kernel's first parameters, in order; constexprs and launch
    options (num_warps, maxnreg, ...) go by keyword."""

    def __init__(self, kernel: triton.runtime.JITFunction):
        self.kernel = kernel
        self._compiled: dict = {}
        self.direct = not INTERPRET and DIRECT_VERSIONS[0] <= _version(triton.__version__) <= DIRECT_VERSIONS[1]
        self._params = list(kernel.params) if self.direct else []  # the interpreter's kernels have none

    def __call__(self, grid: tuple[int, ...], *args, **kwargs):
        if torch.compiler.is_compiling():  # Dynamo cannot trace the key (data_ptr): a graph break
            return _launch_outside_the_graph(self.kernel, grid, args, kwargs)
        if not self.direct or _launch_hooks_set():
            return self.kernel[grid](*args, **kwargs)
        device = torch.cuda.current_device()
        key = (device, tuple(kwargs.items()),
               tuple([(a.dtype, a.data_ptr() & 15) if isinstance(a, Tensor) else a for a in args]))
        entry = self._compiled.get(key)
        if entry is None:
            compiled = self.kernel[grid](*args, **kwargs)
            # the values of the parameters after the positional ones, in signature order, as the
            # launcher takes them (constexprs included; it skips those)
            tail = tuple(kwargs[p.name] if p.name in kwargs else p.default for p in self._params[len(args):])
            if len(self._compiled) >= MAX_ENTRIES:
                self._compiled.clear()
            self._compiled[key] = (compiled, tail)
            return compiled
        compiled, tail = entry
        grid_y = grid[1] if len(grid) > 1 else 1
        grid_z = grid[2] if len(grid) > 2 else 1
        compiled.run(grid[0], grid_y, grid_z, torch._C._cuda_getCurrentRawStream(device), compiled.function,
                     compiled.packed_metadata, None, None, None, *args, *tail)
        return compiled
