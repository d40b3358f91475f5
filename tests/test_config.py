"""Configs: composition, interpolation, command-line overrides, strictness with file and key."""
import sys
from pathlib import Path

import pytest

from hybrid.config import dump_config, load_config
from hybrid.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PRESETS = sorted((ROOT / "configs" / "layouts").glob("*.yaml"))


def write(tmp_path, name, text):
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_loads(path):
    root = load_config(path)
    assert len(root.layout) > 0 and root.name == path.stem


def test_defaults_compose_in_order_and_file_wins(tmp_path):
    write(tmp_path, "base.yaml", "model: {d_model: 64, layers: {F: mlp}, layout: 'F x2'}\nseed: 1\n")
    write(tmp_path, "size.yaml", "model: {d_model: 32}\n")
    top = write(tmp_path, "top.yaml", "defaults: [base, size.yaml]\nseed: 3\n")
    root = load_config(top)
    assert root.model.d_model == 32 and root.seed == 3 and root.layout.aliases == ["F", "F"]


def test_defaults_found_under_configs_folder(tmp_path):
    top = write(tmp_path, "mine.yaml", "defaults: [layouts/mamba, models/tiny]\n")
    root = load_config(top)
    assert root.layout.types == ["mamba"] * 8 and root.model.d_model == 64


def test_interpolation_and_command_line_overrides(tmp_path):
    top = write(tmp_path, "c.yaml", "model: {d_model: 48, vocab_size: '${task.vocab_size}', layers: {F: mlp}, layout: F}\n"
                                    "task: {type: induction_heads, vocab_size: 40}\n")
    root = load_config(top, ["model.d_model=96", "seed=7"])
    assert root.model.vocab_size == 40 and root.model.d_model == 96 and root.seed == 7


def test_misspelt_key_names_file_path_and_nearest(tmp_path):
    top = write(tmp_path, "c.yaml", "model: {d_modle: 48}\n")
    with pytest.raises(ConfigError) as info:
        load_config(top)
    msg = str(info.value)
    assert str(top) in msg and "model.d_modle" in msg and "did you mean 'd_model'" in msg


def test_misspelt_override_names_the_command_line(tmp_path):
    top = write(tmp_path, "c.yaml", "model: {d_model: 48}\n")
    with pytest.raises(ConfigError) as info:
        load_config(top, ["model.d_modle=3"])
    assert "<command line>" in str(info.value) and "d_model" in str(info.value)


def test_layout_error_names_the_file_that_set_the_layout(tmp_path):
    write(tmp_path, "base.yaml", "model: {layers: {M: mamba}, layout: '(M F x4'}\n")
    top = write(tmp_path, "top.yaml", "defaults: [base]\nmodel: {d_model: 32}\n")
    with pytest.raises(ConfigError) as info:
        load_config(top)
    msg = str(info.value)
    assert str(tmp_path / "base.yaml") in msg and "model.layout" in msg and "column 1" in msg


def test_missing_default_and_bad_yaml(tmp_path):
    top = write(tmp_path, "c.yaml", "defaults: [nowhere]\n")
    with pytest.raises(ConfigError, match="cannot find config 'nowhere'"):
        load_config(top)
    bad = write(tmp_path, "bad.yaml", "model: {d_model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_defaults_cycle(tmp_path):
    write(tmp_path, "a.yaml", "defaults: [b]\n")
    b = write(tmp_path, "b.yaml", "defaults: [a]\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(b)


def test_bad_override_syntax(tmp_path):
    top = write(tmp_path, "c.yaml", "seed: 1\n")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(top, ["seed"])


def test_dump_roundtrip(tmp_path):
    root = load_config(ROOT / "configs" / "layouts" / "zamba.yaml")
    again = load_config(write(tmp_path, "dumped.yaml", dump_config(root)))
    assert again.layout == root.layout


def test_repeated_loads_share_nothing_and_see_edits(tmp_path):
    # a sweep loads one base config per run: what one run's overrides change must not reach the next
    # run, and a file edited between loads is read again
    top = write(tmp_path, "c.yaml", "model: {d_model: 48, layers: {F: mlp}, layout: F}\nseed: 1\n")
    assert load_config(top, ["model.d_model=96", "model.layout=F x2"]).model.d_model == 96
    again = load_config(top)
    assert again.model.d_model == 48 and again.layout.aliases == ["F"] and again.seed == 1
    top.write_text("model: {d_model: 40, layers: {F: mlp}, layout: F}\nseed: 1\n")
    assert load_config(top).model.d_model == 40


def test_override_clash_names_both_sides_after_a_clean_load(tmp_path):
    top = write(tmp_path, "c.yaml", "model: {d_model: 48, layers: {F: mlp}, layout: F}\n")
    load_config(top)
    with pytest.raises(ConfigError) as info:
        load_config(top, ["model.layers=[1, 2]"])
    msg = str(info.value)
    assert "model.layers" in msg and "<command line>" in msg and str(top) in msg


def test_malformed_override_names_the_command_line_even_when_a_default_set_the_key(tmp_path):
    write(tmp_path, "base.yaml", "model: {d_model: 48, layers: {F: mlp}, layout: F}\n")
    top = write(tmp_path, "top.yaml", "defaults: [base]\n")
    with pytest.raises(ConfigError) as info:
        load_config(top, ["model.d_model=${}"])
    assert str(info.value).startswith("<command line>: model.d_model:")


def test_loads_from_several_threads_leave_the_remembered_base_whole(tmp_path):
    # a sweep resolves its runs' configs from worker threads; each merge deep-copies the remembered base,
    # and omegaconf's copy unlinks a node's parent for a while: concurrent copies could leave it unlinked
    from concurrent.futures import ThreadPoolExecutor

    from omegaconf import DictConfig

    from hybrid import config

    top = ROOT / "configs" / "experiments" / "quick.yaml"
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch often, as on a loaded machine
    try:
        with ThreadPoolExecutor(8) as pool:
            widths = list(pool.map(lambda i: load_config(top, [f"model.d_model={16 + i}"]).model.d_model, range(160)))
    finally:
        sys.setswitchinterval(interval)
    assert widths == [16 + i for i in range(160)]

    def unlinked(node) -> int:
        children = [node._get_node(k) for k in node.keys()] if isinstance(node, DictConfig) else []
        return sum((c._get_parent() is not node) + unlinked(c) for c in children)

    assert not any(unlinked(base) for base, _ in config._BASES.values())
