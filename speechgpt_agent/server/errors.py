"""OpenAI-style error bodies: ``{"error": {"message", "type", "param", "code"}}``.

Every refusal of the server is an :class:`APIError` (or an exception mapped onto one by
:func:`install_error_handlers`), so that OpenAI clients raise their usual typed errors
(``openai.BadRequestError``, ``AuthenticationError``, ...) with the server's message.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ModelNotFoundError, PromptTooLongError, SpeechGPTError

__all__ = ["APIError", "error_body", "install_error_handlers"]

log = logging.getLogger("speechgpt_agent.server")

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    """A refusal with its HTTP status and OpenAI error fields.

    Args:
        status: HTTP status code (400, 401, 404, 413, ...).
        message: what is wrong and what to do, shown to the client as is.
        param: the request field at fault (``"messages[0].content[1].input_audio.data"``), if any.
        code: a short machine-readable code (``"invalid_api_key"``, ``"request_too_large"``).
    """

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error")


def error_body(message: str, *, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """The JSON body OpenAI answers errors with."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _response(exc: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(error_body(exc.message, type=exc.type, param=exc.param, code=exc.code),
                        status_code=exc.status, headers=headers)


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [p for p in loc if p not in ("body", "query", "path")]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif "[" in str(p) or "-" in str(p):  # pydantic's tagged-union / function labels
            continue
        else:
            out += ("." if out else "") + str(p)
    return out


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """One readable message (and the first offending field) from pydantic's error list."""
    lines = []
    for e in errors[:5]:
        where = _loc(tuple(e.get("loc", ())))
        lines.append(f"{where or 'request'}: {e.get('msg', 'invalid value')}")
    first = _loc(tuple(errors[0].get("loc", ()))) if errors else None
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "Invalid request: " + "; ".join(lines) + more, first or None


def install_error_handlers(app: FastAPI) -> None:
    """Map every error onto an OpenAI error body (never a traceback, never a bare 500 page)."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return _response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(list(exc.errors()))
        return _response(APIError(400, message, param=param, code="invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"Unknown route {request.method} {request.url.path}."
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}."
        return _response(APIError(exc.status_code, message))

    @app.exception_handler(ModelNotFoundError)
    async def _not_found(request: Request, exc: ModelNotFoundError) -> JSONResponse:
        return _response(APIError(500, str(exc), type="server_error"))

    @app.exception_handler(PromptTooLongError)
    async def _too_long(request: Request, exc: PromptTooLongError) -> JSONResponse:
        return _response(APIError(400, str(exc), param="messages", code="context_length_exceeded"))

    @app.exception_handler(SpeechGPTError)
    async def _speechgpt(request: Request, exc: SpeechGPTError) -> JSONResponse:
        # AudioError, UnitError, PromptTooLongError ...: the Python API's own message
        return _response(APIError(400, str(exc)))

    @app.exception_handler(ValueError)
    async def _value(request: Request, exc: ValueError) -> JSONResponse:
        return _response(APIError(400, str(exc)))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _response(APIError(500, f"Internal server error ({type(exc).__name__}); see the "
                                       "server log.", type="server_error"))
