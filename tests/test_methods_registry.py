"""The one method registry behind ``lv.compress`` and recipe stages."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from torch import nn

import leanvision as lv
from leanvision.errors import ConfigError, UnknownMethodError
from leanvision.methods import get_method, method_specs, register_method
from leanvision.methods.common import FinetuneConfig

SPECS = method_specs()


def test_builtin_methods_listed():
    """list_methods() is sorted and holds ghost and kd, the same names as method_specs()."""
    names = lv.list_methods()
    assert {"ghost", "kd"} <= set(names)
    assert names == sorted(names)
    assert names == [s.name for s in SPECS]
    assert get_method("ghost").family == "architecture"
    assert get_method("kd").family == "distillation"


def test_unknown_method_error():
    """An unknown method is UnknownMethodError (a KeyError) naming it and listing 'ghost'."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3))
    with pytest.raises(UnknownMethodError) as info:
        lv.compress(model, "nope")
    err = info.value
    assert isinstance(err, KeyError)
    msg = str(err)
    assert "'nope'" in msg and "ghost" in msg and "kd" in msg
    assert err.name == "nope" and "ghost" in err.allowed
    with pytest.raises(KeyError):
        get_method("nope")


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_config_is_dataclass_with_defaults(spec):
    """Each method's config is a dataclass that builds from its defaults alone."""
    assert dataclasses.is_dataclass(spec.config_cls)
    cfg = spec.make_config()
    assert isinstance(cfg, spec.config_cls)
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    # Every training method accepts the shared fine-tuning options (the contract).
    if issubclass(spec.config_cls, FinetuneConfig):
        assert {"finetune_epochs", "max_steps"} <= fields
    with pytest.raises(ConfigError, match="no_such_knob"):
        spec.make_config(no_such_knob=1)


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_spec_has_paper_and_family(spec):
    """Every method names its paper (with an arXiv id or venue) and a family."""
    assert isinstance(spec.paper, str) and len(spec.paper) > 5
    assert any(ch.isdigit() for ch in spec.paper)  # a year or an arXiv id
    assert isinstance(spec.family, str) and spec.family
    assert callable(spec.apply)
    assert spec.summary  # the first docstring line of apply


def test_register_twice_is_an_error():
    """Registering a different function under a taken name is refused."""

    def other(model, data, cfg):
        return model

    with pytest.raises(ConfigError, match="ghost"):
        register_method("ghost", family="x", paper="y", config=FinetuneConfig)(other)
    assert get_method("ghost").apply is not other


def test_the_families_register_on_import_without_a_cycle():
    """The registry imports nothing from the families (timm's way: the package imports them)."""
    import ast
    import subprocess
    import sys

    from leanvision.methods import registry

    tree = ast.parse(Path(registry.__file__).read_text(encoding="utf-8"))
    imports = [
        n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)
    ]  # any import in the registry, at the top or in a function
    assert all("methods" not in (getattr(n, "module", "") or "") for n in imports)
    # a fresh process that imports one method file first still sees every family's methods
    code = "import leanvision.methods.lowbit.adder, leanvision as lv; print(len(lv.list_methods()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) == len(SPECS)
