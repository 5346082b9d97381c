"""Band-limited (windowed-sinc) resampling, the algorithm of ``torchaudio.functional.resample``.

SpeechGPT's ``speech2unit`` resampled its input with ``torchaudio.functional.resample`` and
its defaults before mHuBERT, and the k-means was fitted on units of audio prepared that way.
torchaudio cannot be installed beside the torch this package uses, so this module computes
the same thing with plain torch ops:

* the rates are reduced by their gcd: ``orig = orig_rate // g``, ``new = new_rate // g``;
* output sample ``j`` (time ``j / new``) is ``sum_i x[i] * h(base * (i / orig - j / new))``
  over the input samples ``x[i]`` (zeros outside the signal), where ``base = min(orig, new)
  * rolloff`` is the cutoff (rolloff 0.99 of the lower Nyquist) and, for ``t`` clamped to
  ``[-w, w]`` (``w = lowpass_filter_width`` = 6 zero crossings),
  ``h(t) = (base / orig) * sin(pi t) / (pi t) * cos(pi t / (2 w)) ** 2``
  (a Hann window, the ``"sinc_interp_hann"`` method);
* there are ``ceil(new * T / orig)`` output samples for ``T`` input samples, the quotient
  rounded to float32 first as torchaudio does (``torch.as_tensor`` of a Python float): so
  ``8001 -> 16000`` Hz on 4000 samples gives 7999, not 8000, and lengths above 2**24 may
  round either way.

The filter has one phase per output sample modulo ``new``; torchaudio evaluates each phase
over ``2 * width + orig`` taps (``width = ceil(w * orig / base)``) and runs them as one
strided ``conv1d``. This module does the same (the same float operations, so the same
kernel) while that kernel is small (``new * (2 * width + orig)`` up to 2**20 weights: every
common rate to 16 kHz). For rates whose reduced ratio is large (44099 Hz -> 16 kHz:
torchaudio builds a 16000 x 44133 kernel) it evaluates only the ``2 * width + 2`` taps per
phase that can be inside the window (outside it the clamped kernel is below 1e-20) and
gathers them per output sample, which keeps memory linear in the taps; the sums equal
torchaudio's to float32 rounding either way.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

__all__ = ["sinc_resample", "sinc_resample_output_length"]

# Taps gathered per step: bounds the temporary [channels, block, new, taps] tensor (16 MB).
_BLOCK_ELEMENTS = 1 << 22
# Largest torchaudio kernel (weights) run as one conv1d, as torchaudio does; above it, gather.
_CONV_KERNEL_LIMIT = 1 << 20


def sinc_resample_output_length(frames: int, orig_rate: int, new_rate: int) -> int:
    """torchaudio's output length: ``ceil(new * frames / orig)`` (rates gcd-reduced), the
    quotient rounded to float32 before the ceiling, at most the ``new * (frames // orig + 1)``
    samples its convolution produces."""
    g = math.gcd(int(orig_rate), int(new_rate))
    orig, new = int(orig_rate) // g, int(new_rate) // g
    quotient = float(np.float32(new * int(frames) / orig))
    return min(math.ceil(quotient), new * (int(frames) // orig + 1))


def sinc_resample(
    waveform: torch.Tensor,
    orig_rate: int,
    new_rate: int,
    *,
    lowpass_filter_width: int = 6,
    rolloff: float = 0.99,
) -> torch.Tensor:
    """Resample like ``torchaudio.functional.resample(waveform, orig_rate, new_rate)``.

    Args:
        waveform: float tensor ``[..., T]`` (time last), on any device; its dtype is the
            dtype of the computation, as in torchaudio (float32 input: a float32 kernel).
        orig_rate, new_rate: positive whole rates in Hz.
        lowpass_filter_width: zero crossings of the sinc on each side (torchaudio's default 6).
        rolloff: cutoff as a fraction of the lower Nyquist rate (default 0.99).

    Returns:
        ``[..., n]`` with ``n = ceil(new * T / orig)`` (see
        :func:`sinc_resample_output_length` for torchaudio's float32 rounding of it), in the
        dtype and on the device of ``waveform``; ``waveform`` itself when the rates are equal.

    Raises:
        ValueError: non-positive or non-integer rates, a non-positive filter width, or a
            rolloff outside (0, 1].
        TypeError: an integer (non-float) waveform.
    """
    if not isinstance(waveform, torch.Tensor) or not waveform.is_floating_point():
        raise TypeError(f"sinc_resample expects a float tensor, got {_describe(waveform)}.")
    for name, rate in (("orig_rate", orig_rate), ("new_rate", new_rate)):
        if isinstance(rate, bool) or int(rate) != rate or rate <= 0:
            raise ValueError(f"{name} must be a positive whole number of Hz, got {rate!r}.")
    if isinstance(lowpass_filter_width, bool) or int(lowpass_filter_width) != lowpass_filter_width \
            or lowpass_filter_width <= 0:
        raise ValueError(f"lowpass_filter_width must be a positive integer, got {lowpass_filter_width!r}.")
    if not 0.0 < rolloff <= 1.0:
        raise ValueError(f"rolloff must be in (0, 1], got {rolloff!r}.")
    if orig_rate == new_rate:
        return waveform
    g = math.gcd(int(orig_rate), int(new_rate))
    orig, new = int(orig_rate) // g, int(new_rate) // g
    zeros, device = int(lowpass_filter_width), str(waveform.device)
    shape = waveform.shape
    x = waveform.reshape(-1, shape[-1])
    length = x.shape[1]
    out_len = sinc_resample_output_length(length, orig, new)
    width = _width(orig, new, zeros, float(rolloff))
    span = 2 * width + orig  # torchaudio's kernel length: input samples one phase group reads
    # zeros around the signal, as torchaudio pads: `width` before, `width + orig` after
    x = torch.nn.functional.pad(x, (width, width + orig))
    if new * span <= _CONV_KERNEL_LIMIT:
        kernel = _full_kernel(orig, new, zeros, float(rolloff), waveform.dtype, device)
        out = torch.nn.functional.conv1d(x[:, None], kernel[:, None], stride=orig)  # [C, new, q]
        out = out.transpose(1, 2).reshape(x.shape[0], -1)[:, :out_len]
        return out.reshape(*shape[:-1], out_len)
    weights, columns = _phase_table(orig, new, zeros, float(rolloff), waveform.dtype, device)
    taps = weights.shape[1]
    groups = x.unfold(-1, span, orig)  # [C, q, span] view: group q holds outputs q*new..q*new+new-1
    block = max(1, _BLOCK_ELEMENTS // (new * taps))
    pieces = []
    for first in range(0, groups.shape[1], block):
        # output q * new + p = sum_m groups[q, columns[p, m]] * weights[p, m]
        window = groups[:, first:first + block][:, :, columns]  # [C, b, new, taps]
        pieces.append(torch.einsum("cbpm,pm->cbp", window, weights).reshape(x.shape[0], -1))
    out = torch.cat(pieces, dim=1)[:, :out_len]
    return out.reshape(*shape[:-1], out_len)


def _width(orig: int, new: int, zeros: int, rolloff: float) -> int:
    """Input samples of zero padding, and half the extra taps, of torchaudio's kernel."""
    return math.ceil(zeros * orig / (min(orig, new) * rolloff))


@lru_cache(maxsize=32)
def _full_kernel(orig: int, new: int, zeros: int, rolloff: float, dtype: torch.dtype,
                 device: str) -> torch.Tensor:
    """torchaudio's kernel ``[new, 2 * width + orig]``: row ``p`` makes outputs ``q * new + p``."""
    width = _width(orig, new, zeros, rolloff)
    columns = torch.arange(2 * width + orig).expand(new, -1)
    return _weights(orig, new, zeros, rolloff, dtype, columns, width).to(device)


@lru_cache(maxsize=32)
def _phase_table(orig: int, new: int, zeros: int, rolloff: float, dtype: torch.dtype,
                 device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per phase ``p < new``: the weights of its taps ``[new, taps]`` and their columns.

    Tap ``m`` of phase ``p`` is column ``k = columns[p, m]`` of torchaudio's kernel row ``p``,
    i.e. input offset ``k - width`` from ``q * orig``. Columns past torchaudio's ``2 * width
    + orig`` (at most one per phase, outside the window) are clipped and weighted 0.
    """
    width = _width(orig, new, zeros, rolloff)
    taps = 2 * width + 2
    starts = torch.arange(new, dtype=torch.int64) * orig // new  # floor(p * orig / new)
    columns = starts[:, None] + torch.arange(taps)  # [new, taps]
    kernel = _weights(orig, new, zeros, rolloff, dtype, columns, width)
    inside = columns < 2 * width + orig
    kernel = torch.where(inside, kernel, torch.zeros((), dtype=dtype))
    columns = torch.where(inside, columns, 2 * width + orig - 1)
    return kernel.to(device), columns.to(device)


def _weights(orig: int, new: int, zeros: int, rolloff: float, dtype: torch.dtype,
             columns: torch.Tensor, width: int) -> torch.Tensor:
    """Entries ``[p, k]`` of torchaudio's kernel at ``columns[p]``, with its float operations."""
    base = min(orig, new) * rolloff
    idx = (columns - width).to(dtype) / orig
    t = torch.arange(0, -new, -1, dtype=dtype)[:, None] / new + idx
    t *= base
    t = t.clamp_(-zeros, zeros)
    window = torch.cos(t * math.pi / zeros / 2) ** 2
    t *= math.pi
    scale = base / orig
    kernel = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    kernel *= window * scale
    return kernel


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor"
    return f"a {type(value).__name__}"
