"""Analyses of trained or untrained models (no training code): feature diversity, ..."""

from leanvision.analysis.diversity import FeatureDiversity, feature_diversity, token_diversity

__all__ = ["FeatureDiversity", "feature_diversity", "token_diversity"]
