"""Kernels of the speech path (import as ``speechgpt_agent.kernels``).

Each kernel module holds a Triton kernel, its PyTorch reference and one public
dispatching function (DESIGN.md section 5); ``SPEECHGPT_KERNELS=auto|triton|torch``
chooses the backend.
"""

from .quantize import merge_repeats, quantize, quantize_reference

__all__ = ["merge_repeats", "quantize", "quantize_reference"]
