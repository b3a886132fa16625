"""Split datasets over shared sources, and the deterministic stratified split."""

from __future__ import annotations

import abc
import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.datasets.folder import pil_loader

__all__ = ["FileImageDataset", "SplitDataset", "TensorImageDataset", "stratified_split"]


class SplitDataset(Dataset, abc.ABC):
    """One split of a source: an ordered index list into it, plus a per-sample transform.

    Attributes:
        indices: int64 array, position of each sample in the source it was drawn from.
        labels: int64 array of the source's labels (all of them, not only this split's).
        transform: Applied to each loaded image.
    """

    def __init__(self, labels: np.ndarray, indices: np.ndarray, transform: Callable) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = int(self.indices[i])
        return self.transform(self._load(j)), int(self.labels[j])

    @abc.abstractmethod
    def _load(self, j: int) -> object:
        """The raw image at source position ``j`` (subclasses read memory or files)."""

    @property
    def targets(self) -> list[int]:
        """Label of each sample of this split, in order."""
        return self.labels[self.indices].tolist()

    def head(self, n: int | None) -> SplitDataset:
        """The first ``n`` samples (all if ``n`` is None), sharing the source."""
        if n is None or n >= len(self):
            return self
        out = copy.copy(self)
        out.indices = self.indices[:n]
        return out


class TensorImageDataset(SplitDataset):
    """Split of in-memory uint8 images ``images`` (N, C, H, W)."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: np.ndarray,
        indices: np.ndarray,
        transform: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        super().__init__(labels, indices, transform)
        self.images = images

    def _load(self, j: int) -> torch.Tensor:
        return self.images[j]


class FileImageDataset(SplitDataset):
    """Split of image files ``paths``, read as RGB PIL images."""

    def __init__(
        self, paths: Sequence[str], labels: np.ndarray, indices: np.ndarray, transform: Callable
    ) -> None:
        super().__init__(labels, indices, transform)
        self.paths = list(paths)

    def _load(self, j: int) -> object:
        return pil_loader(self.paths[j])


def _allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over classes in proportion to ``counts`` (largest remainder)."""
    exact = total * counts / counts.sum()
    take = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - take), kind="stable")
    take[order[: total - take.sum()]] += 1
    return take


def _interleave(groups: list[np.ndarray]) -> np.ndarray:
    """Merge per-class index lists so that every prefix is close to class-balanced."""
    if not groups or sum(len(g) for g in groups) == 0:
        return np.zeros(0, dtype=np.int64)
    idx = np.concatenate(groups)
    rank = np.concatenate([(np.arange(len(g)) + 0.5) / len(g) for g in groups])
    cls = np.concatenate([np.full(len(g), c) for c, g in enumerate(groups)])
    return idx[np.lexsort((cls, rank))]


def stratified_split(
    labels: np.ndarray, sizes: Sequence[int], seed: int, indices: np.ndarray | None = None
) -> list[np.ndarray]:
    """Deterministic stratified split of ``indices`` (default: all) into parts.

    Each class is shuffled with a generator seeded by ``seed`` and dealt to the parts in
    proportion to its frequency. Every returned part is ordered so that any prefix is close to
    class-balanced (what ``max_train`` and friends rely on).

    Args:
        labels: int labels of the whole source, shape (N,).
        sizes: Number of samples of each leading part; the last part gets the rest.
        seed: Seed of the shuffle.
        indices: Subset of positions in ``labels`` to split.

    Returns:
        ``len(sizes) + 1`` int64 arrays of positions in ``labels``, pairwise disjoint.
    """
    labels = np.asarray(labels)
    indices = np.arange(len(labels)) if indices is None else np.asarray(indices)
    if sum(sizes) > len(indices):
        raise ValueError(f"cannot take {sum(sizes)} samples from {len(indices)}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels[indices], return_counts=True)
    quotas = [_allocate(counts, n) for n in sizes]
    parts: list[list[np.ndarray]] = [[] for _ in range(len(sizes) + 1)]
    for c, cls in enumerate(classes):
        members = rng.permutation(indices[labels[indices] == cls])
        start = 0
        for p, quota in enumerate(quotas):
            parts[p].append(members[start : start + quota[c]])
            start += quota[c]
        parts[-1].append(members[start:])
    return [_interleave(groups) for groups in parts]
