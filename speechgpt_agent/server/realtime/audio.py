"""Audio on a Realtime connection: the protocol's formats in, the model's 16 kHz, and back.

Formats (named as the beta protocol names them; the GA protocol's ``{"type": ...}`` objects
map onto the same three):

===============  =====================================  ==========================
``pcm16``        ``{"type": "audio/pcm", "rate": 24000}``  16-bit LE mono, 24 kHz (default)
``g711_ulaw``    ``{"type": "audio/pcmu"}``                 G.711 mu-law, 8 kHz
``g711_alaw``    ``{"type": "audio/pcma"}``                 G.711 A-law, 8 kHz
===============  =====================================  ==========================

Input is resampled to SpeechGPT's 16 kHz and output from the vocoder's 16 kHz by streaming
libsoxr resamplers (one per direction per connection), so the result does not depend on how
the client cut its appends. G.711 is the standard's companding (the ``audioop`` codec; the
``audioop-lts`` package on Python 3.13+).
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
import soxr

from ...audio import SAMPLE_RATE
from ..audio_codec import PCM16_RATE, PCM16Encoder

with warnings.catch_warnings():  # deprecated in 3.11-3.12 (removed in 3.13: audioop-lts)
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = [
    "FORMATS",
    "AudioFormat",
    "InputDecoder",
    "OutputEncoder",
    "bytes_per_ms",
    "decode_clip",
    "format_name",
    "format_object",
]

AudioFormat = Literal["pcm16", "g711_ulaw", "g711_alaw"]
FORMATS: tuple[str, ...] = ("pcm16", "g711_ulaw", "g711_alaw")
_GA = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}
_RATE = {"pcm16": PCM16_RATE, "g711_ulaw": 8000, "g711_alaw": 8000}
_WIDTH = {"pcm16": 2, "g711_ulaw": 1, "g711_alaw": 1}


class FormatError(ValueError):
    """An audio format the protocol does not name (the message says which ones it does)."""


def format_name(value: Any, param: str) -> AudioFormat:
    """The format named by ``value``: a beta string (``"pcm16"``) or a GA object
    (``{"type": "audio/pcm", "rate": 24000}``).

    Raises:
        FormatError: anything else, or a pcm rate other than 24000.
    """
    if isinstance(value, str) and value in FORMATS:
        return value  # type: ignore[return-value]
    if isinstance(value, dict) and value.get("type") in _GA:
        name = _GA[value["type"]]
        rate = value.get("rate")
        if name == "pcm16" and rate not in (None, PCM16_RATE):
            raise FormatError(f"{param}: audio/pcm is 24000 Hz on this protocol, got rate {rate!r}.")
        return name  # type: ignore[return-value]
    raise FormatError(
        f"{param}: unsupported audio format {value!r}; use 'pcm16' (24 kHz), 'g711_ulaw' or "
        "'g711_alaw', or {'type': 'audio/pcm', 'rate': 24000} / {'type': 'audio/pcmu'} / "
        "{'type': 'audio/pcma'}.")


def format_object(name: AudioFormat) -> dict[str, Any]:
    """The GA form of a format."""
    if name == "pcm16":
        return {"type": "audio/pcm", "rate": PCM16_RATE}
    return {"type": "audio/pcmu" if name == "g711_ulaw" else "audio/pcma"}


def bytes_per_ms(name: AudioFormat) -> float:
    """Bytes of one millisecond of audio in ``name``."""
    return _RATE[name] * _WIDTH[name] / 1000.0


def _to_int16(raw: bytes, name: AudioFormat) -> np.ndarray:
    if name == "g711_ulaw":
        raw = audioop.ulaw2lin(raw, 2)
    elif name == "g711_alaw":
        raw = audioop.alaw2lin(raw, 2)
    return np.frombuffer(raw, dtype="<i2")


class InputDecoder:
    """Client audio bytes in ``name`` -> float32 mono at 16 kHz, streaming.

    ``push`` the appends as they come (an odd pcm16 byte is carried to the next one);
    ``flush`` at the end of a clip.
    """

    def __init__(self, name: AudioFormat) -> None:
        self.name = name
        self.rate = _RATE[name]
        self._carry = b""
        self._stream = soxr.ResampleStream(self.rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")

    def push(self, raw: bytes) -> np.ndarray:
        """Samples ``[n]`` float32 at 16 kHz for ``raw`` (may lag by the resampler's delay)."""
        raw = self._carry + raw
        width = _WIDTH[self.name]
        cut = len(raw) - len(raw) % width
        raw, self._carry = raw[:cut], raw[cut:]
        x = _to_int16(raw, self.name).astype(np.float32) / 32768.0
        return self._stream.resample_chunk(x)

    def flush(self) -> np.ndarray:
        """The resampler's tail."""
        return self._stream.resample_chunk(np.zeros(0, np.float32), last=True)


def decode_clip(raw: bytes, name: AudioFormat) -> np.ndarray:
    """A whole clip (a ``conversation.item.create`` ``input_audio`` part) at 16 kHz float32."""
    dec = InputDecoder(name)
    return np.concatenate([dec.push(raw), dec.flush()])


class _G711Encoder:
    def __init__(self, name: AudioFormat, rate: int) -> None:
        self._encode = audioop.lin2ulaw if name == "g711_ulaw" else audioop.lin2alaw
        self._stream = soxr.ResampleStream(rate, 8000, 1, dtype="float32", quality="HQ")

    def _bytes(self, x: np.ndarray) -> bytes:
        pcm = np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2").tobytes()
        return self._encode(pcm, 2)

    def push(self, samples: np.ndarray) -> bytes:
        return self._bytes(self._stream.resample_chunk(np.ascontiguousarray(samples, dtype=np.float32)))

    def flush(self) -> bytes:
        return self._bytes(self._stream.resample_chunk(np.zeros(0, np.float32), last=True))


def OutputEncoder(name: AudioFormat, rate: int = SAMPLE_RATE) -> Any:
    """A streaming encoder of the vocoder's float32 at ``rate`` into ``name``: an object with
    ``push(samples) -> bytes`` and ``flush() -> bytes`` (pcm16: the chat endpoint's
    :class:`~speechgpt_agent.server.audio_codec.PCM16Encoder`)."""
    if name == "pcm16":
        return PCM16Encoder(rate)
    return _G711Encoder(name, rate)
