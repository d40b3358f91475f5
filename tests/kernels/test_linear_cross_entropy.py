"""Linear + cross-entropy in row chunks against the whole-logits reference, loss and every gradient.

Tolerances: fp32 chunked vs fp32 reference differ only by summation order (rtol 1e-5 on the loss,
atol 1e-5 on gradients of O(1) entries). Under bf16 autocast both sides round the matmuls to bf16
the same way but sum in a different order; the chunked error against an fp64 oracle must stay
within 2x the reference's own bf16 error plus a small atol (STYLE 4).
"""
import pytest
import torch

from hybrid.kernels.linear_cross_entropy import linear_cross_entropy, linear_cross_entropy_ref

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def make(n, d, vocab, bias, ignored=0.2, device=DEV, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    h = torch.randn(n, d, generator=g).to(device)
    w = (torch.randn(vocab, d, generator=g) / d ** 0.5).to(device)
    b = torch.randn(vocab, generator=g).to(device) if bias else None
    t = torch.randint(0, vocab, (n,), generator=g).to(device)
    t[torch.rand(n, generator=g).to(device) < ignored] = -100
    return h, w, b, t


def loss_and_grads(fn, h, w, b, t, scale=1.0, cast=None, **kw):
    leaves = [x.detach().to(cast or x.dtype).requires_grad_() if x is not None else None for x in (h, w, b)]
    loss = fn(leaves[0], leaves[1], t, leaves[2], **kw)
    (loss * scale).backward()
    return loss.detach().double(), [x.grad.double() if x is not None else None for x in leaves]


CASES = [pytest.param(1, 8, 11, 1, True, id="n1-V11-chunk1"),
         pytest.param(37, 16, 101, 5, True, id="n37-V101-chunk5"),
         pytest.param(37, 16, 101, 64, False, id="n37-V101-chunk-above-n-nobias"),
         pytest.param(130, 24, 1001, None, True, id="n130-V1001-auto-chunk"),
         pytest.param(64, 33, 257, 7, False, id="n64-d33-V257-chunk7")]


@pytest.mark.parametrize("n,d,vocab,chunk,bias", CASES)
def test_chunked_matches_reference_fp32(n, d, vocab, chunk, bias):
    h, w, b, t = make(n, d, vocab, bias)
    ref_loss, ref_grads = loss_and_grads(linear_cross_entropy_ref, h, w, b, t, scale=3.0)
    loss, grads = loss_and_grads(linear_cross_entropy, h, w, b, t, scale=3.0, chunk_rows=chunk)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-4)
    for got, want in zip(grads, ref_grads):
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_chunked_bf16_autocast_is_as_close_to_fp64_as_the_reference():
    h, w, b, t = make(96, 32, 509, True)
    oracle, oracle_grads = loss_and_grads(linear_cross_entropy_ref, h, w, b, t, cast=torch.float64)
    with torch.autocast(DEV, dtype=torch.bfloat16):
        ref, ref_grads = loss_and_grads(linear_cross_entropy_ref, h, w, b, t)
        got, got_grads = loss_and_grads(linear_cross_entropy, h, w, b, t, chunk_rows=10)
    assert (got - oracle).abs() <= 2 * (ref - oracle).abs() + 1e-3 * oracle.abs()
    for g, r, o in zip(got_grads, ref_grads, oracle_grads):
        assert (g - o).abs().max() <= 2 * (r - o).abs().max() + 1e-3


def test_all_rows_ignored_give_zero_loss_and_gradients():
    h, w, b, t = make(9, 8, 13, True, ignored=1.0)
    loss, grads = loss_and_grads(linear_cross_entropy, h, w, b, t, chunk_rows=4)
    assert loss.item() == 0.0 and all(g.abs().max().item() == 0.0 for g in grads)


def test_without_grad_the_loss_is_the_same():
    h, w, b, t = make(40, 16, 97, True)
    with torch.no_grad():
        loss = linear_cross_entropy(h, w, t, b, chunk_rows=6)
    torch.testing.assert_close(loss, linear_cross_entropy_ref(h, w, t, b), rtol=1e-5, atol=1e-4)


def test_tied_weight_sums_both_gradients():
    """The LM head tied to the embedding: the head's gradient adds to the embedding lookup's."""
    h, w, _, t = make(20, 8, 31, False)
    ids = torch.randint(0, 31, (20,), generator=torch.Generator().manual_seed(1)).to(DEV)
    grads = []
    for fn in (linear_cross_entropy_ref, linear_cross_entropy):
        weight = w.detach().clone().requires_grad_()
        hidden = torch.nn.functional.embedding(ids, weight) + h
        fn(hidden, weight, t).backward()
        grads.append(weight.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shapes,match", [
    pytest.param(((4, 8), (10, 9), (4,)), "same d", id="d-mismatch"),
    pytest.param(((4, 8), (10, 8), (5,)), "targets", id="targets-length"),
    pytest.param(((4, 8), (10, 8), (4,), (9,)), "bias", id="bias-shape"),
])
def test_rejects_bad_shapes(shapes, match):
    h, w, t = torch.randn(*shapes[0]), torch.randn(*shapes[1]), torch.zeros(*shapes[2], dtype=torch.long)
    b = torch.randn(*shapes[3]) if len(shapes) > 3 else None
    with pytest.raises(ValueError, match=match):
        linear_cross_entropy(h, w, t, b)


@pytest.mark.parametrize("rows", [0, -1])
def test_rejects_a_chunk_of_no_rows(rows):
    h, w, b, t = make(4, 8, 10, False)
    with pytest.raises(ValueError, match="chunk_rows"):
        linear_cross_entropy(h, w, t, chunk_rows=rows)


def test_rejects_an_unknown_backend():
    h, w, b, t = make(4, 8, 10, False)
    with pytest.raises(ValueError, match="backend"):
        linear_cross_entropy(h, w, t, backend="fused")


def test_liger_backend_without_liger_kernel_says_how_to_install(monkeypatch):
    import hybrid.kernels.linear_cross_entropy.api as api

    monkeypatch.setattr(api, "_liger", lambda: None)
    h, w, b, t = make(4, 8, 10, False)
    with pytest.raises(RuntimeError, match="pip install liger-kernel"):
        linear_cross_entropy(h, w, t, backend="liger")
    torch.testing.assert_close(linear_cross_entropy(h, w, t), linear_cross_entropy(h, w, t, backend="chunked"))


@pytest.mark.cuda
def test_gpu_lm_head_shape_bf16():
    h, w, b, t = make(4096, 256, 50304, False, device="cuda")
    oracle = loss_and_grads(linear_cross_entropy_ref, h, w, b, t, cast=torch.float64)[0]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref, ref_grads = loss_and_grads(linear_cross_entropy_ref, h, w, b, t)
        got, got_grads = loss_and_grads(linear_cross_entropy, h, w, b, t)
    assert (got - oracle).abs() <= 2 * (ref - oracle).abs() + 1e-3 * oracle.abs()
    oracle_grads = loss_and_grads(linear_cross_entropy_ref, h, w, b, t, cast=torch.float64)[1]
    for g, r, o in zip(got_grads[:2], ref_grads[:2], oracle_grads[:2]):
        assert (g - o).abs().max() <= 2 * (r - o).abs().max() + 1e-3
