import numpy as np
import pytest
import torch

from hybrid.data.corpus import Corpus, default_corpus_files, in_validation, load_shard
from hybrid.data.stream import PackedStream
from hybrid.data.tokenizer import ByteTokenizer
from hybrid.errors import ConfigError, DataError
from hybrid.tasks import build_task, evaluate


@pytest.fixture
def text_dir(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(60):
        words = " ".join(f"w{int(w)}" for w in rng.integers(0, 50, size=rng.integers(5, 80)))
        (tmp_path / f"doc{i:02d}.txt").write_text(f"document {i}: {words}\n")
    (tmp_path / "skip.bin.bak").write_bytes(b"\x00\x01")
    return tmp_path


def _spec(path, **kw):
    return {"type": "lm", "paths": [str(path)], "seq_len": 32, "val_fraction": 0.2, "eval_batches": 2,
            "eval_batch_size": 4, **kw}


def test_text_round_trip_and_split_by_document(text_dir):
    task = build_task(_spec(text_dir))
    assert task.vocab_size == 257
    train_text = bytes(task.train.sources[0][task.train.sources[0] < 256].astype(np.uint8)).decode()
    val_text = bytes(task.val.sources[0][task.val.sources[0] < 256].astype(np.uint8)).decode()
    for i in range(60):
        doc = (text_dir / f"doc{i:02d}.txt").read_text()
        in_val = in_validation(f"{text_dir.name}/doc{i:02d}.txt", 0.2)
        assert (doc in val_text) == in_val and (doc in train_text) != in_val  # whole documents, one side each
    assert task.train.num_documents + task.val.num_documents == 60 and task.val.num_documents > 0
    b = task.train_batch(0, 3)
    assert b.inputs.shape == (3, 32) and torch.equal(b.inputs[:, 1:], b.targets[:, :-1])


def test_stream_covers_each_epoch_and_resumes(text_dir):
    task = build_task(_spec(text_dir), seed=5)
    stream = task.train_stream
    wpe = stream.windows_per_epoch
    epoch0 = np.concatenate([stream.window(w)[:-1] for w in range(wpe)])
    order = np.random.default_rng([5, 0]).permutation(task.train.num_documents)
    segs = task.train.segments[order]
    full = np.concatenate([task.train.sources[0][s:e] for _, s, e in segs])
    assert np.array_equal(epoch0, full[:len(epoch0)])  # packed, in the epoch's document order
    # resuming: batch 7 is the same whatever came before, and positions are reported
    fresh = build_task(_spec(text_dir), seed=5)
    assert torch.equal(fresh.train_batch(7, 4).inputs, task.train_batch(7, 4).inputs)
    assert fresh.position(7, 4) == {"epoch": 28 // wpe, "window": 28 % wpe, "token": (28 % wpe) * 32, "windows_consumed": 28}
    late = task.train_batch(wpe, 1).inputs  # first window of epoch 1 uses another order
    assert late.shape == (1, 32)


def test_eval_metrics_bpb_ppl(text_dir):
    task = build_task(_spec(text_dir))
    res = evaluate(lambda x: torch.zeros(*x.shape, 257), task)
    m = res["val"]
    assert m["tokens"] > 0 and abs(m["loss"] - np.log(257)) < 1e-4 and abs(m["ppl"] - 257) < 1e-2
    assert m["bpb"] >= np.log2(257) - 1e-6  # separators carry loss but no bytes


def test_token_shards(tmp_path):
    rng = np.random.default_rng(0)
    eos = 999
    docs = [np.append(rng.integers(0, 900, rng.integers(10, 60)), eos) for _ in range(80)]
    flat = np.concatenate(docs)
    np.save(tmp_path / "a.npy", flat[:2000].astype(np.uint16))
    flat[2000:].astype(np.uint32).tofile(tmp_path / "b.bin")
    header = np.zeros(256, dtype=np.int32)
    header[:3] = [20240520, 1, 100]
    with open(tmp_path / "c.bin", "wb") as f:
        f.write(header.tobytes())
        f.write(flat[:100].astype(np.uint16).tobytes())
    assert np.array_equal(load_shard(tmp_path / "c.bin"), flat[:100])
    spec = {"type": "lm", "paths": [str(tmp_path / "a.npy"), str(tmp_path / "b.bin")], "token_dtype": "uint32",
            "vocab_size": 1000, "eos_id": eos, "seq_len": 16, "val_fraction": 0.2}
    task = build_task(spec)
    assert task.train.num_tokens + task.val.num_tokens == len(flat) and task.vocab_size == 1000
    for corpus in (task.train, task.val):  # every document ends with its separator
        for src, s, e in corpus.segments:
            assert corpus.sources[src][e - 1] == eos or e == len(corpus.sources[src])
    assert task.train_batch(3, 2).inputs.max() <= eos
    res = evaluate(lambda x: torch.zeros(*x.shape, 1000), task)
    assert "bpb" not in res["val"] and abs(res["val"]["loss"] - np.log(1000)) < 1e-4


def test_default_corpus_is_the_standard_library():
    files = default_corpus_files()
    assert len(files) > 500 and any(name == "os.py" for name, _ in files)


def test_errors(text_dir, tmp_path):
    with pytest.raises(ConfigError, match="token shards need vocab_size"):
        build_task({"type": "lm", "paths": [str(tmp_path / "x.bin")]})
    with pytest.raises(DataError, match="task.seq_len: .*fewer than seq_len"):
        build_task(_spec(text_dir, seq_len=100000))
    with pytest.raises(DataError, match=r"missing: task.paths\[0\]: is neither a file nor a folder"):
        build_task(_spec(tmp_path / "missing"))


def test_tokenizers_imported_only_when_asked(tmp_path, monkeypatch):
    import subprocess
    import sys
    code = "import sys, hybrid.tasks; assert 'tokenizers' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # as if not installed
    with pytest.raises(ConfigError, match="task.tokenizer: .*needs the `tokenizers` package"):
        build_task({"type": "lm", "paths": [str(tmp_path)], "tokenizer": str(tmp_path / "tok.json")})
    assert ByteTokenizer().decode(ByteTokenizer().encode("héllo")) == "héllo"


def test_packed_stream_spans_documents():
    corpus = Corpus([np.arange(10), np.arange(100, 103)], np.asarray([[0, 0, 10], [1, 0, 3]]))
    s = PackedStream(corpus, seq_len=4, shuffle=False)
    assert s.windows_per_epoch == 3
    assert s.window(2).tolist() == [8, 9, 100, 101, 102]


def test_fused_lm_loss_trains_as_the_plain_one(text_dir, tmp_path, monkeypatch):
    # train.lm_loss fused: the LM head applied in row chunks by linear_cross_entropy, no full logits;
    # the same losses as F.cross_entropy over the logits, to fp32 rounding
    import yaml

    from hybrid.config import load_config
    from hybrid.training.logging import read_metrics
    from hybrid.training.trainer import train

    config = {"model": {"d_model": 32, "vocab_size": 257, "layers": {"M": {"type": "mamba", "d_state": 4},
                                                                        "F": {"type": "mlp"}}, "layout": "M F"},
              "task": _spec(text_dir),
              "train": {"steps": 6, "batch_size": 4, "lr": 3e-3, "eval_every": 3, "checkpoint_every": 0, "log_every": 1,
                        "device": "cpu", "progress": False, "tensorboard": False, "out_dir": str(tmp_path / "runs")}}
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(config))
    import hybrid.training.step as step_module

    calls, fused = [], step_module.linear_cross_entropy
    monkeypatch.setattr(step_module, "linear_cross_entropy", lambda *a, **k: calls.append(1) or fused(*a, **k))
    runs = {mode: train(load_config(path, [f"name={mode}", f"train.lm_loss={mode}"])) for mode in ("plain", "fused")}
    assert len(calls) == 6  # the fused run's six steps went through it
    losses = {mode: [m["train/loss"] for m in read_metrics(tmp_path / "runs" / mode / "metrics.jsonl")
                     if "train/loss" in m] for mode in runs}
    torch.testing.assert_close(torch.tensor(losses["fused"]), torch.tensor(losses["plain"]), rtol=1e-5, atol=1e-6)
    assert runs["fused"]["final"]["eval/val/loss"] == pytest.approx(runs["plain"]["final"]["eval/val/loss"], rel=1e-5)
