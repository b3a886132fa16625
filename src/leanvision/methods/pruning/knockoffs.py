"""Knockoff images for SCOP: label-free samples that follow the training images' statistics.

SCOP (Tang et al., NeurIPS 2020, arXiv 2010.10732) draws its knockoffs from a pre-trained
generator, independently of the real batch. Knockoffs must satisfy (i) X̃ ⊥ Y | X — they are
made without labels — and (ii) exchangeability with the real data. Two cheap constructions
replace the generator: :class:`ResampledKnockoffs`, random other training images (exact
independent draws of the data, which the generator only approximates), and
:class:`GaussianKnockoffs`, second-order model-X knockoffs (Candès et al., 2018) of the
images with the choice s = 1, i.e. independent draws from a Gaussian with the images' mean
and covariance. The covariance is the top principal
components (scikit-learn's randomized PCA) plus a per-pixel residual variance. Condition (ii)
then holds to second order at the input; how well it holds on a network's features is what
:func:`feature_moment_gap` measures. Any ``callable(n) -> (n, C, H, W)`` (a trained
generator) can be passed to ``scop`` instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from leanvision.errors import ConfigError

__all__ = ["GaussianKnockoffs", "ResampledKnockoffs", "collect_images", "feature_moment_gap"]


class GaussianKnockoffs:
    """Independent samples of a Gaussian fitted to images: mean + top-k PCA + residual noise.

    Args:
        mean: (C, H, W) mean image.
        components: (k, C·H·W) orthonormal principal directions.
        scales: (k,) standard deviation along each direction.
        residual_std: (C·H·W,) standard deviation left after the k directions, per pixel.
    """

    def __init__(
        self,
        mean: torch.Tensor,
        components: torch.Tensor,
        scales: torch.Tensor,
        residual_std: torch.Tensor,
    ) -> None:
        self.mean, self.components = mean.float(), components.float()
        self.scales, self.residual_std = scales.float(), residual_std.float()

    @classmethod
    def fit(cls, images: torch.Tensor, n_components: int = 256, seed: int = 0) -> GaussianKnockoffs:
        """Fit to (N, C, H, W) images (labels are never seen)."""
        if images.dim() != 4 or images.shape[0] < 2:
            raise ConfigError(
                f"knockoffs need a batch of images (N, C, H, W), got {tuple(images.shape)}"
            )
        n = images.shape[0]
        flat = images.reshape(n, -1).double().numpy()
        k = max(1, min(n_components, n - 1, flat.shape[1]))
        from sklearn.decomposition import PCA  # 2.5 s to import: only when a knockoff is fit

        pca = PCA(n_components=k, svd_solver="randomized", random_state=seed).fit(flat)
        recon = pca.inverse_transform(pca.transform(flat))
        residual = np.sqrt(np.maximum((flat - recon).var(axis=0), 0.0))
        return cls(
            torch.from_numpy(pca.mean_).reshape(images.shape[1:]),
            torch.from_numpy(pca.components_),
            torch.from_numpy(np.sqrt(pca.explained_variance_)),
            torch.from_numpy(residual),
        )

    def __call__(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` knockoff images (n, C, H, W)."""
        k = self.scales.shape[0]
        z = torch.randn(n, k, generator=generator) * self.scales
        noise = torch.randn(n, self.residual_std.shape[0], generator=generator) * self.residual_std
        flat = z @ self.components + noise
        return self.mean + flat.reshape(n, *self.mean.shape)


class ResampledKnockoffs:
    """Training images drawn at random, independently of the batch they are paired with.

    SCOP's generator approximates independent draws from the image distribution; a random
    other training image is an exact such draw. It is independent of the paired sample and of
    its label, so X̃ ⊥ Y | X holds exactly, and its features follow the real features'
    distribution (:func:`feature_moment_gap` ≈ 0).
    """

    def __init__(self, dataset: Any, seed: int = 0) -> None:
        if len(dataset) == 0:
            raise ConfigError("cannot draw knockoffs: the training set is empty")
        self.dataset = dataset
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, n: int) -> torch.Tensor:
        idx = torch.randint(len(self.dataset), (n,), generator=self.generator)
        return torch.stack([self.dataset[int(i)][0] for i in idx])


def collect_images(dataset: Any, n: int, seed: int = 0) -> torch.Tensor:
    """Up to ``n`` images (no labels) drawn at random from a map-style dataset."""
    if len(dataset) == 0:
        raise ConfigError("cannot fit knockoffs: the training set is empty")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset), generator=g)[: min(n, len(dataset))]
    return torch.stack([dataset[int(i)][0] for i in idx])


@torch.no_grad()
def feature_moment_gap(
    model: nn.Module, real: torch.Tensor, knockoff: torch.Tensor, layers: Iterable[str]
) -> dict[str, dict[str, float]]:
    """How far knockoff features are from real ones, per layer (0 = same first two moments).

    For each named layer: ``mean_gap`` = mean over channels of |μ_real − μ_knockoff| / σ_real
    and ``std_ratio`` = mean over channels of σ_knockoff / σ_real, with per-channel moments
    taken over batch and positions.
    """
    from leanvision.engine import FeatureRecorder

    model = model.eval()
    out: dict[str, dict[str, float]] = {}
    with FeatureRecorder(model, list(layers)) as rec:
        model(real)
        feats_r = dict(rec.features)
        rec.clear()
        model(knockoff)
        feats_k = dict(rec.features)
    for name, fr in feats_r.items():
        fk = feats_k[name]
        dims = [0, 2, 3] if fr.dim() == 4 else [0]
        mr, sr = fr.mean(dims), fr.std(dims).clamp_min(1e-6)
        mk, sk = fk.mean(dims), fk.std(dims)
        out[name] = {
            "mean_gap": float(((mr - mk).abs() / sr).mean()),
            "std_ratio": float((sk / sr).mean()),
        }
    return out
