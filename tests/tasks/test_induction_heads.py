import pytest
import torch

from hybrid.errors import ConfigError
from hybrid.tasks import IGNORE_INDEX, build_task, evaluate

SPEC = {"type": "induction_heads", "vocab_size": 16, "length": 64, "eval_lengths": [32, 256, 1000],
        "eval_examples": 20, "eval_batch_size": 8}


@pytest.mark.parametrize("length", [4, 63, 256], ids=["L4", "L63", "L256"])
def test_label_is_the_successor_of_the_special_token(length):
    task = build_task({**SPEC, "length": length})
    x, y = task.train_batch(0, 64).inputs, task.train_batch(0, 64).targets
    special = 15
    assert x.shape == (64, length) and (x[:, -1] == special).all()
    assert (x < 15).logical_or(x == special).all() and not (x == 14).any()  # the no-op token is never drawn
    assert (y[:, :-1] == IGNORE_INDEX).all()
    for b in range(64):
        first = (x[b] == special).nonzero()[0, 0]
        assert first <= length - 4 and ((x[b, :-1] == special).sum() == 1)
        assert y[b, -1] == x[b, first + 1]


def test_train_scoring_all_adds_next_token_targets():
    task = build_task({**SPEC, "train_scoring": "all"})
    b = task.train_batch(2, 4)
    assert torch.equal(b.targets[:, :-2], b.inputs[:, 1:-1])
    assert all((batch.targets[:, :-1] == IGNORE_INDEX).all() for batch in task.eval_sets()["L32"])


def test_deterministic_disjoint_and_sliced():
    a, b = build_task(SPEC, seed=7), build_task(SPEC, seed=7)
    assert torch.equal(a.train_batch(9, 16).inputs, b.train_batch(9, 16).inputs)
    tiny = build_task({**SPEC, "vocab_size": 4, "length": 6, "eval_lengths": [6], "eval_examples": 8})
    test = {tuple(r.tolist()) for batch in tiny.eval_sets()["L6"] for r in batch.inputs}
    train = {tuple(r.tolist()) for s in range(10) for r in tiny.train_batch(s, 64).inputs}
    assert test and not (test & train)

    def copier(x):  # the ideal induction head
        logits = torch.zeros(*x.shape, 16)
        first = (x == 15).int().argmax(-1)
        logits[torch.arange(len(x)), -1, x[torch.arange(len(x)), first + 1]] = 1.0
        return logits

    res = evaluate(copier, a)
    assert res["all"]["accuracy"] == 1.0 and res["length=1000"]["exact_match"] == 1.0
    assert res["length=256"]["examples"] == 20 and res["all"]["tokens"] == 60


def test_bad_parameters():
    with pytest.raises(ConfigError, match=r"eval_lengths\[0\] must be >= 4"):
        build_task({**SPEC, "eval_lengths": [3]})
    with pytest.raises(ConfigError, match="vocab_size must be >= 4"):
        build_task({**SPEC, "vocab_size": 3})


def test_a_fixed_training_trigger_puts_every_training_special_token_there_and_leaves_held_out_sets_uniform():
    """train_trigger_position (as hrbigelow/mamba-recall trains: the special token at 5, the query last):
    every training example's first special token is at p and its answer is x[p+1]; the held-out sets and
    the default's training data are the uniform task's, token for token."""
    fixed = build_task({**SPEC, "train_trigger_position": 5}, seed=3)
    uniform = build_task(SPEC, seed=3)
    b = fixed.train_batch(4, 32)
    assert (b.inputs[:, 5] == 15).all() and ((b.inputs[:, :-1] == 15).sum(-1) == 1).all()
    assert torch.equal(b.targets[:, -1], b.inputs[:, 6])
    held_out = [(x.inputs == 15).int().argmax(-1) for x in fixed.eval_sets()["L256"]]
    assert len(set(torch.cat(held_out).tolist())) > 5  # uniform positions, as the uniform task's
    assert all(torch.equal(a.inputs, c.inputs) for a, c in zip(fixed.eval_sets()["L256"], uniform.eval_sets()["L256"]))
    assert torch.equal(build_task({**SPEC, "train_trigger_position": None}, seed=3).train_batch(4, 32).inputs,
                       uniform.train_batch(4, 32).inputs)


@pytest.mark.parametrize("position", [-1, 61], ids=["negative", "past-length-4"])
def test_a_training_trigger_outside_the_input_is_rejected(position):
    with pytest.raises(ConfigError, match=r"train_trigger_position must be in \[0, length - 4\] = \[0, 60\]"):
        build_task({**SPEC, "train_trigger_position": position})


def test_a_fixed_held_out_trigger_puts_every_held_out_special_token_there_and_leaves_training_alone():
    """eval_trigger_position: each held-out length asks for its longest recall alone (the special token at
    p, the answer x[p+1]); the training data is the default's, token for token."""
    fixed = build_task({**SPEC, "eval_trigger_position": 5}, seed=3)
    uniform = build_task(SPEC, seed=3)
    for name, batches in fixed.eval_sets().items():
        for b in batches:
            assert (b.inputs[:, 5] == 15).all() and ((b.inputs[:, :-1] == 15).sum(-1) == 1).all(), name
            assert torch.equal(b.targets[:, -1], b.inputs[:, 6]), name
    assert torch.equal(fixed.train_batch(4, 32).inputs, uniform.train_batch(4, 32).inputs)


@pytest.mark.parametrize("position", [-1, 61], ids=["negative", "past-shortest-length-4"])
def test_a_held_out_trigger_outside_the_shortest_held_out_input_is_rejected(position):
    with pytest.raises(ConfigError, match=r"eval_trigger_position must be in \[0, min\(eval_lengths\) - 4\] = \[0, 60\]"):
        build_task({**SPEC, "eval_lengths": [64, 256], "eval_trigger_position": position})
