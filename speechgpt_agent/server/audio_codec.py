"""Audio on the wire: inline input clips in, wav / pcm16 / flac answers out.

Input (``input_audio`` parts, uploaded files) is decoded in memory only: the server never
opens a path or fetches a URL for a client, so a ``data`` field that holds one is refused.
``wav``, ``mp3``, ``flac`` and ``ogg`` are decoded by libsndfile
(:func:`speechgpt_agent.audio.load_audio` on the bytes); ``pcm16`` is OpenAI's raw form:
16-bit little-endian mono at 24 kHz.

Output: SpeechGPT's vocoder speaks 16 kHz float32. ``wav`` and ``flac`` carry it at 16 kHz
(16-bit); ``pcm16`` is resampled to OpenAI's 24 kHz by a streaming libsoxr resampler, whose
output does not depend on how the signal is cut into pieces, so the streamed ``delta.audio``
pieces joined equal the non-streamed ``pcm16`` answer sample for sample.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from ..audio import SAMPLE_RATE, load_audio
from ..errors import AudioError
from .errors import APIError

__all__ = [
    "PCM16_RATE",
    "PCM16Encoder",
    "decode_audio_bytes",
    "decode_input_audio",
    "encode_audio",
    "int16_bytes",
    "wav_stream_header",
]

PCM16_RATE = 24000
"""Rate (Hz) of OpenAI's raw ``pcm16`` audio, in and out."""

_URL = re.compile(r"^\s*[a-z][a-z0-9+.-]*:", re.IGNORECASE)
_PATH = re.compile(r"^\s*(?:/|~|\.{1,2}[/\\]|[A-Za-z]:[/\\])")
_DATA_URL = re.compile(r"^\s*data:[^,]{0,200};base64,", re.IGNORECASE)


def _reference_error(data: str, param: str) -> APIError:
    head = data[:40] + ("..." if len(data) > 40 else "")
    return APIError(
        400,
        f"{param} must hold the audio itself, base64-encoded; got what looks like a path or "
        f"URL ({head!r}). This server never reads files or fetches URLs for a client: read "
        "the file yourself and send its bytes in base64.",
        param=param, code="invalid_audio",
    )


def _b64(data: str, param: str) -> bytes:
    """The bytes of base64 ``data`` (a ``data:...;base64,`` prefix is allowed: it is inline).

    A URL (any scheme) or a path is refused with a message saying so; base64 itself may
    start with ``/`` (MP3 frames do), so a path is only recognised once it fails to decode.
    """
    url = _DATA_URL.match(data)
    if url is not None:
        data = data[url.end():]
    elif _URL.match(data[:40]):
        raise _reference_error(data, param)
    text = "".join(data.split())
    try:
        if "-" in text or "_" in text:
            if re.search(r"[^A-Za-z0-9_=-]", text):
                raise binascii.Error("characters outside the base64 alphabet")
            return base64.urlsafe_b64decode(text)
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        if _PATH.match(data):
            raise _reference_error(data, param) from exc
        raise APIError(400, f"{param} is not valid base64 ({exc}): send the encoded clip in "
                            "base64.", param=param, code="invalid_audio") from exc


def decode_audio_bytes(raw: bytes, fmt: str, *, max_seconds: float, param: str,
                       resampler: str = "soxr") -> np.ndarray:
    """Decode one clip held in memory.

    Args:
        raw: the encoded file (``wav``/``mp3``/``flac``/``ogg``/anything libsndfile reads), or
            raw 16-bit LE mono samples at 24 kHz for ``fmt="pcm16"``.
        fmt: the declared format.
        max_seconds: longest clip accepted (checked from the header before decoding).
        param: the request field, for error messages.
        resampler: how other rates reach 16 kHz: the loaded speech tokenizer's own
            (:func:`speech_resampler`), so a request's units are those of the Python API.

    Returns:
        float32 mono ``[samples]`` at 16 kHz.

    Raises:
        APIError: 400 for empty, corrupt, too long or unsupported audio (the message of
            :class:`~speechgpt_agent.errors.AudioError`).
    """
    try:
        if fmt == "pcm16":
            if len(raw) % 2:
                raise AudioError(f"pcm16 audio has an odd number of bytes ({len(raw)}); it must "
                                 "be 16-bit little-endian mono samples at 24 kHz.")
            samples = np.frombuffer(raw, dtype="<i2")
            return load_audio(samples, PCM16_RATE, max_seconds=max_seconds, resampler=resampler)  # type: ignore[arg-type]
        return load_audio(bytes(raw), max_seconds=max_seconds, resampler=resampler)  # type: ignore[arg-type]
    except AudioError as exc:
        hint = (f" This server takes clips of at most {max_seconds:g} s (serve --max-audio-seconds)."
                if "max_seconds" in str(exc) else "")
        raise APIError(400, f"{param}: {exc}{hint}", param=param, code="invalid_audio") from exc


