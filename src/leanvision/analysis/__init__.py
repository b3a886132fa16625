"""Analyses of trained or untrained models (no training code): feature diversity, TinyNet's
scaling rules (the tiny formula and inverse compound scaling), ..."""

from leanvision.analysis.diversity import FeatureDiversity, feature_diversity, token_diversity
from leanvision.analysis.tinynet_scaling import (
    ScalingSample,
    TinyFormula,
    TinyScaling,
    fit_tiny_formula,
    inverse_compound_scaling,
    random_scalings,
    solve_width,
    tiny_formula,
    tinynet_macs,
)

__all__ = [
    "FeatureDiversity",
    "ScalingSample",
    "TinyFormula",
    "TinyScaling",
    "feature_diversity",
    "fit_tiny_formula",
    "inverse_compound_scaling",
    "random_scalings",
    "solve_width",
    "tiny_formula",
    "tinynet_macs",
    "token_diversity",
]
