"""replace_modules: the one model-rewrite utility (traversal, filter, swap in the parent)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from leanvision.errors import ConfigError
from leanvision.utils import first_conv_name, replace_modules


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)),
        nn.Flatten(),
    )


def test_swaps_the_selected_modules_in_place_by_name():
    net = _net()
    names = replace_modules(net, lambda m, n: nn.GELU(), lambda m, n: isinstance(m, nn.ReLU))
    assert names == ["1", "2.1"]
    assert isinstance(net[1], nn.GELU) and isinstance(net[2][1], nn.GELU)
    assert net(torch.randn(1, 3, 9, 9)).shape == (1, 4 * 5 * 5)


def test_make_sees_the_module_and_its_name_and_may_keep_it():
    net = _net()
    seen = []

    def make(m: nn.Module, name: str) -> nn.Module | None:
        seen.append((name, type(m).__name__))
        return None if m.kernel_size == (1, 1) else nn.Identity()

    names = replace_modules(net, make, lambda m, n: isinstance(m, nn.Conv2d))
    assert seen == [("0", "Conv2d"), ("2.0", "Conv2d"), ("2.2", "Conv2d")]
    assert names == ["0", "2.0"] and isinstance(net[2][2], nn.Conv2d)


def test_a_selected_subtree_is_not_visited_and_the_root_never_replaced():
    net = _net()
    names = replace_modules(net, lambda m, n: nn.Identity())  # where=None: every child
    assert names == ["0", "1", "2", "3"]  # "2" replaced whole: its children not visited
    assert all(isinstance(m, nn.Identity) for m in net)


def test_a_shared_module_becomes_one_new_module_everywhere():
    shared = nn.Linear(4, 4)
    net = nn.ModuleDict({"a": nn.Sequential(shared), "b": nn.Sequential(shared)})
    calls = []

    def make(m: nn.Module, name: str) -> nn.Module:
        calls.append(name)
        return nn.Linear(4, 4)

    names = replace_modules(net, make, lambda m, n: isinstance(m, nn.Linear))
    assert calls == ["a.0"] and names == ["a.0", "b.0"]
    assert net["a"][0] is net["b"][0] and net["a"][0] is not shared


def test_make_must_return_a_module():
    with pytest.raises(ConfigError, match="must return an nn.Module"):
        replace_modules(_net(), lambda m, n: "relu", lambda m, n: isinstance(m, nn.ReLU))


def test_first_conv_name_reads_timm_first_conv_then_falls_back():
    net = _net()
    assert first_conv_name(net) == "0"
    net.default_cfg = {"first_conv": "2.0"}
    assert first_conv_name(net) == "2.0"
    assert first_conv_name(nn.Sequential(nn.Linear(2, 2))) is None
