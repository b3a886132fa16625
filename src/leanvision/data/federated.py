"""Federated positive-unlabelled (PU) splits: a training split dealt to clients, each of which
labels the images of a few classes and holds the rest unlabelled.

The setting of FedPU (Lin et al., "Federated Learning with Positive and Unlabeled Data", ICML
2022, arXiv 2106.10904): client k labels the classes ``P_k``; of its images of those classes a
fraction ``labelled_fraction`` carries their label, and every other image it holds (the rest
of its ``P_k`` images and all images of the classes it does not label) is unlabelled. An
unlabelled sample's label reads ``UNLABELLED`` (PyTorch cross-entropy's ``ignore_index``), so
the true label of an unlabelled image never leaves the split.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from leanvision.errors import ConfigError
from leanvision.tasks import Classification, PositiveUnlabelled
from leanvision.tasks.pu import UNLABELLED

__all__ = [
    "UNLABELLED",
    "PUClient",
    "PULabels",
    "client_bundle",
    "dataset_targets",
    "pu_partition",
    "unlabelled_priors",
]


@dataclass(frozen=True)
class PUClient:
    """One client's share of a training split.

    Attributes:
        client_id: 0 .. num_clients - 1.
        labelled_classes: The classes this client labels (``P_k``), sorted.
        labelled: Positions (in the split) of its labelled images.
        unlabelled: Positions of its unlabelled images.
        labelled_counts: Labelled images per class of ``labelled_classes``.
    """

    client_id: int
    labelled_classes: tuple[int, ...]
    labelled: np.ndarray
    unlabelled: np.ndarray
    labelled_counts: tuple[int, ...]

    @property
    def size(self) -> int:
        """Images this client holds."""
        return len(self.labelled) + len(self.unlabelled)


def dataset_targets(dataset: Dataset) -> np.ndarray:
    """The labels of a classification split, in order (its ``targets`` if it has them)."""
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = [int(dataset[i][1]) for i in range(len(dataset))]
    return np.asarray(targets, dtype=np.int64)


def pu_partition(
    targets: Sequence[int] | np.ndarray,
    num_classes: int,
    num_clients: int,
    classes_per_client: int,
    labelled_fraction: float,
    seed: int = 0,
) -> list[PUClient]:
    """Deal a split to ``num_clients`` clients (an equal, shuffled, IID share each); client k
    labels the classes ``(k * classes_per_client + j) % num_classes``, j < classes_per_client,
    and a ``labelled_fraction`` of its images of them (at least one per class).

    Raises:
        ConfigError: a count out of range, or a client left with no labelled image.
    """
    targets = np.asarray(targets, dtype=np.int64)
    if num_clients < 1 or num_clients > len(targets):
        raise ConfigError(f"num_clients must be in [1, {len(targets)}], got {num_clients}")
    if not 1 <= classes_per_client <= num_classes:
        raise ConfigError(
            f"classes_per_client must be in [1, {num_classes}], got {classes_per_client}"
        )
    if not 0.0 < labelled_fraction <= 1.0:
        raise ConfigError(f"labelled_fraction must be in (0, 1], got {labelled_fraction}")
    rng = np.random.default_rng(seed)
    shares = np.array_split(rng.permutation(len(targets)), num_clients)
    clients = []
    for k, share in enumerate(shares):
        classes = tuple(sorted({(k * classes_per_client + j) % num_classes
                                for j in range(classes_per_client)}))  # fmt: skip
        labelled, counts = [], []
        for c in classes:
            of_c = share[targets[share] == c]
            n = int(round(labelled_fraction * len(of_c)))
            n = max(1, n) if len(of_c) else 0
            picked = rng.choice(of_c, size=n, replace=False) if n else of_c[:0]
            labelled.append(picked)
            counts.append(n)
        lab = np.sort(np.concatenate(labelled))
        if len(lab) == 0:
            raise ConfigError(
                f"client {k} labels classes {list(classes)} but its {len(share)} images hold "
                "none of them: it would have no positives; use fewer clients or more data"
            )
        unlab = np.setdiff1d(share, lab)
        clients.append(PUClient(k, classes, lab, np.sort(unlab), tuple(counts)))
    return clients


def unlabelled_priors(client: PUClient, class_priors: Sequence[float]) -> dict[int, float]:
    """The share π_i of each labelled class i among the client's unlabelled images, from the
    class priors of the whole population (``class_priors[c]``, known or assumed) and what the
    client itself knows: its image count and how many it labelled. π_i = (ρ_i · n − n_i) / n_U,
    clipped to [0, 1]; no unlabelled label is read."""
    n_u = len(client.unlabelled)
    out = {}
    for c, n_c in zip(client.labelled_classes, client.labelled_counts, strict=True):
        expected = class_priors[c] * client.size - n_c
        out[c] = float(min(1.0, max(0.0, expected / n_u))) if n_u else 0.0
    return out


class PULabels(Dataset):
    """A client's images of a split, with the labels it sees: the class for its labelled
    images, :data:`UNLABELLED` for the others (or every true label when ``supervised``)."""

    def __init__(self, base: Dataset, client: PUClient, supervised: bool = False) -> None:
        self.base = base
        self.positions = np.concatenate([client.labelled, client.unlabelled])
        self.known = np.zeros(len(self.positions), dtype=bool)
        self.known[: len(client.labelled)] = True
        self.supervised = supervised

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[int(self.positions[i])]
        return image, int(label) if (self.supervised or self.known[i]) else UNLABELLED


def client_bundle(bundle: Any, client: PUClient, supervised: bool = False, seed: int = 0) -> Any:
    """``bundle`` with its training split replaced by the client's images as the client sees
    their labels, and the task that reads them; val and test unchanged."""
    train = PULabels(bundle.train_set, client, supervised)
    task = Classification() if supervised else PositiveUnlabelled()
    return dataclasses.replace(bundle, train_set=train, seed=seed, task=task)
