"""Batch-norm folding: the one place a model's conv → BN pairs become one conv.

torch.fx's fuser does the work (``torch.fx.experimental.optimization.fuse``, which uses
``torch.nn.utils.fusion``); a layer that folds its own weights (ManiDP's gated block) calls
``torch.nn.utils.fusion.fuse_conv_bn_weights`` directly.
"""

from __future__ import annotations

from torch import nn

from leanvision.errors import ConfigError

__all__ = ["fold_batchnorm"]


def fold_batchnorm(model: nn.Module, strict: bool = False) -> tuple[nn.Module, bool]:
    """An eval-mode copy of ``model`` with every conv → batch-norm pair fused into one conv.

    Args:
        model: The model (put in eval mode).
        strict: Raise when torch.fx cannot trace the model, instead of returning it as is.

    Returns:
        (the folded copy, True), or (``model`` itself, False) when fx cannot trace it.

    Raises:
        ConfigError: ``strict`` and the model cannot be traced.
    """
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(model.eval()), True
    except Exception as exc:  # noqa: BLE001 - any tracing failure is the same answer
        if strict:
            raise ConfigError(
                f"cannot fold batch norm: torch.fx cannot trace {type(model).__name__} ({exc})"
            ) from exc
        return model, False
