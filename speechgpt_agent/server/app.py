"""The FastAPI application: routes, authentication, body limits, and the model's loading.

:func:`create_app` wraps an already-loaded :class:`~speechgpt_agent.pipeline.SpeechGPT`;
:func:`load_runtime` loads one the way ``speechgpt-agent serve`` does; :func:`run` serves an
app with uvicorn. Routes:

=====================================  ===============================================
``POST /v1/chat/completions``          :mod:`.chat` (text and audio in and out, tools, SSE)
``POST /v1/audio/transcriptions``      :mod:`.audio_api` (SpeechGPT ASR or faster-whisper)
``POST /v1/audio/speech``              :mod:`.audio_api` (SpeechGPT TTS, streamed)
``GET  /v1/models``, ``/v1/models/ID`` the one served model
``GET  /health``                       liveness and what is loaded (no key needed)
``GET  /``, ``/static/*``              the voice page (``static/``; no key needed to load it)
=====================================  ===============================================
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .audio_api import check_speech, speech_stream, transcribe
from .audio_store import AudioStore
from .chat import AnswerBuilder, consume, plan_turn, sse_stream, stream_kwargs
from .config import ServerConfig
from .errors import APIError, error_body, install_error_handlers
from .protocol import ChatCompletionRequest, SpeechRequest

__all__ = ["create_app", "load_runtime", "run"]

log = logging.getLogger("speechgpt_agent.server")


class BodyLimit:
    """ASGI middleware: a request body larger than ``max_bytes`` gets 413 (by its
    ``Content-Length`` before anything is read, or while a chunked body is read)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self, size: str) -> APIError:
        return APIError(413, f"the request body is {size}; this server takes at most "
                             f"{self.max_bytes} bytes. Send shorter audio.", code="request_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            exc = self._too_large(f"{int(length)} bytes")
            await JSONResponse(error_body(exc.message, code=exc.code), status_code=413)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._too_large(f"over {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


def _auth(config: ServerConfig):
    async def check(request: Request) -> None:
        if config.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise APIError(401, "Missing API key: send it as 'Authorization: Bearer <key>' (the "
                                "openai client's api_key).", code="invalid_api_key")
        if not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
    return check


def _check_model(requested: str, config: ServerConfig) -> None:
    if requested != config.model_name:
        raise APIError(404, f"The model {requested!r} does not exist on this server; it serves "
                            f"{config.model_name!r} (GET /v1/models).", param="model",
                       code="model_not_found")


class TurnCounter:
    """How many turns are generating now (``/health``'s ``active_turns``)."""

    def __init__(self) -> None:
        self.active = 0

    async def track(self, events: Any) -> AsyncIterator[Any]:
        """``events`` (an ``astream``), counted while it runs; closing this closes it."""
        self.active += 1
        try:
            async for event in events:
                yield event
        finally:
            self.active -= 1
            await events.aclose()


async def _until_disconnected(request: Request, poll_s: float = 0.2) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(poll_s)


def create_app(runtime: Any, config: ServerConfig | None = None, *, whisper: Any = None,
               engine_name: str | None = None) -> FastAPI:
    """The OpenAI-compatible app over a loaded ``SpeechGPT``.

    Args:
        runtime: a :class:`~speechgpt_agent.pipeline.SpeechGPT` (any engine).
        config: limits, key, names (default :class:`ServerConfig`).
        whisper: a ``faster_whisper.WhisperModel`` for ``/v1/audio/transcriptions``
            (``None``: SpeechGPT's own ASR).
        engine_name: shown by ``/health``.
    """
    config = config or ServerConfig()
    store = AudioStore(ttl_s=config.audio_ttl_s)
    turns = TurnCounter()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # SpeechGPT.astream runs each turn's producer in the loop's default executor: give it
        # enough threads that concurrent requests never wait for one (threads start lazily)
        executor = ThreadPoolExecutor(max_workers=config.executor_threads, thread_name_prefix="speechgpt")
        asyncio.get_running_loop().set_default_executor(executor)
        try:
            yield
        finally:
            executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="speechgpt-agent", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.runtime, app.state.config, app.state.store = runtime, config, store
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=config.max_request_bytes)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(_auth(config))])
    started = int(time.time())

    @app.get("/health")
    async def health() -> dict[str, Any]:
        loaded = runtime.loaded_parts() if hasattr(runtime, "loaded_parts") else {}
        engine = getattr(getattr(runtime, "engine", None), "name", None) or engine_name
        return {"status": "ok", "model": config.model_name, "engine": engine,
                "asr": config.asr, "parts": loaded, "active_turns": turns.active}

    def model_card() -> dict[str, Any]:
        return {"id": config.model_name, "object": "model", "created": started, "owned_by": "speechgpt-agent"}

    @v1.get("/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @v1.get("/models/{model_id}")
    async def model(model_id: str) -> dict[str, Any]:
        _check_model(model_id, config)
        return model_card()

    @v1.post("/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Response:
        _check_model(req.model, config)
        turn = await asyncio.to_thread(plan_turn, req, runtime, config, store)
        kwargs, stopper = await asyncio.to_thread(stream_kwargs, turn, runtime)  # compiles a grammar
        builder = AnswerBuilder(turn, stopper, store, req.model, streaming=req.stream)
        events = turns.track(runtime.astream(**kwargs))
        if not req.stream:
            work = asyncio.ensure_future(consume(events, builder))
            watch = asyncio.ensure_future(_until_disconnected(request))
            try:
                await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                watch.cancel()
                if not work.done():  # the client went away: cancel its generation
                    work.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await work
                    await events.aclose()
            if work.cancelled():
                return Response(status_code=499)
            await events.aclose()
            work.result()
            return JSONResponse(await asyncio.to_thread(builder.message))
        # errors before the first event (bad audio, a prompt too long) are still a 400
        try:
            first = await events.__anext__()
        except BaseException:
            await events.aclose()
            raise
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(sse_stream(first, events, builder, include_usage=include_usage),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @v1.post("/audio/transcriptions")
    async def transcriptions(
        file: Annotated[UploadFile, File()],
        model: Annotated[str, Form()],
        response_format: Annotated[str, Form()] = "json",
        language: Annotated[str | None, Form()] = None,
        prompt: Annotated[str | None, Form()] = None,
        temperature: Annotated[float | None, Form()] = None,
    ) -> Response:
        del model, prompt  # one ASR per server; SpeechGPT takes no prompt
        raw = await file.read()
        body, media = await transcribe(runtime, config, raw, filename=file.filename or "",
                                       response_format=response_format, language=language,
                                       temperature=temperature, whisper=whisper, track=turns.track)
        if media == "text/plain":
            return PlainTextResponse(body)
        return JSONResponse(body)

    @v1.post("/audio/speech")
    async def speech(req: SpeechRequest) -> Response:
        check_speech(req, runtime, config)
        body, media = await speech_stream(runtime, req, track=turns.track)
        return StreamingResponse(body, media_type=media)

    app.include_router(v1)
    from .realtime import realtime_router  # GET /v1/realtime (WebSocket, the Realtime protocol)

    app.include_router(realtime_router(runtime, config, store=store, track=turns.track, auth=_auth(config)))
    static = Path(__file__).with_name("static")  # the voice page, shipped in the package
    app.mount("/static", StaticFiles(directory=static), name="static")
    app.get("/", include_in_schema=False)(lambda: FileResponse(static / "index.html"))
    return app


def load_runtime(model: str = "demo", *, quantization: str | None = "auto", engine: str | None = None,
                 adapter: str | None = None, speech_tokenizer: str | None = None,
                 vocoder: str | None = None, device: str | None = None,
                 engine_args: dict[str, Any] | None = None, dtype: str | None = None) -> Any:
    """Load the ``SpeechGPT`` to serve (the speech tokenizer and vocoder now, not on first use).

    Args:
        model: ``"demo"`` or a model folder / hub id.
        quantization: ``"nf4"``, ``"int8"``, ``None`` (unquantized), or ``"auto"``: none for
            the demo, NF4 for a real model.
        engine, engine_args: where generation runs (``"transformers"`` or ``"vllm"``) and its
            arguments (see :func:`speechgpt_agent.engines.load_engine`).
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"`` weights (default: the loader's).
        adapter, speech_tokenizer, vocoder, device: see ``SpeechGPT.from_pretrained``.
    """
    import torch

    from ..demo import DEMO_NAME
    from ..pipeline import SpeechGPT

    if quantization == "auto":
        quantization = None if model == DEMO_NAME else "nf4"
    kwargs: dict[str, Any] = {"quantization": quantization, "progress": False,
                              "engine": engine or "transformers", "engine_args": dict(engine_args or {}),
                              "preload": ("speech_tokenizer", "vocoder")}
    if dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype)
    for name, value in (("adapter", adapter), ("speech_tokenizer", speech_tokenizer),
                        ("vocoder", vocoder), ("device", device)):
        if value is not None:
            kwargs[name] = value
    return SpeechGPT.from_pretrained(model, **kwargs)


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info") -> None:
    """Serve ``app`` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)

