"""Triton plumbing shared by the kernel modules.

:func:`triton_kernel` wraps a kernel function so that it is jitted on its first launch:
autotuned over a short list of configurations when compiled for CUDA, and run with one
fixed small configuration under Triton's CPU interpreter (``TRITON_INTERPRET=1``), where
timing means nothing and every program is slow. The kernel modules also import on
machines without Triton (macOS, Windows), where only the PyTorch references run.

Triton reads ``TRITON_INTERPRET`` when it is imported (its own library functions, such as
``tl.min``, are jitted then), so the variable must be in the environment before
``import triton``; a launch that asks for the interpreter too late gets a clear error
(:func:`interpreter_ready`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ._dispatch import interpreting

try:  # Triton ships for Linux only; the kernel modules must import without it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on macOS/Windows
    triton = None
    tl = None

__all__ = ["TritonKernel", "cdiv", "interpreter_ready", "tl", "triton", "triton_kernel"]


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for non-negative integers."""
    return -(-a // b)


def interpreter_ready() -> bool:
    """Whether Triton was imported under ``TRITON_INTERPRET=1``, which its interpreter needs."""
    if triton is None:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.standard.cdiv, InterpretedFunction)


@dataclass
class TritonKernel:
    """A Triton kernel function jitted lazily, autotuned when compiled.

    Launch it like a jitted kernel: ``kernel[grid](*args, **kwargs)``; ``grid`` may be a
    callable of the launch's meta-parameters (``meta["BLOCK_T"]``...). Meta-parameters
    named in the configurations must not be passed by the caller.

    Attributes:
        fn: the undecorated kernel function (module level, no nested ``def``).
        configs: compiled-mode configurations: dicts of meta-parameters plus optional
            ``num_warps`` / ``num_stages``.
        key: argument names whose values select a tuned configuration.
        interpret_config: the one configuration used under ``TRITON_INTERPRET=1``.
    """

    fn: Callable[..., None]
    configs: Sequence[dict[str, int]]
    key: Sequence[str]
    interpret_config: dict[str, int]
    _jitted: dict[bool, Any] = field(default_factory=dict, repr=False)

    def _kernel(self, interpret: bool) -> Any:
        if triton is None:
            raise RuntimeError("Triton is not installed; use the PyTorch reference (SPEECHGPT_KERNELS=torch).")
        if interpret and not interpreter_ready():
            raise RuntimeError(
                "TRITON_INTERPRET=1 was set after Triton had been imported; Triton's interpreter needs "
                "it in the environment before `import triton` (e.g. `TRITON_INTERPRET=1 python ...`)."
            )
        kernel = self._jitted.get(interpret)
        if kernel is None:
            # triton.jit reads TRITON_INTERPRET now: the mode of the first launch
            kernel = triton.jit(self.fn)
            if not interpret:
                kernel = triton.autotune(
                    configs=[_config(c) for c in self.configs], key=list(self.key)
                )(kernel)
            self._jitted[interpret] = kernel
        return kernel

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        interpret = interpreting()
        kernel = self._kernel(interpret)
        if interpret:
            fixed = {k: v for k, v in self.interpret_config.items() if k not in ("num_warps", "num_stages")}
            return lambda *args, **kwargs: kernel[grid](*args, **kwargs, **fixed)
        return kernel[grid]


def _config(spec: dict[str, int]) -> Any:
    meta = {k: v for k, v in spec.items() if k not in ("num_warps", "num_stages")}
    return triton.Config(meta, num_warps=spec.get("num_warps", 4), num_stages=spec.get("num_stages", 2))


def triton_kernel(
    *, configs: Sequence[dict[str, int]], key: Sequence[str], interpret_config: dict[str, int]
) -> Callable[[Callable[..., None]], TritonKernel]:
    """Decorator: wrap a kernel function in a :class:`TritonKernel` (see there)."""

    def wrap(fn: Callable[..., None]) -> TritonKernel:
        return TritonKernel(fn, tuple(configs), tuple(key), dict(interpret_config))

    return wrap


def check_same_device(what: str, *tensors: torch.Tensor | None) -> None:
    """Raise ``ValueError`` unless every given tensor lives on one device."""
    devices = {t.device for t in tensors if t is not None}
    if len(devices) > 1:
        raise ValueError(f"{what}: all tensors must be on one device, got {sorted(map(str, devices))}.")


def check_out(what: str, out: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
    """Raise ``ValueError`` unless ``out`` is a contiguous ``shape``/``dtype`` tensor on ``device``."""
    if tuple(out.shape) != shape or out.dtype != dtype or out.device != device or not out.is_contiguous():
        raise ValueError(
            f"{what}: out must be a contiguous {dtype} tensor of shape {shape} on {device}, got "
            f"{out.dtype} {tuple(out.shape)} on {out.device}"
            f"{'' if out.is_contiguous() else ' (not contiguous)'}."
        )
