"""Methods: one module per method, each registered under a short key.

The registry comes first; then the families are imported, which registers their methods (timm's
way: no function-local import from the registry back up to the families). Every method's config
class is exported here too, for ``lv.compress(model, ScopConfig(...), data=...)``.
"""

from .registry import (
    MethodSpec,
    compress,
    get_method,
    list_methods,
    method_for_config,
    method_specs,
    register_method,
)

# isort: split
from . import (  # noqa: F401
    adaptation,
    distillation,
    drnet,
    fadn,
    federated,
    ghost,
    ghostsr,
    ipt,
    lowbit,
    pruning,
    search,
    selfsup,
)
from .adaptation.sfda_de import SFDADEConfig
from .adaptation.shot_im import IMConfig
from .common import FinetuneConfig
from .config import MethodConfig
from .distillation.defeat import DeFeatConfig
from .distillation.feature_kd import FeatureKDConfig
from .distillation.kd import DeiTConfig, KDConfig
from .distillation.manifold_kd import ManifoldKDConfig
from .drnet import DRNetConfig
from .fadn import FADNConfig
from .federated.fedavg import FedAvgConfig
from .federated.fedpu import FedPUConfig
from .ghost import GhostConfig
from .ghostsr import GhostSRConfig
from .ipt import IPTConfig
from .lowbit.adder import AdderConfig
from .lowbit.adder_quant import AdderQuantConfig
from .lowbit.binary import BinaryConfig, FDAConfig, LNSConfig
from .lowbit.int8 import Int8Config
from .lowbit.pkkd import PKKDConfig
from .lowbit.ptq_vit import PTQViTConfig
from .pruning.dynamicvit import DynamicViTConfig
from .pruning.l1_filter import L1FilterConfig
from .pruning.manidp import ManiDPConfig
from .pruning.patch_slimming import PatchSlimConfig
from .pruning.scop import ScopConfig
from .selfsup.esvit import ESViTConfig

__all__ = [
    "AdderConfig",
    "AdderQuantConfig",
    "BinaryConfig",
    "DRNetConfig",
    "DeFeatConfig",
    "DeiTConfig",
    "DynamicViTConfig",
    "ESViTConfig",
    "FADNConfig",
    "FedAvgConfig",
    "FedPUConfig",
    "FDAConfig",
    "FeatureKDConfig",
    "FinetuneConfig",
    "GhostConfig",
    "GhostSRConfig",
    "IMConfig",
    "IPTConfig",
    "Int8Config",
    "KDConfig",
    "L1FilterConfig",
    "LNSConfig",
    "ManiDPConfig",
    "ManifoldKDConfig",
    "MethodConfig",
    "MethodSpec",
    "PKKDConfig",
    "PTQViTConfig",
    "PatchSlimConfig",
    "SFDADEConfig",
    "ScopConfig",
    "compress",
    "get_method",
    "list_methods",
    "method_for_config",
    "method_specs",
    "register_method",
]
