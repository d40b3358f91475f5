"""Time a CUDA step without the host: one call captured into a CUDA graph, its replays timed by
triton.testing.do_bench, which clears the L2 cache before each (triton's do_bench_cudagraph replays
many calls back to back and never clears it, so inputs that fit in the L2 would be read from it).

    ms = graphed_ms(fn)          # fn: a forward and backward, say; it allocates what it returns

fn runs three times on a side stream first (kernel compilation, autotuning, the allocator's warm
pool), then once under capture; what it allocates comes from the graph's private pool, and each
replay writes the same buffers again. fn must not accumulate into .grad across calls (use
torch.autograd.grad, not .backward) and must not synchronise with the host.
"""
from __future__ import annotations

from typing import Callable

import torch


def graphed_ms(fn: Callable[[], object], warmup: int = 3) -> float:
    """Median ms of a replay of one captured call of fn (L2 cleared before each replay)."""
    import triton.testing  # noqa: PLC0415

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        kept = fn()  # noqa: F841  (its outputs stay alive with the graph's pool)
    torch.cuda.synchronize()
    return triton.testing.do_bench(graph.replay, warmup=10, rep=100, return_mode="median")
