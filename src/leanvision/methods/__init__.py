"""Methods: one module per method, each registered under a short key."""

from .registry import MethodSpec, compress, get_method, list_methods, method_specs, register_method

__all__ = [
    "MethodSpec",
    "compress",
    "get_method",
    "list_methods",
    "method_specs",
    "register_method",
]
