"""Host work of eager decoding, counted: aten ops dispatched by one one-token step of a model.

    PYTHONPATH=. python3 benchmarks/count_decode_ops.py ["M x24"] ["(A F) x12"] ...

Eager decoding is bound by the host's per-op cost (launch plus Python), not by the GPU, so the ops a
step dispatches are what to cut; unlike a timing on a shared machine, the count is deterministic.
Models: d_model 64, vocab 256, batch 1, after a 16-token prefill, on the CPU.
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hybrid.model import HybridLM  # noqa: E402

LAYERS = {"M": {"type": "mamba", "d_state": 16}, "M2": {"type": "mamba2", "d_state": 16, "headdim": 32},
          "A": {"type": "attention", "n_heads": 2}, "F": {"type": "mlp"}}


class CountOps(TorchDispatchMode):
    """The ATen ops dispatched inside it: by name (`ops`) and in all (`count`)."""

    def __init__(self):
        super().__init__()
        self.ops = Counter()

    @property
    def count(self) -> int:
        return sum(self.ops.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


@torch.inference_mode()
def ops_per_step(layout: str) -> int:
    model = HybridLM.from_config({"model": {"d_model": 64, "vocab_size": 256, "layout": layout, "layers": LAYERS}}).eval()
    ids = torch.randint(0, 256, (1, 16))
    state = model.init_state(1, 64)
    model(ids, state)
    model(ids[:, :1], state)  # one step before counting: first-call work is not per step
    counter = CountOps()
    with counter:
        model(ids[:, :1], state)
    return counter.count


def main() -> None:
    layouts = sys.argv[1:] or ["M x24", "M2 x24", "(A F) x12"]
    print("| layout | aten ops per decoding step |\n|---|---:|")
    for layout in layouts:
        print(f"| `{layout}` | {ops_per_step(layout):,} |")


if __name__ == "__main__":
    main()
