"""The `hybrid` command: help, show, layers, and errors that exit 2 with a located message."""
import subprocess
import sys
from pathlib import Path

import pytest

from hybrid.cli import main

ROOT = Path(__file__).resolve().parent.parent
JAMBA = str(ROOT / "configs" / "layouts" / "jamba.yaml")


def test_show_prints_stack_totals_and_exports(capsys):
    assert main(["show", JAMBA, "model.d_model=64", "--megatron", "--hf"]) == 0
    out = capsys.readouterr().out
    assert "d_model=64" in out and "sublayers=16" in out
    lines = out.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("#"))
    for column in ("alias", "type", "arguments", "params", "state"):
        assert column in header
    assert any(" A " in line and "attention" in line and "rope_theta=None" in line for line in lines)
    assert "megatron pattern: M" in out and "*" in out.split("megatron pattern:")[1]
    assert 'layer_types: ["mamba"' in out


def test_show_marks_shared_uses(capsys):
    assert main(["show", str(ROOT / "configs" / "layouts" / "zamba.yaml")]) == 0
    out = capsys.readouterr().out
    assert "Z.A" in out and "(shared)" in out


def test_layers_lists_arguments_with_defaults_and_docs(capsys):
    assert main(["layers"]) == 0
    out = capsys.readouterr().out
    for text in ("mamba", "attention", "mlp", "d_state", "16", "SSM state size", "inference state: recurrent"):
        assert text in out


def test_config_error_exits_2_with_file_and_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  layers: {M: mamba}\n  layout: '(M M x3'\n")
    assert main(["show", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "model.layout" in err and "column 1" in err


def test_unknown_layer_type_error_lists_registered(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  layers: {M: {type: mamba3}}\n  layout: M\n")
    assert main(["show", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "model.layers.M.type" in err and "closest match: 'mamba'" in err


@pytest.mark.parametrize("args", [["--help"], ["show", "--help"], ["layers", "--help"]])
def test_help_teaches(args):
    result = subprocess.run([sys.executable, "-m", "hybrid", *args], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0
    assert "usage: hybrid" in result.stdout and ("example" in result.stdout or "layer" in result.stdout)


def test_tasks_lists_arguments(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for text in ("mqar", "num_kv_pairs", "selective_copying", "induction_heads", "copy", "lm"):
        assert text in out


def test_overrides_may_follow_options(capsys):
    assert main(["show", JAMBA, "--megatron", "model.d_model=48"]) == 0
    assert "d_model=48" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["show", JAMBA, "--no-such-flag"])


def test_train_resume_with_a_config_file_says_the_run_keeps_its_own(tmp_path, capsys):
    (tmp_path / "cfg.yaml").write_text("train: {steps: 2}\n")
    assert main(["train", str(tmp_path / "cfg.yaml"), "--resume", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "--resume continues" in err and "give no CONFIG with it" in err and "cfg.yaml" in err
