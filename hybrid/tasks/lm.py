"""Language modelling as a task: packed windows of a corpus, next-token targets everywhere.

`train_batch(step, b)` reads windows step*b .. step*b + b - 1 of the training stream (see
`hybrid.data.stream`): a pure function of (seed, step, batch size), resumable from the step alone.
`eval_sets()` has one set, "val": the first windows of the validation documents in their fixed
order. Metrics: loss (nats per token), ppl = exp(loss), bpb = total nll / (ln 2 * bytes) with
the bytes each target token stands for (separators count 0), and next-token accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from hybrid.data.corpus import SHARD_SUFFIXES, default_corpus_files, list_files, shard_corpus, text_corpus
from hybrid.data.stream import PackedStream
from hybrid.data.tokenizer import load_tokenizer
from hybrid.errors import DataError
from hybrid.tasks.base import Batch, EvalSet, Task, TaskShapes, register_task
from hybrid.tasks.metrics import example_stats, lm_metrics


@dataclass
class LMConfig:
    paths: list[str] = field(default_factory=list, metadata={
        "help": "text files or folders, or token shards (.bin/.npy); empty: the Python standard library's source"})
    suffixes: list[str] = field(default_factory=lambda: [".txt", ".md", ".rst", ".py"],
                                metadata={"help": "file suffixes read from text folders"})
    tokenizer: str | None = field(default=None, metadata={
        "help": "a HF tokenizers JSON file for text (needs the optional `tokenizers` package); default: bytes"})
    eos_token: str | None = field(default=None, metadata={"help": "the document separator token of `tokenizer`"})
    vocab_size: int | None = field(default=None, metadata={
        "help": "vocabulary of token shards (required for shards without `tokenizer`)"})
    eos_id: int | None = field(default=None, metadata={"help": "document separator id inside token shards"})
    token_dtype: Literal["uint16", "uint32"] = field(default="uint16", metadata={"help": "dtype of raw .bin shards"})
    seq_len: int = field(default=512, metadata={"help": "tokens per training window"})
    val_fraction: float = field(default=0.02, metadata={"help": "share of documents held out for validation"})
    eval_batches: int = field(default=16, metadata={"help": "validation batches (fewer if the split is smaller)"})
    eval_batch_size: int = field(default=16, metadata={"help": "windows per validation batch"})

    def __post_init__(self):
        if self.seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {self.seq_len}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.eval_batches < 1 or self.eval_batch_size < 1:
            raise ValueError("eval_batches and eval_batch_size must be >= 1")
        shards = [p for p in self.paths if Path(p).suffix in SHARD_SUFFIXES]
        if shards and len(shards) != len(self.paths):
            raise ValueError(f"paths mixes token shards ({shards[0]!r}) with text; give one kind")
        if shards and self.vocab_size is None and self.tokenizer is None:
            raise ValueError("token shards need vocab_size (or the tokenizer that made them)")

    def shapes(self) -> TaskShapes:
        n = self.eval_batches * self.eval_batch_size
        return TaskShapes(self.seq_len, self.eval_batch_size, self.seq_len, n * (self.seq_len + 1))


@register_task("lm", config=LMConfig)
class LanguageModelling(Task):
    """Language modelling on text or token shards (default: the Python standard library's source)."""

    def __init__(self, config: LMConfig, seed: int = 0):
        super().__init__(config, seed)
        c = config
        self.tokenizer = load_tokenizer(c.tokenizer, c.eos_token)
        shards = bool(c.paths) and Path(c.paths[0]).suffix in SHARD_SUFFIXES
        self._vocab = c.vocab_size or self.tokenizer.vocab_size
        if shards:
            files = [(Path(p).name, Path(p)) for p in c.paths]
            self.train, self.val = shard_corpus(files, c.token_dtype, c.eos_id, c.val_fraction, self._vocab)
        else:
            files = list_files(c.paths, tuple(c.suffixes)) if c.paths else default_corpus_files()
            self.train, self.val = text_corpus(files, self.tokenizer, c.val_fraction)
        self.token_bytes = self.tokenizer.token_bytes if (not shards or c.tokenizer) else None
        if self.token_bytes is not None and len(self.token_bytes) < self._vocab:
            self.token_bytes = torch.cat([self.token_bytes, torch.zeros(self._vocab - len(self.token_bytes), dtype=torch.int64)])
        where = ", ".join(c.paths) if c.paths else "the default corpus"
        self.train_stream = _stream(self.train, c, seed, True, f"training split of {where}")
        self.val_stream = _stream(self.val, c, seed, False,
                                  f"validation split of {where} ({self.val.num_documents} documents)")
        self._eval: EvalSet | None = None

    @property
    def vocab_size(self) -> int:
        return self._vocab

    def position(self, step: int, batch_size: int) -> dict[str, int]:
        """Where the training stream stands before `step` (epoch, window in epoch, token offset, windows consumed)."""
        return self.train_stream.position(step * batch_size)

    def train_batch(self, step: int, batch_size: int, device: torch.device | str = "cpu") -> Batch:
        windows = torch.from_numpy(self.train_stream.windows(step * batch_size, batch_size))  # (batch, seq_len + 1)
        return _batch(windows).to(device)

    def eval_sets(self, device: torch.device | str = "cpu") -> dict[str, EvalSet]:
        if self._eval is None:
            self._eval = EvalSet(self._produce)
        return {"val": self._eval.on(device)}

    def _produce(self) -> list[Batch]:
        c = self.config
        n = min(c.eval_batches * c.eval_batch_size, self.val_stream.windows_per_epoch)
        windows = torch.from_numpy(self.val_stream.windows(0, n))
        return [_batch(windows[i:i + c.eval_batch_size]) for i in range(0, n, c.eval_batch_size)]

    def stats(self, logits: Tensor, batch: Batch) -> dict[str, Tensor]:
        return example_stats(logits, batch.targets, self._token_bytes_on(logits.device))

    def _token_bytes_on(self, device: torch.device) -> Tensor | None:
        """`token_bytes` on `device`, copied once: the copy must not happen inside a CUDA graph capture."""
        if self.token_bytes is None or self.token_bytes.device == device:
            return self.token_bytes
        cache = self.__dict__.setdefault("_token_bytes_cache", {})
        if device not in cache:
            cache[device] = self.token_bytes.to(device)
        return cache[device]

    def reduce(self, totals: dict[str, float]) -> dict[str, float]:
        return lm_metrics(totals)


def _stream(corpus, c: LMConfig, seed: int, shuffle: bool, name: str) -> PackedStream:
    try:
        return PackedStream(corpus, c.seq_len, seed, shuffle=shuffle, name=name)
    except ValueError as err:  # too few tokens for one window
        empty = corpus.num_tokens <= corpus.num_documents  # nothing but separators
        hint = (" (empty files, or every document fell in the other split: add documents or change "
                "task.val_fraction)") if empty else ""
        raise DataError(f"{err}{hint}", key="task.paths" if empty else "task.seq_len") from None


def _batch(windows: Tensor) -> Batch:
    return Batch(windows[:, :-1].contiguous(), windows[:, 1:].contiguous(), {})
