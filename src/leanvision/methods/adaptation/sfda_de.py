"""``sfda_de``: source-free domain adaptation by distribution estimation (SFDA-DE).

Ding et al., "Source-Free Domain Adaptation via Distribution Estimation", CVPR 2022 (no public
code; methods-notes §29). Only the trained source model is available. Its classifier weights
serve as class anchors: target features are pseudo-labelled by spherical k-means started at the
anchors; the source's class-conditional feature distributions are estimated as Gaussians whose
means are the anchors and whose covariances are those of the target features of that
pseudo-class; surrogate source features sampled from them stand in for the source data, and the
feature extractor (the classifier frozen) is trained to bring the target features to them by
the contrastive domain discrepancy (CDD, Kang et al., CVPR 2019: class-wise MMD within a class
minus MMD across classes, Gaussian kernels).

Ours, where the paper is not specific or we depart:

- Features are the classifier's input, ℓ2-normalised (spherical, as the k-means); the anchors
  are the unit classifier weights. Each epoch starts with one pass over the target training
  images: k-means (``kmeans_iters``) and the per-class covariances (shrunk towards their mean
  variance by ``shrinkage``). Within the epoch a sample's pseudo-label is its nearest k-means
  centre under the current features.
- Per batch, as many surrogate features are drawn for a pseudo-class as the batch holds target
  samples of it; the kernels' bandwidths follow CAN (``kernel_num`` Gaussians, spaced by
  ``kernel_mul``, around the batch's mean squared distance).
- The surrogates are projected onto the unit sphere (``on_sphere``), where the normalised
  target features lie: a Gaussian around a unit anchor has a mean norm above one, a class of
  unit features a mean below one, and CDD would otherwise spend itself on that gap.
- ``pseudo_weight`` > 0 adds cross-entropy on the pseudo-labels (0 by default: CDD alone).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from leanvision.checks import check_int, check_real
from leanvision.engine import StepContext
from leanvision.methods.common import FinetuneConfig, cap_batches
from leanvision.methods.registry import register_method

from .common import FeatureHook, adapt, classifier_of

__all__ = ["SFDADEConfig", "SFDADEHook", "cdd", "class_gaussians", "spherical_kmeans"]


def spherical_kmeans(feats: torch.Tensor, init: torch.Tensor, iters: int) -> tuple:
    """Cosine k-means of unit ``feats`` (N, D) from unit centres ``init`` (K, D); an empty
    cluster keeps its centre. Returns (centres, labels)."""
    centres = F.normalize(init, dim=1)
    labels = (feats @ centres.T).argmax(1)
    for _ in range(iters):
        sums = torch.zeros_like(centres).index_add_(0, labels, feats)
        counts = torch.bincount(labels, minlength=len(centres))
        centres = torch.where(counts[:, None] > 0, F.normalize(sums, dim=1), centres)
        labels = (feats @ centres.T).argmax(1)
    return centres, labels


def class_gaussians(feats: torch.Tensor, labels: torch.Tensor, k: int, shrinkage: float
                    ) -> torch.Tensor:  # fmt: skip
    """Per class, the Cholesky factor (K, D, D) of the features' covariance, shrunk towards
    its mean variance; a class with fewer than two members takes the pooled covariance."""
    d = feats.shape[1]
    pooled = torch.cov(feats.T) if len(feats) > 1 else torch.eye(d) * 1e-2
    out = []
    for c in range(k):
        member = feats[labels == c]
        cov = torch.cov(member.T) if len(member) > 1 else pooled
        cov = (1 - shrinkage) * cov + shrinkage * cov.diagonal().mean() * torch.eye(d)
        out.append(torch.linalg.cholesky(cov + 1e-6 * torch.eye(d)))
    return torch.stack(out)


def _kernel(x: torch.Tensor, num: int, mul: float) -> torch.Tensor:
    dist = torch.cdist(x, x).pow(2)
    base = dist.detach().sum() / max(1, len(x) ** 2 - len(x)) / (mul ** (num // 2))
    return sum(torch.exp(-dist / (base * mul**i + 1e-12)) for i in range(num))


def cdd(
    target: torch.Tensor,
    t_labels: torch.Tensor,
    source: torch.Tensor,
    s_labels: torch.Tensor,
    kernel_num: int = 5,
    kernel_mul: float = 2.0,
) -> torch.Tensor:
    """Contrastive domain discrepancy: mean over classes c of MMD²(target c, source c) minus
    the mean over pairs c ≠ c' of MMD²(target c, source c'), on the classes both sides hold."""
    k = _kernel(torch.cat([target, source]), kernel_num, kernel_mul)
    n = len(target)
    tt, ss, ts = k[:n, :n], k[n:, n:], k[:n, n:]
    classes = sorted(set(t_labels.tolist()) & set(s_labels.tolist()))
    t_mask = {c: (t_labels == c).float() for c in classes}
    s_mask = {c: (s_labels == c).float() for c in classes}

    def mmd(a: int, b: int) -> torch.Tensor:
        ma, mb = t_mask[a] / t_mask[a].sum(), s_mask[b] / s_mask[b].sum()
        return ma @ tt @ ma + mb @ ss @ mb - 2 * ma @ ts @ mb

    if not classes:
        return target.sum() * 0.0
    intra = sum(mmd(c, c) for c in classes) / len(classes)
    pairs = [(a, b) for a, b in itertools.permutations(classes, 2)]
    inter = sum(mmd(a, b) for a, b in pairs) / len(pairs) if pairs else 0.0
    return intra - inter


class SFDADEHook(FeatureHook):
    """Per epoch: anchors, k-means and class Gaussians from one pass over the target images;
    per step: surrogate source features and ``ctx.losses["cdd"]`` (and ``"pseudo"``)."""

    name = "sfda_de"

    def __init__(self, data: Any, cfg: SFDADEConfig) -> None:
        super().__init__()
        self.data, self.cfg = data, cfg
        self.centres: torch.Tensor | None = None
        self.anchors: torch.Tensor | None = None
        self.chol: torch.Tensor | None = None
        self.generator = torch.Generator().manual_seed(cfg.seed)

    @torch.no_grad()
    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        model, cfg = trainer.model, self.cfg
        head = classifier_of(model)
        loader = self.data.loader("train", shuffle=False)
        feats = []
        was = model.training
        model.eval()
        for x, _ in itertools.islice(loader, cap_batches(len(loader), cfg.max_steps)):
            model(x.to(trainer.device))
            feats.append(F.normalize(self._features.float().cpu(), dim=1))
        model.train(was)
        feats_all = torch.cat(feats)
        self.anchors = F.normalize(head.weight.detach().float().cpu(), dim=1)
        self.centres, labels = spherical_kmeans(feats_all, self.anchors, cfg.kmeans_iters)
        self.chol = class_gaussians(feats_all, labels, len(self.anchors), cfg.shrinkage)

    def surrogates(self, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``counts[c]`` features sampled from class c's estimated source Gaussian (on the
        sphere if ``on_sphere``), and their labels."""
        labels = torch.repeat_interleave(torch.arange(len(counts)), counts)
        eps = torch.randn(len(labels), self.anchors.shape[1], generator=self.generator)
        feats = self.anchors[labels] + (self.chol[labels] @ eps[..., None])[..., 0]
        return (F.normalize(feats, dim=1) if self.cfg.on_sphere else feats), labels

    def on_loss(self, trainer: Any, ctx: StepContext) -> None:
        super().on_loss(trainer, ctx)
        f = F.normalize(ctx.extras["features"].float(), dim=1)
        labels = (f.detach().cpu() @ self.centres.T).argmax(1)
        surrogate, s_labels = self.surrogates(torch.bincount(labels, minlength=len(self.anchors)))
        dev = f.device
        ctx.losses["cdd"] = self.cfg.cdd_weight * cdd(
            f, labels.to(dev), surrogate.to(dev), s_labels.to(dev), self.cfg.kernel_num,
            self.cfg.kernel_mul,
        )  # fmt: skip
        if self.cfg.pseudo_weight > 0:
            ctx.losses["pseudo"] = self.cfg.pseudo_weight * F.cross_entropy(
                ctx.logits.float(), labels.to(dev)
            )


