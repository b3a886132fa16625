"""FADN: the sparse inference computes the training function with the hard tile mask, its MACs
fall with the marked tiles, the DCT target marks the high-frequency blocks, the hook's losses
reach the mask predictor, and the method trains, saves and loads an EDSR through the public API."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import leanvision as lv
from leanvision.errors import ConfigError, UnsupportedModelError
from leanvision.layers import FrequencyAwareBlock, hard_gumbel_sigmoid
from leanvision.layers.fadn import tiles_to_pixels
from leanvision.methods.fadn import FADNHook, dct_high_frequency_mask, fadn_convert
from leanvision.profiling import count_ops

SR_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "sr"


def _block(width: int = 6, mid: int = 5, tile: int = 4) -> FrequencyAwareBlock:
    torch.manual_seed(0)
    b = FrequencyAwareBlock(width, mid, res_scale=0.5, tile=tile)
    for p in b.parameters():
        nn.init.normal_(p, std=0.3)
    return b.eval()


@pytest.mark.parametrize("shape", [(2, 6, 9, 5), (1, 6, 1, 9), (1, 6, 8, 8), (1, 6, 3, 3)])
@pytest.mark.parametrize("share", [0.0, 0.4, 1.0])
def test_sparse_inference_equals_the_dense_block_with_the_hard_mask(shape, share):
    """Odd sizes (partial tiles at the border), one-row images, all or no tiles marked."""
    block = _block()
    x = torch.randn(shape)
    ty, tx = -(-shape[2] // 4), -(-shape[3] // 4)
    mask = torch.rand(shape[0], ty, tx, generator=torch.Generator().manual_seed(1)) < share
    pixels = tiles_to_pixels(mask[:, None].float(), 4, shape[2:])
    dense = block.dense(x, pixels)
    sparse = block.sparse(x, mask)
    assert torch.allclose(sparse, dense, atol=1e-5), (sparse - dense).abs().max()
    xc = x.contiguous(memory_format=torch.channels_last)  # another layout: same, x untouched
    before = xc.clone()
    assert torch.allclose(block.sparse(xc, mask), dense, atol=1e-5)
    assert torch.equal(xc, before)
    out = block(x)  # eval: the predictor's tile mask (mean logit > 0)
    m = block.tile_logits(x)[:, 0] > 0
    expect = block.dense(x, tiles_to_pixels(m[:, None].float(), 4, shape[2:]))
    assert torch.allclose(out, expect, atol=1e-5)
    assert block.last_density == pytest.approx(float(m.float().mean()))


def test_macs_fall_with_the_marked_tiles():
    """Counted work: the cheap 1x1 everywhere, and per marked tile conv1 on the tile and its
    ring ((t+2)^2 positions) and conv2 on the tile (t^2)."""
    block = _block(8, 8, tile=4)
    macs = {}
    for marked in (0, 3, 9):

        class Fixed(nn.Module):
            def __init__(self, marked: int) -> None:
                super().__init__()
                self.mask = torch.zeros(1, 3, 3, dtype=torch.bool)
                self.mask.view(-1)[:marked] = True

            def forward(self, x):
                return block.sparse(x, self.mask)

        macs[marked] = count_ops(Fixed(marked), (8, 12, 12)).macs
    per_tile = 9 * 8 * 8 * (6 * 6 + 4 * 4)
    assert macs[0] == 144 * 8 * 8  # the cheap path only
    assert macs[3] - macs[0] == 3 * per_tile and macs[9] - macs[0] == 9 * per_tile


def test_dct_target_marks_the_textured_blocks():
    img = torch.full((1, 3, 16, 24), 0.5)
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None]) % 2
    img[:, :, 8:16, 0:8] = checker.float()  # one textured 8x8 block out of 6
    target = dct_high_frequency_mask(img, density=1 / 6)
    assert target.shape == (1, 1, 2, 3)
    assert target[0, 0, 1, 0] == 1 and target.sum() == 1
    # odd sizes are padded to whole blocks; at least one block is marked
    odd = dct_high_frequency_mask(torch.rand(2, 3, 13, 10), density=0.01)
    assert odd.shape == (2, 1, 2, 2) and (odd.flatten(1).sum(1) == 1).all()


def test_hard_gumbel_sigmoid_is_binary_with_a_gradient():
    logits = torch.randn(4, 1, 5, 5, requires_grad=True)
    m = hard_gumbel_sigmoid(logits)
    assert set(m.detach().unique().tolist()) <= {0.0, 1.0}
    m.sum().backward()
    assert logits.grad.abs().sum() > 0


def test_hook_losses_train_the_predictor_toward_the_target():
    model, _ = fadn_convert(lv.create_model("edsr_cpu", scale=2))
    hook = FADNHook(model, density=0.25)
    x = torch.rand(2, 3, 32, 48)
    model.train()

    class Ctx:
        inputs, losses = x, {}

    model(x)
    copy.deepcopy(model)  # the step's graph tensors are not copied (the runner copies models)
    hook.on_loss(None, Ctx)
    assert set(Ctx.losses) == {"freq_mask", "budget"}
    sum(Ctx.losses.values()).backward()
    pred = model.body[0].predictor[-1].weight
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_conversion_and_errors():
    model = lv.create_model("edsr_cpu", scale=2).eval()
    new, replaced = fadn_convert(model)
    assert replaced == [f"body.{i}" for i in range(len(model.body) - 1)]
    x = torch.rand(1, 3, 10, 10)
    assert new.eval()(x).shape == model(x).shape
    b0, fb = model.body[0], new.body[0]
    assert torch.equal(fb.conv1.weight, b0.body[0].weight)
    with pytest.raises(UnsupportedModelError, match="leanvision's SR networks"):
        fadn_convert(nn.Sequential(nn.Conv2d(3, 3, 3)))
    with pytest.raises(ConfigError, match="density"):
        lv.compress(model, "fadn", density=0.0)


@pytest.mark.skipif(not (SR_ROOT / "Set5").is_dir(), reason=f"no {SR_ROOT}")
def test_compress_trains_saves_and_loads_an_edsr(tmp_path):
    data = lv.load_data("sr", root=SR_ROOT, scale=2, batch_size=4, patch_size=16, repeat=1,
                        max_val=1, max_test=1)  # fmt: skip
    torch.manual_seed(0)
    new = lv.compress(lv.create_model("edsr_cpu", scale=2), "fadn", data=data,
                      finetune_epochs=1, max_steps=2, progress=False)  # fmt: skip
    assert lv.evaluate(new, data.test)["psnr"] > 10
    lv.save(new, tmp_path / "f.pt")
    back = lv.load(tmp_path / "f.pt").eval()
    x = torch.rand(1, 3, 20, 20)
    assert (back(x) - new(x)).abs().max() < 1e-5
