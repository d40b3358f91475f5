"""Corpora for language modelling: documents from text files or token shards, split by document.

A `Corpus` is a list of token arrays (`sources`, in memory or memory-mapped) and a table of
documents (`segments`: source index, start, end), each document ending with its separator when the
tokenizer has one. The validation split takes whole documents, chosen by a hash of the document's
name (its path relative to the corpus root, or shard and index), so the split is the same for
every seed, every machine and every run, and no document is cut between the splits.

Default corpus: the Python standard library's own source, the `*.py` files under
`sysconfig.get_paths()["stdlib"]` (site-packages and __pycache__ excluded). It exists wherever
Python does and needs no download. On CPython 3.11 it is 1790 files, 31.5 MB (about 19 MB of it
the `test` packages), i.e. about 31.5M byte-level tokens; other Python versions differ by a few
percent, so compare numbers across runs made with the same Python.

Token shards: `.npy` arrays (any integer dtype, memory-mapped), raw `.bin` files of `token_dtype`
(nanoGPT), or llm.c `.bin` files (a 256 x int32 header starting with magic 20240520, detected).
With `eos_id` the shards are cut into documents at that token; without it each shard is a document.

A corpus that cannot be used fails with a `DataError` naming the file and what to change: a shard
whose size is not a multiple of its token size, an .npy of floats or of more than one axis, an
llm.c header that promises more tokens than the file holds, a token id outside the vocabulary
(a wrong `token_dtype` or `vocab_size`; every shard is scanned once), an unreadable text file, or
a folder without text.
"""
from __future__ import annotations

import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hybrid.errors import DataError

SHARD_SUFFIXES = (".bin", ".npy")
_LLMC_MAGIC = 20240520
_SCAN_CHUNK = 1 << 24


def derive_seed(*parts: object) -> int:
    # hybrid.tasks.sampling's, imported on use: importing hybrid.tasks imports the lm task, which imports this
    from hybrid.tasks.sampling import derive_seed as derive  # noqa: PLC0415
    return derive(*parts)


@dataclass
class Corpus:
    sources: list[np.ndarray]  # token arrays
    segments: np.ndarray  # (documents, 3) int64: source index, start, end

    @property
    def num_tokens(self) -> int:
        return int((self.segments[:, 2] - self.segments[:, 1]).sum()) if len(self.segments) else 0

    @property
    def num_documents(self) -> int:
        return len(self.segments)


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def default_corpus_files() -> list[tuple[str, Path]]:
    """(name, path) of every `.py` file of the standard library, sorted by name."""
    return _walk(stdlib_root(), (".py",), skip=("site-packages", "dist-packages", "__pycache__"))


def _walk(root: Path, suffixes: tuple[str, ...], skip: tuple[str, ...] = ("__pycache__",)) -> list[tuple[str, Path]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip and not d.startswith(".")]
        for f in filenames:
            if f.endswith(suffixes):
                path = Path(dirpath) / f
                out.append((path.relative_to(root).as_posix(), path))
    return sorted(out)


def list_files(paths: list[str], suffixes: tuple[str, ...]) -> list[tuple[str, Path]]:
    """(name, path) of each file named, and of each file under each folder named whose suffix is in `suffixes`."""
    out = []
    for i, p in enumerate(paths):
        path = Path(p).expanduser()
        if path.is_dir():
            out += [(f"{path.name}/{name}", f) for name, f in _walk(path, suffixes)]
        elif path.is_file():
            out.append((path.name, path))
        else:
            raise DataError("is neither a file nor a folder", key=f"task.paths[{i}]", file=str(path))
    if not out:
        raise DataError(f"no files with suffixes {list(suffixes)} under {', '.join(map(str, paths))}; add text "
                        "files or set task.suffixes", key="task.paths")
    return out


def in_validation(name: str, fraction: float) -> bool:
    """Whether document `name` belongs to the validation split (a seed-independent hash of the name)."""
    return derive_seed("lm-split", name) % (1 << 30) < fraction * (1 << 30)


def text_corpus(files: list[tuple[str, Path]], tokenizer, val_fraction: float) -> tuple[Corpus, Corpus]:
    """Tokenize each file as one document (followed by the tokenizer's separator) -> train, validation."""
    parts: dict[bool, list[np.ndarray]] = {False: [], True: []}
    for name, path in files:
        try:
            data = path.read_bytes()
        except OSError as err:
            raise DataError(f"cannot read it ({err.strerror or err}); remove it from the folder or fix it",
                            key="task.paths", file=str(path)) from None
        ids = tokenizer.encode(data)
        if tokenizer.eos_id is not None:
            ids = np.append(ids, np.asarray([tokenizer.eos_id], dtype=ids.dtype))
        if len(ids):
            parts[in_validation(name, val_fraction)].append(ids)
    return _concat(parts[False]), _concat(parts[True])


