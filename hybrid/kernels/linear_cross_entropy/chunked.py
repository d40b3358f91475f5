"""Linear + cross-entropy over chunks of rows, with the gradients computed in the forward.

For n rows of width d and a vocabulary V, the plain LM head materialises the (n, V) logits, an fp32
copy for the softmax and its gradient: at n = 16,384 and V = 50,304 that is 3.3 GB of fp32 per
tensor, the largest allocation of a small model's step. Here each chunk of c rows computes

    z = h_c W^T + b                    (c, V), in the matmul dtype, then fp32
    loss_c = sum_i valid_i (logsumexp(z_i) - z_i[t_i])
    g = (softmax(z) - onehot(t)) * valid                   d loss / d z, (c, V)
    dh_c = g W,   dW += g^T h_c,   db += sum_i g_i         (fp32 accumulators for W and b)

and drops z and g before the next chunk, so the peak holds one chunk's logits (Liger-Kernel's
fused linear cross-entropy does the same). The gradients are ready when the forward returns; the
backward only scales them by the incoming gradient of the loss. The price: whenever an input
requires grad, the forward pays for the gradient matmuls, wasted if the loss is then not
differentiated (under torch.no_grad nothing requires grad and they are skipped).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CHUNK_ELEMENTS = 1 << 24  # logits per chunk: 64 MB in fp32


def default_chunk_rows(n: int, vocab: int) -> int:
    return max(1, min(n, CHUNK_ELEMENTS // max(vocab, 1)))


class LinearCrossEntropyFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, ignore_index: int,
                chunk_rows: int) -> Tensor:
        need_h, need_w = hidden.requires_grad, weight.requires_grad
        need_b = bias is not None and bias.requires_grad
        loss = torch.zeros((), device=hidden.device, dtype=torch.float32)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros(bias.shape, device=bias.device, dtype=torch.float32) if need_b else None
        w_cast: Tensor | None = None  # the weight in the matmul dtype, cast once (not per chunk)
        for start in range(0, hidden.shape[0], chunk_rows):
            h = hidden[start:start + chunk_rows]  # (c, d)
            t = targets[start:start + chunk_rows]  # (c,)
            z = F.linear(h, weight, bias)  # (c, V), the matmul dtype (autocast's, when on)
            matmul_dtype = z.dtype
            z = z.float()
            valid = t != ignore_index
            safe = torch.where(valid, t, 0)[:, None]  # (c, 1): a real index for the ignored rows too
            lse = torch.logsumexp(z, dim=-1)  # (c,)
            loss += ((lse - z.gather(1, safe)[:, 0]) * valid).sum()
            if not (need_h or need_w or need_b):
                continue
            g = z.sub_(lse[:, None]).exp_()  # softmax, in place of z: (c, V) fp32
            g.scatter_add_(1, safe, torch.full_like(safe, -1, dtype=g.dtype))
            g.mul_(valid[:, None])
            if need_b:
                grad_b += g.sum(0)
            g = g.to(matmul_dtype)
            if need_h:
                w_cast = weight.to(matmul_dtype) if w_cast is None else w_cast
                grad_h[start:start + chunk_rows] = (g @ w_cast).to(hidden.dtype)
            if need_w:
                grad_w += g.t() @ h.to(matmul_dtype)  # (V, d): matmul in its dtype, summed in fp32
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        w_dtype, b_dtype = ctx.dtypes
        scale = grad_loss.float()
        dh = grad_h * scale.to(grad_h.dtype) if grad_h is not None else None
        dw = (grad_w * scale).to(w_dtype) if grad_w is not None else None
        db = (grad_b * scale).to(b_dtype) if grad_b is not None else None
        return dh, dw, db, None, None, None


def linear_cross_entropy_chunked(hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None = None,
                                 ignore_index: int = -100, chunk_rows: int | None = None) -> Tensor:
    rows = chunk_rows or default_chunk_rows(hidden.shape[0], weight.shape[0])
    if not torch.is_grad_enabled():  # no gradients wanted: nothing to precompute
        hidden, weight = hidden.detach(), weight.detach()
        bias = bias.detach() if bias is not None else None
    return LinearCrossEntropyFn.apply(hidden, weight, bias, targets, ignore_index, rows)
