"""How far can a trained Mamba carry a token? The decay of its longest-lived state channels.

    python experiments/induction_heads/memory_probe.py experiments/induction_heads/runs/arch=mamba,seed=0

Mamba's state h[d, n] decays by exp(-dt[d, t] |A[d, n]|) at each token t (ZOH, Mamba eq. 4), so over
k tokens a stored value keeps exp(-sum_t dt |A|). On induction-heads inputs (the training length, or
--length), this prints, for each Mamba layer, the (channel, state) pairs that decay least per context
token and the number of tokens after which they keep half of what they stored: the mean of dt |A|
over the tokens that lie between the token to recall and the final special token (the span across
which it must be carried; --all-context: over every context token but the special ones and the one to
recall, before the trigger too, as the first version of this probe measured). Recall at length L needs
a channel whose half-life is well beyond L.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import hybrid.layers.mamba as mamba_layer  # noqa: E402
from hybrid.cli.generate import load_weights  # noqa: E402
from hybrid.config import load_config  # noqa: E402
from hybrid.model import HybridLM  # noqa: E402
from hybrid.tasks.induction_heads import induction_heads  # noqa: E402


def decay_rates(model: HybridLM, inputs: torch.Tensor) -> list[torch.Tensor]:
    """Per Mamba layer, dt |A| at every token: (batch, length, d_inner, d_state)."""
    caught = []
    scan = mamba_layer.selective_scan

    def spy(x, dt, A, B, C, D, z=None, delta_bias=None, **kw):
        rate = F.softplus(dt.float() + delta_bias[None, :, None])  # (batch, d_inner, length)
        caught.append((rate[:, :, None, :] * (-A)[None, :, :, None]).permute(0, 3, 1, 2))
        return scan(x, dt, A, B, C, D, z=z, delta_bias=delta_bias, **kw)

    mamba_layer.selective_scan = spy
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        mamba_layer.selective_scan = scan
    return caught


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run directory holding config.yaml and checkpoint.pt")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--top", type=int, default=4, help="longest-lived (channel, state) pairs to print")
    parser.add_argument("--length", type=int, default=None, help="input length (default: the training length)")
    parser.add_argument("--all-context", action="store_true",
                        help="average over every context token, before the trigger too")
    args = parser.parse_args()
    run = Path(args.run)
    root = load_config(str(run / "config.yaml"), [])
    model = HybridLM.from_config(root.model).eval()
    load_weights(model, str(run / "checkpoint.pt"), trust=True)  # our own run's checkpoint
    task = root.task
    length = args.length or task["length"]
    inputs, _, _ = induction_heads(args.examples, length, task["vocab_size"],
                                   torch.Generator().manual_seed(0), torch.device("cpu"))
    special = inputs == task["vocab_size"] - 1
    written = torch.zeros_like(special)
    written[:, 1:] = special[:, :-1]  # the token after the first special one: the one to recall
    carried = ~(special | written)  # (batch, length)
    if not args.all_context:  # only the span the recalled token is carried across
        after = written.long().cumsum(1).bool() & ~written
        carried &= after
    print(f"{run.name}: {args.examples} inputs of length {length}, "
          f"{'every context token' if args.all_context else 'the tokens after the one to recall'}")
    for i, rate in enumerate(decay_rates(model, inputs)):
        mean = rate[carried].mean(0).flatten()  # (d_inner * d_state,) mean dt |A| per carried token
        slowest = mean.argsort()[:args.top]
        pairs = ", ".join(f"{mean[j]:.1e} (half-life {math.log(2) / mean[j]:,.0f} tokens)" for j in slowest)
        print(f"  Mamba layer {i}: slowest decay per token: {pairs}")


if __name__ == "__main__":
    main()
