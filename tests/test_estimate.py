"""hybrid.estimate: parameters counted exactly on the meta device, memory by its stated terms, check_fits."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hybrid.cli import main
from hybrid.config import load_config
from hybrid.errors import ConfigError
from hybrid.estimate import check_fits, estimate, format_bytes, free_memory, meta_model
from hybrid.model import HybridLM

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "configs" / "experiments" / "quick.yaml"


@pytest.mark.parametrize("config", ["configs/layouts/jamba.yaml", "configs/layouts/zamba.yaml",
                                    "configs/layouts/falcon-h1.yaml", "experiments/quickstart/config.yaml"])
def test_parameters_are_exact_and_bytes_follow_the_stated_terms(config):
    root = load_config(ROOT / config, ["model.d_model=32"])
    est = estimate(root, torch.device("cpu"))
    model = HybridLM(root.model, root.layout)
    assert est.parameters == model.num_parameters()  # shared and tied weights counted once
    assert est.weight_bytes == 4 * est.parameters
    assert est.grad_bytes == 4 * est.trainable and est.optimizer_bytes == 8 * est.trainable
    assert est.total_bytes == (est.weight_bytes + est.optimizer_bytes + max(est.grad_bytes + est.activation_bytes,
                                                                            est.eval_bytes) + est.data_bytes)


def test_activations_scale_with_the_micro_batch_and_the_length():
    base = estimate(load_config(QUICK, ["train.batch_size=32"]), torch.device("cpu"))
    double = estimate(load_config(QUICK, ["train.batch_size=64"]), torch.device("cpu"))
    micro = estimate(load_config(QUICK, ["train.batch_size=64", "train.accumulation=2"]), torch.device("cpu"))
    assert double.activation_bytes == 2 * base.activation_bytes
    assert micro.activation_bytes == base.activation_bytes and micro.batch_size == 32
    longer = estimate(load_config(QUICK, ["task.train=[{length: 64, num_kv_pairs: 4}]"]), torch.device("cpu"))
    assert longer.sequence_length == 64 and longer.activation_bytes == 2 * double.activation_bytes  # fused attention
    gpu = estimate(load_config(QUICK, ["train.dtype=bfloat16"]), torch.device("cuda"))
    assert gpu.activation_dtype == "bfloat16" and gpu.activation_bytes < double.activation_bytes


def test_no_task_counts_weights_only():
    est = estimate(load_config(ROOT / "configs/layouts/mamba.yaml"))
    assert est.sequence_length is None and est.activation_bytes == 0 and est.data_bytes == 0
    assert est.total_bytes == est.weight_bytes + est.grad_bytes + est.optimizer_bytes


def test_check_fits_names_the_key_the_numbers_and_the_remedy():
    root = load_config(QUICK, ["train.batch_size=4096"])
    assert check_fits(root, torch.device("cpu"), free_bytes=1 << 40) is not None
    with pytest.raises(ConfigError) as info:
        check_fits(root, torch.device("cpu"), free_bytes=64 << 20)
    err = info.value
    assert err.key == "train.batch_size" and err.file == "<command line>"  # where batch_size was set
    assert "on cpu but 64 MiB is free" in err.message and "micro-batch 4096 x length 32" in err.message
    assert "lower train.batch_size or raise train.accumulation" in err.message
    big = load_config(QUICK, ["model.d_model=4096", "train.batch_size=1"])
    with pytest.raises(ConfigError) as info:
        check_fits(big, torch.device("cpu"), free_bytes=1 << 30)
    assert info.value.key == "model" and "model.d_model" in info.value.message


def test_free_memory_of_the_cpu_is_read_and_capped(monkeypatch):
    free = free_memory(torch.device("cpu"))
    assert free is None or free > 0
    monkeypatch.setattr("hybrid.estimate._meminfo", lambda field, path="/proc/meminfo": None)
    assert free_memory(torch.device("cpu")) is None or free_memory(torch.device("cpu")) > 0  # RLIMIT_AS only
    assert free_memory(torch.device("meta")) is None


def test_a_layer_that_cannot_be_built_is_a_located_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  d_model: 64\n  layers: {A: {type: attention, head_dim: -4}, F: mlp}\n  layout: F A\n")
    root = load_config(bad)
    with pytest.raises(ConfigError) as info:
        meta_model(root)
    assert info.value.key == "model.layers.A" and info.value.file == str(bad)
    assert "cannot build layer 'attention' (alias 'A', sublayer 1) with d_model 64: ValueError: head_dim" \
        in info.value.message
    huge = load_config(QUICK, ["model.d_model=4611686018427387904"])
    with pytest.raises(ConfigError, match="no embedding of 64 x 4611686018427387904"):
        meta_model(huge)


def test_show_prints_the_estimate(capsys):
    assert main(["show", str(QUICK)]) == 0
    out = capsys.readouterr().out
    assert "memory of a training step" in out and "weights 337 KiB" in out and "batch 64 x length 32" in out


@pytest.mark.parametrize("n,text", [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (3 << 30, "3 GiB"),
                                    (5 << 50, "5 PiB"), (3000 << 50, "3,000 PiB")])
def test_format_bytes(n, text):
    assert format_bytes(n) == text
