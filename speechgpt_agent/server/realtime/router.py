"""``GET /v1/realtime``: the WebSocket endpoint of the Realtime protocol.

The handshake is checked before it is accepted: the API key (``Authorization: Bearer``, as
the ``openai`` client and pipecat send it, or a browser's ``openai-insecure-api-key.KEY``
subprotocol), the ``model`` query parameter (the served model, if given) and the number of
open sessions; a refusal is an HTTP error response with an OpenAI error body where the
server supports it (uvicorn does), else a close with code 1008/1013. A connection that
sends ``OpenAI-Beta: realtime=v1`` speaks the beta dialect, any other the GA one
(:mod:`.events`).

After that every client event goes to the connection's :class:`~.session.RealtimeSession`;
one that cannot be served gets an ``error`` event and the session goes on. A dropped
connection cancels its running response (and so its generation).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from ..config import ServerConfig
from ..errors import APIError, error_body
from .session import RealtimeLimits, RealtimeSession
from .vad import shared_vad

__all__ = ["realtime_router"]

log = logging.getLogger("speechgpt_agent.server.realtime")

KEY_SUBPROTOCOL = "openai-insecure-api-key."


class _Headers:
    """What the app's key check reads (``.headers``), for a key sent as a subprotocol."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


async def _deny(websocket: WebSocket, exc: APIError, close_code: int) -> None:
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        body = error_body(exc.message, type=exc.type, param=exc.param, code=exc.code)
        await websocket.send_denial_response(JSONResponse(body, status_code=exc.status))
    else:
        await websocket.close(code=close_code, reason=exc.message[:120])


def realtime_router(runtime: Any, config: ServerConfig, *, store: Any, track: Callable[[Any], Any],
                    auth: Callable[[Any], Awaitable[None]], max_sessions: int = 64,
                    limits: RealtimeLimits | None = None) -> APIRouter:
    """The router holding ``GET /v1/realtime``.

    Args:
        runtime: the served ``SpeechGPT``.
        config: the server's settings (key, names, voices, limits).
        store: the app's audio store; track: the app's turn counter (``/health``).
        auth: the app's key check (``await auth(request_like)`` raises ``APIError(401)``).
        max_sessions: open Realtime connections at most; more are refused (503).
        limits: per-connection limits (default: from ``config``).
    """
    router = APIRouter()
    limits = limits or RealtimeLimits.from_config(config)
    open_sessions: set[RealtimeSession] = set()

    @router.websocket("/v1/realtime")
    async def realtime(websocket: WebSocket) -> None:
        offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        try:
            keyed = next((p for p in offered if p.startswith(KEY_SUBPROTOCOL)), None)
            if keyed is not None and "authorization" not in websocket.headers:
                await auth(_Headers({"authorization": "Bearer " + keyed[len(KEY_SUBPROTOCOL):]}))
            else:
                await auth(websocket)
        except APIError as exc:
            await _deny(websocket, exc, 1008)
            return
        model = websocket.query_params.get("model")
        if model is not None and model != config.model_name:
            await _deny(websocket, APIError(
                404, f"The model {model!r} does not exist on this server; it serves {config.model_name!r} "
                     f"(connect with ?model={config.model_name}).", param="model", code="model_not_found"), 1008)
            return
        if len(open_sessions) >= max_sessions:
            await _deny(websocket, APIError(503, f"this server holds {max_sessions} Realtime sessions at "
                                                 "most; try again when one has closed.",
                                            code="too_many_sessions", type="server_error"), 1013)
            return
        await websocket.accept(subprotocol="realtime" if "realtime" in offered else None)
        dialect = "beta" if "realtime=v1" in websocket.headers.get("openai-beta", "") else "ga"
        lock = asyncio.Lock()
        closed = False

        async def send(event: dict[str, Any]) -> None:
            nonlocal closed
            if closed:
                return
            text = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
            async with lock:
                try:
                    await websocket.send_text(text)
                except Exception:  # noqa: BLE001 - the peer has gone; the receive loop ends the session
                    closed = True

        session = RealtimeSession(runtime, config, send, dialect=dialect, store=store, track=track,
                                  vad=shared_vad, limits=limits)
        open_sessions.add(session)
        try:
            await session.start()
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                await session.handle(data)
        except WebSocketDisconnect:
            pass
        except Exception:
            log.exception("realtime session %s failed", session.id)
            if websocket.client_state == WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):
                    await websocket.close(code=1011)
        finally:
            closed = True
            open_sessions.discard(session)
            await session.close()

    return router
