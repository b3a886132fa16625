"""DESIGN's method contract: a method file holds its config, its algorithm and its registration,
and no layer class (layers live in ``leanvision.layers``; benchmarks import them from there)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

from torch import nn

import leanvision.methods


def _method_modules() -> list[ModuleType]:
    infos = pkgutil.walk_packages(leanvision.methods.__path__, "leanvision.methods.")
    return [importlib.import_module(info.name) for info in infos]


def test_no_method_module_defines_a_layer_class():
    modules = _method_modules()
    names = {m.__name__ for m in modules}
    # the walk reaches the method files themselves, not only the packages
    assert {"leanvision.methods.pruning.manidp", "leanvision.methods.lowbit.ptq_vit"} <= names
    layers = [
        f"{mod.__name__}.{name}"
        for mod in modules
        for name, obj in vars(mod).items()
        if inspect.isclass(obj) and obj.__module__ == mod.__name__ and issubclass(obj, nn.Module)
    ]
    assert not layers, f"nn.Module classes in method files (move to leanvision.layers): {layers}"
