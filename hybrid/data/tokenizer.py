"""Tokenizers for language modelling: bytes by default, a HF `tokenizers` JSON file on request.

Both expose `vocab_size`, `eos_id` (the document separator appended after every document, or None),
`encode(text) -> np.ndarray` and `token_bytes`: (vocab,) UTF-8 bytes each token stands for, from
which bits per byte are computed (separators and special tokens count 0 bytes).
"""
from __future__ import annotations

import numpy as np
import torch

from hybrid.errors import ConfigError, DataError


class ByteTokenizer:
    """UTF-8 bytes 0..255, and 256 as the end-of-document separator: vocab 257."""

    vocab_size = 257
    eos_id = 256

    def encode(self, text: str | bytes) -> np.ndarray:
        data = text.encode("utf-8") if isinstance(text, str) else text
        return np.frombuffer(data, dtype=np.uint8).astype(np.uint16)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")

    @property
    def token_bytes(self) -> torch.Tensor:
        out = torch.ones(self.vocab_size, dtype=torch.int64)
        out[self.eos_id] = 0
        return out


class HFTokenizer:
    """A `tokenizers` JSON file (e.g. a GPT-2 or Llama tokenizer.json); `tokenizers` is imported only here."""

    def __init__(self, path: str, eos_token: str | None = None):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ConfigError(f"reading {path!r} needs the `tokenizers` package (pip install tokenizers); it is "
                              "optional, byte-level needs nothing", key="task.tokenizer") from None
        self.path = path
        try:
            self._tok = Tokenizer.from_file(path)
        except Exception as err:  # tokenizers raises its own exception types for a missing or damaged file
            raise DataError(f"cannot read this tokenizer ({str(err).splitlines()[0][:200]}); give a tokenizers "
                            "JSON file (tokenizer.json)", key="task.tokenizer", file=path) from None
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.eos_id = None
        if eos_token is not None:
            self.eos_id = self._tok.token_to_id(eos_token)
            if self.eos_id is None:
                raise ConfigError(f"{eos_token!r} is not a token of {path}", key="task.eos_token")
        self._token_bytes: torch.Tensor | None = None

    def encode(self, text: str | bytes) -> np.ndarray:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        dtype = np.uint16 if self.vocab_size <= 2**16 else np.uint32
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=dtype)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids])

    @property
    def token_bytes(self) -> torch.Tensor:
        # decode of one id gives its text (byte-level BPE maps back to the original bytes); a token
        # holding part of a multi-byte character decodes to U+FFFD, counted as its 3 bytes
        if self._token_bytes is None:
            self._token_bytes = torch.tensor([len(self._tok.decode([i]).encode("utf-8")) for i in range(self.vocab_size)])
        return self._token_bytes


def load_tokenizer(path: str | None, eos_token: str | None = None) -> ByteTokenizer | HFTokenizer:
    return ByteTokenizer() if path is None else HFTokenizer(path, eos_token)
