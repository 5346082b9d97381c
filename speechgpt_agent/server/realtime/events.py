"""The Realtime protocol's events: client events parsed, the session's settings, server events built.

Two dialects share one connection handler, as the ``openai`` package ships both:

* ``ga`` (``client.realtime.connect``, pipecat's ``OpenAIRealtimeLLMService``): the session
  has ``type: "realtime"``, ``output_modalities`` and ``audio.input/output.{format,
  turn_detection, transcription, voice}``; output events are ``response.output_audio.delta``,
  ``response.output_audio_transcript.delta``, ``response.output_text.delta``; items are
  announced by ``conversation.item.added`` and ``conversation.item.done``.
* ``beta`` (``client.beta.realtime.connect``, which sends ``OpenAI-Beta: realtime=v1``): a
  flat session (``modalities``, ``voice``, ``input_audio_format``, ``turn_detection``,
  ``temperature``); ``response.audio.delta``, ``response.audio_transcript.delta``,
  ``response.text.delta``; ``conversation.item.created``.

Client events of either shape are accepted on either dialect (a ``session.update`` may use
the flat or the nested fields); the server answers in the connection's dialect.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .audio import AudioFormat, FormatError, format_name, format_object

__all__ = [
    "CLIENT_EVENTS",
    "ClientEventError",
    "Dialect",
    "SessionSettings",
    "TurnDetection",
    "apply_session_update",
    "error_event",
    "new_id",
    "parse_client_event",
    "render_session",
    "server_names",
]

Dialect = Literal["ga", "beta"]


def new_id(prefix: str) -> str:
    """A fresh protocol id (``event_``, ``item_``, ``resp_``, ``sess_``, ``call_`` + 22 hex)."""
    return f"{prefix}_{secrets.token_hex(11)}"


class ClientEventError(Exception):
    """A client event the server refuses: sent back as an ``error`` event, the session goes on.

    Attributes follow the protocol's error object (``type``, ``code``, ``message``, ``param``).
    """

    def __init__(self, message: str, *, code: str = "invalid_value", param: str | None = None,
                 type: str = "invalid_request_error", event_id: str | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.param, self.type, self.event_id = message, code, param, type, event_id


def error_event(exc: ClientEventError) -> dict[str, Any]:
    """The ``error`` server event of ``exc``."""
    return {"type": "error", "event_id": new_id("event"),
            "error": {"type": exc.type, "code": exc.code, "message": exc.message,
                      "param": exc.param, "event_id": exc.event_id}}


# --- client events ----------------------------------------------------------------------------


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentIn(_In):
    type: Literal["input_text", "input_audio", "text", "audio", "output_text", "output_audio",
                  "input_image", "item_reference"]
    text: str | None = None
    audio: str | None = None
    transcript: str | None = None


class ItemIn(_In):
    id: str | None = Field(None, max_length=64)
    type: Literal["message", "function_call", "function_call_output"]
    role: Literal["user", "assistant", "system"] | None = None
    content: list[ContentIn] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None
    status: str | None = None


class TurnDetectionIn(_In):
    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    prefix_padding_ms: int | None = Field(None, ge=0, le=10_000)
    silence_duration_ms: int | None = Field(None, ge=0, le=10_000)
    create_response: bool | None = None
    interrupt_response: bool | None = None
    eagerness: Literal["low", "medium", "high", "auto"] | None = None


class _AudioInputIn(_In):
    format: Any = None
    transcription: dict[str, Any] | None = None
    turn_detection: TurnDetectionIn | bool | None = None
    noise_reduction: Any = None


class _AudioOutputIn(_In):
    format: Any = None
    voice: str | dict[str, Any] | None = None
    speed: float | None = None


class _AudioIn(_In):
    input: _AudioInputIn | None = None
    output: _AudioOutputIn | None = None


class SessionIn(_In):
    """``session.update``'s ``session`` in either dialect (fields absent stay as they were)."""

    type: Literal["realtime"] | None = None
    model: str | None = None
    instructions: str | None = None
    voice: str | dict[str, Any] | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    output_modalities: list[Literal["text", "audio"]] | None = None
    input_audio_format: Any = None
    output_audio_format: Any = None
    input_audio_transcription: dict[str, Any] | None = None
    turn_detection: TurnDetectionIn | bool | None = None
    audio: _AudioIn | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_response_output_tokens: int | Literal["inf"] | None = None
    max_output_tokens: int | Literal["inf"] | None = None


