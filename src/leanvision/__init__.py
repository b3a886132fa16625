"""leanvision: make vision networks really smaller and faster, with measured numbers.

The public API::

    import leanvision as lv
    model = lv.create_model("resnet20_cifar", num_classes=10)
    data = lv.load_data("cifar10", root="../shared/data/cifar10")
    res = lv.train(model, data, epochs=30, lr=0.1)
    small = lv.compress(model, "ghost", data=data, finetune_epochs=10)
    acc = lv.evaluate(small, data.test)
    prof = lv.profile(small, input_size=(3, 32, 32), batch=1)  # one sample's shape + batch
    lv.export_onnx(small, "small.onnx", input_size=(3, 32, 32))
    lv.save(small, "small.pt"); small = lv.load("small.pt")  # rebuilds the architecture

``input_size`` is one sample's shape without the batch everywhere (default: the model's
``pretrained_cfg["input_size"]``); the batch is ``batch=N``. The rule: :mod:`leanvision.shapes`.
"""

from __future__ import annotations

from typing import Any

from leanvision import analysis
from leanvision.data import DataBundle, list_datasets, load_data
from leanvision.deploy import deploy, export_onnx, optimize_for_cpu
from leanvision.engine import TrainResult, evaluate, train
from leanvision.methods import compress, list_methods
from leanvision.methods.saving import load, save
from leanvision.models import create_model, list_models
from leanvision.models.detection import create_detector
from leanvision.profiling import Profile, profile
from leanvision.search import SearchResult, search

__version__ = "0.1.0"

__all__ = [
    "DataBundle",
    "Profile",
    "SearchResult",
    "TrainResult",
    "analysis",
    "compress",
    "create_detector",
    "create_model",
    "deploy",
    "evaluate",
    "export_onnx",
    "list_datasets",
    "list_methods",
    "list_models",
    "load",
    "load_data",
    "load_recipe",
    "optimize_for_cpu",
    "profile",
    "save",
    "search",
    "train",
]


def load_recipe(path: Any, overrides: list[str] | None = None) -> Any:
    """Load a recipe YAML file (see :mod:`leanvision.recipe`)."""
    from leanvision.recipe import load_recipe as _load

    return _load(path, overrides)
