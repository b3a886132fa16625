"""ViT-ResNAS's search: a weight-sharing supernet of multi-stage ViTs trained with
multi-architecture sampling, then evolution under a MACs budget.

Searching for Efficient Multi-Stage Vision Transformers, Liao, Karaman and Sze, 2021
(arXiv 2109.00642), Sec. 3.3-3.4; official scripts ``scripts/vit-sr-nas/super_net`` and
``evolutionary_search``. The supernet (``vit_res_cifar``'s
:class:`~leanvision.models.vit_res_supernet.ViTResSuperNet`) holds every embedding width, head
count, MLP width and depth; each training batch is split among ``archs_per_step`` members drawn
uniformly (the paper's 64 examples per architecture in batches of 128: 2 per batch); each member
is then scored by its held-out validation accuracy with the shared weights, and NSGA-II evolves
members under the MACs budget (the paper: ViT-Res-Tiny's 1.79 G MACs). The found spec is
``vit_res_tiny(arch=network_def)``, any ViT-Res network in the official encoding, retrained from
scratch (the paper's protocol; ``benchmarks/search_cifar10.py vit``).

Defaults are the official tiny supernet's: 120 epochs, AdamW (DeiT's recipe: lr 5e-4 at batch
512, weight decay 0.05), 2 members per batch. Departures from the paper:

* the evolution is Optuna's NSGA-II on the two objectives (accuracy, MACs) with members over
  the budget pruned, not the paper's single-objective evolution with a hard constraint
  (population 500, 20 generations of 75 parents + 75 mutants); ``population`` sets NSGA-II's;
* the head width is fixed at 64 (the official space searches it per stage) and no patch-wise
  mixup, stochastic depth or distillation train the supernet;
* the CIFAR adaptation (32x32, patch 4) of :mod:`leanvision.search.spaces`, not 224x224.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from leanvision.errors import ConfigError
from leanvision.methods.search.oneshot import OneShotSearchConfig, oneshot_search
from leanvision.search import SearchContext, SearchSpace, register_search_method

__all__ = ["ViTResNASSearchConfig", "run_vit_resnas"]


@dataclass
class ViTResNASSearchConfig(OneShotSearchConfig):
    """The supernet's training (official tiny supernet) and the evolutionary search."""

    version: ClassVar[int] = 1
    sampler: str = "nsga2"
    supernet_epochs: int = 120
    archs_per_step: int = 2
    opt: str = "adamw"
    lr: float = 5e-4
    weight_decay: float = 0.05


@register_search_method(
    "vit_resnas",
    paper="Searching for Efficient Multi-Stage Vision Transformers (Liao et al., 2021, "
    "arXiv 2109.00642)",
    config=ViTResNASSearchConfig,
    summary="multi-stage ViT supernet, several members per batch, NSGA-II under a MACs budget",
)
def run_vit_resnas(
    space: SearchSpace, data: Any, config: ViTResNASSearchConfig, ctx: SearchContext
) -> Any:
    if not space.can_share_batches and config.archs_per_step > 1:
        raise ConfigError(
            f"vit_resnas: space {space.name!r} cannot run several members per batch; use the "
            "vit_res_cifar space or archs_per_step=1"
        )
    return oneshot_search(space, data, config, ctx, "vit_resnas")
