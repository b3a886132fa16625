"""Self-distillation ops (DINO, Caron et al., ICCV 2021; EsViT, Li et al., ICLR 2022): the
projection head, the centred and sharpened cross-entropy between a teacher's and a student's
outputs, and EsViT's view- and region-level losses over the pairs of views."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from leanvision.errors import ConfigError

__all__ = ["DINOHead", "dino_ce", "esvit_loss"]


class DINOHead(nn.Module):
    """MLP (``dim`` → ``hidden`` → ``hidden`` → ``bottleneck``, GELU), ℓ2 normalisation and a
    weight-normed linear layer to ``out_dim`` prototypes (DINO's head)."""

    def __init__(self, dim: int, out_dim: int, hidden: int, bottleneck: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, bottleneck),
        )  # fmt: skip
        self.last = nn.utils.parametrizations.weight_norm(
            nn.Linear(bottleneck, out_dim, bias=False)
        )
        self.last.parametrizations.weight.original0.data.fill_(1.0)
        self.last.parametrizations.weight.original0.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(F.normalize(self.mlp(x), dim=-1))


def dino_ce(teacher: torch.Tensor, student: torch.Tensor, center: torch.Tensor, t_temp: float,
            s_temp: float) -> torch.Tensor:  # fmt: skip
    """Mean cross-entropy between the centred, sharpened teacher distribution and the
    student's (over the last dimension; the teacher gets no gradient)."""
    target = F.softmax((teacher.detach() - center) / t_temp, dim=-1)
    return -(target * F.log_softmax(student / s_temp, dim=-1)).sum(-1).mean()


def esvit_loss(
    s_view: list[torch.Tensor], t_view: list[torch.Tensor],
    s_region: list[torch.Tensor], t_region: list[torch.Tensor],
    s_tokens: list[torch.Tensor], t_tokens: list[torch.Tensor],
    centers: tuple[torch.Tensor, torch.Tensor], t_temp: float, s_temp: float,
    region_weight: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(view loss, region loss) over every pair of a teacher global view t and a student view
    s ≠ t: the view heads' cross-entropy, and the region heads' on each student token and its
    most cosine-similar teacher token (matched on the backbone tokens)."""
    view, region, pairs = 0.0, 0.0, 0
    for ti, t_out in enumerate(t_view):
        for si, s_out in enumerate(s_view):
            if si == ti:
                continue
            view = view + dino_ce(t_out, s_out, centers[0], t_temp, s_temp)
            if region_weight > 0:
                sim = torch.einsum("bnc,bmc->bnm", F.normalize(s_tokens[si].detach(), dim=-1),
                                   F.normalize(t_tokens[ti], dim=-1))  # fmt: skip
                match = sim.argmax(-1)  # (B, N_s): the teacher token of each student token
                t_matched = torch.gather(
                    t_region[ti], 1, match[..., None].expand(-1, -1, t_region[ti].shape[-1])
                )
                region = region + dino_ce(t_matched, s_region[si], centers[1], t_temp, s_temp)
            pairs += 1
    if pairs == 0:
        raise ConfigError("esvit needs at least two views per image (a global one and another)")
    return view / pairs, region / pairs
