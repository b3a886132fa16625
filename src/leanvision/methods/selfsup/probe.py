"""What a self-supervised backbone learnt, measured on labelled splits with the backbone
frozen: weighted k-NN on its pooled features (DINO's protocol: cosine similarity, the k
nearest training images vote with weight exp(similarity / T)) and a linear probe (a
multinomial logistic regression on the standardised features), both from scikit-learn."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch
from torch import nn

from leanvision.methods.common import cap_batches

__all__ = ["extract_features", "knn_accuracy", "linear_probe_accuracy"]


@torch.no_grad()
def extract_features(model: nn.Module, loader: Any, max_batches: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The pooled features (``forward_head(..., pre_logits=True)``) and labels of a loader."""
    was = model.training
    model.eval()
    feats, labels = [], []
    for x, y in itertools.islice(loader, cap_batches(len(loader), max_batches)):
        feats.append(model.forward_head(model.forward_features(x), pre_logits=True).float())
        labels.append(torch.as_tensor(y))
    model.train(was)
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


def knn_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                 test_y: np.ndarray, k: int = 20, temperature: float = 0.07) -> float:  # fmt: skip
    """Top-1 % of DINO's weighted k-NN (cosine, weights exp(sim / T)) by scikit-learn."""
    from sklearn.neighbors import KNeighborsClassifier

    def weights(dist: np.ndarray) -> np.ndarray:  # cosine distance = 1 - similarity
        return np.exp((1.0 - dist) / temperature)

    knn = KNeighborsClassifier(n_neighbors=min(k, len(train_x)), metric="cosine",
                               weights=weights)  # fmt: skip
    knn.fit(train_x, train_y)
    return 100.0 * float((knn.predict(test_x) == test_y).mean())


def linear_probe_accuracy(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    c: float = 1.0,
    max_iter: int = 1000,
) -> float:
    """Top-1 % of a logistic regression (scikit-learn, L-BFGS, inverse regularisation ``c``)
    on features standardised with the training split's statistics."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    probe.fit(train_x, train_y)
    return 100.0 * float((probe.predict(test_x) == test_y).mean())
