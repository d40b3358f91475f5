"""FastLauncher: the compiled kernel it launches directly must be the one Triton would launch.

The direct path runs only compiled, on a GPU; under the interpreter every call goes through
kernel[grid], which the CPU test checks."""
import gc
import os
import weakref

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from hybrid.kernels import launch  # noqa: E402
from hybrid.kernels.launch import FastLauncher  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@triton.jit
def _axpy_kernel(x_ptr, y_ptr, out_ptr, n, stride_x, alpha, BLOCK: tl.constexpr, SQUARE: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs * stride_x, mask=mask, other=0.0).to(tl.float32)
    if SQUARE:
        x = x * x
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, (alpha * x + y).to(out_ptr.dtype.element_ty), mask=mask)


def _axpy(launcher, x, y, alpha, square, block=64):
    n = y.numel()
    out = torch.empty_like(y)
    launcher((triton.cdiv(n, block),), x, y, out, n, x.stride(0), alpha, BLOCK=block, SQUARE=square, num_warps=1)
    return out


def _expected(x, y, alpha, square):
    xf = x.float()
    return (alpha * (xf * xf if square else xf) + y.float()).to(y.dtype)


LARGE = [2**31 - 1, 2**31, 2**31 + 1, 2**32 + 1, 10**12 + 7, 2**63 - 1, 2**63, 2**64 - 1, 2**64]


def test_next_power_of_2_equals_tritons():
    """The launchers' plain-Python helpers (cheaper to call than Triton's ConstexprFunctions) must give
    Triton's results for every size a launcher meets: 0 for 0, 1 for 1."""
    assert (launch.next_power_of_2(0), launch.next_power_of_2(1), launch.next_power_of_2(4097)) == (0, 1, 8192)
    for n in [*range(4101), *LARGE]:
        assert launch.next_power_of_2(n) == triton.next_power_of_2(n), n


def test_cdiv_equals_tritons():
    for b in (1, 2, 3, 16, 63, 64, 256, 4096, 2**40 + 3):
        for a in [*range(4101), *LARGE]:
            assert launch.cdiv(a, b) == triton.cdiv(a, b), (a, b)


def test_version_parsing():
    assert launch._version("3.6.0") == (3, 6)
    assert launch._version("3.9.0+git1234") == (3, 9)
    assert launch._version("3.10.0rc1") == (3, 10)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter's path")
def test_interpreter_goes_through_kernel_grid():
    launcher = FastLauncher(_axpy_kernel)
    assert not launcher.direct
    x, y = torch.randn(37), torch.randn(37)
    torch.testing.assert_close(_axpy(launcher, x, y, 0.5, True), _expected(x, y, 0.5, True))


@pytest.mark.cuda
def test_direct_launches_match_each_specialization():
    """Calls that Triton specialises differently (a pointer off 16-byte alignment, an integer equal to
    1 or a multiple of 16, another dtype, another constexpr) each get their own compiled kernel; the
    second call of each goes through the direct path and must give the same result."""
    launcher = FastLauncher(_axpy_kernel)
    assert launcher.direct, f"triton {triton.__version__} outside {launch.DIRECT_VERSIONS}"
    base = torch.randn(200, device=DEV)
    cases = [
        (base[:64], torch.randn(64, device=DEV), True),        # aligned, n and stride 16k / 1
        (base[1:38], torch.randn(37, device=DEV), False),      # x 4 bytes off alignment, odd n
        (base[::3][:33], torch.randn(33, device=DEV), True),   # stride 3
        (base[:1], torch.randn(1, device=DEV), False),         # n == 1
        (base[:48].bfloat16(), torch.randn(48, device=DEV, dtype=torch.bfloat16), True),
    ]
    for x, y, square in cases:
        for alpha in (0.5, -2.0):  # a float argument is keyed by value, as the others
            first = _axpy(launcher, x, y, alpha, square)
            second = _axpy(launcher, x, y, alpha, square)  # direct
            torch.testing.assert_close(first, _expected(x, y, alpha, square))
            torch.testing.assert_close(second, first, rtol=0, atol=0)
    assert len(launcher._compiled) == 2 * len(cases)


@pytest.mark.cuda
def test_launch_hooks_take_the_slow_path():
    """A Triton launch hook (a profiler's) must see every launch: the launcher then calls kernel[grid]."""
    launcher = FastLauncher(_axpy_kernel)
    x, y = torch.randn(40, device=DEV), torch.randn(40, device=DEV)
    _axpy(launcher, x, y, 1.0, False)
    seen = []

    def hook(metadata):
        seen.append(metadata)

    triton.knobs.runtime.launch_enter_hook.add(hook)
    try:
        _axpy(launcher, x, y, 1.0, False)
    finally:
        triton.knobs.runtime.launch_enter_hook.remove(hook)
    assert len(seen) == 1


def test_a_launch_under_torch_compile_runs_outside_the_graph():
    """Dynamo cannot trace the launcher's key (a data_ptr): under torch.compile the launch is a graph
    break and the kernel runs as it does eagerly, the compiled code around it (here Dynamo alone)."""
    launcher = FastLauncher(_axpy_kernel)
    x, y = torch.randn(100, device=DEV), torch.randn(100, device=DEV)

    def step(x, y):
        return _axpy(launcher, x * 2, y, 0.5, False) + 1

    torch._dynamo.reset()
    compiled = torch.compile(step, backend="eager")
    torch.testing.assert_close(compiled(x, y), _expected(x * 2, y, 0.5, False) + 1)


def test_tile_runs_deal_every_tile_once_to_at_most_the_programs_asked_for():
    from hybrid.kernels.launch import rows_per_tile, tile_runs  # noqa: PLC0415

    for tiles in (1, 2, 7, 19, 4096, 8193):
        for programs in (1, 4, 8, 528):
            per, used = tile_runs(tiles, programs)
            assert used <= programs and per * used >= tiles and per * (used - 1) < tiles, (tiles, programs)
    assert [rows_per_tile(b) for b in (32, 256, 1024, 2048, 8192)] == [16, 16, 4, 2, 1]


def test_optional_arg_keeps_no_tensor_alive():
    """An optional input's helper holds no reference to what it was given: a cache keyed by tensors
    would keep every step's activations alive (a leak of tens of GiB in a 13-step benchmark)."""
    x, bias = torch.randn(2, 3, 5), torch.randn(3)
    assert launch.optional_arg(bias, x, 1) == (bias, (1,))
    stand_in, strides = launch.optional_arg(None, x, 3)
    assert stand_in is x and strides == (0, 0, 0)
    del stand_in
    gone_x, gone_bias = weakref.ref(x), weakref.ref(bias)
    del x, bias
    gc.collect()
    assert gone_x() is None and gone_bias() is None


def test_sm_count_is_read_once_per_device(monkeypatch):
    """The device query costs host time: asked once per device, not on every launch."""
    asked = []

    class Properties:
        multi_processor_count = 132

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: asked.append(device) or Properties)
    launch.sm_count.cache_clear()
    try:
        device = torch.device("cuda", 0)
        assert launch.sm_count(device) == launch.sm_count(device) == 132 and len(asked) == 1
    finally:
        launch.sm_count.cache_clear()  # the real device's count next time
