"""Evaluation of a model on a loader with a task's metrics (classification: top-1, top-5, loss)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from leanvision.shapes import guarded_forward
from leanvision.tasks import Classification, Task, move_to


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s first parameter lives (the CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | str | None = None,
    channels_last: bool = False,
    max_batches: int | None = None,
    task: Task | None = None,
) -> dict[str, float]:
    """The task's metrics of ``model`` on ``loader``.

    Args:
        model: The model (evaluated in eval mode; its mode is restored).
        loader: Batches the task splits into inputs and targets.
        device: Where to run; default the model's.
        channels_last: Feed 4-D inputs in channels-last layout.
        max_batches: Read at most this many batches.
        task: What to measure (:class:`leanvision.tasks.Task`); default the task of the
            DataBundle that built ``loader`` (its ``lv_task``), else classification.

    Returns:
        The task's metrics plus ``"n"`` (samples); for classification
        ``{"top1": %, "top5": %, "loss": mean CE, "n": samples}``.

    Raises:
        InputShapeError: the loader's images do not fit the model (named, with what it expects).
    """
    if task is None:  # a DataBundle's loader names its task; any other loader: classification
        task = getattr(loader, "lv_task", None) or Classification()
    device = torch.device(device) if device is not None else model_device(model)
    was_training = model.training
    model.eval()
    metrics = task.metrics()
    n = 0
    try:
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            x, y = task.split_batch(batch)
            x, y = move_to(x, device), move_to(y, device)
            if channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            args = task.model_args(x, y, training=False)
            if i == 0:
                size = tuple(x.shape) if isinstance(x, torch.Tensor) else ()
                out = guarded_forward(model, args[0] if len(args) == 1 else args, size)
            else:
                out = model(*args)
            metrics.update(out, y)
            n += task.batch_size(x, y)
    finally:
        model.train(was_training)
    return {**metrics.compute(), "n": n}
