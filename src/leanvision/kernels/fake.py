"""Shape contracts ("fake" implementations) of the native ops, for ``torch.compile``.

TorchDynamo and Inductor trace a model with fake tensors: a custom op needs a function that
gives its output's shape, dtype and layout without running it. With these, a model whose
layers call ``torch.ops.leanvision.*`` (packed binary layers) compiles as one graph, the
native op an extern call inside it (``lv.deploy(model, "inductor")``). Registered when the
kernel is loaded (:func:`leanvision.kernels.load`); each mirrors its C++ op's output.
"""

from __future__ import annotations

import torch

__all__ = ["register"]


def _out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _channels_last(xp: torch.Tensor, n: int, c: int, h: int, w: int) -> torch.Tensor:
    return xp.new_empty((n, c, h, w), dtype=torch.float32).contiguous(
        memory_format=torch.channels_last
    )


def _binary() -> None:
    lib = "leanvision::"

    @torch.library.register_fake(lib + "binary_pack")
    def _pack(x: torch.Tensor, channels: int) -> torch.Tensor:
        cw = (channels + 63) // 64
        shape = (x.shape[0], x.shape[2], x.shape[3], cw) if x.dim() == 4 else (x.shape[0], cw)
        return x.new_empty(shape, dtype=torch.int64)

    @torch.library.register_fake(lib + "binary_conv2d")
    def _conv(xp, wp, scale, bias, channels, out_channels, kernel, stride, padding):
        n, h, w, _ = xp.shape
        ho, wo = _out(h, kernel, stride, padding), _out(w, kernel, stride, padding)
        return _channels_last(xp, n, out_channels, ho, wo)

    @torch.library.register_fake(lib + "binary_gconv2d")
    def _gconv(xp, wp, scale, bias, channels, out_channels, groups, kh, kw, sh, sw, ph, pw):
        n, h, w, _ = xp.shape
        return _channels_last(xp, n, out_channels, _out(h, kh, sh, ph), _out(w, kw, sw, pw))

    @torch.library.register_fake(lib + "binary_linear")
    def _linear(xp, wp, scale, bias, features, out_features):
        return xp.new_empty((xp.shape[0], out_features), dtype=torch.float32)


_FAKES = {"binary": _binary}


def register(name: str) -> None:
    """Register the fake implementations of kernel ``name``'s ops, if it has any."""
    if name in _FAKES:
        _FAKES[name]()
