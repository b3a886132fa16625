"""Methods: one module per method, each registered under a short key.

The registry comes first; then the families are imported, which registers their methods (timm's
way: no function-local import from the registry back up to the families).
"""

from .registry import MethodSpec, compress, get_method, list_methods, method_specs, register_method

# isort: split
from . import distillation, ghost, lowbit, pruning  # noqa: F401  (importing registers them)

__all__ = [
    "MethodSpec",
    "compress",
    "get_method",
    "list_methods",
    "method_specs",
    "register_method",
]
