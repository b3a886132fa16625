"""Layer pairing for feature and relation distillation."""

from __future__ import annotations

import pytest
import torch

import leanvision as lv
from leanvision.errors import ConfigError, UnknownNameError
from leanvision.methods.distillation.pairing import block_names, pair_layers


@pytest.fixture(scope="module")
def vits():
    torch.manual_seed(0)
    teacher = lv.create_model("deit_tiny_patch16_224", img_size=32, patch_size=4, num_classes=10)
    student = lv.create_model("augvit_tiny", img_size=32, depth=6, embed_dim=96, num_heads=3)
    return student, teacher


def test_pairs_by_index_between_timm_deit_and_our_vit_of_other_depth(vits):
    """The manifold-KD layout: first student blocks to first teacher blocks, last to last."""
    student, teacher = vits
    pairs = pair_layers(student, teacher, [0, 1, -2, -1], [0, 1, 10, 11])
    assert pairs == [
        ("blocks.0", "blocks.0"),
        ("blocks.1", "blocks.1"),
        ("blocks.4", "blocks.10"),
        ("blocks.5", "blocks.11"),
    ]
    assert len(block_names(student)) == 6 and len(block_names(teacher)) == 12


def test_pairs_by_module_name_and_mixed(vits):
    student, teacher = vits
    assert pair_layers(student, teacher, ["blocks.5.mlp"], [11]) == [("blocks.5.mlp", "blocks.11")]


def test_bad_pairings_raise_clear_errors(vits):
    student, teacher = vits
    with pytest.raises(ConfigError, match="equally long"):
        pair_layers(student, teacher, [0, 1], [0])
    with pytest.raises(ConfigError, match="out of range: the model has 6 blocks"):
        pair_layers(student, teacher, [6], [0])
    with pytest.raises(UnknownNameError, match="blocks.5.mpl"):
        pair_layers(student, teacher, ["blocks.5.mpl"], [0])
    cnn = lv.create_model("resnet8_cifar")
    with pytest.raises(ConfigError, match="no block list 'blocks'"):
        pair_layers(cnn, teacher, [0], [0])
