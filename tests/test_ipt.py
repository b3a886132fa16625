"""IPT: heads and tails per task around one body, chopping larger images into overlapping crops,
the corruptions of pre-training, the patch contrastive loss, the denoising data and task, and the
ipt method through the public API (errors at the door, save and load)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import leanvision as lv
from leanvision.errors import ConfigError, UnsupportedModelError
from leanvision.methods.ipt import corrupt, patch_contrastive_loss
from leanvision.models.ipt import IPT

SR_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "sr"
needs_sr = pytest.mark.skipif(not (SR_ROOT / "Set5").is_dir(), reason=f"no {SR_ROOT}")


def _tiny(**kw) -> IPT:
    torch.manual_seed(0)
    cfg = dict(n_feats=4, crop=12, num_heads=2, enc_layers=1, dec_layers=1, overlap=4)
    return lv.create_model("ipt_cpu", **{**cfg, **kw}).eval()


@pytest.mark.parametrize("task, scale", [("sr2", 2), ("sr3", 3), ("sr4", 4), ("noise30", 1)])
def test_each_task_has_its_head_and_tail_and_any_size_runs(task, scale):
    m = _tiny().set_task(task)
    assert m.task == task and m.scale == scale
    with torch.no_grad():
        for h, w in ((12, 12), (19, 30), (7, 10), (12, 5)):
            assert m(torch.rand(2, 3, h, w)).shape == (2, 3, h * scale, w * scale)


def test_chopping_keeps_each_crops_output_where_it_alone_covers():
    """A 20x20 image is cut into 12x12 crops at 0 and 8: its top-left 8x8 (times the scale) is
    covered by the first crop only, so it equals that crop's own output there; the centre, in
    all four crops, is their mean."""
    m = _tiny().set_task("sr2")
    x = torch.rand(1, 3, 20, 20)
    with torch.no_grad():
        whole = m(x)
        first = m.forward_crop(x[:, :, :12, :12])
        last = m.forward_crop(x[:, :, 8:, 8:])
        tr = m.forward_crop(x[:, :, :12, 8:])
        bl = m.forward_crop(x[:, :, 8:, :12])
    assert torch.allclose(whole[..., :16, :16], first[..., :16, :16], atol=1e-6)
    assert torch.allclose(whole[..., 24:, 24:], last[..., 8:, 8:], atol=1e-6)
    # the centre 4x4 (times 2) lies in all four crops: their mean
    mean = (first[..., 16:24, 16:24] + tr[..., 16:24, :8] + bl[..., :8, 16:24]
            + last[..., :8, :8]) / 4  # fmt: skip
    assert torch.allclose(whole[..., 16:24, 16:24], mean, atol=1e-6)


def test_task_is_saved_with_the_weights_and_checked(tmp_path):
    m = _tiny().set_task("noise50")
    lv.save(m, tmp_path / "ipt.pt")
    back = lv.load(tmp_path / "ipt.pt")
    assert back.task == "noise50"
    assert lv.create_model("ipt_cpu", task="sr3").task == "sr3"  # the first task, by name
    with pytest.raises(ConfigError, match="not one of this IPT's"):
        _tiny(tasks=("sr2",)).set_task("sr4")
    with pytest.raises(ConfigError, match="allowed"):
        _tiny(tasks=("sr5",))
    with pytest.raises(ConfigError, match="multiple of patch_dim"):
        _tiny(crop=13)


def test_corruptions():
    torch.manual_seed(0)
    clean = torch.rand(3, 3, 48, 48)
    x, y = corrupt(clean, "sr3", 12)
    assert x.shape == (3, 3, 12, 12) and y.shape == (3, 3, 36, 36)
    ref = F.interpolate(y, size=(12, 12), mode="bicubic", antialias=True).clamp(0, 1)
    assert torch.allclose(x, (ref * 255).round() / 255)
    x, y = corrupt(clean, "noise50", 12)
    assert x.shape == y.shape == (3, 3, 12, 12)
    assert (x - y).std().item() * 255 == pytest.approx(50, rel=0.1)
    with pytest.raises(ConfigError, match="needs clean crops of 48"):
        corrupt(clean[..., :40, :40], "sr4", 12)


def test_contrastive_loss_rewards_patches_of_one_image_agreeing():
    torch.manual_seed(0)
    per_image = torch.randn(8, 1, 32)
    together = per_image.expand(8, 16, 32) + 0.01 * torch.randn(8, 16, 32)
    scattered = torch.randn(8, 16, 32)
    assert patch_contrastive_loss(together) < 0.1 < patch_contrastive_loss(scattered)
    f = scattered.clone().requires_grad_(True)
    patch_contrastive_loss(f).backward()
    assert f.grad.abs().sum() > 0
    assert patch_contrastive_loss(torch.randn(1, 16, 32)).item() == 0.0


@needs_sr
def test_denoise_data_and_task_score_rgb_psnr_like_scikit_image():
    from skimage.metrics import peak_signal_noise_ratio

    data = lv.load_data("denoise", root=SR_ROOT, sigma=30, batch_size=2, max_test=2)
    noisy, clean = data.test_set[0]
    again, _ = data.test_set[0]
    assert torch.equal(noisy, again)  # the test noise is fixed
    assert (noisy - clean).std().item() * 255 == pytest.approx(30, rel=0.05)
    scores = lv.evaluate(torch.nn.Identity(), data.test)

    def u8(t):
        return (t.clamp(0, 1) * 255).round().permute(1, 2, 0).double().numpy()

    ref = np.mean([peak_signal_noise_ratio(u8(c), u8(n), data_range=255)
                   for n, c in (data.test_set[i] for i in range(2))])  # fmt: skip
    assert scores["psnr"] == pytest.approx(ref, abs=1e-9)
    with pytest.raises(ConfigError, match="sigma"):
        lv.load_data("denoise", root=SR_ROOT, sigma=0)


@needs_sr
def test_ipt_pretrains_through_compress_and_checks_its_inputs(tmp_path):
    data = lv.load_data("sr", root=SR_ROOT, scale=4, patch_size=12, batch_size=4, repeat=1,
                        max_val=1, max_test=1)  # fmt: skip
    m = _tiny()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    pre = lv.compress(m, "ipt", data=data, finetune_epochs=1, max_steps=3, progress=False)
    assert pre.task == "sr4"  # the data's own task, for validation and after
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())  # a copy trained
    assert not torch.equal(pre.pos, m.pos)
    assert lv.evaluate(pre, data.test)["psnr"] > 0
    with pytest.raises(UnsupportedModelError, match="pre-trains an IPT"):
        lv.compress(lv.create_model("edsr_cpu"), "ipt", data=data, finetune_epochs=1)
    small = lv.load_data("sr", root=SR_ROOT, scale=2, patch_size=12, batch_size=4, repeat=1)
    with pytest.raises(ConfigError, match="raise patch_size"):
        lv.compress(_tiny(), "ipt", data=small, finetune_epochs=1)
    with pytest.raises(ConfigError, match="tasks"):
        lv.compress(_tiny(), "ipt", data=data, tasks=["sr7"])
