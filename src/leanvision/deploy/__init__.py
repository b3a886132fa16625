"""Deploy: finalize a trained model for inference; a model in, a faster model (or file) out.

- :func:`optimize_for_cpu`: BN folded, channels-last, leanvision's fused 3×3 kernel where it is
  measured faster than ATen.
- :func:`fold_batchnorm`: conv → BN pairs folded (torch.fx).
- :func:`export_onnx`: an ONNX file for ONNX Runtime (and OpenVINO).
- :func:`deploy`: the model on a CPU runtime (torch, leanvision's, onnxruntime, OpenVINO) in
  fp32, bf16 or int8, or the fastest of them.
- :func:`pack_binary`: binary layers to their 1-bit packed form.
"""

from leanvision.deploy.cpu import ConvChoice, optimize_for_cpu
from leanvision.deploy.fold import fold_batchnorm
from leanvision.deploy.onnx import export_onnx
from leanvision.deploy.packing import pack_binary
from leanvision.deploy.runtimes import BACKENDS, PRECISIONS, DeployedModel, deploy, supported

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "ConvChoice",
    "DeployedModel",
    "deploy",
    "export_onnx",
    "fold_batchnorm",
    "optimize_for_cpu",
    "pack_binary",
    "supported",
]