class ResponseIn(_In):
    """``response.create``'s ``response`` (per-response overrides)."""

    instructions: str | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    output_modalities: list[Literal["text", "audio"]] | None = None
    voice: str | dict[str, Any] | None = None
    output_audio_format: Any = None
    audio: _AudioIn | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_output_tokens: int | Literal["inf"] | None = None
    max_response_output_tokens: int | Literal["inf"] | None = None
    conversation: str | None = None
    input: list[ItemIn] | None = None
    metadata: dict[str, Any] | None = None


class _Event(_In):
    type: str
    event_id: str | None = None


class SessionUpdate(_Event):
    session: SessionIn


class BufferAppend(_Event):
    audio: str


class ItemCreate(_Event):
    previous_item_id: str | None = None
    item: ItemIn


class ItemTruncate(_Event):
    item_id: str
    content_index: int = Field(0, ge=0)
    audio_end_ms: int = Field(ge=0)


class ItemRef(_Event):
    item_id: str


class ResponseCreate(_Event):
    response: ResponseIn | None = None


class ResponseCancel(_Event):
    response_id: str | None = None


CLIENT_EVENTS: dict[str, type[_Event]] = {
    "session.update": SessionUpdate,
    "input_audio_buffer.append": BufferAppend,
    "input_audio_buffer.commit": _Event,
    "input_audio_buffer.clear": _Event,
    "output_audio_buffer.clear": _Event,
    "conversation.item.create": ItemCreate,
    "conversation.item.truncate": ItemTruncate,
    "conversation.item.delete": ItemRef,
    "conversation.item.retrieve": ItemRef,
    "response.create": ResponseCreate,
    "response.cancel": ResponseCancel,
}
"""Client event types the server takes, and their models."""


def _validation_message(exc: ValidationError) -> tuple[str, str | None]:
    from ..errors import validation_message

    return validation_message(list(exc.errors()))


def parse_client_event(obj: Any) -> _Event:
    """One client event from its decoded JSON.

    Raises:
        ClientEventError: not an object, no ``type``, an unknown type, or fields that do not
            fit the event (the message names them).
    """
    if not isinstance(obj, dict):
        raise ClientEventError(f"a client event is a JSON object, got {type(obj).__name__}.",
                               code="invalid_event")
    kind = obj.get("type")
    event_id = obj.get("event_id") if isinstance(obj.get("event_id"), str) else None
    if not isinstance(kind, str):
        raise ClientEventError("the event has no 'type' (a string such as 'session.update').",
                               code="invalid_event", param="type", event_id=event_id)
    model = CLIENT_EVENTS.get(kind)
    if model is None:
        raise ClientEventError(
            f"unknown client event type {kind[:80]!r}; this server takes "
            f"{', '.join(sorted(CLIENT_EVENTS))}.", code="invalid_event", param="type", event_id=event_id)
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        message, param = _validation_message(exc)
        raise ClientEventError(f"{kind}: {message}", param=param, event_id=event_id) from exc


# --- the session's settings ----------------------------------------------------------------


@dataclass(frozen=True)
class TurnDetection:
    """Server VAD settings (the protocol's defaults). ``semantic_vad`` runs as server VAD, its
    ``eagerness`` choosing the silence (low 1000 ms, auto/medium 600 ms, high 300 ms)."""

    type: str = "server_vad"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True
    eagerness: str | None = None

    def render(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "create_response": self.create_response,
                               "interrupt_response": self.interrupt_response}
        if self.type == "semantic_vad":
            out["eagerness"] = self.eagerness or "auto"
        else:
            out.update(threshold=self.threshold, prefix_padding_ms=self.prefix_padding_ms,
                       silence_duration_ms=self.silence_duration_ms)
        return out


_EAGERNESS_MS = {"low": 1000, "medium": 600, "auto": 600, "high": 300}