def _concat(docs: list[np.ndarray]) -> Corpus:
    if not docs:
        return Corpus([np.zeros(0, dtype=np.uint16)], np.zeros((0, 3), dtype=np.int64))
    lengths = np.asarray([len(d) for d in docs], dtype=np.int64)
    ends = np.cumsum(lengths)
    segments = np.stack([np.zeros_like(ends), ends - lengths, ends], axis=1)
    return Corpus([np.concatenate(docs)], segments)


def load_shard(path: Path, token_dtype: str = "uint16") -> np.ndarray:
    """A token shard, memory-mapped: `.npy`, llm.c `.bin` (header detected) or raw `.bin` of `token_dtype`."""
    try:
        return _load_shard(path, token_dtype)
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as err:  # numpy's reading of a damaged .npy header or body
        raise DataError(f"cannot read this token shard ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                        "it is truncated or not a shard", key="task.paths", file=str(path)) from None


def _load_shard(path: Path, token_dtype: str) -> np.ndarray:
    def bad(message: str) -> DataError:
        return DataError(message, key="task.paths", file=str(path))

    if not path.is_file():
        raise bad("no such token shard")
    size = path.stat().st_size
    if path.suffix == ".npy":
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise bad(f"holds a {arr.dtype} array of shape {arr.shape}; a shard is one axis of integer token ids")
        return arr
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(256 * 4), dtype=np.int32) if size >= 1024 else None
    if header is not None and header[0] == _LLMC_MAGIC:
        if header[1] not in (1, 2):
            raise bad(f"llm.c header of unknown version {int(header[1])} (1: uint16 tokens, 2: uint32)")
        dtype = np.dtype(np.uint16 if header[1] == 1 else np.uint32)
        count = int(header[2])
        if count < 0 or 1024 + count * dtype.itemsize > size:
            raise bad(f"its llm.c header promises {count} tokens ({1024 + count * dtype.itemsize} bytes) but the file "
                      f"has {size} bytes: it is truncated")
        return np.memmap(path, dtype=dtype, mode="r", offset=1024, shape=(count,))
    dtype = np.dtype(token_dtype)
    if size == 0:
        raise bad("is empty")
    if size % dtype.itemsize:
        raise bad(f"{size} bytes is not a multiple of {dtype.itemsize} (token_dtype {token_dtype}): a wrong "
                  "task.token_dtype, or a truncated file")
    return np.memmap(path, dtype=dtype, mode="r")


def _check_ids(arr: np.ndarray, vocab_size: int | None, path: Path, token_dtype: str) -> None:
    """Every token id in [0, vocab_size) (one pass over the shard, in chunks)."""
    if vocab_size is None:
        return
    for i in range(0, len(arr), _SCAN_CHUNK):
        chunk = np.asarray(arr[i:i + _SCAN_CHUNK])
        lo, hi = int(chunk.min()), int(chunk.max())
        if lo < 0 or hi >= vocab_size:
            raise DataError(f"holds token id {lo if lo < 0 else hi}, outside the vocabulary [0, {vocab_size}): a "
                            f"wrong dtype ({arr.dtype}; raw .bin shards are read as task.token_dtype, now "
                            f"{token_dtype}) or a wrong task.vocab_size", key="task.paths", file=str(path))


def shard_corpus(files: list[tuple[str, Path]], token_dtype: str, eos_id: int | None,
                 val_fraction: float, vocab_size: int | None = None) -> tuple[Corpus, Corpus]:
    """Memory-map each shard; documents end at `eos_id` (or are whole shards) -> train, validation.
    With `vocab_size`, every token id is checked to lie below it."""
    sources, rows, names = [], [], []
    for s, (name, path) in enumerate(files):
        arr = load_shard(path, token_dtype)
        _check_ids(arr, vocab_size, path, token_dtype)
        sources.append(arr)
        if eos_id is None:
            rows.append(np.asarray([[s, 0, len(arr)]], dtype=np.int64))
            names.append(np.asarray([derive_seed("lm-split", name)], dtype=np.uint64))
            continue
        ends = [np.flatnonzero(np.asarray(arr[i:i + _SCAN_CHUNK]) == eos_id) + i + 1
                for i in range(0, len(arr), _SCAN_CHUNK)]
        ends = np.concatenate(ends + [np.asarray([len(arr)])]).astype(np.int64)
        ends = np.unique(ends)
        starts = np.concatenate([[0], ends[:-1]])
        keep = ends > starts
        rows.append(np.stack([np.full(keep.sum(), s), starts[keep], ends[keep]], axis=1))
        names.append(_mix(np.uint64(derive_seed("lm-split", name)), np.arange(keep.sum(), dtype=np.uint64)))
    segments = np.concatenate(rows)
    u = (np.concatenate(names) >> np.uint64(34)).astype(np.int64)  # 30 bits
    val = u < int(val_fraction * (1 << 30))
    return Corpus(sources, segments[~val]), Corpus(sources, segments[val])


def _mix(salt: np.uint64, index: np.ndarray) -> np.ndarray:
    """splitmix64 of salt + index (uint64 arithmetic wraps): a per-document hash for the split."""
    with np.errstate(over="ignore"):
        z = index + salt + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))
