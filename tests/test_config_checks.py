"""Bad config input of every kind is a ConfigError naming the file, the key path and the expected type."""
from __future__ import annotations

from pathlib import Path

import pytest

from hybrid.cli import main
from hybrid.config import COMMAND_LINE, load_config
from hybrid.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "configs" / "experiments" / "quick.yaml"


def _write(tmp_path, text: str | bytes, name="c.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize("text,fragment", [
    pytest.param("seed: " + "9" * 5000 + "\n", "not valid YAML: Exceeds the limit (4300 digits)", id="5000-digit-int"),
    pytest.param("model: " + "[" * 2000 + "]" * 2000 + "\n", "not valid YAML: nested deeper", id="deep"),
    pytest.param("a: [" + ", ".join(["x"] * 100) + "]\n" + "".join(
        f"{k}: &{k} [" + ", ".join([f"*{p}"] * 10) + "]\n" for p, k in zip("abcde", "bcdef")),
        "holds more than 100,000 values (YAML anchors", id="anchor-bomb"),
    pytest.param(b"model: {d_model: \xff}\n", "not UTF-8 text (byte 17)", id="binary"),
    pytest.param("- 1\n- 2\n", "a config file must hold a mapping at the top level, got [1, 2]", id="list"),
])
def test_unreadable_yaml(tmp_path, text, fragment):
    text = text.replace("a: [", "a: &a [") if isinstance(text, str) and "&" in text else text
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == str(path) and fragment in str(info.value)


def test_missing_or_folder_config(tmp_path, capsys):
    assert main(["show", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope.yaml'}: no such config file\n"
    assert main(["show", str(tmp_path)]) == 2
    assert "is a folder; give a YAML config file" in capsys.readouterr().err


@pytest.mark.parametrize("override,key,fragment", [
    pytest.param("model.d_model=" + "9" * 5000, "model.d_model", "cannot read the value of", id="5000-digits"),
    pytest.param("model.layers.A==", "model.layers.A", "quote it to pass a string", id="yaml-value-indicator"),
    pytest.param("model.layers=[]", "model.layers", "gives a list where", id="list-over-mapping"),
    pytest.param("model..d_model=3", "model..d_model", "has an empty part", id="empty-part"),
    pytest.param("model.d_model", "model.d_model", "overrides are key=value", id="no-equals"),
    pytest.param("train.lr=nan", "train.lr", "expected a finite number, got 'nan'", id="nan"),
    pytest.param("train.lr=.inf", "train.lr", "expected a finite number, got inf", id="inf"),
    pytest.param("train.batch_size=1e308", "train.batch_size", "expected an integer, got 1e+308", id="int-from-1e308"),
    pytest.param("train.steps=0", "train.steps", "train.steps must be >= 1", id="post-init-field"),
    pytest.param("train.weight_decay=-1", "train.weight_decay", "train.weight_decay must be >= 0, got -1.0",
                 id="negative-weight-decay"),
    pytest.param("train.device=gpu0", "train.device", "expected auto, cpu, cuda, cuda:<index> or mps", id="device"),
    pytest.param("train.threads=100000000", "train.threads", "expected 1 to 1024 CPU threads", id="threads"),
    pytest.param("seed=-1", "seed", "seed must be in [0, 2^63)", id="negative-seed"),
    pytest.param("name=''", "name", "name must be 1 to 200 characters", id="empty-name"),
    pytest.param("plugins=[..x]", "plugins[0]", "expected a module name like my_pkg.layers", id="relative-plugin"),
    pytest.param("plugins=abc", "plugins", "expected a list of module names", id="plugins-string"),
    pytest.param("model.norm_eps=-1", "model.norm_eps", "norm_eps must be > 0", id="norm-eps"),
    pytest.param("task.type={}", "task.type", "expected a task type name", id="task-type-dict"),
    pytest.param("task.vocab_size=6", "task.train", "too small for 4 distinct keys", id="task-settings-checked"),
    pytest.param("task.train_examples=5", "task.train_examples", "unknown task 'mqar' argument", id="task-key"),
])
def test_bad_overrides_name_the_command_line_and_the_key(override, key, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(QUICK, [override])
    assert info.value.key == key and fragment in info.value.message
    # a check across task settings is located at the setting (task.train, set in the file)
    assert info.value.file == (str(QUICK) if key == "task.train" else COMMAND_LINE)


def test_a_clash_between_files_names_both(tmp_path):
    piece = _write(tmp_path, "model: {layers: [A, F]}\n", "piece.yaml")
    top = _write(tmp_path, f"defaults: ['{QUICK}', '{piece}']\n")
    with pytest.raises(ConfigError) as info:
        load_config(top)
    assert info.value.file == str(piece) and info.value.key == "model.layers"
    assert f"gives a list where {QUICK} has a mapping" in info.value.message


def test_the_trainer_file_of_a_bad_value_is_named(tmp_path):
    top = _write(tmp_path, f"defaults: ['{QUICK}']\ntrain: {{batch_size: 64, accumulation: 3}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(top)
    assert info.value.file == str(top) and info.value.key == "train.accumulation"
