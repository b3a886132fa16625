"""Export a model to ONNX (for ONNX Runtime inference)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from leanvision.shapes import check_batch, guarded_forward, resolve_input_size


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: tuple[int, ...] | None = None,
    opset: int = 17,
    dynamic_batch: bool = True,
    *,
    batch: int = 1,
) -> Path:
    """Write ``model`` to ``path`` as ONNX with TorchScript-based export.

    Args:
        model: the (finalized) model; exported in eval mode on CPU.
        path: output file.
        input_size: one sample's shape without the batch, e.g. (3, 224, 224); None: the
            model's ``pretrained_cfg["input_size"]`` (the rule: :mod:`leanvision.shapes`).
        opset: ONNX opset version.
        dynamic_batch: make the batch dimension dynamic.
        batch: samples in the example input ``(batch, *input_size)`` the export traces.

    Raises:
        ConfigError: bad ``input_size`` or ``batch``, or no ``input_size`` where the model
            records none.
        InputShapeError: the model cannot run on the example input (checked by one forward
            before exporting); an ``input_size`` that is evidently batch first says so.
    """
    size = resolve_input_size(model, input_size)
    n = check_batch(batch)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    x = torch.randn(n, *size, device=next(model.parameters()).device)
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    try:
        with torch.no_grad():
            guarded_forward(model, x, size, batch=n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (x,),
                str(path),
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes=axes,
                opset_version=opset,
                dynamo=False,
            )
    finally:
        model.train(was_training)
    return path
