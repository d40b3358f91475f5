"""Corpora that cannot be used are DataErrors naming the file (or folder) and what to change."""
from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from hybrid.errors import DataError
from hybrid.tasks import build_task


def _lm(**task):
    return build_task({"type": "lm", "seq_len": 8, "eval_batches": 1, "eval_batch_size": 2, "val_fraction": 0.5,
                       **task})


@pytest.fixture
def shards(tmp_path):
    def make(a: bytes | np.ndarray, suffix=".bin", **task):
        path = tmp_path / f"a{suffix}"
        if isinstance(a, np.ndarray) and suffix == ".npy":
            np.save(path, a)
        else:
            path.write_bytes(a if isinstance(a, bytes) else a.tobytes())
        good = tmp_path / f"b{suffix}"
        ids = np.arange(400) % 300
        np.save(good, ids.astype(np.int32)) if suffix == ".npy" else good.write_bytes(ids.astype(np.uint16).tobytes())
        return path, {"paths": [str(path), str(good)], "vocab_size": 300, **task}
    return make


@pytest.mark.parametrize("data,suffix,task,fragment", [
    pytest.param(bytes(801), ".bin", {}, "801 bytes is not a multiple of 2 (token_dtype uint16)", id="odd-size"),
    pytest.param(bytes(802), ".bin", {"token_dtype": "uint32"}, "802 bytes is not a multiple of 4", id="uint32-size"),
    pytest.param(np.full(400, 60000, np.uint16), ".bin", {}, "holds token id 60000, outside the vocabulary [0, 300)",
                 id="ids-beyond-vocab"),
    pytest.param(b"", ".bin", {}, "is empty", id="empty"),
    pytest.param(np.zeros(400, np.float32), ".npy", {}, "holds a float32 array", id="float-npy"),
    pytest.param(np.zeros((20, 20), np.int32), ".npy", {}, "of shape (20, 20)", id="2d-npy"),
    pytest.param(np.full(400, -5, np.int64), ".npy", {}, "holds token id -5", id="negative-ids"),
    pytest.param(b"\x93NUMPY garbage", ".npy", {}, "cannot read this token shard", id="garbage-npy"),
    pytest.param(struct.pack("<256i", 20240520, 1, 100000, *[0] * 253) + bytes(800), ".bin", {},
                 "its llm.c header promises 100000 tokens", id="llmc-truncated"),
    pytest.param(struct.pack("<256i", 20240520, 7, 400, *[0] * 253) + bytes(800), ".bin", {},
                 "llm.c header of unknown version 7", id="llmc-version"),
])
def test_bad_shards(shards, data, suffix, task, fragment):
    path, spec = shards(data, suffix, **task)
    with pytest.raises(DataError) as info:
        _lm(**spec)
    assert info.value.file == str(path) and info.value.key == "task.paths" and fragment in info.value.message


def test_truncated_npy(shards):
    path, spec = shards(np.arange(400, dtype=np.int32) % 300, ".npy")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"a.npy: task.paths: cannot read this token shard .*truncated"):
        _lm(**spec)


def test_text_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"task.paths: no files with suffixes .* under .*empty; add text files"):
        _lm(paths=[str(tmp_path / "empty")])
    blank = tmp_path / "blank"
    blank.mkdir()
    (blank / "a.txt").write_text("")
    with pytest.raises(DataError, match=r"task.paths: the training split of .*blank has 1 tokens.*empty files"):
        _lm(paths=[str(blank)])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.txt").write_text("hello world " * 40)
    os.symlink(tmp_path / "nowhere.txt", broken / "b.txt")
    with pytest.raises(DataError) as info:
        _lm(paths=[str(broken)])
    assert info.value.file == str(broken / "b.txt") and "cannot read it" in info.value.message
