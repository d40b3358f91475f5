"""String copying (Jelassi, Brandfonbrener, Kakade & Malach 2024, "Repeat After Me"), section 4.

Following the authors' `synthetic_exps/data_utils.py` (task "copy"): strings of uniform letters
from an alphabet of A tokens, framed as

    BOS s_1 .. s_n SEP s_1 .. s_n EOS        (their '$', '|', '.'; ids A, A+1, A+2)

The copy and the closing EOS are scored (next-token targets: the position of SEP predicts s_1, the
last copied letter predicts EOS); the string and the framing before SEP are not. Training rows pack
examples of lengths uniform in [min_length, max_length] back to back into `context_length` tokens,
as the authors do; an example cut off by the end of the row is not scored. Held-out sets hold one
example per row with strings of exactly n letters, for each n in `eval_lengths` (n above
max_length tests length generalisation). Exact match of the teacher-forced argmax over the copy
equals the exact match of greedy decoding, the paper's string-level accuracy.

Choices of ours: the train/held-out partition hashes the string itself, so no held-out string ever
appears in a training row; held-out rows need no padding (one length per set), so the authors'
pad token '*' is left out and the vocabulary is A + 3.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from hybrid.tasks.base import IGNORE_INDEX, Batch, TaskShapes, register_task
from hybrid.tasks.sampling import MAX_ROUNDS, Sample, generator, is_heldout
from hybrid.tasks.synthetic import SyntheticTask


@dataclass
class CopyConfig:
    alphabet: int = field(default=26, metadata={"help": "letters A (ids [0, A)); BOS = A, SEP = A+1, EOS = A+2"})
    min_length: int = field(default=20, metadata={"help": "shortest training string"})
    max_length: int = field(default=50, metadata={"help": "longest training string"})
    context_length: int = field(default=220, metadata={"help": "training row length; examples are packed into it"})
    eval_lengths: list[int] = field(default_factory=lambda: [20, 50, 100, 200, 400],
                                    metadata={"help": "string lengths of the held-out sets"})
    eval_examples: int = field(default=256, metadata={"help": "examples per held-out length"})
    eval_batch_size: int = field(default=64, metadata={"help": "examples per held-out batch"})

    def __post_init__(self):
        if self.alphabet < 2:
            raise ValueError(f"alphabet must be >= 2 letters, got {self.alphabet}")
        if not 1 <= self.min_length <= self.max_length:
            raise ValueError(f"need 1 <= min_length <= max_length, got min_length={self.min_length}, "
                             f"max_length={self.max_length}")
        if self.context_length < 2 * self.max_length + 3:
            raise ValueError(f"context_length {self.context_length} cannot hold one example of max_length "
                             f"{self.max_length}: need >= 2 * max_length + 3 = {2 * self.max_length + 3}")
        for i, n in enumerate(self.eval_lengths):
            if n < 1:
                raise ValueError(f"eval_lengths[{i}] must be >= 1, got {n}")
        if self.eval_examples < 1 or self.eval_batch_size < 1:
            raise ValueError("eval_examples and eval_batch_size must be >= 1")

    def shapes(self) -> TaskShapes:
        rows = [2 * n + 2 for n in self.eval_lengths] or [self.context_length]  # BOS s SEP s (EOS is a target)
        return TaskShapes(self.context_length, self.eval_batch_size, max(rows), self.eval_examples * sum(rows))


def _strings(n: int, length: int, alphabet: int, lengths: Tensor | None, gen: torch.Generator,
             device: torch.device, want_heldout: bool) -> Tensor:
    """(n, length) letters; row i (its first lengths[i] letters) redrawn until its held-out side is `want_heldout`."""
    chars = torch.randint(0, alphabet, (n, length), generator=gen, device=device)
    bad = is_heldout(chars, lengths) != want_heldout
    for _ in range(MAX_ROUNDS):
        if not bool(bad.any()):
            return chars
        idx = bad.nonzero().squeeze(1)
        chars[idx] = torch.randint(0, alphabet, (len(idx), length), generator=gen, device=device)
        bad[idx] = is_heldout(chars[idx], None if lengths is None else lengths[idx]) != want_heldout
    raise ValueError(f"strings of {length} letters over an alphabet of {alphabet} are too few to split into "
                     f"training and held-out strings; use longer strings or a larger alphabet")


def packed_copy_rows(n: int, context_length: int, min_length: int, max_length: int, alphabet: int,
                     gen: torch.Generator, device: torch.device) -> tuple[Tensor, Tensor]:
    """Training rows: inputs, targets (n, context_length), examples packed back to back."""
    bos, sep, eos = alphabet, alphabet + 1, alphabet + 2
    total = context_length + 1  # one extra token: targets are the inputs shifted by one
    k = total // (2 * min_length + 3) + 1  # examples per row: enough to pass the end of the row
    lens = torch.randint(min_length, max_length + 1, (n, k), generator=gen, device=device)  # (n, K)
    chars = _strings(n * k, max_length, alphabet, lens.reshape(-1), gen, device, want_heldout=False)
    ex_len = 2 * lens + 3
    ends = ex_len.cumsum(-1)  # (n, K)
    starts = ends - ex_len
    t = torch.arange(total, device=device).repeat(n, 1)  # (n, T+1)
    j = torch.searchsorted(ends, t, right=True)  # example holding each position
    off = t - starts.gather(1, j)  # offset inside the example
    ln = lens.gather(1, j)
    idx = torch.where(off <= ln, off - 1, off - ln - 2).clamp(0, max_length - 1)
    letters = chars.view(n, k * max_length).gather(1, j * max_length + idx)
    seq = torch.where(off == 0, bos, torch.where(off == ln + 1, sep, torch.where(off == 2 * ln + 2, eos, letters)))
    scored = (off >= ln + 2) & (ends.gather(1, j) <= total)  # copy + EOS of complete examples
    targets = torch.where(scored[:, 1:], seq[:, 1:], IGNORE_INDEX)
    return seq[:, :-1].contiguous(), targets


def copy_rows(chars: Tensor, alphabet: int) -> tuple[Tensor, Tensor]:
    """One example per row: chars (n, L) -> inputs, targets (n, 2L + 2)."""
    n, length = chars.shape
    col = lambda v: chars.new_full((n, 1), v)  # noqa: E731
    seq = torch.cat([col(alphabet), chars, col(alphabet + 1), chars, col(alphabet + 2)], dim=1)  # (n, 2L + 3)
    targets = torch.full_like(seq[:, 1:], IGNORE_INDEX)
    targets[:, length + 1:] = seq[:, length + 2:]  # SEP .. last copied letter predict the copy and EOS
    return seq[:, :-1].contiguous(), targets


@register_task("copy", config=CopyConfig)
class Copy(SyntheticTask):
    """String copying (Repeat After Me): repeat a random string after a separator."""

    @property
    def vocab_size(self) -> int:
        return self.config.alphabet + 3

    def train_batch(self, step: int, batch_size: int, device: torch.device | str = "cpu") -> Batch:
        device = torch.device(device)
        c = self.config
        gen = generator(self.seed, self.name, "train", step, device=device)
        inputs, targets = packed_copy_rows(batch_size, c.context_length, c.min_length, c.max_length, c.alphabet, gen, device)
        return Batch(inputs, targets, {})

    def eval_settings(self):
        return {f"L{n}": {"length": n} for n in self.config.eval_lengths}

    def _produce(self, name, setting):
        c = self.config
        gen = generator(self.seed, self.name, "eval", name)
        n, size, length = c.eval_examples, c.eval_batch_size, setting["length"]
        chars = _strings(n, length, c.alphabet, None, gen, torch.device("cpu"), want_heldout=True)
        inputs, targets = copy_rows(chars, c.alphabet)
        info = {"length": torch.full((n,), length)}
        return [Batch(inputs[i:i + size], targets[i:i + size], {k: v[i:i + size] for k, v in info.items()})
                for i in range(0, n, size)]

    def make(self, n, gen, device, *, length: int) -> Sample:
        chars = torch.randint(0, self.config.alphabet, (n, length), generator=gen, device=device)
        inputs, targets = copy_rows(chars, self.config.alphabet)
        return inputs, targets, {"length": torch.full((n,), length, device=device)}