def speech_resampler(runtime: Any) -> str:
    """The resampler of ``runtime``'s speech tokenizer (``"torchaudio"`` for the released
    mHuBERT one, as the original extracted units; ``"soxr"`` for the demo's), else soxr."""
    tokenizer = getattr(runtime, "speech_tokenizer", None)
    return str(getattr(tokenizer, "resampler", "soxr"))


def decode_input_audio(data: str, fmt: str, *, max_seconds: float, param: str,
                       resampler: str = "soxr") -> np.ndarray:
    """Decode an ``input_audio`` part (base64 ``data`` in ``fmt``); see :func:`decode_audio_bytes`."""
    raw = _b64(data, param)
    try:
        return decode_audio_bytes(raw, fmt, max_seconds=max_seconds, param=param, resampler=resampler)
    except APIError:
        if len(data) < 1024 and _PATH.match(data):  # a short path that happens to be base64
            raise _reference_error(data, param) from None
        raise


def _int16(samples: np.ndarray) -> np.ndarray:
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2")


def int16_bytes(samples: np.ndarray) -> bytes:
    """float32 samples in [-1, 1] as 16-bit little-endian PCM bytes (same rate)."""
    return _int16(np.asarray(samples, dtype=np.float32)).tobytes()


class PCM16Encoder:
    """Streaming float32 at ``rate`` -> OpenAI pcm16 bytes (16-bit LE mono at 24 kHz).

    ``push`` each piece as it comes and ``flush`` at the end; the bytes joined are the same
    however the signal was cut.
    """

    def __init__(self, rate: int = SAMPLE_RATE) -> None:
        self._stream = (None if rate == PCM16_RATE else
                        soxr.ResampleStream(rate, PCM16_RATE, 1, dtype="float32", quality="HQ"))

    def push(self, samples: np.ndarray) -> bytes:
        x = np.ascontiguousarray(samples, dtype=np.float32)
        if self._stream is not None:
            x = self._stream.resample_chunk(x)
        return _int16(x).tobytes()

    def flush(self) -> bytes:
        if self._stream is None:
            return b""
        return _int16(self._stream.resample_chunk(np.zeros(0, np.float32), last=True)).tobytes()


def encode_audio(samples: np.ndarray, rate: int, fmt: str) -> bytes:
    """A whole answer as ``wav`` / ``flac`` (16-bit at ``rate``) or ``pcm16``/``pcm`` (24 kHz raw)."""
    if fmt in ("pcm16", "pcm"):
        enc = PCM16Encoder(rate)
        return enc.push(samples) + enc.flush()
    buffer = io.BytesIO()
    sf.write(buffer, _int16(np.asarray(samples, dtype=np.float32)), rate,
             format="WAV" if fmt == "wav" else "FLAC", subtype="PCM_16")
    return buffer.getvalue()


def wav_stream_header(rate: int) -> bytes:
    """A 16-bit mono WAV header for a stream of unknown length (sizes 0xFFFFFFFF, as OpenAI streams wav)."""
    unknown = 0xFFFFFFFF
    return (b"RIFF" + struct.pack("<I", unknown) + b"WAVE" + b"fmt " +
            struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16) + b"data" + struct.pack("<I", unknown))
