"""``POST /v1/audio/transcriptions`` and ``POST /v1/audio/speech``.

Transcriptions (multipart ``file``, ``model``, ``response_format``, ``language``,
``temperature``): SpeechGPT's own ASR task, or faster-whisper when the server was started
with ``--asr whisper``. ``response_format`` ``json`` (``{"text"}``), ``text`` (plain) or
``verbose_json`` (``{"task", "language", "duration", "text", "segments"}``; SpeechGPT's ASR
gives one segment spanning the clip).

Speech (``input``, ``voice``, ``response_format``): SpeechGPT's TTS task through the
streaming vocoder, sent as it is synthesized: ``pcm`` (raw 16-bit LE mono, 24 kHz, as
OpenAI's), ``wav`` (16 kHz 16-bit, streamed with the unknown-length header OpenAI uses) or
``flac`` (16 kHz, sent whole).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from ..audio import SAMPLE_RATE
from ..model import GenerationOptions
from ..pipeline import AudioChunk, Completed, Response
from .audio_codec import (
    PCM16Encoder,
    decode_audio_bytes,
    encode_audio,
    int16_bytes,
    speech_resampler,
    wav_stream_header,
)
from .config import ServerConfig
from .errors import APIError
from .protocol import SpeechRequest

__all__ = ["TRANSCRIPTION_FORMATS", "speech_stream", "transcribe"]

TRANSCRIPTION_FORMATS = ("json", "text", "verbose_json")
_MEDIA = {"wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac"}


def _greedy(runtime: Any, temperature: float | None, max_new: int | None = None) -> GenerationOptions:
    t = float(temperature or 0.0)
    return GenerationOptions(max_new_tokens=max_new or runtime.model.context_length, min_new_tokens=0,
                             do_sample=t > 0, temperature=t if t > 0 else 1.0)


async def transcribe(runtime: Any, config: ServerConfig, raw: bytes, *, filename: str,
                     response_format: str, language: str | None, temperature: float | None,
                     whisper: Any = None, track: Any = None) -> tuple[Any, str]:
    """Transcribe an uploaded clip; returns ``(body, media type)``.

    Raises:
        APIError: 400 for a bad format or unusable audio.
    """
    if response_format not in TRANSCRIPTION_FORMATS:
        raise APIError(400, f"response_format {response_format!r} is not supported: use "
                            f"{', '.join(TRANSCRIPTION_FORMATS)}.", param="response_format")
    fmt = "pcm16" if filename.lower().endswith((".pcm", ".raw")) else "file"
    resampler = speech_resampler(runtime) if whisper is None else "soxr"
    samples = await asyncio.to_thread(decode_audio_bytes, raw, fmt, max_seconds=config.max_audio_seconds,
                                      param="file", resampler=resampler)
    duration = samples.size / SAMPLE_RATE
    if whisper is not None:
        def run() -> tuple[str, list[dict[str, Any]], str]:
            segments, info = whisper.transcribe(samples, language=language or None,
                                                temperature=float(temperature or 0.0))
            parts = [{"id": k, "start": s.start, "end": s.end, "text": s.text.strip()}
                     for k, s in enumerate(segments)]
            return " ".join(p["text"] for p in parts if p["text"]), parts, info.language

        text, segments, lang = await asyncio.to_thread(run)
    else:
        response: Response | None = None
        events = runtime.astream(audio=samples, sample_rate=SAMPLE_RATE, task="asr", output="text",
                                 options=_greedy(runtime, temperature))
        events = track(events) if track is not None else events
        try:
            async for event in events:
                if isinstance(event, Completed):
                    response = event.response
        finally:
            await events.aclose()
        assert response is not None
        text = response.text.strip()
        segments = [{"id": 0, "start": 0.0, "end": round(duration, 3), "text": text}]
        lang = language or "english"
    if response_format == "text":
        return text + "\n", "text/plain"
    if response_format == "json":
        return {"text": text}, "application/json"
    return {"task": "transcribe", "language": lang, "duration": round(duration, 3), "text": text,
            "segments": segments}, "application/json"


def check_speech(req: SpeechRequest, runtime: Any, config: ServerConfig) -> None:
    """Refuse what SpeechGPT's TTS cannot do (400)."""
    voice = req.voice.get("id") if isinstance(req.voice, dict) else req.voice
    if voice is not None and voice not in config.voices:
        raise APIError(400, f"voice {voice!r} is not available: this model speaks with one voice, "
                            f"named {', '.join(repr(v) for v in config.voices)} (the vocoder's own).",
                       param="voice", code="unsupported_voice")
    if req.speed not in (None, 1.0):
        raise APIError(400, f"speed={req.speed} is not supported: SpeechGPT speaks at its own pace "
                            "(speed 1.0).", param="speed")
    if runtime.vocoder is None:
        raise APIError(400, "this server's model has no vocoder, so it cannot speak.", param="model")


async def speech_stream(runtime: Any, req: SpeechRequest, *, track: Any = None) -> tuple[AsyncIterator[bytes], str]:
    """Start the TTS turn of ``req``; returns its byte stream and media type.

    The first audio is awaited before returning, so input errors are a 400, not a broken
    stream. ``track`` wraps the turn's events (the server counts active turns with it).
    """
    events = runtime.astream(req.input, task="tts", output="speech",
                             options=_greedy(runtime, None))
    events = track(events) if track is not None else events
    fmt = req.response_format
    try:
        first = await events.__anext__()
    except StopAsyncIteration:
        first = None
    except BaseException:
        await events.aclose()
        raise
    sample_rate = getattr(runtime.vocoder, "sample_rate", SAMPLE_RATE)

    async def body() -> AsyncIterator[bytes]:
        encoder = PCM16Encoder(sample_rate) if fmt == "pcm" else None
        pieces: list[np.ndarray] = []
        try:
            if fmt == "wav":
                yield wav_stream_header(sample_rate)
            pending = [first] if first is not None else []
            while True:
                for event in pending:
                    if isinstance(event, AudioChunk):
                        if fmt == "flac":
                            pieces.append(event.samples)
                        elif encoder is not None:
                            yield encoder.push(event.samples)
                        else:
                            yield int16_bytes(event.samples)
                try:
                    pending = [await events.__anext__()]
                except StopAsyncIteration:
                    break
            if encoder is not None:
                yield encoder.flush()
            if fmt == "flac":
                samples = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
                yield await asyncio.to_thread(encode_audio, samples, sample_rate, "flac")
        finally:
            await events.aclose()

    return body(), _MEDIA[fmt]

