import math

import pytest
import torch

from hybrid.errors import ConfigError
from hybrid.tasks import IGNORE_INDEX, build_task
from hybrid.tasks.mqar import mqar, power_law

SMALL = {"type": "mqar", "vocab_size": 64, "train": [{"length": 32, "num_kv_pairs": 4}, {"length": 64, "num_kv_pairs": 8}],
         "test": [{"length": 64, "num_kv_pairs": 8}, {"length": 128, "num_kv_pairs": 16}],
         "eval_examples": 40, "eval_batch_size": 16}


@pytest.mark.parametrize("random_non_queries", [True, False], ids=["fillers", "zeros"])
@pytest.mark.parametrize("length,pairs,vocab", [(16, 4, 10), (64, 8, 64), (250, 16, 100)], ids=["L16-N4-V10", "L64-N8-V64", "L250-N16-V100"])
def test_invariants(length, pairs, vocab, random_non_queries):
    gen = torch.Generator().manual_seed(0)
    x, y = mqar(200, length, pairs, vocab, 0.01, random_non_queries, gen, torch.device("cpu"))
    half, ctx = vocab // 2, 2 * pairs
    keys, values = x[:, 0:ctx:2], x[:, 1:ctx:2]
    assert ((keys >= 1) & (keys < half)).all() and ((values >= half) & (values < vocab)).all()
    assert all(len(set(r.tolist())) == pairs for r in keys) and all(len(set(r.tolist())) == pairs for r in values)
    assert (y[:, :ctx] == IGNORE_INDEX).all()
    for b in range(len(x)):
        pos = (y[b] != IGNORE_INDEX).nonzero().squeeze(1)
        assert len(pos) == pairs  # each key queried exactly once
        assert ((pos - ctx) % 2 == 0).all()  # queries on the even slots of the query region
        queried = x[b, pos]
        assert sorted(queried.tolist()) == sorted(keys[b].tolist())
        kv = dict(zip(keys[b].tolist(), values[b].tolist()))
        assert all(kv[k] == v for k, v in zip(queried.tolist(), y[b, pos].tolist()))  # labelled with its value
    unscored = (y == IGNORE_INDEX)
    unscored[:, :ctx] = False
    if random_non_queries:
        assert len(torch.unique(x[unscored])) > 1 and x[unscored].max() >= half  # fillers span the vocabulary
    else:
        assert (x[unscored] == 0).all()


def test_query_gaps_follow_the_power_law():
    gen = torch.Generator().manual_seed(0)
    n, length, a = 20000, 16, 0.5
    _, y = mqar(n, length, 1, 16, a, False, gen, torch.device("cpu"))
    gap = ((y != IGNORE_INDEX).nonzero()[:, 1] - 2) // 2
    empirical = torch.bincount(gap, minlength=7).double() / n
    assert torch.allclose(empirical, torch.tensor(power_law(7, a), dtype=torch.float64), atol=0.015)


def test_deterministic_and_mixture():
    a, b = build_task(SMALL, seed=3), build_task(SMALL, seed=3)
    for step in range(6):
        x, y = a.train_batch(step, 8), b.train_batch(step, 8)
        assert torch.equal(x.inputs, y.inputs) and torch.equal(x.targets, y.targets)
    lengths = {a.train_batch(s, 2).inputs.shape[1] for s in range(20)}
    assert lengths == {32, 64}
    assert not torch.equal(a.train_batch(0, 8).inputs, build_task(SMALL, seed=4).train_batch(0, 8).inputs)
    ea, eb = a.eval_sets(), b.eval_sets()
    assert list(ea) == ["L64-kv8", "L128-kv16"]
    for name in ea:
        assert all(torch.equal(p.inputs, q.inputs) for p, q in zip(ea[name], eb[name]))
        assert sum(len(p.inputs) for p in ea[name]) == 40


def test_train_and_heldout_disjoint():
    # a small space (16 keys, 4 pairs, L 16, no fillers) where an unpartitioned stream would repeat test rows
    spec = {"type": "mqar", "vocab_size": 34, "train": [{"length": 16, "num_kv_pairs": 2}],
            "test": [{"length": 16, "num_kv_pairs": 2}], "random_non_queries": False, "eval_examples": 200, "eval_batch_size": 100}
    task = build_task(spec)
    test = {tuple(r.tolist()) for batch in task.eval_sets()["L16-kv2"] for r in batch.inputs}
    train = {tuple(r.tolist()) for s in range(30) for r in task.train_batch(s, 256).inputs}
    assert test and not (test & train)


@pytest.mark.parametrize("change,message", [
    ({"train": [{"length": 16, "num_kv_pairs": 5}]}, "train[0]: 5 kv pairs do not fit in length 16"),
    ({"test": [{"length": 33, "num_kv_pairs": 2}]}, "test[0]: length must be even"),
    ({"vocab_size": 8, "train": [{"length": 64, "num_kv_pairs": 4}], "test": []}, "vocab_size 8 is too small for 4 distinct keys"),
    ({"power_a": 0.0}, "power_a must be > 0"),
    ({"num_pairs": 3}, "unknown task 'mqar' argument 'num_pairs'"),
], ids=["too-many-pairs", "odd-length", "small-vocab", "power", "unknown-key"])
def test_bad_parameters_say_which_constraint(change, message):
    with pytest.raises(ConfigError) as err:
        build_task({**SMALL, **change})
    assert message in str(err.value) and "task" in str(err.value)


def test_accuracy_of_an_oracle():
    from hybrid.tasks import evaluate
    task = build_task(SMALL)

    def oracle(x):  # looks the key up in the context, as a perfect model would
        logits = torch.zeros(*x.shape, 64)
        for b in range(len(x)):
            pairs = x.shape[1] // 8
            kv = dict(zip(x[b, 0:2 * pairs:2].tolist(), x[b, 1:2 * pairs:2].tolist()))
            for t in range(2 * pairs, x.shape[1]):
                if x[b, t].item() in kv:
                    logits[b, t, kv[x[b, t].item()]] = 1.0
        return logits

    # fillers may repeat a key (unscored), so the oracle is exact on every scored position
    res = evaluate(oracle, task)
    assert res["all"]["accuracy"] == 1.0 and res["all"]["exact_match"] == 1.0
    assert res["num_kv_pairs=16"]["examples"] == 40 and res["length=64"]["examples"] == 40
    assert math.isclose(res["L64-kv8"]["accuracy"], 1.0)


def test_held_out_sets_are_drawn_once_per_task(monkeypatch):
    from hybrid.tasks.base import build_task

    task = build_task({"type": "mqar", "vocab_size": 64, "train": [{"length": 16, "num_kv_pairs": 2}],
                       "test": [{"length": 16, "num_kv_pairs": 2}], "eval_examples": 8, "eval_batch_size": 4})
    calls = []
    real = task._produce
    monkeypatch.setattr(task, "_produce", lambda *a: calls.append(a) or real(*a))
    first = [b.inputs for b in task.eval_sets("cpu")["L16-kv2"]]
    second = [b.inputs for b in task.eval_sets("cpu")["L16-kv2"]]  # each evaluation asks again
    assert len(calls) == 1 and all(torch.equal(a, b) for a, b in zip(first, second))
