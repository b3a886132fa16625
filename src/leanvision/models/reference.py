"""Published sizes of the zoo's architectures: what each paper or official repository reports.

Tests check our models against these numbers and the zoo benchmark prints them beside ours.
Every entry names its source and an evidence tag, as in the methods notes:

* ``"C"``: read in the official code, ``"R"``: official README / model-zoo table,
* ``"P"``: the paper (table or abstract), ``"M"``: recalled from the paper, not verified.

The acceptance rule of the zoo is params within 1 % and MACs within 3 % for ``C``/``R`` numbers;
``P``/``M`` numbers are recorded beside ours, with the difference explained where there is one.
MACs are multiply-accumulates (the papers call them FLOPs).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PaperNumbers", "PAPER_NUMBERS", "TIMM_VERIFIED"]


@dataclass(frozen=True)
class PaperNumbers:
    """Published numbers of one architecture.

    Attributes:
        params: Parameters (None when the source gives none).
        macs: Multiply-accumulates of one image at ``img_size`` (None when not given).
        img_size: Input resolution the numbers refer to.
        top1: ImageNet top-1 in percent, when reported.
        source: Where the numbers come from.
        tag: Evidence tag: "C", "R", "P" or "M" (see the module docstring).
    """

    params: float | None
    macs: float | None
    img_size: int
    top1: float | None
    source: str
    tag: str

    @property
    def binding(self) -> bool:
        """Whether the 1 % params / 3 % MACs acceptance rule applies (official code/README)."""
        return self.tag in ("C", "R")


_M, _G = 1e6, 1e9

# timm's architectures that leanvision verifies and lists (not rewritten).
TIMM_VERIFIED = (
    "ghostnet_050",
    "ghostnet_100",
    "ghostnet_130",
    "tnt_s_patch16_224",
    "tnt_b_patch16_224",
    "tinynet_a",
    "tinynet_b",
    "tinynet_c",
    "tinynet_d",
    "tinynet_e",
    "deit_tiny_patch16_224",
    "deit_small_patch16_224",
    "deit_base_patch16_224",
)

_GHOST = "GhostNet (CVPR 2020), Table 7 / Efficient-AI-Backbones README"
_TNT = "TNT (NeurIPS 2021), Efficient-AI-Backbones tnt_pytorch README"
_TINY = "TinyNet (NeurIPS 2020), Efficient-AI-Backbones tinynet_pytorch README"
_DEIT = "DeiT (ICML 2021), Table 1"
_PTNT = "PyramidTNT (arXiv 2201.00978), Efficient-AI-Backbones tnt_pytorch README"
_RESNAS = "ViT-ResNAS (arXiv 2109.00642), paper MACs"
_RESNAS_C = "vit-search reference_net/tiny.sh: MAC budget of the tiny search (official estimator)"
_GHOST_R50 = (
    "official ghost_resnet.py at s=2, parameters the forward uses (the paper's Table 5 "
    "gives 13.0 M / 2.2 GFLOPs, a different count of the same network)"
)
_CMT = "CMT (CVPR 2022), Table 2"
_CMT_S = (
    "CMT (CVPR 2022), Table 2; the official cmt.py builds 26.26 M parameters for CMT-S "
    "(ours match it tensor for tensor), so the paper's 25.1 M is not reproducible"
)
_LS = "Transformer-LS (NeurIPS 2021), NVIDIA/transformer-ls README (ImageNet table)"
_AUG = "Aug-ViT (NeurIPS 2021), Table 1 (with the FFT circulant product)"

PAPER_NUMBERS: dict[str, PaperNumbers] = {
    "ghostnet_050": PaperNumbers(2.6 * _M, 42 * _M, 224, 66.2, _GHOST, "M"),
    "ghostnet_100": PaperNumbers(5.2 * _M, 142 * _M, 224, 73.98, _GHOST, "R"),
    "ghostnet_130": PaperNumbers(7.3 * _M, 226 * _M, 224, 75.7, _GHOST, "M"),
    "tnt_s_patch16_224": PaperNumbers(23.8 * _M, 5.2 * _G, 224, 81.5, _TNT, "R"),
    "tnt_b_patch16_224": PaperNumbers(65.6 * _M, 14.1 * _G, 224, 82.9, _TNT, "R"),
    "tinynet_a": PaperNumbers(None, 339 * _M, 192, 76.8, _TINY, "R"),
    "tinynet_b": PaperNumbers(None, 202 * _M, 188, 75.0, _TINY, "R"),
    "tinynet_c": PaperNumbers(None, 100 * _M, 184, 71.2, _TINY, "R"),
    "tinynet_d": PaperNumbers(None, 52 * _M, 152, 67.0, _TINY, "R"),
    "tinynet_e": PaperNumbers(None, 24 * _M, 106, 59.9, _TINY, "R"),
    "deit_tiny_patch16_224": PaperNumbers(5.7 * _M, 1.3 * _G, 224, 72.2, _DEIT, "P"),
    "deit_small_patch16_224": PaperNumbers(22.1 * _M, 4.6 * _G, 224, 79.8, _DEIT, "P"),
    "deit_base_patch16_224": PaperNumbers(86.6 * _M, 17.6 * _G, 224, 81.8, _DEIT, "P"),
    # ours
    "ptnt_ti": PaperNumbers(10.6 * _M, 0.6 * _G, 192, 75.2, _PTNT, "R"),
    "ptnt_s": PaperNumbers(32.0 * _M, 3.3 * _G, 256, 82.0, _PTNT, "R"),
    "ptnt_m": PaperNumbers(85.0 * _M, 8.2 * _G, 256, 83.5, _PTNT, "R"),
    "ptnt_b": PaperNumbers(157.0 * _M, 16.0 * _G, 256, 84.1, _PTNT, "R"),
    "vit_res_tiny": PaperNumbers(None, 1.7944 * _G, 224, None, _RESNAS_C, "C"),
    "vit_resnas_tiny": PaperNumbers(None, 1.8 * _G, 224, 78.4, _RESNAS, "M"),
    "vit_resnas_small": PaperNumbers(None, 2.8 * _G, 224, 81.4, _RESNAS, "M"),
    "vit_resnas_medium": PaperNumbers(None, 4.5 * _G, 224, 82.4, _RESNAS, "M"),
    "ghost_resnet50": PaperNumbers(13.927016 * _M, 2.151023 * _G, 224, 75.0, _GHOST_R50, "C"),
    "cmt_ti": PaperNumbers(9.5 * _M, 0.6 * _G, 160, 79.1, _CMT, "P"),
    "cmt_xs": PaperNumbers(15.2 * _M, 1.5 * _G, 192, 81.8, _CMT, "P"),
    "cmt_s": PaperNumbers(25.1 * _M, 4.0 * _G, 224, 83.5, _CMT_S, "P"),
    "cmt_b": PaperNumbers(45.7 * _M, 9.3 * _G, 256, 84.5, _CMT, "P"),
    "vil_ls_medium": PaperNumbers(39.8 * _M, 8.7 * _G, 224, 83.8, _LS, "R"),
    "vil_ls_base": PaperNumbers(55.8 * _M, 13.4 * _G, 224, 84.1, _LS, "R"),
    "augvit_small": PaperNumbers(22 * _M, 4.6 * _G, 224, 80.4, _AUG, "M"),
    "augvit_base": PaperNumbers(86 * _M, 17.6 * _G, 224, 82.4, _AUG, "M"),
}
