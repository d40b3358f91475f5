"""The oracle of `linear_cross_entropy`: the whole logits tensor, then F.cross_entropy."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def linear_cross_entropy_ref(hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None = None,
                             ignore_index: int = -100) -> Tensor:
    """Summed cross-entropy of softmax(hidden @ weight.T + bias) against targets, in fp32.
    hidden (n, d), weight (vocab, d), bias (vocab,) or None, targets (n,) int64 -> () fp32."""
    logits = F.linear(hidden, weight, bias).float()  # (n, vocab)
    return F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
