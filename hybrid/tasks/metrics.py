"""Per-example statistics, their reduction to metrics, and sliced accumulation.

Stage 1, per batch (`example_stats`): for each example b, over its scored positions S_b
(targets != IGNORE_INDEX), with p the softmax of the logits,

    loss[b]    = sum_{t in S_b} -log p_t(target_t)        (nats)
    correct[b] = #{t in S_b : argmax p_t = target_t}
    scored[b]  = |S_b|
    exact[b]   = 1 if correct[b] = scored[b] > 0           (teacher-forced exact match, which
                                                            equals greedy decoding's exact match)
    examples[b] = 1 if scored[b] > 0

Stage 2, per set or slice (`classification_metrics`, `lm_metrics`): ratios of sums, so a slice
pooled over several batches or sets is weighted by its examples and tokens, not by its batches.
"""
from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import Tensor

from hybrid.tasks.base import IGNORE_INDEX


def example_stats(logits: Tensor, targets: Tensor, token_bytes: Tensor | None = None) -> dict[str, Tensor]:
    """logits (batch, length, vocab), targets (batch, length) -> per-example sums, each (batch,) float64.

    Only scored positions are gathered before the softmax, so a batch with few answers (MQAR,
    induction heads) costs little memory. `token_bytes` (vocab,) adds "bytes": the UTF-8 bytes the
    scored targets stand for (for bits per byte).
    """
    if logits.is_cuda and torch.cuda.is_current_stream_capturing():  # no data-dependent shapes in a CUDA graph
        return _dense_example_stats(logits, targets, token_bytes)
    b = targets.shape[0]
    mask = targets != IGNORE_INDEX  # (batch, length)
    rows = mask.nonzero()[:, 0]  # (n_scored,)
    picked = logits[mask].float()  # (n_scored, vocab)
    target = targets[mask]  # (n_scored,)
    nll = F.cross_entropy(picked, target, reduction="none").double()
    hit = (picked.argmax(-1) == target).double()
    zeros = torch.zeros(b, dtype=torch.float64, device=targets.device)
    scored = mask.sum(-1).double()
    correct = zeros.index_add(0, rows, hit)
    out = {
        "loss": zeros.index_add(0, rows, nll),
        "correct": correct,
        "scored": scored,
        "exact": ((correct == scored) & (scored > 0)).double(),
        "examples": (scored > 0).double(),
    }
    if token_bytes is not None:
        out["bytes"] = zeros.index_add(0, rows, token_bytes.to(targets.device)[target].double())
    return out


DENSE_CHUNK = 1 << 26  # logits elements turned to float32 at once by the dense statistics (256 MiB)


def _dense_example_stats(logits: Tensor, targets: Tensor, token_bytes: Tensor | None) -> dict[str, Tensor]:
    """`example_stats` over every position, unscored ones masked out: the same numbers, with shapes that
    do not depend on the data (what a CUDA graph can capture), in chunks of rows to bound the memory."""
    b, length = targets.shape
    mask = targets != IGNORE_INDEX  # (batch, length)
    safe = targets.clamp(min=0)  # any class at unscored positions; masked out below
    rows = max(1, DENSE_CHUNK // max(1, length * logits.shape[-1]))
    nll, hit = [], []
    for start in range(0, b, rows):
        chunk = logits[start:start + rows].float()  # (rows, length, vocab)
        tgt = safe[start:start + rows]
        nll.append(F.cross_entropy(chunk.flatten(0, 1), tgt.flatten(), reduction="none").view(tgt.shape))
        hit.append(chunk.argmax(-1) == tgt)
    zero = torch.zeros((), dtype=torch.float64, device=targets.device)
    scored = mask.sum(-1).double()
    correct = torch.where(mask, torch.cat(hit).double(), zero).sum(-1)
    out = {
        "loss": torch.where(mask, torch.cat(nll).double(), zero).sum(-1),
        "correct": correct,
        "scored": scored,
        "exact": ((correct == scored) & (scored > 0)).double(),
        "examples": (scored > 0).double(),
    }
    if token_bytes is not None:
        out["bytes"] = torch.where(mask, token_bytes.to(targets.device)[safe].double(), zero).sum(-1)
    return out


def classification_metrics(totals: dict[str, float]) -> dict[str, float]:
    """accuracy over scored positions, per-example exact match, mean loss per scored token, counts."""
    scored, examples = totals.get("scored", 0.0), totals.get("examples", 0.0)
    return {
        "accuracy": totals["correct"] / scored if scored else math.nan,
        "exact_match": totals["exact"] / examples if examples else math.nan,
        "loss": totals["loss"] / scored if scored else math.nan,
        "examples": examples,
        "tokens": scored,
    }


def lm_metrics(totals: dict[str, float]) -> dict[str, float]:
    """loss (nats per token), perplexity exp(loss), bits per byte = sum nll / (ln 2 * bytes), accuracy."""
    scored = totals.get("scored", 0.0)
    loss = totals["loss"] / scored if scored else math.nan
    out = {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "accuracy": totals["correct"] / scored if scored else math.nan,
           "tokens": scored}
    if totals.get("bytes"):
        out["bpb"] = totals["loss"] / (math.log(2) * totals["bytes"])
    return out


class Accumulator:
    """Sums per-example statistics overall and per slice value (e.g. "length=256", "num_kv_pairs=8")."""

    def __init__(self, slice_keys: tuple[str, ...] = ()):
        self.slice_keys = slice_keys
        self.totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    def add(self, stats: dict[str, Tensor], info: dict[str, Tensor], group: str | None = None) -> None:
        """Add one batch; `group` (e.g. the set name) gets its own totals besides "all" and the slices."""
        cpu = {k: v.detach().double().cpu() for k, v in stats.items()}
        for name in ["all"] + ([group] if group else []):
            for k, v in cpu.items():
                self.totals[name][k] += float(v.sum())
        for key in self.slice_keys:
            if key not in info:
                continue
            values = info[key].detach().cpu()
            uniq, inverse = torch.unique(values, return_inverse=True)
            for k, v in cpu.items():
                sums = torch.zeros(len(uniq), dtype=torch.float64).index_add(0, inverse, v)
                for u, s in zip(uniq.tolist(), sums.tolist()):
                    self.totals[f"{key}={u}"][k] += s

    def result(self, reduce) -> dict[str, dict[str, float]]:
        return {name: reduce(dict(t)) for name, t in self.totals.items()}
