"""Which student layer learns from which teacher layer, for feature and relation distillation.

Layers are named either by module name (``"layer3.2"``, ``"blocks.11"``) or by index into the
model's list of blocks (``model.blocks`` of a ViT, or another ``nn.ModuleList`` named with
``container=``), as in manifold distillation's student blocks ``0 1 2 3 8 9 10 11`` ↔ teacher
blocks ``0 1 2 3 20 21 22 23``. Negative indices count from the end.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from leanvision.engine.features import resolve_module
from leanvision.errors import ConfigError

__all__ = ["block_names", "default_pairs", "pair_layers"]

LayerRefs = Sequence[int | str]


def block_names(model: nn.Module, container: str = "blocks") -> list[str]:
    """Module names of the blocks in ``model.<container>`` (an ``nn.ModuleList``/``Sequential``).

    Raises:
        ConfigError: the model has no such block list.
    """
    blocks = dict(model.named_modules()).get(container)
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)):
        raise ConfigError(
            f"{type(model).__name__} has no block list {container!r} to index; name the layers "
            "by module name instead (see model.named_modules()) or pass container="
        )
    return [f"{container}.{i}" for i in range(len(blocks))]


def _resolve(model: nn.Module, refs: LayerRefs, container: str, who: str) -> list[str]:
    names: list[str] = []
    blocks: list[str] | None = None
    for ref in refs:
        if isinstance(ref, bool) or not isinstance(ref, (int, str)):
            raise ConfigError(f"{who} layer {ref!r} must be a block index or a module name")
        if isinstance(ref, int):
            blocks = blocks if blocks is not None else block_names(model, container)
            if not -len(blocks) <= ref < len(blocks):
                raise ConfigError(
                    f"{who} block index {ref} is out of range: the model has {len(blocks)} "
                    f"blocks in {container!r}"
                )
            names.append(blocks[ref])
        else:
            resolve_module(model, ref)  # raises UnknownNameError with close names
            names.append(ref)
    return names


def pair_layers(
    student: nn.Module,
    teacher: nn.Module,
    student_layers: LayerRefs,
    teacher_layers: LayerRefs,
    *,
    student_container: str = "blocks",
    teacher_container: str = "blocks",
) -> list[tuple[str, str]]:
    """Pair student and teacher layers one to one.

    Args:
        student, teacher: the two models.
        student_layers, teacher_layers: equally long lists of block indices or module names.
        student_container, teacher_container: the block lists that indices refer to.

    Returns:
        ``[(student_module_name, teacher_module_name), ...]`` in the given order.

    Raises:
        ConfigError: the lists differ in length or are empty, an index is out of range, or a
            model has no block list for indices.
        UnknownNameError: a module name does not exist (the message lists close names).
    """
    if len(student_layers) != len(teacher_layers) or not student_layers:
        raise ConfigError(
            "student and teacher layer lists must be non-empty and equally long, got "
            f"{len(student_layers)} student and {len(teacher_layers)} teacher layers"
        )
    s = _resolve(student, student_layers, student_container, "student")
    t = _resolve(teacher, teacher_layers, teacher_container, "teacher")
    return list(zip(s, t))


def default_pairs(
    student: nn.Module,
    teacher: nn.Module,
    *,
    first: int = 4,
    last: int = 4,
    student_container: str = "blocks",
    teacher_container: str = "blocks",
) -> list[tuple[str, str]]:
    """The first ``first`` and last ``last`` blocks of each model, paired in order.

    This generalises manifold distillation's choice (DeiT-Tiny blocks 0 1 2 3 8 9 10 11 ↔
    CaiT-S24 blocks 0 1 2 3 20 21 22 23). When a model has fewer than ``first + last`` blocks,
    all blocks of the shallower model are paired with blocks of the deeper one at the same
    relative depth.

    Raises:
        ConfigError: a model has no block list (name the layers instead).
    """
    s, t = block_names(student, student_container), block_names(teacher, teacher_container)
    k = first + last
    if len(s) >= k and len(t) >= k:
        idx = list(range(first)) + list(range(-last, 0))
        return [(s[i], t[i]) for i in idx]
    short, long_ = (s, t) if len(s) <= len(t) else (t, s)
    picked = [long_[round((i + 1) * len(long_) / len(short)) - 1] for i in range(len(short))]
    return list(zip(short, picked)) if short is s else list(zip(picked, short))
