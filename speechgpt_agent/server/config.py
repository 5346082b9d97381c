"""Settings of one server: the model it serves, its key, its limits."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

__all__ = ["API_KEY_ENV", "ServerConfig"]

API_KEY_ENV = "SPEECHGPT_API_KEY"
"""Environment variable read for the API key when ``--api-key`` is not given."""


@dataclass
class ServerConfig:
    """What ``speechgpt-agent serve`` was started with.

    Attributes:
        model_name: the id clients send as ``model`` and ``/v1/models`` lists (any ``model``
            is accepted: one server serves one model set).
        api_key: required ``Authorization: Bearer`` key, or ``None`` (open; bind to localhost).
        asr: ``"speechgpt"`` (its own ASR task) or ``"whisper"`` (faster-whisper) for
            ``/v1/audio/transcriptions``.
        whisper_model: faster-whisper size, hub id or CTranslate2 folder (``asr="whisper"``).
        voices: voice names ``audio.voice`` may take; the first is the vocoder's own voice.
        max_request_bytes: largest request body (413 beyond), 25 MiB as OpenAI's uploads.
        max_audio_seconds: longest input clip, per part and in total (400 beyond).
        max_messages: most ``messages`` per request (400 beyond).
        audio_ttl_s: seconds a returned audio id can be referred to (``expires_at``).
        default_max_tokens: answer tokens when a request names none (``None``: the context).
        min_new_tokens: fewest answer tokens (OpenAI has no such field: 0).
        executor_threads: threads of the event loop's default executor, where
            ``SpeechGPT.astream`` runs each turn's producer; sized so that concurrent
            requests never wait for a thread (the engine decides how turns share the model).
    """

    model_name: str = "demo"
    api_key: str | None = None
    asr: Literal["speechgpt", "whisper"] = "speechgpt"
    whisper_model: str = "small"
    voices: tuple[str, ...] = ("default",)
    max_request_bytes: int = 25 * 1024 * 1024
    max_audio_seconds: float = 60.0
    max_messages: int = 256
    audio_ttl_s: float = 3600.0
    default_max_tokens: int | None = None
    min_new_tokens: int = 0
    executor_threads: int = 256

    @classmethod
    def key_from_env(cls, api_key: str | None) -> str | None:
        """``api_key`` if given, else the :data:`API_KEY_ENV` variable, else ``None``."""
        return api_key or os.environ.get(API_KEY_ENV) or None
