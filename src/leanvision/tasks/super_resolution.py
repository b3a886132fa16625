"""Single-image super-resolution: L1 loss; PSNR and SSIM on the Y channel, primary PSNR.

The convention of EDSR and BasicSR (and of most published tables): the output is clamped to
[0, 1] and rounded to 8 bits like a saved image, both images go to the Y channel of ITU-R BT.601
YCbCr (MATLAB's ``rgb2ycbcr``: Y = 16 + 65.481 R + 128.553 G + 24.966 B for R, G, B in [0, 1]),
a border of ``scale`` pixels is cropped, and PSNR (peak 255) and SSIM (Gaussian window 11,
sigma 1.5, MATLAB's constants) are computed per image and averaged over images. Both metrics
are scikit-image's (``peak_signal_noise_ratio``, ``structural_similarity`` with
``gaussian_weights=True, use_sample_covariance=False``, which is MATLAB's ``ssim``).

Denoising (:class:`Denoising`) follows the colour-denoising tables (CBSD68, IPT's): the same
8-bit rounding, PSNR and SSIM on the RGB image (SSIM per channel, averaged), no border.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from leanvision.errors import ConfigError, InputShapeError

from .base import Metrics, Task

__all__ = ["Denoising", "SuperResolution", "y_channel"]

_BT601 = (65.481, 128.553, 24.966)


def y_channel(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) RGB in [0, 1] -> (B, H, W) float64 Y in [16, 235], after rounding the RGB
    to 8 bits (the saved image; rounded in the images' own dtype, as BasicSR's tensor2img)."""
    rgb = (images.detach().clamp(0, 1) * 255).round().double() / 255
    r, g, b = rgb.unbind(1)
    return (16.0 + _BT601[0] * r + _BT601[1] * g + _BT601[2] * b).cpu().numpy()


def _rgb8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) RGB in [0, 1] -> (B, H, W, 3) float64 on 0-255 after 8-bit rounding."""
    return (images.detach().clamp(0, 1) * 255).round().double().permute(0, 2, 3, 1).cpu().numpy()


class _SRMetrics(Metrics):
    """Per-image PSNR and SSIM on Y with a border of ``border`` pixels cropped, their means
    over images, and the mean L1 loss."""

    def __init__(self, border: int, rgb: bool = False) -> None:
        self.border, self.rgb = border, rgb
        self.psnr: list[float] = []
        self.ssim: list[float] = []
        self.loss_sum, self.pixels = 0.0, 0

    def update(self, outputs: Any, targets: torch.Tensor) -> None:
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity

        sr = _check_pair(outputs, targets)
        self.loss_sum += F.l1_loss(sr.float(), targets.float(), reduction="sum").item()
        self.pixels += targets.numel()
        b = self.border
        to = _rgb8 if self.rgb else y_channel
        for y_sr, y_hr in zip(to(sr), to(targets), strict=True):
            if b:
                y_sr, y_hr = y_sr[b:-b, b:-b], y_hr[b:-b, b:-b]
            if min(y_hr.shape[:2]) < 7:
                raise InputShapeError(
                    f"an image of {tuple(y_hr.shape[:2])} pixels after the {b}-pixel border: "
                    "SSIM needs at least 7x7"
                )
            with np.errstate(divide="ignore"):  # identical images: PSNR inf, as scikit-image
                self.psnr.append(float(peak_signal_noise_ratio(y_hr, y_sr, data_range=255)))
            self.ssim.append(float(structural_similarity(
                y_hr, y_sr, data_range=255, gaussian_weights=True, sigma=1.5,
                use_sample_covariance=False, channel_axis=2 if self.rgb else None,
            )))  # fmt: skip

    def compute(self) -> dict[str, float]:
        if not self.psnr:
            return {"psnr": float("nan"), "ssim": float("nan"), "loss": float("nan")}
        return {
            "psnr": float(np.mean(self.psnr)),
            "ssim": float(np.mean(self.ssim)),
            "loss": self.loss_sum / self.pixels,
        }


def _check_pair(outputs: Any, targets: torch.Tensor) -> torch.Tensor:
    sr = outputs if isinstance(outputs, torch.Tensor) else outputs[0]
    if sr.shape != targets.shape:
        raise InputShapeError(
            f"the model's output {tuple(sr.shape)} is not the HR target's {tuple(targets.shape)} "
            "(does the model upscale by the data's scale?)"
        )
    if sr.dim() != 4 or sr.shape[1] != 3:
        raise InputShapeError(f"super-resolution expects (B, 3, H, W) RGB, got {tuple(sr.shape)}")
    return sr


class SuperResolution(Task):
    """Batches of ``(lr, hr)`` images in [0, 1]; the model returns the SR image (or a tuple
    whose first item is it).

    Args:
        scale: The upscaling factor (the border cropped before scoring).
    """

    name = "super_resolution"
    primary = "psnr"
    higher_is_better = True
    train_metric_name = "loss"

    def __init__(self, scale: int) -> None:
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise ConfigError(f"scale must be an int >= 1, got {scale!r}")
        self.scale = scale

    def loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        """Mean absolute error (EDSR's L1)."""
        return F.l1_loss(_check_pair(outputs, targets), targets)

    def metrics(self) -> Metrics:
        return _SRMetrics(self.scale)

    def __repr__(self) -> str:
        return f"SuperResolution(scale={self.scale})"


class Denoising(SuperResolution):
    """Batches of ``(noisy, clean)`` images; L1 loss; PSNR and SSIM on RGB, no border.

    Args:
        sigma: The Gaussian noise's standard deviation on 0-255 (recorded, not used to score).
    """

    name = "denoising"

    def __init__(self, sigma: float) -> None:
        super().__init__(1)
        self.sigma = float(sigma)

    def metrics(self) -> Metrics:
        return _SRMetrics(0, rgb=True)

    def __repr__(self) -> str:
        return f"Denoising(sigma={self.sigma:g})"
