"""Is the token to recall still there at the query? Its part of each Mamba layer's output, against the rest.

    python experiments/induction_heads/signal_probe.py experiments/induction_heads/runs/arch=mamba,seed=0 \\
        --length 8192 --examples 8

Mamba's scan output at the query (the last position T) is a sum over the earlier steps s,

    y_T[d] = sum_n C_T[n] sum_s exp(A[d, n] sum_{s<r<=T} dt_r[d]) dt_s[d] u_s[d] B_s[n],

so it splits exactly into the part written at the steps just after the trigger p (s = p+1 .. p+4, where
the convolution of width 4 sees the token to recall) and the rest. For each example this prints the
norm over the channels of both parts per Mamba layer, and whether the model answers right (float32,
CPU): a stored token whose part is small against the rest is drowned by what the other tokens wrote.
"""
from __future__ import annotations

import argparse
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


def scan_inputs(model: HybridLM, inputs: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, ...]]]:
    """The model's logits at the query, and per Mamba layer the scan's (u, dt, A, B, C, delta_bias), float32."""
    caught, scan = [], mamba_layer.selective_scan

    def spy(x, dt, A, B, C, D, z=None, delta_bias=None, **kw):
        caught.append(tuple(t.float() for t in (x, dt, A, B, C, delta_bias)))
        return scan(x, dt, A, B, C, D, z=z, delta_bias=delta_bias, **kw)

    mamba_layer.selective_scan = spy
    try:
        with torch.no_grad():
            logits = model(inputs)[:, -1]
    finally:
        mamba_layer.selective_scan = scan
    return logits, caught


def parts_at_query(u, dt, A, B, C, bias, first: int, last: int) -> tuple[float, float]:
    """(|the part of y_T written at steps first..last|, |the rest|) for one example: u, dt (d, L); A (d, n);
    B, C (n, L)."""
    rate = F.softplus(dt + bias[:, None])  # (d, L)
    after = rate.sum(1, keepdim=True) - rate.cumsum(1)  # sum of the rates after each step, up to T
    written = (rate * u)[:, None, :] * B[None] * torch.exp(A[:, :, None] * after[:, None, :])  # (d, n, L)
    y = (C[None, :, -1:] * written).sum(1)  # (d, L): each step's part of y at the query
    signal = y[:, first:last + 1].sum(1)
    return signal.norm().item(), (y.sum(1) - signal).norm().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run directory holding config.yaml and checkpoint.pt")
    parser.add_argument("--length", type=int, required=True)
    parser.add_argument("--examples", type=int, default=8)
    args = parser.parse_args()
    run = Path(args.run)
    root = load_config(str(run / "config.yaml"), [])
    vocab = root.task["vocab_size"]
    model = HybridLM.from_config(root.model).eval()
    load_weights(model, str(run / "checkpoint.pt"), trust=True)  # our own run's checkpoint
    inputs, targets, _ = induction_heads(args.examples, args.length, vocab, torch.Generator().manual_seed(1),
                                         torch.device("cpu"))
    trigger = (inputs[:, :-1] == vocab - 1).float().argmax(1)
    logits, layers = scan_inputs(model, inputs)
    right = logits[:, :vocab - 2].argmax(-1) == targets[:, -1]
    print(f"{run.name} at length {args.length}")
    for i in range(args.examples):
        p = int(trigger[i])
        cells = []
        for k, (u, dt, A, B, C, bias) in enumerate(layers):
            b, c = (B[i, 0], C[i, 0]) if B.dim() == 4 else (B[i], C[i])  # grouped B, C: one group
            signal, rest = parts_at_query(u[i], dt[i], A, b, c, bias, p + 1, min(p + 4, args.length - 1))
            cells.append(f"layer {k}: token {signal:.2e}, rest {rest:.2e}")
        print(f"  gap {args.length - 2 - p:>7,} {'right' if right[i] else 'wrong'}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
