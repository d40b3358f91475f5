"""Scalar maths shared by the Triton kernels."""
import triton
import triton.language as tl


@triton.jit
def softplus(x):
    # log(1 + e^x) = max(x, 0) + log1p(e^-|x|); log1p(e) = log(w) e / (w - 1), w = 1 + e, is exact to
    # rounding where log(1 + e) alone loses the small e. Identity above 20 as torch.nn.functional.softplus.
    e = tl.exp(-tl.abs(x))
    w = 1.0 + e
    log1p = tl.where(w == 1.0, e, tl.log(w) * e / (w - 1.0))
    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + log1p)
