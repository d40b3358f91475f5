"""benchmarks/kernel_resources.py: every kernel one call launches, compiled for sm_90 without a GPU, with
its registers read back (a subprocess: the compiler must not run under TRITON_INTERPRET=1).

Triton is imported inside the test, not at collection: the kernel test modules collected after this one
set TRITON_INTERPRET=1 before their first import of Triton, which decides whether @triton.jit interprets."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _skip_unless_the_tool_runs() -> None:
    import triton

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump").exists():
        pytest.skip("this Triton ships no cuobjdump")
    if not hasattr(triton.runtime.jit.JITFunction, "_pack_args"):
        pytest.skip("the tool follows Triton 3.9's compile path (JITFunction._pack_args)")


@pytest.mark.parametrize("what,shape,expected", [
    ("scan", "1,32,40,16", {"_scan_fwd_kernel", "_scan_bwd_kernel"}),
    ("ssd", "1,300,2,64,128", {"_dt_cumsum_kernel", "_chunk_cb_kernel", "_chunk_outer_kernel",
                               "_state_passing_fwd_kernel", "_chunk_scan_fwd_kernel", "_gate_bwd_kernel",
                               "_state_passing_bwd_kernel", "_chunk_scan_bwd_dx_kernel",
                               "_chunk_scan_bwd_dcb_kernel", "_chunk_scan_bwd_dbc_kernel"}),
])
def test_every_launched_kernel_compiles_for_sm90_with_its_resources(what, shape, expected):
    _skip_unless_the_tool_runs()
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernel_resources.py"), what, "--shape", shape],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split("|") for line in done.stdout.splitlines() if line.startswith("| `")]
    assert {row[1].strip().strip("`") for row in rows} == expected
    for row in rows:
        registers, local = int(row[5]), int(row[6])
        assert 0 < registers <= 255 and local >= 0, row
