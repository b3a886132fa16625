"""IPT, the pre-trained image processing transformer (Chen et al., CVPR 2021, arXiv 2012.00364).

One head per task (a 3×3 convolution to ``n_feats`` channels, then two residual blocks of 5×5
convolutions), a shared transformer body on the head's features cut into ``patch_dim``×
``patch_dim`` patches (one token each, ``n_feats · patch_dim²`` wide, learned positions), whose
decoder adds a learned embedding of the task to its queries, and one tail per task (sub-pixel
upsampling for super-resolution, a 3×3 convolution to RGB). The body takes a fixed
``crop``×``crop`` input; a larger image is cut into overlapping crops whose outputs are
averaged where they overlap (IPT's own test-time chopping), a smaller one is padded
(reflection) and its output cut back.

``task`` selects the head and tail (``set_task``): ``"sr2"``, ``"sr3"``, ``"sr4"`` (×2, ×3,
×4 super-resolution) and ``"noise30"``, ``"noise50"`` (Gaussian denoising, σ on 0–255).
In training the decoder's patch features are kept in ``last_features`` for the contrastive
loss of the ``ipt`` method.

``ipt_base`` is the paper's configuration (64 features, 48×48 crops, 12 + 12 layers, 12 heads,
~115 M parameters in the paper's six-task form); ``ipt_cpu`` the CPU-sized one of our
benchmarks (16 features, 24×24 crops, 2 + 2 layers, 4 heads).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from leanvision.errors import ConfigError

from ._device import DeviceLike, build_on

__all__ = ["IPT", "IPT_TASKS", "task_scale"]

IPT_TASKS = ("sr2", "sr3", "sr4", "noise30", "noise50")


def task_scale(task: str) -> int:
    """The upscaling factor of a task: 2, 3 or 4 for ``sr*``, 1 for denoising."""
    if task not in IPT_TASKS:
        raise ConfigError(f"task {task!r} is not allowed; allowed: {list(IPT_TASKS)}")
    return int(task[2:]) if task.startswith("sr") else 1


class _ResBlock5(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 5, padding=2), nn.ReLU(inplace=True), nn.Conv2d(c, c, 5, padding=2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _tail(task: str, c: int) -> nn.Sequential:
    s = task_scale(task)
    layers: list[nn.Module] = []
    for step in [2, 2] if s == 4 else [s] if s > 1 else []:
        layers += [nn.Conv2d(c, step * step * c, 3, padding=1), nn.PixelShuffle(step)]
    return nn.Sequential(*layers, nn.Conv2d(c, 3, 3, padding=1))


class IPT(nn.Module):
    """Multi-head, shared-body, multi-tail image processing transformer (see the module doc).

    Args:
        tasks: The tasks it has heads and tails for (a subset of :data:`IPT_TASKS`).
        n_feats: Channels of the heads' features.
        crop: The body's input side (a multiple of ``patch_dim``).
        patch_dim: Side of a token's patch.
        num_heads, enc_layers, dec_layers, mlp_ratio: The transformer's.
        overlap: Pixels two neighbouring crops share when an image is chopped.
        task: The task to run first (default the first of ``tasks``); ``set_task`` changes it.
        num_classes: Must be 0 (an image-to-image model; timm's builder passes it).
        device, dtype: where and in what floating dtype the parameters are created.
    """

    def __init__(
        self,
        tasks: tuple[str, ...] = IPT_TASKS,
        n_feats: int = 64,
        crop: int = 48,
        patch_dim: int = 3,
        num_heads: int = 12,
        enc_layers: int = 12,
        dec_layers: int = 12,
        mlp_ratio: float = 4.0,
        overlap: int = 8,
        task: str | None = None,
        num_classes: int = 0,
        in_chans: int = 3,
        device: DeviceLike = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if num_classes:
            raise ConfigError(
                f"IPT is image-to-image: it has no classifier (num_classes={num_classes})"
            )
        if in_chans != 3:
            raise ConfigError(f"IPT takes RGB images (in_chans=3), got in_chans={in_chans}")
        tasks = tuple(tasks)
        for t in tasks:
            task_scale(t)
        if not tasks or len(set(tasks)) != len(tasks):
            raise ConfigError(f"tasks must be distinct names of {list(IPT_TASKS)}, got {tasks}")
        if crop % patch_dim or not 0 <= overlap < crop:
            raise ConfigError(f"crop={crop} must be a multiple of patch_dim={patch_dim}, and "
                              f"0 <= overlap={overlap} < crop")  # fmt: skip
        self.tasks, self.n_feats, self.crop, self.patch_dim = tasks, n_feats, crop, patch_dim
        self.overlap, self.num_classes, self.in_chans = overlap, 0, 3
        with build_on(device, dtype):
            dim = n_feats * patch_dim * patch_dim
            tokens = (crop // patch_dim) ** 2
            self.heads = nn.ModuleDict({
                t: nn.Sequential(nn.Conv2d(3, n_feats, 3, padding=1), _ResBlock5(n_feats),
                                 _ResBlock5(n_feats))
                for t in tasks
            })  # fmt: skip
            self.tails = nn.ModuleDict({t: _tail(t, n_feats) for t in tasks})
            self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
            self.task_embed = nn.Parameter(torch.zeros(len(tasks), tokens, dim))
            nn.init.trunc_normal_(self.pos, std=0.02)
            nn.init.trunc_normal_(self.task_embed, std=0.02)
            hidden = int(dim * mlp_ratio)
            self.encoder = nn.TransformerEncoder(
                nn.TransformerEncoderLayer(dim, num_heads, hidden, dropout=0.0, batch_first=True,
                                           norm_first=True),
                enc_layers, enable_nested_tensor=False,
            )  # fmt: skip
            self.decoder = nn.TransformerDecoder(
                nn.TransformerDecoderLayer(dim, num_heads, hidden, dropout=0.0, batch_first=True,
                                           norm_first=True),
                dec_layers,
            )  # fmt: skip
            self.register_buffer("task_index", torch.zeros((), dtype=torch.long))
        self.last_features: torch.Tensor | None = None
        self._task_i = 0  # the task's index as a Python int (the buffer holds it for saving)
        if task is not None:
            self.set_task(task)

    # -- the task ---------------------------------------------------------------------------

    @property
    def task(self) -> str:
        """The task whose head and tail run."""
        return self.tasks[self._task_i]

    def set_task(self, task: str) -> IPT:
        """Run ``task``'s head and tail from now on (saved with the weights); returns self."""
        if task not in self.tasks:
            raise ConfigError(f"task {task!r} is not one of this IPT's {list(self.tasks)}")
        self._task_i = self.tasks.index(task)
        self.task_index.fill_(self._task_i)  # saved with the weights
        return self

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(*args, **kwargs)
        self._task_i = int(self.task_index)  # the loaded task

    @property
    def scale(self) -> int:
        return task_scale(self.task)

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "last_features": None}  # a graph tensor: not copied

    # -- forward ----------------------------------------------------------------------------

    def body(self, f: torch.Tensor) -> torch.Tensor:
        """The transformer on ``crop``×``crop`` features: (B, C, P, P) → the same shape."""
        b, c, p, _ = f.shape
        d, n = self.patch_dim, p // self.patch_dim
        tokens = F.unfold(f, d, stride=d).transpose(1, 2)  # (B, N, C·d²)
        memory = self.encoder(tokens + self.pos)
        query = memory + self.task_embed[self._task_i].unsqueeze(0)
        out = self.decoder(query, memory)
        if self.training:
            self.last_features = out
        return F.fold(out.transpose(1, 2), (p, p), d, stride=d).view(b, c, n * d, n * d)

    def forward_crop(self, x: torch.Tensor) -> torch.Tensor:
        """One ``crop``×``crop`` input → its output (×scale for super-resolution)."""
        t = self.task
        f = self.heads[t](x)
        return self.tails[t](f + self.body(f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, 3, H·scale, W·scale), chopping into crops when needed."""
        p = self.crop
        if x.shape[-2:] == (p, p):
            return self.forward_crop(x)
        h, w = x.shape[-2:]
        ph, pw = max(0, p - h), max(0, p - w)
        if ph or pw:  # smaller than a crop: padded, the output cut back
            mode = "reflect" if ph < h and pw < w else "replicate"
            return self.forward(F.pad(x, (0, pw, 0, ph), mode=mode))[
                ..., : h * self.scale, : w * self.scale
            ]
        return self._chop(x)

    def _chop(self, x: torch.Tensor) -> torch.Tensor:
        p, s, step = self.crop, self.scale, self.crop - self.overlap
        b, _, h, w = x.shape
        ys = sorted({*range(0, h - p + 1, step), h - p})
        xs = sorted({*range(0, w - p + 1, step), w - p})
        crops = torch.stack([x[:, :, y : y + p, z : z + p] for y in ys for z in xs], 1)
        outs = self.forward_crop(crops.flatten(0, 1)).view(b, len(ys) * len(xs), 3, p * s, p * s)
        out = x.new_zeros(b, 3, h * s, w * s)
        count = x.new_zeros(1, 1, h * s, w * s)
        for k, (y, z) in enumerate((y, z) for y in ys for z in xs):
            out[:, :, y * s : (y + p) * s, z * s : (z + p) * s] += outs[:, k]
            count[:, :, y * s : (y + p) * s, z * s : (z + p) * s] += 1
        return out / count

    # timm's interface (no classifier)
    def get_classifier(self) -> nn.Module:
        return nn.Identity()

    def reset_classifier(self, num_classes: int = 0, global_pool: str | None = None) -> None:
        if num_classes:
            raise ConfigError("IPT has no classifier to reset")


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "", "num_classes": 0, "input_size": (3, 48, 48), "pool_size": None,
        "crop_pct": 1.0, "interpolation": "bicubic", "mean": (0.0, 0.0, 0.0),
        "std": (1.0, 1.0, 1.0), "first_conv": "", "classifier": "",
        "paper_ids": "arXiv:2012.00364", **kwargs,
    }  # fmt: skip


default_cfgs = generate_default_cfgs({"ipt_base": _cfg(), "ipt_cpu": _cfg(input_size=(3, 24, 24))})


def _create(variant: str, pretrained: bool, **kwargs: Any) -> IPT:
    return build_model_with_cfg(IPT, variant, pretrained, **kwargs)


@register_model
def ipt_base(pretrained: bool = False, **kwargs: Any) -> IPT:
    """The paper's IPT: 64 features, 48×48 crops, 12 + 12 layers of 576 wide, 12 heads."""
    return _create("ipt_base", pretrained, **kwargs)


@register_model
def ipt_cpu(pretrained: bool = False, **kwargs: Any) -> IPT:
    """A CPU-sized IPT: 16 features, 24×24 crops, 2 + 2 layers of 144 wide, 4 heads."""
    cfg = dict(n_feats=16, crop=24, num_heads=4, enc_layers=2, dec_layers=2, overlap=4)
    return _create("ipt_cpu", pretrained, **{**cfg, **kwargs})
