"""Re-identification: a batch is ``(images, targets)`` with ``targets`` a dict of ``pid`` (the
identity, a training class) and, for part-aligned models, ``masks`` (B, K, H, W); the loss is
the identity cross-entropy plus the batch-hard triplet loss on the pooled feature (Hermans et
al., "In Defense of the Triplet Loss", 2017). Retrieval metrics (CMC rank-k, mAP) on a
query/gallery split are :func:`reid_metrics`, from torchmetrics' retrieval metrics."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from leanvision.errors import ConfigError

from .base import Metrics, Task

__all__ = ["ReID", "batch_hard_triplet", "reid_metrics"]


def batch_hard_triplet(feats: torch.Tensor, pids: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over anchors with a positive and a negative in the batch of
    max(0, margin + d(a, hardest positive) − d(a, hardest negative)), Euclidean d."""
    d = torch.cdist(feats, feats)
    same = pids[:, None] == pids[None, :]
    eye = torch.eye(len(pids), dtype=torch.bool, device=feats.device)
    pos = same & ~eye
    valid = pos.any(1) & (~same).any(1)
    if not bool(valid.any()):
        return feats.sum() * 0.0
    hardest_pos = d.masked_fill(~pos, float("-inf")).max(1).values
    hardest_neg = d.masked_fill(same, float("inf")).min(1).values
    return F.relu(margin + hardest_pos - hardest_neg)[valid].mean()


def reid_metrics(
    q_feat: torch.Tensor, q_pid: torch.Tensor, q_cam: torch.Tensor,
    g_feat: torch.Tensor, g_pid: torch.Tensor, g_cam: torch.Tensor,
    ranks: tuple[int, ...] = (1, 5),
) -> dict[str, float]:  # fmt: skip
    """CMC rank-k (%) and mAP (%) of retrieving the gallery for each query by cosine
    similarity, under the usual protocol: a gallery image of the query's identity seen by the
    query's camera is left out, and a query with no true match left is not scored
    (torchmetrics' ``RetrievalHitRate`` and ``RetrievalMAP``)."""
    from torchmetrics.retrieval import RetrievalHitRate, RetrievalMAP

    sim = F.normalize(q_feat.float(), dim=1) @ F.normalize(g_feat.float(), dim=1).T
    keep = ~((q_pid[:, None] == g_pid[None, :]) & (q_cam[:, None] == g_cam[None, :]))
    match = q_pid[:, None] == g_pid[None, :]
    scored = (match & keep).any(1)
    if not bool(scored.any()):
        raise ConfigError("no query has a true match in the gallery from another camera")
    rows, cols = torch.nonzero(keep & scored[:, None], as_tuple=True)
    # torchmetrics (1.9) counts a document with a score <= 0 as not retrieved: shift the
    # cosine similarity (in [-1, 1]) to [1, 3], which keeps every ranking.
    preds, target, indexes = sim[rows, cols] + 2.0, match[rows, cols], rows
    out = {"mAP": 100.0 * float(RetrievalMAP()(preds, target, indexes=indexes))}
    for k in ranks:
        out[f"rank{k}"] = 100.0 * float(RetrievalHitRate(top_k=k)(preds, target, indexes=indexes))
    out["queries"] = float(scored.sum())
    return out


class _LossMetrics(Metrics):
    def __init__(self, task: ReID) -> None:
        self.task, self.total, self.n = task, 0.0, 0

    def update(self, outputs: Any, targets: Any) -> None:
        n = len(targets["pid"])
        if isinstance(outputs, tuple):
            self.total += float(self.task.loss(outputs, targets)) * n
        self.n += n

    def compute(self) -> dict[str, float]:
        return {"loss": self.total / self.n if self.n else float("nan")}


class ReID(Task):
    """Identity cross-entropy (``label_smoothing``) plus ``triplet_weight`` × the batch-hard
    triplet loss (``margin``) on the model's training output ``(logits, feature)``."""

    name = "reid"
    primary = "loss"
    higher_is_better = False
    train_metric_name = "loss"

    def __init__(self, margin: float = 0.3, triplet_weight: float = 1.0,
                 label_smoothing: float = 0.1) -> None:  # fmt: skip
        if margin < 0 or triplet_weight < 0 or not 0 <= label_smoothing < 1:
            raise ConfigError(
                f"reid: margin and triplet_weight must be >= 0 and label_smoothing in [0, 1); "
                f"got {margin}, {triplet_weight}, {label_smoothing}"
            )
        self.margin, self.triplet_weight = margin, triplet_weight
        self.label_smoothing = label_smoothing

    def split_batch(self, batch: Any) -> tuple[Any, Any]:
        """``(images, targets)``; a batch of identities, (B, V, C, H, W) with targets of
        (B, V, ...), is flattened to B·V images (P identities × K views, the batch-hard
        triplet's sampling)."""
        images, targets = batch
        if images.dim() == 5:
            images = images.flatten(0, 1)
            targets = {k: v.flatten(0, 1) for k, v in targets.items()}
        return images, targets

    def model_args(self, inputs: Any, targets: Any, training: bool) -> tuple[Any, ...]:
        masks = targets.get("masks") if isinstance(targets, dict) else None
        return (inputs,) if masks is None else (inputs, masks)

    def batch_size(self, inputs: Any, targets: Any) -> int:
        return int(inputs.shape[0])

    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        if not isinstance(outputs, tuple) or len(outputs) != 2:
            raise ConfigError("a re-id model returns (logits, feature) while training")
        logits, feats = outputs
        pid = targets["pid"]
        ce = F.cross_entropy(logits.float(), pid, label_smoothing=self.label_smoothing)
        return ce + self.triplet_weight * batch_hard_triplet(feats.float(), pid, self.margin)

    def metrics(self) -> Metrics:
        return _LossMetrics(self)
