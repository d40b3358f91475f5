"""Deterministic random streams and the train/held-out partition shared by the synthetic tasks.

Seeds. Every batch draws from its own `torch.Generator`, seeded from (task seed, stream name,
index) through blake2b, so batch `step` of the training stream is a pure function of
(seed, step, batch size, device type) and held-out sets are a pure function of (seed, set name).
Training batches are drawn on the training device (CUDA and CPU generators give different numbers
for the same seed, so a run resumed on another device type continues with other, equally valid,
examples); held-out sets are always drawn on the CPU, so every machine scores the same examples.

Disjointness. A random stream and a held-out set drawn from different seeds can still share
examples when the example space is small (a short MQAR sequence over a small vocabulary). We make
overlap impossible instead of unlikely: each example is hashed to one of `HELDOUT_BUCKETS` buckets
and bucket 0 is reserved for evaluation. Training batches skip any example that falls in bucket 0
(drawing a few spares, so that one draw and one device read usually suffice); held-out sets keep
only examples that do (rejection sampling, `HELDOUT_BUCKETS` draws per kept
example). The training distribution thereby loses a pseudo-random 1/16 of the example space, which
does not bias what is learnt. The hash is exact integer arithmetic modulo the prime 2^31 - 1
(no overflow), so CPU and GPU agree on every bucket:

    h(x) = (sum_{i < l} (x_i + 1) * g^(i+1) + l * g) mod p,   p = 2^31 - 1, g = 48271 (MINSTD)
    bucket(x) = h(x) mod HELDOUT_BUCKETS
"""
from __future__ import annotations

import hashlib
from typing import Callable

import torch
from torch import Tensor

HELDOUT_BUCKETS = 16
MAX_ROUNDS = 200  # redraw rounds before deciding the example space is too small to split
_P = 2**31 - 1
_G = 48271

Sample = tuple[Tensor, Tensor, dict[str, Tensor]]  # inputs, targets, info (all with a leading batch axis)


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts: stable across processes, platforms and Python versions."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def generator(*parts: object, device: torch.device | str = "cpu") -> torch.Generator:
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(derive_seed(*parts))
    return gen


_COEFFS: dict[tuple[int, str], Tensor] = {}


def _coeffs(length: int, device: torch.device) -> Tensor:
    """g^(i+1) mod p for i < length: (length,) int64, by square-and-multiply on the whole vector."""
    cache_key = (length, str(device))
    if cache_key not in _COEFFS:
        exponent = torch.arange(1, length + 1, dtype=torch.int64, device=device)
        result = torch.ones_like(exponent)
        base = torch.full_like(exponent, _G)
        while bool((exponent > 0).any()):
            odd = (exponent & 1).bool()
            result = torch.where(odd, result * base % _P, result)
            base = base * base % _P  # < 2^62: no overflow
            exponent = exponent >> 1
        _COEFFS[cache_key] = result
    return _COEFFS[cache_key]


def bucket_of(tokens: Tensor, lengths: Tensor | None = None, max_token: int | None = None) -> Tensor:
    """Held-out bucket of each row of `tokens` (n, L) int64, counting only the first `lengths` (n,) tokens.
    `max_token`, a bound on the token ids (the vocabulary size), saves reading the maximum off the device."""
    n, length = tokens.shape
    coeffs = _coeffs(length, tokens.device)
    terms = (tokens + 1) * coeffs  # (n, L)
    small = (max_token if max_token is not None else int(tokens.max())) < 2**16
    if not (length <= 2**15 and small):  # else terms < 2^47 and their sum < 2^62: reduce once
        terms = terms % _P  # exact for tokens < 2^31; each term < 2^31
    if lengths is None:
        lengths = torch.full((n,), length, dtype=torch.int64, device=tokens.device)
    else:
        terms = terms * (torch.arange(length, device=tokens.device) < lengths[:, None])
    h = (terms.sum(-1) % _P + lengths * _G) % _P
    return h % HELDOUT_BUCKETS


def is_heldout(tokens: Tensor, lengths: Tensor | None = None, max_token: int | None = None) -> Tensor:
    """(n,) bool: the example belongs to the held-out side of the partition."""
    return bucket_of(tokens, lengths, max_token) == 0


_TOO_SMALL = ("the task's example space is too small to split into disjoint training and held-out examples "
              "(almost every example falls on one side); use longer sequences or a larger vocabulary")


def exclude_heldout(make: Callable[[int], Sample], n: int, key: Callable[[Tensor], Tensor] = lambda x: x,
                    max_token: int | None = None) -> Sample:
    """n examples of `make`'s training side: `make(n + spares)` at once, the first n examples whose
    `key(inputs)` is not held out kept in draw order (one device read on a GPU; about 1 in
    HELDOUT_BUCKETS is held out, so n / 8 + 8 spares run out with probability below 1e-4 at n = 128,
    and then the shortfall is drawn the same way)."""
    parts: list[Sample] = []
    have = 0
    for _ in range(MAX_ROUNDS):
        want = n - have
        inputs, targets, info = make(want + want // 8 + 8)
        bad = is_heldout(key(inputs), max_token=max_token)
        good = min(want, len(bad) - int(bad.sum()))
        keep = torch.argsort(bad.to(torch.int8), stable=True)[:good]  # training-side rows first, in order
        parts.append((inputs[keep], targets[keep], {k: v[keep] for k, v in info.items()}))
        have += good
        if have == n:
            return _concat(parts)
    raise ValueError(_TOO_SMALL)


def _concat(parts: list[Sample]) -> Sample:
    if len(parts) == 1:
        return parts[0]
    return (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
            {k: torch.cat([p[2][k] for p in parts]) for k in parts[0][2]})


def only_heldout(make: Callable[[int], Sample], n: int, chunk: int,
                 key: Callable[[Tensor], Tensor] = lambda x: x) -> Sample:
    """`n` examples from the held-out side: draw `chunk` at a time and keep the held-out ones."""
    kept: list[Sample] = []
    have = 0
    for _ in range(MAX_ROUNDS * max(1, -(-n // chunk))):
        if have >= n:
            break
        inputs, targets, info = make(chunk)
        keep = is_heldout(key(inputs))
        kept.append((inputs[keep], targets[keep], {k: v[keep] for k, v in info.items()}))
        have += int(keep.sum())
    if have < n:
        raise ValueError(_TOO_SMALL)
    inputs = torch.cat([s[0] for s in kept])[:n]
    targets = torch.cat([s[1] for s in kept])[:n]
    info = {k: torch.cat([s[2][k] for s in kept])[:n] for k in kept[0][2]}
    return inputs, targets, info
