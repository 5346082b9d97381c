"""Kernels of the speech path (import as ``speechgpt_agent.kernels``).

Each kernel module holds a Triton kernel, its PyTorch reference and one public
dispatching function (DESIGN.md section 5); ``SPEECHGPT_KERNELS=auto|triton|torch``
chooses the backend.
"""

from .quantize import merge_repeats, quantize, quantize_reference
from .unit_embedding import unit_embedding, unit_embedding_reference
from .vocoder import lrelu_conv1d, lrelu_conv1d_reference, resblock, resblock_reference

__all__ = [
    "lrelu_conv1d",
    "lrelu_conv1d_reference",
    "merge_repeats",
    "quantize",
    "quantize_reference",
    "resblock",
    "resblock_reference",
    "unit_embedding",
    "unit_embedding_reference",
]
