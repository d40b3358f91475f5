"""Layer registry: registration, typed configs, errors, plugins."""
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from torch import nn

from hybrid.config import load_config
from hybrid.errors import ConfigError
from hybrid.registry import LAYERS, register_layer

FIXTURES = Path(__file__).parent / "fixtures"


@dataclass
class _Cfg:
    width: int = field(default=2, metadata={"help": "a width"})


def test_builtins_registered_with_state_kinds():
    assert {"mamba", "attention", "mlp"} <= set(LAYERS.names())
    mamba, mlp = LAYERS.get("mamba"), LAYERS.get("mlp")
    assert mamba.state_kind(mamba.config_cls()) == "recurrent"
    assert mlp.state_kind(mlp.config_cls()) == "none"
    att = LAYERS.get("attention")
    assert att.state_kind(att.config_cls()) == "kv"


def test_unknown_type_lists_registered_and_closest():
    with pytest.raises(ConfigError) as info:
        LAYERS.get("atention")
    msg = str(info.value)
    assert "closest match: 'attention'" in msg and "mamba" in msg and "mlp" in msg


def test_duplicate_registration_fails_unless_overridden():
    @register_layer("test_dup", config=_Cfg)
    class A(nn.Module):
        pass

    with pytest.raises(ValueError, match="already registered"):
        @register_layer("test_dup", config=_Cfg)
        class B(nn.Module):
            pass

    @register_layer("test_dup", config=_Cfg, override=True)
    class C(nn.Module):
        pass

    assert LAYERS.get("test_dup").cls is C


def test_config_must_be_a_dataclass():
    with pytest.raises(TypeError, match="dataclass"):
        register_layer("test_bad", config=dict)


def test_bad_state_kind_rejected():
    with pytest.raises(ValueError, match="state must be one of"):
        register_layer("test_bad_state", config=_Cfg, state="cache")


@pytest.mark.parametrize("args,fragment", [
    ({"widht": 3}, "unknown layer 'mamba' argument 'widht'"),
    ({"d_state": "16"}, "expected an integer"),
    ({"d_state": True}, "expected an integer"),
    ({"dt_init": "randm"}, "did you mean 'random'"),
    ({"expand": -1}, "must be positive"),
])
def test_argument_errors_name_layer_argument_and_accepted(args, fragment):
    with pytest.raises(ConfigError) as info:
        LAYERS.get("mamba").make_config(args, "model.layers.M")
    assert fragment in str(info.value)
    assert str(info.value).startswith("model.layers.M")


def test_numbers_coerce_where_harmless():
    cfg = LAYERS.get("mamba").make_config({"dt_min": "1e-3", "expand": 2}, "k")
    assert cfg.dt_min == 1e-3 and cfg.expand == 2.0


def test_plugin_module_registers_a_layer(monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))
    sys.modules.pop("plugin_pkg.scaled_identity", None)
    root = load_config({"plugins": ["plugin_pkg.scaled_identity"],
                        "model": {"d_model": 8, "layers": {"S": {"type": "test_scale", "scale": 2.0}},
                                  "layout": "S mlp"}})
    assert root.layout.types == ["test_scale", "mlp"]
    from hybrid.model import HybridLM
    model = HybridLM(root.model)
    assert model.blocks[0].branches[0].weight.detach()[0].item() == 2.0


def test_missing_plugin_module_is_a_config_error():
    with pytest.raises(ConfigError, match=r"plugins\[0\].*cannot import plugin module 'no_such_module'"):
        load_config({"plugins": ["no_such_module"]})


def test_entry_point_plugins_load(monkeypatch):
    from hybrid import registry

    class FakeEntryPoint:
        name, value = "fake", "plugin_pkg.scaled_identity"

        def load(self):
            import plugin_pkg.scaled_identity  # noqa: F401

    monkeypatch.syspath_prepend(str(FIXTURES))
    sys.modules.pop("plugin_pkg.scaled_identity", None)
    reg = registry.Registry("layer", entry_point_group="hybrid.layers")
    monkeypatch.setattr(registry, "entry_points", lambda group: [FakeEntryPoint()] if group == "hybrid.layers" else [])
    reg.names()  # triggers entry-point loading
    assert "test_scale" in LAYERS.names()


def test_threads_asking_while_the_builtins_load_wait_for_them(tmp_path, monkeypatch):
    """The first lookup imports the built-in entries; a second thread asking meanwhile gets them too, not
    an empty registry (a sweep resolves its runs' configs from several threads)."""
    import threading
    import time

    from hybrid.registry import Registry

    registry = Registry("widget", builtins="slow_widgets")
    (tmp_path / "slow_widgets.py").write_text(
        "import time\nfrom tests_registry_target import REGISTRY\ntime.sleep(0.3)\nREGISTRY.add('gear', 1)\n")
    target = type(sys)("tests_registry_target")
    target.REGISTRY = registry
    monkeypatch.setitem(sys.modules, "tests_registry_target", target)
    monkeypatch.syspath_prepend(str(tmp_path))
    found = []
    first = threading.Thread(target=lambda: found.append(registry.names()))
    first.start()
    time.sleep(0.05)  # the first thread is inside the import now
    found.append(registry.names())
    first.join()
    assert found == [["gear"], ["gear"]]
