"""One gradient buffer for a tensor split into pieces, which the pieces' consumers write into.

Autograd's backward of `t.split(sizes, -1)` concatenates the pieces' gradients into a new tensor: a
full read and write of t's size (Mamba-2's in_proj output, split into z, x/B/C and dt, is the widest
activation of its layer). `split_into_sink(t, sizes)` returns the same pieces (views of t) and a
`GradSink`. A consumer whose backward can write its input's gradient to a given tensor takes
`sink.into(i)` (a zero-argument callable returning piece i's slice of the buffer, allocated on first
use) and writes there; the split's backward then finds that gradient already in place. Any other
gradient (a consumer that returns its own tensor, an accumulation of several, or none) is copied or
zeroed into its slice, so the result is the concatenation whichever consumers take part. A slice goes
to one writer per backward: a second consumer calling `into(i)` for the same piece gets a tensor of
its own (then summed and copied in by autograd and the split), not the slice the first one wrote.

The buffer is in_proj-output sized and lives from the first writer's backward to the split's. A
backward that never reaches the split (gradients asked for a later tensor only) leaves it with the
sink until the graph is freed; `torch.autograd.grad` for a piece returns a view of it, which a second
backward through the same graph (retain_graph) overwrites.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor


class GradSink:
    """The gradient buffer of one split: t's shape, dtype and device, allocated when first asked for."""

    def __init__(self, like: Tensor, sizes: Sequence[int]):
        self._shape, self._dtype, self._device = like.shape, like.dtype, like.device
        self._starts = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        self._buffer: Tensor | None = None
        self._claimed: set[int] = set()  # pieces handed to a writer in the current backward

    def _ensure(self) -> Tensor:
        if self._buffer is None:
            self._buffer = torch.empty(self._shape, dtype=self._dtype, device=self._device)
        return self._buffer

    def piece(self, i: int) -> Tensor:
        """Piece i's slice of the buffer (the last dimension's sizes[i] channels)."""
        return self._ensure()[..., self._starts[i]:self._starts[i + 1]]

    def into(self, i: int, view: Callable[[Tensor], Tensor] | None = None) -> Callable[[], Tensor]:
        """A callable for a consumer's backward: where to write piece i's gradient (`view` of the slice,
        e.g. the transpose the consumer sees). The first call in a backward gets the slice; another
        gets a fresh tensor, so that two writers never overwrite each other."""
        def target() -> Tensor:
            piece = self.piece(i)
            if i in self._claimed:
                piece = torch.empty_like(piece)
            self._claimed.add(i)
            return view(piece) if view is not None else piece
        return target

    def take(self) -> Tensor:
        """The buffer, handed over (the next backward through this graph allocates a new one)."""
        buffer, self._buffer = self._ensure(), None
        self._claimed = set()
        return buffer


def _in_place(grad: Tensor, piece: Tensor) -> bool:
    """Whether `grad` is the slice `piece` itself (a writer's), so nothing needs copying."""
    return grad.data_ptr() == piece.data_ptr() and grad.stride() == piece.stride() and grad.shape == piece.shape


class _SplitIntoSink(torch.autograd.Function):
    """t -> its pieces (views); backward: the sink's buffer, each piece's gradient in place or copied in."""

    @staticmethod
    def forward(ctx, t: Tensor, sizes: tuple[int, ...], sink: GradSink):
        ctx.sizes, ctx.sink = sizes, sink
        ctx.set_materialize_grads(False)  # an unused piece's gradient comes as None (zeroed), not as zeros to copy
        return tuple(t.split(sizes, dim=-1))

    @staticmethod
    def backward(ctx, *grads):
        buffer = ctx.sink.take()
        start = 0
        for grad, size in zip(grads, ctx.sizes):
            piece = buffer[..., start:start + size]
            start += size
            if grad is None:
                piece.zero_()
            elif not _in_place(grad, piece):
                piece.copy_(grad)
        return buffer, None, None


def split_into_sink(t: Tensor, sizes: Sequence[int]) -> tuple[tuple[Tensor, ...], GradSink]:
    """t's pieces along its last dimension (as `t.split(sizes, -1)`) and the sink of their gradients."""
    if sum(sizes) != t.shape[-1]:
        raise ValueError(f"split_into_sink: sizes {list(sizes)} add up to {sum(sizes)}, not the last "
                         f"dimension {t.shape[-1]} of a tensor of shape {tuple(t.shape)}")
    sink = GradSink(t, sizes)
    return _SplitIntoSink.apply(t, tuple(sizes), sink), sink
