"""The registered search spaces (``lv.search("mbv2_cifar", ...)`` or a :class:`SearchSpace`).

* ``mbv2_cifar``: MobileNetV2-style CIFAR networks (:mod:`leanvision.models.mbnas`). Per block an
  inverted-residual operator, kernel 3/5/7 x expansion 3/6 (ProxylessNAS's and single-path NAS's
  operator set), or ``skip`` for every block but a stage's first (so depth is searched too);
  per stage a width multiplier 0.5/0.75/1.0. Four stages of 2, 3, 3, 2 blocks: about 1.2e10
  architectures from 10.7 M to 68.8 M MACs at 32x32.
"""

from __future__ import annotations

from collections.abc import Callable

from leanvision.errors import ConfigError, UnknownNameError
from leanvision.search.space import Choice, ModelSpec, SearchSpace

__all__ = ["get_space", "list_spaces", "mbv2_cifar", "register_space"]

_SPACES: dict[str, Callable[[], SearchSpace]] = {}

MB_OPS = ("k3e3", "k3e6", "k5e3", "k5e6", "k7e3", "k7e6")
MB_WIDTHS = (0.5, 0.75, 1.0)


class UnknownSpaceError(UnknownNameError):
    def __init__(self, name: str, allowed: list[str]) -> None:
        super().__init__("search space", name, allowed)


def register_space(name: str) -> Callable[[Callable[[], SearchSpace]], Callable[[], SearchSpace]]:
    """Register a space factory under ``name``."""

    def deco(factory: Callable[[], SearchSpace]) -> Callable[[], SearchSpace]:
        _SPACES[name] = factory
        return factory

    return deco


def list_spaces() -> list[str]:
    return sorted(_SPACES)


def get_space(space: str | SearchSpace) -> SearchSpace:
    """A space by name, or the given :class:`SearchSpace` itself."""
    if isinstance(space, SearchSpace):
        return space
    if not isinstance(space, str):
        raise ConfigError(f"space must be a registered name or a SearchSpace, got {space!r}")
    if space not in _SPACES:
        raise UnknownSpaceError(space, list_spaces())
    return _SPACES[space]()


def _divisible(value: float, divisor: int = 8) -> int:
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


@register_space("mbv2_cifar")
def mbv2_cifar() -> SearchSpace:
    from leanvision.models.mbnas import MBNAS_STAGES, MBNASSuperNet

    choices = []
    for s, (_, n, _) in enumerate(MBNAS_STAGES):
        choices.append(Choice(f"s{s}_width", MB_WIDTHS, "the stage's width multiplier"))
        for b in range(n):
            ops = MB_OPS if b == 0 else (*MB_OPS, "skip")
            choices.append(Choice(f"s{s}_b{b}", ops, "kKeE: kernel K, expansion E; or skip"))

    def build(sample: dict) -> ModelSpec:
        arch = []
        for s, (chs, n, stride) in enumerate(MBNAS_STAGES):
            width = _divisible(chs * sample[f"s{s}_width"])
            stage = []
            for b in range(n):
                op = sample[f"s{s}_b{b}"]
                if op == "skip":
                    continue
                k, e = op[1], op[3]
                stage.append(f"ir_r1_k{k}_s{stride if b == 0 else 1}_e{e}_c{width}")
            arch.append(stage)
        return ModelSpec("mbnas_cifar", {"arch": arch})

    smallest = {c.key: c.options[0] if c.key.endswith("width") else "k3e3" for c in choices}
    smallest.update({c.key: "skip" for c in choices if "skip" in c.options})
    return SearchSpace(
        "mbv2_cifar",
        choices,
        build,
        description="MobileNetV2-style CIFAR networks: per block kernel 3/5/7 x expansion 3/6 "
        "or skip, per stage width 0.5/0.75/1.0",
        smallest=smallest,
        supernet=lambda num_classes=10, in_chans=3: MBNASSuperNet(num_classes, in_chans),
        activate=lambda net, spec: net.set_arch(spec.kwargs["arch"]),
        # HourNAS's vital blocks: each stage's entry block (down-sampling where the stage
        # strides) and the widths, the network's shortest path; the other blocks may skip
        vital=[c.key for c in choices if c.key.endswith(("_b0", "_width"))],
        skip_value="skip",
    )
