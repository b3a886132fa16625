"""Low-bit and multiplication-free networks: AdderNet (more to come: binary, PTQ)."""

from . import adder
from .adder import AdderConfig, AdderLRHook, adderize

__all__ = ["AdderConfig", "AdderLRHook", "adder", "adderize"]