@dataclass
class SFDADEConfig(FinetuneConfig):
    """SFDA-DE (CVPR 2022): ``cdd_weight``, the k-means' ``kmeans_iters``, the covariances'
    ``shrinkage`` in [0, 1], the CDD kernels (``kernel_num``, ``kernel_mul``) and an optional
    ``pseudo_weight``; the fine-tuning options (SGD, lr 0.01)."""

    cdd_weight: float = 1.0
    kmeans_iters: int = 10
    shrinkage: float = 0.1
    kernel_num: int = 5
    kernel_mul: float = 2.0
    pseudo_weight: float = 0.0
    on_sphere: bool = True
    finetune_epochs: int = 10
    lr: float = 0.01

    def validate(self) -> None:
        """The fine-tuning checks; weights ≥ 0; shrinkage in [0, 1]; kernels ≥ 1, mul > 1."""
        super().validate()
        check_real("cdd_weight", self.cdd_weight, 0.0)
        check_real("pseudo_weight", self.pseudo_weight, 0.0)
        check_real("shrinkage", self.shrinkage, 0.0, 1.0)
        check_int("kmeans_iters", self.kmeans_iters, 0)
        check_int("kernel_num", self.kernel_num, 1)
        check_real("kernel_mul", self.kernel_mul, 1.0, lo_open=True)


@register_method(
    "sfda_de",
    family="adaptation",
    paper="Ding et al., Source-Free Domain Adaptation via Distribution Estimation, CVPR 2022",
    config=SFDADEConfig,
)
def apply_sfda_de(model: nn.Module, data: Any, cfg: SFDADEConfig) -> nn.Module:
    """Adapt a source model to unlabelled target data with surrogate source features and CDD."""
    return adapt(model, data, cfg, SFDADEHook(data, cfg), "sfda_de")
