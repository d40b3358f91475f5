"""The residual add and the next sublayer's RMSNorm, in PyTorch: the reference and the CPU path.

With the residual stream r (dtype R) and a sublayer's output o (any float dtype):

    r'  = r + o.to(R)                                           (rounded to R, as the model stores it)
    y   = (r' / sqrt(mean(r'^2) + eps) * w).to(R)               (in fp32: Zhang & Sennrich 2019)

Without o (the first sublayer, over the embedding) r' = r. Returns (y, r'). These are the model's
`x = x + out.to(x.dtype)` and `RMSNorm(x)` written as one op, so that a fused kernel can replace both.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def add_rms_norm_ref(out: Tensor | None, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """out, residual (..., d); weight (d,) -> (normed (..., d) in residual's dtype, new residual)."""
    if out is not None:
        residual = residual + out.to(residual.dtype)
    normed = F.rms_norm(residual.float(), (residual.shape[-1],), weight.float(), eps).to(residual.dtype)
    return normed, residual
