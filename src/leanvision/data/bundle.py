"""`DataBundle`: the three splits of a dataset, its metadata, and loaders over them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from leanvision.errors import ConfigError

__all__ = ["DataBundle"]

SPLITS = ("train", "val", "test")


@dataclass
class DataBundle:
    """Train/val/test datasets of one dataset, with what a model and a report need to know.

    Every dataset returns ``(image, label)``: a normalised float tensor (C, H, W) and an int.
    ``train_set`` applies the training augmentation (if any); ``val_set`` and ``test_set``
    never do. ``val_set`` is carved from the training data; ``test_set`` is never used for
    selection or calibration.

    Attributes:
        name: Dataset name as given to ``load_data``.
        train_set, val_set, test_set: The splits.
        num_classes: Number of classes.
        input_size: (C, H, W) of one image as the model receives it, without the batch (the
            one meaning of ``input_size``: :mod:`leanvision.shapes`).
        mean, std: Per-channel normalisation applied to every image.
        class_names: Name of each class, by label index.
        batch_size: Batch size of ``train``.
        eval_batch_size: Batch size of ``val`` and ``test`` (default ``2 * batch_size``).
        num_workers: DataLoader worker processes.
        seed: Seed of the split and of the ``train`` loader's shuffling.
        task: The :class:`leanvision.tasks.Task` these batches are for (what the trainer and
            ``lv.evaluate`` measure by default); None: classification.
    """

    name: str
    train_set: Dataset
    val_set: Dataset
    test_set: Dataset
    num_classes: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]
    batch_size: int = 128
    eval_batch_size: int | None = None
    num_workers: int = 0
    seed: int = 0
    task: Any = None
    # One generator for the bundle's life: successive `train` loaders continue its stream,
    # so epochs see different orders, and a new bundle with the same seed repeats them.
    _generator: torch.Generator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.eval_batch_size is None:
            self.eval_batch_size = 2 * self.batch_size
        self._generator = torch.Generator().manual_seed(self.seed)

    @property
    def train(self) -> DataLoader:
        """Shuffled training loader (seeded from ``seed``; a new order each time it is built)."""
        return self.loader("train", shuffle=True, generator=self._generator)

    @property
    def val(self) -> DataLoader:
        """Validation loader, in a fixed order."""
        return self.loader("val")

    @property
    def test(self) -> DataLoader:
        """Test loader, in a fixed order."""
        return self.loader("test")

    def dataset(self, split: str) -> Dataset:
        """The dataset of ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
        return getattr(self, f"{split}_set")

    def loader(
        self,
        split: str,
        batch_size: int | None = None,
        shuffle: bool = False,
        sampler: Sampler | None = None,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
    ) -> DataLoader:
        """Build a DataLoader over one split.

        Args:
            split: ``"train"``, ``"val"`` or ``"test"``.
            batch_size: Defaults to ``batch_size`` for train and ``eval_batch_size`` otherwise.
            shuffle: Shuffle each epoch. Without ``generator`` the order is drawn from
                torch's global RNG, so reseeding torch before an epoch repeats it.
            sampler: A sampler (e.g. ``DistributedSampler``); excludes ``shuffle``.
            drop_last: Drop the last incomplete batch.
            generator: RNG for shuffling (and worker seeds) instead of the global one.

        Returns:
            A DataLoader yielding ``(images (B, C, H, W) float, labels (B,) int64)`` (or the
            task's batches), with the bundle's task as ``lv_task``.
        """
        dataset = self.dataset(split)
        if batch_size is None:
            batch_size = self.batch_size if split == "train" else self.eval_batch_size
        if sampler is not None and shuffle:
            raise ConfigError("pass either shuffle=True or a sampler, not both")
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            generator=generator,
            collate_fn=self.task.collate if self.task is not None else None,
        )
        loader.lv_task = self.task  # lv.evaluate(model, data.test) measures the right task
        return loader

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for reports: name, split sizes, classes, input size, mean/std."""
        return {
            "name": self.name,
            "train_size": len(self.train_set),
            "val_size": len(self.val_set),
            "test_size": len(self.test_set),
            "num_classes": self.num_classes,
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "seed": self.seed,
        }
