"""Choice between a kernel's Triton implementation and its PyTorch reference.

``SPEECHGPT_KERNELS`` selects the backend for every kernel:

* ``auto`` (default): Triton when the input lives on a CUDA device and Triton imports;
  the PyTorch reference otherwise (CPU machines, MPS, missing Triton).
* ``triton``: always Triton. On a CPU tensor this only works under
  ``TRITON_INTERPRET=1`` (Triton's interpreter), which is how tests run kernels on CPU.
* ``torch``: always the PyTorch reference.
"""

from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("auto", "triton", "torch")


def backend_setting() -> str:
    """The value of ``SPEECHGPT_KERNELS``, validated (read on every call, so tests may flip it)."""
    value = os.environ.get("SPEECHGPT_KERNELS", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(
            f"SPEECHGPT_KERNELS={value!r} is not one of {', '.join(BACKENDS)}."
        )
    return value


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """Whether ``import triton`` works (it does not on macOS/Windows wheels)."""
    try:
        import triton
        import triton.language  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken triton install can raise anything on import
        return False
    return True


def interpreting() -> bool:
    """Whether Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(*tensors: torch.Tensor, has_triton_impl: bool = True) -> bool:
    """Decide the backend for one call whose inputs are ``tensors``."""
    setting = backend_setting()
    if setting == "torch" or not has_triton_impl:
        if setting == "triton" and not has_triton_impl:
            raise RuntimeError("SPEECHGPT_KERNELS=triton, but this kernel has no Triton implementation.")
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    if setting == "triton":
        if not triton_available():
            raise RuntimeError("SPEECHGPT_KERNELS=triton, but Triton is not installed.")
        if not on_cuda and not interpreting():
            raise RuntimeError(
                "SPEECHGPT_KERNELS=triton on CPU tensors needs TRITON_INTERPRET=1 (Triton's "
                "interpreter); use SPEECHGPT_KERNELS=auto to fall back to the PyTorch reference."
            )
        return True
    return on_cuda and triton_available()
