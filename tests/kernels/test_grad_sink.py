"""split_into_sink: the pieces' gradients gathered in one buffer, exactly the concatenation autograd's
split would give, whether the consumers write into the buffer, return their own gradients, use a piece
twice or not at all."""
import pytest
import torch

from hybrid.kernels import grad_sink
from hybrid.kernels.grad_sink import split_into_sink

SIZES = [3, 0, 5, 2]


class _TwiceInto(torch.autograd.Function):
    """y = 2 x, whose backward writes d x into the tensor `into()` returns (a consumer that takes part)."""

    @staticmethod
    def forward(ctx, x, into):
        ctx.into = into
        return 2 * x

    @staticmethod
    def backward(ctx, dy):
        dx = ctx.into()
        dx.copy_(2 * dy)
        return dx, None


def _loss(pieces, sink, into: bool):
    a, empty, b, c = pieces
    b_out = _TwiceInto.apply(b, sink.into(2)) if into else 2 * b
    # a used twice (its gradient is an accumulation), c unused (no gradient), the empty piece unused
    return (a.sin() * 3).sum() + (a * a).sum() + (b_out.square() * torch.arange(5.0)).sum()


@pytest.mark.parametrize("into", [False, True], ids=["consumers-return-their-own", "one-consumer-writes-in-place"])
def test_gradient_equals_the_split_and_concatenation(into):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 7, requires_grad=True)
    w = torch.randn(7, 10)
    t = x @ w
    pieces, sink = split_into_sink(t, SIZES)
    for piece, ref in zip(pieces, t.split(SIZES, dim=-1)):
        assert torch.equal(piece, ref)
    seen = []
    t.register_hook(seen.append)
    _loss(pieces, sink, into).backward()
    x2 = x.detach().clone().requires_grad_()
    _loss((x2 @ w).split(SIZES, dim=-1), sink, False).backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-6, atol=1e-6)
    assert torch.equal(seen[0][..., 8:], torch.zeros(2, 4, 2))  # the unused piece: zeros


def test_a_gradient_written_in_place_is_not_copied(monkeypatch):
    copies = []
    real = grad_sink._in_place
    monkeypatch.setattr(grad_sink, "_in_place", lambda g, p: copies.append(not real(g, p)) or real(g, p))
    x = torch.randn(3, 10, requires_grad=True)
    pieces, sink = split_into_sink(x * 1.0, SIZES)
    _loss(pieces, sink, True).backward()
    assert copies == [True, False]  # a (accumulated): copied; b (written by its consumer): in place


class _TimesInto(torch.autograd.Function):
    """y = k x, whose backward writes d x into `into()`."""

    @staticmethod
    def forward(ctx, x, k, into):
        ctx.k, ctx.into = k, into
        return k * x

    @staticmethod
    def backward(ctx, dy):
        dx = ctx.into()
        dx.copy_(ctx.k * dy)
        return dx, None, None


@pytest.mark.parametrize("second", ["writer", "plain"], ids=["two-writers", "a-writer-and-a-plain-consumer"])
def test_two_consumers_of_one_piece_add_up(second):
    """Both consumers of a piece count: a second writer gets a tensor of its own, not the slice the first
    wrote (which it would overwrite); a plain consumer's gradient is summed with the writer's and copied in."""
    x = torch.randn(3, 10, requires_grad=True)
    pieces, sink = split_into_sink(x * 1.0, SIZES)
    b = pieces[2]
    other = _TimesInto.apply(b, 5.0, sink.into(2)) if second == "writer" else 5.0 * b
    (_TimesInto.apply(b, 2.0, sink.into(2)) + other).sum().backward()
    expected = torch.zeros(3, 10)
    expected[:, 3:8] = 7.0
    torch.testing.assert_close(x.grad, expected)


def test_a_second_backward_through_the_graph_gets_a_buffer_of_its_own():
    x = torch.randn(3, 10, requires_grad=True)
    pieces, sink = split_into_sink(x * 1.0, SIZES)
    loss = _loss(pieces, sink, True)
    first, = torch.autograd.grad(loss, x, retain_graph=True)
    first = first.clone()
    second, = torch.autograd.grad(loss, x)
    torch.testing.assert_close(second, first, rtol=0, atol=0)


def test_sizes_must_add_up():
    with pytest.raises(ValueError, match=r"add up to 9, not the last dimension 10"):
        split_into_sink(torch.zeros(2, 10), [4, 5])
