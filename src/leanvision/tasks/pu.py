"""Classification from positive and unlabelled data: a batch's unlabelled samples carry the
label ``UNLABELLED`` (-100, cross-entropy's ``ignore_index``); the task loss is the
cross-entropy of the labelled ones. Evaluation is plain classification on labelled splits.

The task of each client in federated PU learning (FedPU, Lin et al., ICML 2022, arXiv
2106.10904); FedPU adds its risk on the unlabelled samples through a hook, and on its own the
task is the baseline that trains on the labelled positives only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .classification import Classification, logits_of

__all__ = ["UNLABELLED", "PositiveUnlabelled"]

#: The label of an unlabelled sample (``F.cross_entropy``'s default ``ignore_index``).
UNLABELLED = -100


class PositiveUnlabelled(Classification):
    """Batches of ``(images, labels)`` where a label is a class index or :data:`UNLABELLED`.

    The loss is the mean cross-entropy over the batch's labelled samples (0 when it holds
    none); the running training metric is the top-1 of the labelled samples, counted over the
    whole batch (so with half the samples unlabelled it tops out at 50 %).
    """

    name = "pu_classification"

    def loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        logits = logits_of(outputs).float()
        known = targets != UNLABELLED
        if not bool(known.any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits[known], targets[known],
                               label_smoothing=self.label_smoothing)  # fmt: skip
