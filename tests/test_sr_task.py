"""The super-resolution task and data: PSNR/SSIM on Y against scikit-image's on real images,
aligned LR/HR crops, held-out splits, errors at the door, and a tiny SR net trained by the one
trainer with no change to it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import leanvision as lv
from leanvision.data.sr import SRPatches, hr_lr_pair
from leanvision.errors import ConfigError, InputShapeError
from leanvision.tasks import SuperResolution

SR_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "sr"
pytestmark = pytest.mark.skipif(not (SR_ROOT / "Set5").is_dir(), reason=f"no {SR_ROOT}")


def _bicubic_up(lr: torch.Tensor, scale: int) -> torch.Tensor:
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)


def test_psnr_and_ssim_on_y_equal_scikit_image_on_set5():
    from skimage.color import rgb2ycbcr
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    scale = 3
    metrics = SuperResolution(scale).metrics()
    ours, ref = [], []
    for path in sorted((SR_ROOT / "Set5").glob("*.png")):
        hr, lr = hr_lr_pair(path, scale)
        sr = _bicubic_up(lr[None].float() / 255, scale)
        one = SuperResolution(scale).metrics()
        one.update(sr, hr[None].float() / 255)
        metrics.update(sr, hr[None].float() / 255)
        ours.append(one.compute())
        # scikit-image's own YCbCr of the 8-bit images, the border cropped
        sr8 = (sr[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        y_sr = rgb2ycbcr(sr8)[scale:-scale, scale:-scale, 0]
        y_hr = rgb2ycbcr(hr.permute(1, 2, 0).numpy())[scale:-scale, scale:-scale, 0]
        ref.append({
            "psnr": peak_signal_noise_ratio(y_hr, y_sr, data_range=255),
            "ssim": structural_similarity(y_hr, y_sr, data_range=255, gaussian_weights=True,
                                          sigma=1.5, use_sample_covariance=False),
        })  # fmt: skip
    for o, r in zip(ours, ref, strict=True):
        assert o["psnr"] == pytest.approx(r["psnr"], abs=1e-9)
        assert o["ssim"] == pytest.approx(r["ssim"], abs=1e-9)
    both = metrics.compute()  # the mean over images, not the PSNR of the mean error
    assert both["psnr"] == pytest.approx(np.mean([r["psnr"] for r in ref]), abs=1e-9)
    assert 29 < both["psnr"] < 33  # bicubic x3 on Set5 (published, MATLAB resize: 30.39)


def test_known_values_and_bad_outputs():
    hr = torch.rand(1, 3, 20, 20)
    same = SuperResolution(2).metrics()
    same.update(hr.clone(), hr)
    out = same.compute()
    assert out["psnr"] == float("inf") and out["ssim"] == pytest.approx(1.0)
    # a uniform Y error of d gives PSNR 20 log10(255 / d): grey images one 8-bit level apart
    grey = torch.full((1, 3, 20, 20), 100 / 255)
    off = SuperResolution(2).metrics()
    off.update(grey + 1 / 255, grey)
    d = (65.481 + 128.553 + 24.966) / 255  # Y step of one level on every channel
    assert off.compute()["psnr"] == pytest.approx(20 * np.log10(255 / d), abs=1e-9)
    with pytest.raises(InputShapeError, match="does the model upscale"):
        SuperResolution(2).loss(torch.rand(1, 3, 10, 10), hr)
    with pytest.raises(InputShapeError, match="at least 7x7"):
        SuperResolution(4).metrics().update(torch.rand(1, 3, 12, 12), torch.rand(1, 3, 12, 12))
    with pytest.raises(ConfigError, match="scale must be"):
        SuperResolution(0)


def test_crops_are_aligned_and_flipped_together():
    torch.manual_seed(0)
    hr = torch.randint(0, 256, (3, 60, 90), dtype=torch.uint8)
    # each LR pixel the centre of its 3x3 HR block: alignment (and flips) checkable exactly
    lr = hr[:, 1::3, 1::3].contiguous()
    tiny = (torch.zeros(3, 9, 9, dtype=torch.uint8), torch.zeros(3, 3, 3, dtype=torch.uint8))
    with pytest.warns(UserWarning, match="left out: \\['tiny'\\]"):
        patches = SRPatches([(hr, lr), tiny], ["big", "tiny"], 3, 8, repeat=5, augment=True)
    assert len(patches) == 5 and patches.left_out == ["tiny"]
    for i in range(20):
        x, y = patches[i]
        assert x.shape == (3, 8, 8) and y.shape == (3, 24, 24)
        assert torch.equal(x, y[:, 1::3, 1::3])


def test_load_data_sr_splits_and_checks_its_options():
    data = lv.load_data("sr", root=SR_ROOT, scale=2, batch_size=4, patch_size=24)
    assert isinstance(data.task, SuperResolution) and data.task.scale == 2
    assert data.eval_batch_size == 1 and data.input_size == (3, 24, 24)
    train, val = set(data.train_set.names), set(data.val_set.names)
    assert not train & val and len(train) + len(val) == 91 and len(val) == 9
    assert data.test_set.names == ["baby", "bird", "butterfly", "head", "woman"]
    lr, hr = next(iter(data.train))
    assert lr.shape == (4, 3, 24, 24) and hr.shape == (4, 3, 48, 48)
    again = lv.load_data("sr", root=SR_ROOT, scale=2, patch_size=24)
    assert again.val_set.names == data.val_set.names  # fixed by the seed
    with pytest.raises(ConfigError, match="takes no option\\(s\\) \\['scale'\\]"):
        lv.load_data("mnist5k", scale=2)
    with pytest.raises(ConfigError, match="scale=5 is not allowed"):
        lv.load_data("sr", root=SR_ROOT, scale=5)
    with pytest.raises(ConfigError, match="must be held out"):
        lv.load_data("sr", root=SR_ROOT, train_set="Set5", test_set="Set5")
    with pytest.raises(ConfigError, match="evaluates 1 per batch"):
        lv.load_data("sr", root=SR_ROOT, eval_batch_size=8)
    with pytest.raises(lv.errors.DataError, match="needs root"):
        lv.load_data("sr")


class _TinySR(nn.Module):
    """Bicubic upsampling plus a learned 3x3 residual (an SR net in a few lines)."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.body = nn.Conv2d(3, 3, 3, padding=1)
        nn.init.zeros_(self.body.weight)
        nn.init.zeros_(self.body.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = _bicubic_up(x, self.scale)
        return up + self.body(up)


def test_the_one_trainer_trains_an_sr_net_and_evaluate_scores_it(tmp_path):
    data = lv.load_data("sr", root=SR_ROOT, scale=2, batch_size=8, patch_size=24, repeat=1,
                        max_val=2, max_test=2)  # fmt: skip
    model = _TinySR(2)
    before = lv.evaluate(model, data.test)
    assert set(before) >= {"psnr", "ssim", "loss"}
    res = lv.train(model, data, epochs=1, max_steps=3, lr=1e-3, opt="adam", out_dir=str(tmp_path),
                   progress=False)  # fmt: skip
    row = res.history[-1]
    assert "val_psnr" in row and "val_ssim" in row and row["val_psnr"] > 20
    after = lv.evaluate(res.model, data.test)
    assert after["psnr"] != before["psnr"]  # it trained


def test_measure_models_and_the_cli_report_psnr_ssim_for_sr_models(tmp_path, capsys):
    """An SR model's results row carries PSNR/SSIM under ``metrics`` (no top-1), the table
    shows them, and ``leanvision eval`` prints them."""
    from leanvision.cli import main
    from leanvision.pipeline import measure_models
    from leanvision.report import markdown_table, write_results

    data = lv.load_data("sr", root=SR_ROOT, scale=2, patch_size=16, max_test=2)
    torch.manual_seed(0)
    models = {"bicubic": _TinySR(2), "edsr_cpu": lv.create_model("edsr_cpu", scale=2)}
    rows = measure_models(models, data, baseline="bicubic", threads=1, repeats=2)
    by = {r["name"]: r for r in rows}
    assert by["bicubic"]["top1"] is None and set(by["bicubic"]["metrics"]) == {"psnr", "ssim"}
    direct = lv.evaluate(models["bicubic"], data.test)
    assert by["bicubic"]["metrics"]["psnr"] == pytest.approx(direct["psnr"])
    assert by["edsr_cpu"]["metrics"]["psnr"] < by["bicubic"]["metrics"]["psnr"]  # untrained
    write_results(tmp_path / "sr", rows, allow_dirty=True)
    table = markdown_table(rows)
    assert "PSNR dB" in table.splitlines()[0] and "Top-1" not in table.splitlines()[0]
    assert main(["eval", "--model", "edsr_cpu", "--data", "sr", "--data-dir", str(SR_ROOT),
                 "--split", "test"]) in (0, None)  # fmt: skip
    out = capsys.readouterr().out
    assert "PSNR dB " in out and "SSIM " in out and "top-1" not in out and "(n=5)" in out
