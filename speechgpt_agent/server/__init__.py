"""``speechgpt-agent serve``: SpeechGPT behind OpenAI's HTTP protocols (DESIGN.md section 11).

A thin translation layer over :class:`~speechgpt_agent.pipeline.SpeechGPT`, the way vLLM's
OpenAI entrypoints sit over its engine: every request runs its own ``SpeechGPT.astream``,
and the engine decides how concurrent turns share the model. One module per job:

* :mod:`.protocol`: pydantic models of the request bodies;
* :mod:`.chat`: ``/v1/chat/completions`` (messages -> turn, events -> OpenAI answer, SSE);
* :mod:`.audio_api`: ``/v1/audio/transcriptions`` and ``/v1/audio/speech``;
* :mod:`.audio_codec`: inline audio in (never paths or URLs), wav / pcm16 / flac out;
* :mod:`.audio_store`: returned audio ids and heard transcripts, expiring;
* :mod:`.errors`: OpenAI-style error bodies;
* :mod:`.app`: the FastAPI app, key check, body limit; :mod:`.cli`: the subcommand.

Example::

    from speechgpt_agent.server import ServerConfig, create_app, load_runtime
    app = create_app(load_runtime("demo"), ServerConfig(model_name="demo"))
    # uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServerConfig", "create_app", "load_runtime", "run"]


def __getattr__(name: str) -> Any:  # fastapi is imported on first use, not by `--help`
    if name == "ServerConfig":
        from .config import ServerConfig

        return ServerConfig
    if name in ("create_app", "load_runtime", "run"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