def _turn_detection(value: TurnDetectionIn | bool | None, old: TurnDetection | None) -> TurnDetection | None:
    if value is None or value is False:
        return None
    if value is True:
        return old or TurnDetection()
    base = old if old is not None and old.type == value.type else TurnDetection(type=value.type)
    changes = {k: v for k, v in value.model_dump(exclude_none=True).items() if k != "type"}
    if value.type == "semantic_vad":
        changes["silence_duration_ms"] = _EAGERNESS_MS[value.eagerness or "auto"]
    return replace(base, type=value.type, **changes)


@dataclass(frozen=True)
class SessionSettings:
    """What ``session.update`` sets; every response starts from these.

    Attributes:
        instructions: the system text; ``""`` keeps SpeechGPT's own meta instruction.
        voice: one of the server's voices (:attr:`ServerConfig.voices`).
        modalities: ``("text",)`` or ``("audio",)`` (audio with its transcript; the beta
            ``["text", "audio"]`` is the same).
        input_format, output_format: wire formats (:mod:`.audio`).
        transcription: input transcription settings, or ``None`` for no transcription events
            (the transcript is SpeechGPT's own, from its chain-of-modality answer).
        turn_detection: server VAD, or ``None``: the client commits.
        tools: realtime function tools (``{"type": "function", "name", "description",
            "parameters"}``); tool_choice ``"auto"``, ``"none"``, ``"required"`` or a name.
        temperature: sampling temperature, 0 for greedy decoding.
        max_output_tokens: most answer tokens, or ``"inf"`` (the context window).
    """

    model: str
    instructions: str = ""
    voice: str = "default"
    modalities: tuple[str, ...] = ("audio",)
    input_format: AudioFormat = "pcm16"
    output_format: AudioFormat = "pcm16"
    transcription: dict[str, Any] | None = None
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: str | dict[str, Any] = "auto"
    temperature: float = 0.8
    max_output_tokens: int | str = "inf"

    @property
    def speaks(self) -> bool:
        return "audio" in self.modalities


def _modalities(values: list[str], param: str) -> tuple[str, ...]:
    if not values:
        raise ClientEventError(f"{param} must name 'text' or 'audio'.", param=param)
    return ("audio",) if "audio" in values else ("text",)


def _voice(value: str | dict[str, Any], voices: tuple[str, ...], param: str) -> str:
    name = value.get("id") or value.get("name") if isinstance(value, dict) else value
    if name not in voices:
        raise ClientEventError(
            f"{param}: voice {name!r} is not available: this model speaks with one voice, named "
            f"{', '.join(repr(v) for v in voices)} (the vocoder's own).", code="unsupported_voice",
            param=param)
    return str(name)


def _format(value: Any, param: str) -> AudioFormat:
    try:
        return format_name(value, param)
    except FormatError as exc:
        raise ClientEventError(str(exc), param=param, code="unsupported_audio_format") from exc


def _tools(tools: list[dict[str, Any]], param: str) -> tuple[dict[str, Any], ...]:
    out = []
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t.get("function"), dict) else t  # chat-style too
        if t.get("type", "function") != "function" or not isinstance(fn.get("name"), str):
            raise ClientEventError(
                f"{param}[{i}]: only function tools are supported ({{'type': 'function', 'name', "
                f"'description', 'parameters'}}), got type {t.get('type')!r}.", param=f"{param}[{i}]",
                code="unsupported_tool")
        out.append({"type": "function", "name": fn["name"], "description": fn.get("description") or "",
                    "parameters": fn.get("parameters") or {"type": "object", "properties": {}}})
    return tuple(out)


def _max_tokens(value: int | str, param: str) -> int | str:
    if value != "inf" and (not isinstance(value, int) or value < 1):
        raise ClientEventError(f"{param} must be a positive integer or 'inf', got {value!r}.", param=param)
    return value


