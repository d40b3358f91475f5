"""Layout limits and type checks: the three bugs of issue #16 and their relatives, as regular tests.

Each of these once ended in a traceback (or took the machine's memory); each must now be a
ConfigError naming the key (and the column, for a layout string) before anything is allocated.
"""
from __future__ import annotations

import pytest
import yaml

from hybrid.cli import main
from hybrid.errors import ConfigError
from hybrid.layout import compile_layout, parse_layout
from hybrid.layout.parser import MAX_DEPTH, MAX_SUBLAYERS

LAYERS = {"M": {"type": "mamba"}, "A": {"type": "attention", "n_heads": 2}, "F": {"type": "mlp"}}


def _config(tmp_path, model: dict):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"model": model}))
    return str(path)


@pytest.mark.parametrize("command", [["show"], ["train", "train.steps=1", "train.device=cpu"]])
@pytest.mark.parametrize("model,key,text", [
    pytest.param({"layers": {"M": "mamba"}, "layout": "M x99999999"}, "model.layout: column 3",
                 "repeat x99999999 makes 99,999,999 sublayers", id="huge-count"),
    pytest.param({"layers": {"M": {"type": {}}}, "layout": "M"}, "model.layers.M.type",
                 "expected a layer type name", id="unhashable-type"),
    pytest.param({"layers": {"M": "mamba", "A": "attention"},
                  "layout": {"blocks": 2, "block": "M M", "every": {"A": {"period": 2, "slot": "("}}}},
                 "model.layout.every.A.slot", "expected an integer, got '('", id="shorthand-slot"),
])
def test_issue_16_bugs_exit_2_with_file_and_key(tmp_path, capsys, command, model, key, text):
    path = _config(tmp_path, model)
    argv = [command[0], path, *command[1:], f"train.run_dir={tmp_path / 'run'}"] if command[0] == "train" else \
        ["show", path]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: {key}: ") and text in err
    assert "Traceback" not in err


def test_huge_count_fails_before_expanding(monkeypatch):
    # the check comes before the list is built: a count of 10^18 costs nothing
    with pytest.raises(ConfigError) as info:
        parse_layout("(M F) x3 (A F) x1000000000000000000")
    assert info.value.column == 16 and "is more than the 2048 sublayers" in str(info.value)
    assert len(parse_layout(f"M x{MAX_SUBLAYERS}")) == MAX_SUBLAYERS
    with pytest.raises(ConfigError, match="makes 2,049 sublayers"):
        parse_layout(f"F M x{MAX_SUBLAYERS}")


@pytest.mark.parametrize("layout,column,fragment", [
    pytest.param("M x" + "9" * 5000, 3, "repeat count '9999", id="5000-digit-count"),
    pytest.param("(" * (MAX_DEPTH + 1) + "M" + ")" * (MAX_DEPTH + 1), MAX_DEPTH + 1, "nested more than", id="deep"),
    pytest.param("((M F) x1000) x1000", 15, "makes 2,000,000 sublayers", id="nested-product"),
])
def test_layout_string_limits(layout, column, fragment):
    with pytest.raises(ConfigError) as info:
        parse_layout(layout)
    assert info.value.column == column and fragment in info.value.message
    assert len(str(info.value)) < 600  # a 5000-character layout is shown as a window around the column


def test_shared_blocks_count_toward_the_limit():
    with pytest.raises(ConfigError) as info:
        compile_layout(LAYERS, "Z x100", shared={"Z": "(A F) x500"})
    assert info.value.key == "model.layout" and info.value.column == 1
    assert "with shared block 'Z' (1000 sublayers) expanded here" in info.value.message


@pytest.mark.parametrize("layout,key", [
    pytest.param({"blocks": 10**9, "block": "M F"}, "model.layout.blocks", id="blocks"),
    pytest.param({"ratio": {"layers": 10**9}}, "model.layout.ratio.layers", id="ratio-layers"),
    pytest.param({"ratio": {"layers": 8, "attention": "abc"}}, "model.layout.ratio.attention", id="ratio-string"),
    pytest.param({"ratio": {"layers": 8, "attention": float("nan")}}, "model.layout.ratio.attention", id="ratio-nan"),
    pytest.param({"ratio": {"layers": 8}, "aliases": [1]}, "model.layout.aliases", id="aliases-list"),
    pytest.param({"ratio": {"layers": 8}, "aliases": {"mamba": {}}}, "model.layout.aliases.mamba", id="alias-dict"),
    pytest.param({"blocks": 2, "block": "M F", "every": {"A": {"period": 2, "offset": []}}}, "model.layout.every.A.offset",
                 id="offset-list"),
    pytest.param({"blocks": 2, "block": "M F", "every": {"(": {"period": 2}}}, "model.layout.every.(", id="bad-alias"),
])
def test_shorthand_values_are_checked(layout, key):
    with pytest.raises(ConfigError) as info:
        compile_layout(LAYERS, layout)
    assert info.value.key == key


@pytest.mark.parametrize("layers,shared,overrides,key", [
    pytest.param({**LAYERS, "P": {"parallel": ["M", {}]}}, None, None, "model.layers.P.parallel[1]", id="parallel-dict"),
    pytest.param(LAYERS, {"Z": ["A", {}]}, None, "model.shared.Z[1]", id="shared-dict"),
    pytest.param(LAYERS, {"Z": 5}, None, "model.shared.Z", id="shared-int"),
    pytest.param(LAYERS, None, [{"at": 0, "select": {}, "expand": 2}], "model.overrides[0].select", id="select-dict"),
    pytest.param({**LAYERS, "P": {"parallel": ["M", "A"]}}, None, [{"at": 0, "branch": True, "expand": 2}],
                 "model.overrides[0].branch", id="branch-bool"),
    pytest.param(LAYERS, None, [{"at": "9" * 5000, "expand": 2}], "model.overrides[0].at", id="at-5000-digits"),
    pytest.param(LAYERS, None, [{"at": "A#" + "9" * 5000, "expand": 2}], "model.overrides[0].at", id="nth-5000-digits"),
    pytest.param({"M": {"type": "m" * 5000}}, None, None, "model.layers.M.type", id="type-5000-chars"),
])
def test_types_of_layer_definitions_and_overrides(layers, shared, overrides, key):
    layout = "P F" if "P" in layers else ("Z M" if shared else "M F")
    with pytest.raises(ConfigError) as info:
        compile_layout(layers, layout, shared, overrides)
    assert info.value.key == key
    assert len(str(info.value)) < 800


def test_unused_aliases_and_shared_blocks_are_checked_too():
    # a sweep's axis may switch the layout to them: a typo must not wait for that run
    with pytest.raises(ConfigError) as info:
        compile_layout({**LAYERS, "B": {"type": "attention", "n_hedas": 2}}, "M F")
    assert info.value.key == "model.layers.B.n_hedas"
    with pytest.raises(ConfigError) as info:
        compile_layout(LAYERS, "M F", shared={"Z": "A Q"})
    assert info.value.key == "model.shared.Z" and info.value.column == 3
