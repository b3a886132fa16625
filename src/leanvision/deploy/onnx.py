"""Export a model to ONNX (for ONNX Runtime inference)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: tuple[int, ...] = (1, 3, 224, 224),
    opset: int = 17,
    dynamic_batch: bool = True,
) -> Path:
    """Write ``model`` to ``path`` as ONNX with TorchScript-based export.

    Args:
        model: the (finalized) model; exported in eval mode on CPU.
        path: output file.
        input_size: (B, C, H, W) of the example input.
        opset: ONNX opset version.
        dynamic_batch: make the batch dimension dynamic.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    x = torch.randn(*input_size, device=next(model.parameters()).device)
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    try:
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
