"""What the SSD kernels share about rounding, so that under TRITON_INTERPRET=1 the CPU tests see the GPU's
numerics: the interpreter's fp32 -> bf16 cast truncates (values are rounded to nearest-even by their bits
first, `_cast_out`) and its dot of bf16 operands multiplies their raw bits (an operand is given as the fp32
value rounded to bf16 instead, `_operand`). Compiled, both are plain casts."""
from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_ROUND_BF16 = tl.constexpr(INTERPRET)


@triton.jit
def _round_bf16(v):
    # fp32 v rounded to the nearest-even bf16, kept in fp32 (by its bits; NaN and overflow aside)
    bits = v.to(tl.uint32, bitcast=True)
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _cast_out(v, ptr):
    """v (fp32) in the element type of ptr, rounded to nearest-even."""
    if _ROUND_BF16:
        if ptr.dtype.element_ty == tl.bfloat16:  # the interpreter's cast truncates: round the bits first
            v = _round_bf16(v)
    return v.to(ptr.dtype.element_ty)


@triton.jit
def _operand(v, DOT: tl.constexpr):
    """A matmul operand in the dtype DOT. The interpreter's bf16 dot multiplies the raw bits: there a bf16
    operand is the fp32 value rounded to bf16, which the fp32 dot then multiplies exactly as the GPU would."""
    if _ROUND_BF16:
        if DOT == tl.bfloat16:
            return _round_bf16(v.to(tl.float32))
    return v.to(DOT)