def apply_session_update(old: SessionSettings, new: SessionIn, voices: tuple[str, ...]) -> SessionSettings:
    """``old`` with the fields ``new`` sets (flat beta fields or GA ``audio.*``); all or nothing.

    Raises:
        ClientEventError: a value the server cannot serve (the field is named).
    """
    s = old
    sent = new.model_fields_set
    if new.instructions is not None:
        s = replace(s, instructions=new.instructions)
    mods = new.output_modalities if new.output_modalities is not None else new.modalities
    if mods is not None:
        s = replace(s, modalities=_modalities(mods, "session.output_modalities"))
    if new.voice is not None:
        s = replace(s, voice=_voice(new.voice, voices, "session.voice"))
    if new.input_audio_format is not None:
        s = replace(s, input_format=_format(new.input_audio_format, "session.input_audio_format"))
    if new.output_audio_format is not None:
        s = replace(s, output_format=_format(new.output_audio_format, "session.output_audio_format"))
    if "input_audio_transcription" in sent:
        s = replace(s, transcription=new.input_audio_transcription)
    if "turn_detection" in sent:
        s = replace(s, turn_detection=_turn_detection(new.turn_detection, s.turn_detection))
    audio = new.audio
    if audio is not None and audio.input is not None:
        fields = audio.input.model_fields_set
        if audio.input.format is not None:
            s = replace(s, input_format=_format(audio.input.format, "session.audio.input.format"))
        if "transcription" in fields:
            s = replace(s, transcription=audio.input.transcription)
        if "turn_detection" in fields:
            s = replace(s, turn_detection=_turn_detection(audio.input.turn_detection, s.turn_detection))
    if audio is not None and audio.output is not None:
        if audio.output.format is not None:
            s = replace(s, output_format=_format(audio.output.format, "session.audio.output.format"))
        if audio.output.voice is not None:
            s = replace(s, voice=_voice(audio.output.voice, voices, "session.audio.output.voice"))
    if new.tools is not None:
        s = replace(s, tools=_tools(new.tools, "session.tools"))
    if new.tool_choice is not None:
        s = replace(s, tool_choice=new.tool_choice)
    if new.temperature is not None:
        s = replace(s, temperature=float(new.temperature))
    limit = new.max_output_tokens if new.max_output_tokens is not None else new.max_response_output_tokens
    if limit is not None:
        s = replace(s, max_output_tokens=_max_tokens(limit, "session.max_output_tokens"))
    return s


def render_session(s: SessionSettings, session_id: str, dialect: Dialect, expires_at: int) -> dict[str, Any]:
    """The ``session`` object of ``session.created`` / ``session.updated``."""
    turn = s.turn_detection.render() if s.turn_detection is not None else None
    tools = [dict(t) for t in s.tools]
    if dialect == "beta":
        return {
            "id": session_id, "object": "realtime.session", "model": s.model,
            "modalities": ["text", "audio"] if s.speaks else ["text"],
            "instructions": s.instructions, "voice": s.voice,
            "input_audio_format": s.input_format, "output_audio_format": s.output_format,
            "input_audio_transcription": s.transcription, "turn_detection": turn,
            "tools": tools, "tool_choice": s.tool_choice, "temperature": s.temperature,
            "max_response_output_tokens": s.max_output_tokens, "expires_at": expires_at,
        }
    return {
        "type": "realtime", "object": "realtime.session", "id": session_id, "model": s.model,
        "output_modalities": list(s.modalities), "instructions": s.instructions,
        "audio": {
            "input": {"format": format_object(s.input_format), "transcription": s.transcription,
                      "noise_reduction": None, "turn_detection": turn},
            "output": {"format": format_object(s.output_format), "voice": s.voice, "speed": 1.0},
        },
        "tools": tools, "tool_choice": s.tool_choice, "max_output_tokens": s.max_output_tokens,
        "tracing": None, "prompt": None, "expires_at": expires_at, "include": None,
    }


# --- server event names per dialect ------------------------------------------------------------

_NAMES: dict[str, dict[Dialect, str]] = {
    "text.delta": {"ga": "response.output_text.delta", "beta": "response.text.delta"},
    "text.done": {"ga": "response.output_text.done", "beta": "response.text.done"},
    "audio.delta": {"ga": "response.output_audio.delta", "beta": "response.audio.delta"},
    "audio.done": {"ga": "response.output_audio.done", "beta": "response.audio.done"},
    "transcript.delta": {"ga": "response.output_audio_transcript.delta",
                         "beta": "response.audio_transcript.delta"},
    "transcript.done": {"ga": "response.output_audio_transcript.done",
                        "beta": "response.audio_transcript.done"},
}


def server_names(dialect: Dialect) -> dict[str, str]:
    """The output event types of ``dialect`` (keys ``text.delta``, ``audio.delta``, ...)."""
    return {k: v[dialect] for k, v in _NAMES.items()}
