"""Source-free domain adaptation: SFDA-DE and the SHOT-IM baseline (a source model adapted to
unlabelled target data, the source data never read)."""

from .sfda_de import SFDADEConfig, SFDADEHook, cdd, class_gaussians, spherical_kmeans
from .shot_im import IMConfig, IMHook, information_maximisation

__all__ = [
    "IMConfig",
    "IMHook",
    "SFDADEConfig",
    "SFDADEHook",
    "cdd",
    "class_gaussians",
    "information_maximisation",
    "spherical_kmeans",
]
