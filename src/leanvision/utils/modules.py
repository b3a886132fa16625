"""The one model-rewrite utility: :func:`replace_modules`, and :func:`first_conv_name`.

A method that converts layers (Ghost, AdderNet, binarization, PTQ, ManiDP's gates) says which
modules to convert (``where``) and how to convert one (``make``); the traversal, the filter
and the swap in the parent live here once, as in torchao's ``quantize_(model, config,
filter_fn)``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from leanvision.errors import ConfigError

__all__ = ["first_conv_name", "replace_modules"]

Make = Callable[[nn.Module, str], "nn.Module | None"]
Where = Callable[[nn.Module, str], bool]


def replace_modules(model: nn.Module, make: Make, where: Where | None = None) -> list[str]:
    """Swap submodules of ``model`` in place.

    Every submodule ``m`` (fully qualified name ``name``, top-down) for which
    ``where(m, name)`` is true (every one when ``where`` is None) is replaced by
    ``make(m, name)``; ``make`` may return None or ``m`` itself to keep it. The subtree of a
    module that ``where`` selected is not visited (nor is the new module). A module shared by
    several parents is converted once and the same new module put in every place.

    Args:
        model: The model, changed in place (deep-copy it first to keep the original). The
            root itself is never replaced.
        make: Converts one module.
        where: Selects the modules to convert.

    Returns:
        The names of the replaced modules, in traversal order (a shared module under each
        of its names).

    Raises:
        ConfigError: ``make`` returned something that is not an ``nn.Module``.
    """
    done: dict[int, nn.Module | None] = {}  # converted modules (by identity)
    walked: set[int] = set()  # modules whose subtree was visited
    replaced: list[str] = []

    def visit(parent: nn.Module, prefix: str) -> None:
        for child_name, child in list(parent.named_children()):
            name = f"{prefix}{child_name}"
            if id(child) in walked:
                continue
            if id(child) in done:
                new = done[id(child)]
            elif where is None or where(child, name):
                new = make(child, name)
                if new is not None and not isinstance(new, nn.Module):
                    raise ConfigError(
                        f"replace_modules: make() returned {type(new).__name__} for {name!r}; "
                        "it must return an nn.Module (or None to keep the module)"
                    )
                done[id(child)] = new
            else:
                walked.add(id(child))
                visit(child, f"{name}.")
                continue
            if new is not None and new is not child:
                setattr(parent, child_name, new)
                replaced.append(name)

    visit(model, "")
    return replaced


def first_conv_name(model: nn.Module) -> str | None:
    """Name of the stem convolution: the model's ``first_conv`` (timm's default config; a
    ``ConvNormAct`` resolves to its ``.conv``), else its first ``nn.Conv2d``; None if none."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    first = cfg.get("first_conv") if isinstance(cfg, dict) else None
    if isinstance(first, (list, tuple)):
        first = first[0] if first else None
    names = dict(model.named_modules())
    if first in names:
        return first
    if first and f"{first}.conv" in names:  # timm's ConvNormAct wraps the conv
        return f"{first}.conv"
    return next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
