"""One Realtime connection: its settings, input audio buffer, conversation and current response.

A :class:`RealtimeSession` takes the client's events one at a time (:meth:`handle`) and
sends server events through the ``send`` callable it was given. A response runs as an
asyncio task over its own :meth:`SpeechGPT.astream`; cancelling it (``response.cancel``,
barge-in, a dropped connection) closes that stream, which cancels the generation at its
next token. Nothing here is shared between sessions except the model and the VAD's ONNX
session, so one session's fault never reaches another.

Turns are planned the way ``POST /v1/chat/completions`` plans them (:mod:`..chat`): session
instructions and system items replace SpeechGPT's meta instruction, the tool section of
:mod:`speechgpt_agent.integrations.langchain.tool_calling` is appended, earlier turns enter
as text (a spoken question as SpeechGPT's own transcript of it), and everything after the
last assistant item is the question (its audio as speech units). The answer goes through
the chat endpoint's :class:`~speechgpt_agent.server.chat.AnswerBuilder` (tool-call hold
back, parsing, streaming audio encoding), whose deltas become Realtime events.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from langchain_core.messages import ToolMessage

from ...audio import SAMPLE_RATE
from ...errors import SpeechGPTError
from ...integrations.langchain.tool_calling import (
    normalize_tool_choice,
    render_tool_calls,
    render_tool_result,
    tool_prompt,
    tool_specs,
)
from ...model import GenerationOptions
from ...prompt import META_INSTRUCTION, Turn
from ..chat import SPOKEN_PLACEHOLDER, AnswerBuilder, ChatTurn, stream_kwargs
from ..config import ServerConfig
from ..errors import APIError
from .audio import InputDecoder, OutputEncoder, bytes_per_ms, decode_clip, format_object
from .events import (
    ClientEventError,
    Dialect,
    ItemIn,
    ResponseIn,
    SessionIn,
    SessionSettings,
    apply_session_update,
    error_event,
    new_id,
    parse_client_event,
    render_session,
    server_names,
)
from .vad import TurnDetector

__all__ = ["Item", "RealtimeLimits", "RealtimeSession"]

log = logging.getLogger("speechgpt_agent.server.realtime")

MIN_COMMIT_MS = 100
"""A commit of less audio than this is refused (``input_audio_buffer_commit_empty``)."""


@dataclass(frozen=True)
class RealtimeLimits:
    """Limits of one connection (defaults from :class:`ServerConfig`).

    Attributes:
        max_event_bytes: largest client event (its JSON text).
        max_buffer_seconds: most audio in the input buffer, and in one committed item; with
            server VAD, longer speech is committed at this length.
        max_items: conversation items kept (the oldest are forgotten beyond it).
    """

    max_event_bytes: int = 15 * 1024 * 1024
    max_buffer_seconds: float = 60.0
    max_items: int = 1024

    @classmethod
    def from_config(cls, config: ServerConfig) -> RealtimeLimits:
        return cls(max_event_bytes=config.max_request_bytes, max_buffer_seconds=config.max_audio_seconds)


@dataclass
class Item:
    """A conversation item. ``samples`` (16 kHz float32) hold a user item's audio until an
    answer follows it; ``transcript`` is SpeechGPT's transcript of that audio once known."""

    id: str
    type: str
    role: str | None = None
    texts: list[str] = field(default_factory=list)
    samples: np.ndarray | None = None
    transcript: str | None = None
    audio: bool = False
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None
    status: str = "completed"
    audio_ms: float = 0.0
    truncated: bool = False

    def render(self, dialect: Dialect) -> dict[str, Any]:
        """The protocol's item object (audio data is never echoed)."""
        out: dict[str, Any] = {"id": self.id, "object": "realtime.item", "type": self.type, "status": self.status}
        if self.type == "function_call":
            out.update(call_id=self.call_id, name=self.name, arguments=self.arguments or "")
            return out
        if self.type == "function_call_output":
            out.update(call_id=self.call_id, output=self.output or "")
            return out
        out["role"] = self.role
        content: list[dict[str, Any]] = []
        if self.role == "assistant":
            text = "".join(self.texts)
            if self.audio:
                kind = "output_audio" if dialect == "ga" else "audio"
                content.append({"type": kind, "transcript": text})
            else:
                content.append({"type": "output_text" if dialect == "ga" else "text", "text": text})
        else:
            content.extend({"type": "input_text", "text": t} for t in self.texts)
            if self.audio:
                content.append({"type": "input_audio", "transcript": self.transcript})
        out["content"] = content
        return out


@dataclass
class _Response:
    id: str
    settings: SessionSettings
    into_conversation: bool
    input_items: list[Item] | None
    metadata: dict[str, Any] | None
    output: list[Item] = field(default_factory=list)
    message: Item | None = None
    question: list[Item] = field(default_factory=list)
    heard: str = ""
    heard_done: bool = False
    audio_bytes: int = 0
    task: asyncio.Task | None = None
    cancel_reason: str | None = None
    builder: AnswerBuilder | None = None


def _b64(data: str, param: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ClientEventError(f"{param} is not valid base64 ({exc}).", param=param,
                               code="invalid_audio") from exc


class RealtimeSession:
    """The state and event handling of one connection.

    Args:
        runtime: the served ``SpeechGPT``.
        config: the server's settings (voices, limits, names).
        send: ``await send(event_dict)`` delivers one server event (never raises).
        dialect: ``"ga"`` or ``"beta"`` event names.
        store: the server's :class:`~speechgpt_agent.server.audio_store.AudioStore`.
        track: wraps each ``astream`` (``/health``'s turn count).
        vad: the shared :class:`~.vad.SileroVAD`, or a callable returning it (loaded on first use).
        limits: per-connection limits.
    """

    def __init__(self, runtime: Any, config: ServerConfig, send: Callable[[dict[str, Any]], Awaitable[None]],
                 *, dialect: Dialect, store: Any, track: Callable[[Any], Any], vad: Callable[[], Any],
                 limits: RealtimeLimits) -> None:
        self.runtime, self.config, self._send, self.dialect = runtime, config, send, dialect
        self.store, self.track, self._vad, self.limits = store, track, vad, limits
        self.names = server_names(dialect)
        self.id = new_id("sess")
        self.created = int(time.time())
        self.settings = SessionSettings(model=config.model_name, voice=config.voices[0],
                                        transcription={"model": config.model_name})
        self.items: list[Item] = []
        self.response: _Response | None = None
        self._reset_input()

    # -- plumbing --

    async def send(self, event: dict[str, Any]) -> None:
        if "event_id" not in event:
            event = {"event_id": new_id("event"), **event}
        await self._send(event)

    async def error(self, exc: ClientEventError) -> None:
        await self._send(error_event(exc))

    def _ms(self, samples: int) -> int:
        return round(samples * 1000 / SAMPLE_RATE)

    def _reset_input(self) -> None:
        self.decoder = InputDecoder(self.settings.input_format)
        self.buffer: list[np.ndarray] = []
        self.buffered = 0  # samples in self.buffer
        self.buffer_start = getattr(self, "received", 0)  # absolute index of the buffer's first sample
        self.received = getattr(self, "received", 0)  # samples received since the connection opened
        self.speech_start: int | None = None
        self.speech_item: str | None = None
        td = self.settings.turn_detection
        self.detector: TurnDetector | None = (
            TurnDetector(self._vad(), threshold=td.threshold, silence_duration_ms=td.silence_duration_ms)
            if td is not None else None)
        if self.detector is not None:  # the stream's clock: the detector counts from here
            self.detector.position = self.received

    async def start(self) -> None:
        """Announce the session (``session.created``; beta: ``conversation.created`` too)."""
        await self.send({"type": "session.created", "session": self._session()})
        if self.dialect == "beta":
            await self.send({"type": "conversation.created",
                             "conversation": {"id": new_id("conv"), "object": "realtime.conversation"}})

    def _session(self) -> dict[str, Any]:
        return render_session(self.settings, self.id, self.dialect, self.created + 3600)

    async def handle(self, raw: str | bytes) -> None:
        """Take one client event (its JSON text); refusals become ``error`` events."""
        event_id = None
        try:
            if len(raw) > self.limits.max_event_bytes:
                raise ClientEventError(
                    f"the event is {len(raw)} bytes; this server takes events of at most "
                    f"{self.limits.max_event_bytes} bytes (append audio in smaller pieces).",
                    code="event_too_large")
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ClientEventError(f"the event is not valid JSON ({exc}).", code="invalid_json") from exc
            event = parse_client_event(obj)
            event_id = event.event_id
            await getattr(self, "_on_" + event.type.replace(".", "_"))(event)
        except ClientEventError as exc:
            exc.event_id = exc.event_id or event_id
            await self.error(exc)
        except (APIError, SpeechGPTError, ValueError) as exc:
            message = exc.message if isinstance(exc, APIError) else str(exc)
            await self.error(ClientEventError(message, event_id=event_id))
        except Exception as exc:
            log.exception("realtime event failed")
            await self.error(ClientEventError(f"Internal server error ({type(exc).__name__}); see the "
                                              "server log.", type="server_error", code="server_error",
                                              event_id=event_id))

    async def close(self) -> None:
        """The connection ended: cancel the running response (and its generation)."""
        await self._cancel("client_cancelled", quiet=True)

    # -- session --

    async def _on_session_update(self, event: Any) -> None:
        old = self.settings
        self.settings = apply_session_update(old, event.session, self.config.voices)
        if (self.settings.input_format != old.input_format or self.settings.turn_detection != old.turn_detection):
            keep = (self.buffer, self.buffered, self.buffer_start) if self.settings.input_format == old.input_format else None
            self._reset_input()
            if keep is not None:
                self.buffer, self.buffered, self.buffer_start = keep
        await self.send({"type": "session.updated", "session": self._session()})

    # -- input audio buffer --

    def _trim_idle(self) -> None:
        """With server VAD and no speech, keep only the prefix padding of the buffer."""
        td = self.settings.turn_detection
        if td is None or self.speech_start is not None:
            return
        keep = int(td.prefix_padding_ms * SAMPLE_RATE / 1000) + 4096
        if self.buffered > 2 * keep:
            audio = np.concatenate(self.buffer)[-keep:]
            self.buffer, self.buffer_start, self.buffered = [audio], self.received - keep, keep

    def _take(self, start: int, end: int) -> np.ndarray:
        """Buffered samples ``[start, end)`` (absolute indices); the buffer keeps what follows ``end``."""
        audio = np.concatenate(self.buffer) if self.buffer else np.zeros(0, np.float32)
        lo = max(start - self.buffer_start, 0)
        hi = min(max(end - self.buffer_start, lo), len(audio))
        rest = audio[hi:]
        self.buffer, self.buffered, self.buffer_start = [rest], len(rest), self.buffer_start + hi
        return audio[lo:hi]

    async def _on_input_audio_buffer_append(self, event: Any) -> None:
        raw = _b64(event.audio, "audio")
        samples = self.decoder.push(raw)
        seconds = (self.buffered + len(samples)) / SAMPLE_RATE
        if self.settings.turn_detection is None and seconds > self.limits.max_buffer_seconds:
            raise ClientEventError(
                f"the input audio buffer would hold {seconds:.1f} s; this server takes at most "
                f"{self.limits.max_buffer_seconds:g} s per item: commit (or clear) it first.",
                code="input_audio_buffer_too_long", param="audio")
        self.buffer.append(samples)
        self.buffered += len(samples)
        self.received += len(samples)
        if self.detector is None:
            return
        detector = self.detector
        for vad in await asyncio.to_thread(detector.push, samples):
            if detector is not self.detector:  # the session changed meanwhile
                return
            if vad.kind == "start":
                await self._speech_started(vad.sample)
            else:
                await self._speech_stopped(vad.sample)
        if self.speech_start is not None and (self.received - self.speech_start) / SAMPLE_RATE > self.limits.max_buffer_seconds:
            self.detector.reset()
            await self._speech_stopped(self.received)
        self._trim_idle()

    async def _speech_started(self, sample: int) -> None:
        td = self.settings.turn_detection
        assert td is not None
        start = max(sample - int(td.prefix_padding_ms * SAMPLE_RATE / 1000), self.buffer_start, 0)
        self.speech_start, self.speech_item = start, new_id("item")
        await self.send({"type": "input_audio_buffer.speech_started", "audio_start_ms": self._ms(start),
                         "item_id": self.speech_item})
        if td.interrupt_response and self.response is not None and self.response.into_conversation:
            await self._cancel("turn_detected")

    async def _speech_stopped(self, sample: int) -> None:
        td = self.settings.turn_detection
        item_id = self.speech_item or new_id("item")
        start = self.speech_start if self.speech_start is not None else self.buffer_start
        self.speech_start, self.speech_item = None, None
        await self.send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": self._ms(sample),
                         "item_id": item_id})
        audio = self._take(start, sample)
        await self._commit(audio, item_id)
        if td is not None and td.create_response and self.response is None:
            await self._start_response(None)

    async def _commit(self, audio: np.ndarray, item_id: str) -> None:
        previous = self.items[-1].id if self.items else None
        item = Item(id=item_id, type="message", role="user", samples=audio, audio=True)
        await self.send({"type": "input_audio_buffer.committed", "previous_item_id": previous, "item_id": item_id})
        await self._add_item(item, previous)

    async def _on_input_audio_buffer_commit(self, event: Any) -> None:
        tail = self.decoder.flush()
        self.decoder = InputDecoder(self.settings.input_format)
        if tail.size:
            self.buffer.append(tail)
            self.buffered += len(tail)
            self.received += len(tail)
        if self.buffered < MIN_COMMIT_MS * SAMPLE_RATE / 1000:
            raise ClientEventError(
                f"buffer too small: expected at least {MIN_COMMIT_MS} ms of audio, but the buffer "
                f"holds {self._ms(self.buffered)} ms.", code="input_audio_buffer_commit_empty")
        item_id = self.speech_item or new_id("item")
        audio = self._take(self.buffer_start, self.received)
        self.speech_start = self.speech_item = None
        if self.detector is not None:
            self.detector.reset()
        await self._commit(audio, item_id)

    async def _on_input_audio_buffer_clear(self, event: Any) -> None:
        self._take(self.received, self.received)
        self.speech_start = self.speech_item = None
        if self.detector is not None:
            self.detector.reset()
        await self.send({"type": "input_audio_buffer.cleared"})

    async def _on_output_audio_buffer_clear(self, event: Any) -> None:
        response = self.response
        await self._cancel("client_cancelled")
        if response is not None:
            await self.send({"type": "output_audio_buffer.cleared", "response_id": response.id})

    # -- conversation --

    def _find(self, item_id: str, param: str = "item_id") -> Item:
        for item in self.items:
            if item.id == item_id:
                return item
        raise ClientEventError(f"{param}: no item {item_id!r} in the conversation.", param=param,
                               code="item_not_found")

    async def _add_item(self, item: Item, previous: str | None, *, announce: bool = True) -> None:
        index = len(self.items)
        if previous is not None and (not self.items or previous != self.items[-1].id):
            index = self.items.index(self._find(previous, "previous_item_id")) + 1 if previous != "root" else 0
        self.items.insert(index, item)
        before = self.items[index - 1].id if index > 0 else None
        if item.role == "assistant" or item.type == "function_call":
            for earlier in self.items[:index]:  # answered: its transcript is all a later turn needs
                earlier.samples = None
        if len(self.items) > self.limits.max_items:
            del self.items[0]
        if announce:
            await self._announce(item, before)

    async def _announce(self, item: Item, previous: str | None, *, done: bool = True) -> None:
        if self.dialect == "beta":
            await self.send({"type": "conversation.item.created", "previous_item_id": previous,
                             "item": item.render(self.dialect)})
            return
        await self.send({"type": "conversation.item.added", "previous_item_id": previous,
                         "item": item.render(self.dialect)})
        if done:
            await self.send({"type": "conversation.item.done", "previous_item_id": previous,
                             "item": item.render(self.dialect)})

    def _item_from(self, spec: ItemIn, param: str) -> Item:
        item = Item(id=spec.id or new_id("item"), type=spec.type, role=spec.role)
        if any(i.id == item.id for i in self.items):
            raise ClientEventError(f"{param}.id: an item {item.id!r} is already in the conversation.",
                                   param=f"{param}.id", code="duplicate_item_id")
        if spec.type == "function_call":
            if not spec.name:
                raise ClientEventError(f"{param}: a function_call item needs a name.", param=f"{param}.name")
            item.call_id, item.name, item.arguments = spec.call_id or new_id("call"), spec.name, spec.arguments or "{}"
            return item
        if spec.type == "function_call_output":
            if not spec.call_id:
                raise ClientEventError(f"{param}: a function_call_output item needs the call_id of its call.",
                                       param=f"{param}.call_id")
            item.call_id, item.output = spec.call_id, spec.output or ""
            return item
        if spec.role is None:
            raise ClientEventError(f"{param}: a message item needs a role ('user', 'assistant' or 'system').",
                                   param=f"{param}.role")
        clips = []
        for j, part in enumerate(spec.content or []):
            where = f"{param}.content[{j}]"
            if part.type in ("input_text", "text", "output_text"):
                item.texts.append(part.text or "")
            elif part.type in ("input_audio", "audio", "output_audio"):
                if spec.role == "assistant" or (part.audio is None and part.transcript is not None):
                    item.texts.append(part.transcript or "")
                    item.audio = spec.role == "assistant"
                    if spec.role != "assistant":
                        item.audio, item.transcript = True, part.transcript
                    continue
                if part.audio is None:
                    raise ClientEventError(f"{where}: an input_audio part needs audio (base64, in the "
                                           "session's input format).", param=f"{where}.audio")
                clips.append(decode_clip(_b64(part.audio, f"{where}.audio"), self.settings.input_format))
                item.transcript = part.transcript
            else:
                raise ClientEventError(
                    f"{where}: SpeechGPT takes text and audio only; got a {part.type!r} part.",
                    param=where, code="unsupported_content")
        if spec.role == "system" and clips:
            raise ClientEventError(f"{param}: a system item takes text only.", param=f"{param}.content")
        if clips:
            item.samples, item.audio = np.concatenate(clips), True
            seconds = item.samples.size / SAMPLE_RATE
            if seconds > self.limits.max_buffer_seconds:
                raise ClientEventError(f"{param}: the item's audio lasts {seconds:.1f} s; this server takes "
                                       f"at most {self.limits.max_buffer_seconds:g} s per item.",
                                       param=f"{param}.content", code="audio_too_long")
        return item

    async def _on_conversation_item_create(self, event: Any) -> None:
        item = await asyncio.to_thread(self._item_from, event.item, "item")
        await self._add_item(item, event.previous_item_id)

    async def _on_conversation_item_delete(self, event: Any) -> None:
        item = self._find(event.item_id)
        self.items.remove(item)
        await self.send({"type": "conversation.item.deleted", "item_id": item.id})

    async def _on_conversation_item_retrieve(self, event: Any) -> None:
        await self.send({"type": "conversation.item.retrieved", "item": self._find(event.item_id).render(self.dialect)})

    async def _on_conversation_item_truncate(self, event: Any) -> None:
        item = self._find(event.item_id)
        if item.role != "assistant" or not item.audio:
            raise ClientEventError("only an assistant item with audio can be truncated.",
                                   param="item_id", code="invalid_item")
        if event.content_index != 0:
            raise ClientEventError("content_index: the item has one content part (0).", param="content_index")
        if self.response is not None and item in self.response.output:
            await self._cancel("client_cancelled")
        if event.audio_end_ms > item.audio_ms + 1:
            raise ClientEventError(f"audio_end_ms {event.audio_end_ms} is beyond the item's audio "
                                   f"({int(item.audio_ms)} ms).", param="audio_end_ms")
        item.audio_ms, item.truncated = float(event.audio_end_ms), True
        await self.send({"type": "conversation.item.truncated", "item_id": item.id, "content_index": 0,
                         "audio_end_ms": int(event.audio_end_ms)})

    # -- responses --

    async def _on_response_create(self, event: Any) -> None:
        if self.response is not None:
            raise ClientEventError(f"Conversation already has an active response in progress: "
                                   f"{self.response.id}. Wait until the response is finished before "
                                   "creating a new one.", code="conversation_already_has_active_response")
        await self._start_response(event.response)

    async def _on_response_cancel(self, event: Any) -> None:
        if self.response is None or (event.response_id and event.response_id != self.response.id):
            raise ClientEventError("Cancellation failed: no active response found.",
                                   code="response_cancel_not_active")
        await self._cancel("client_cancelled")

    async def _cancel(self, reason: str, *, quiet: bool = False) -> None:
        """Cancel the running response (if any) and wait until it has reported itself."""
        r = self.response
        if r is None or r.task is None:
            return
        if r.cancel_reason is None:
            r.cancel_reason = reason
            r.task.cancel()
        try:
            await asyncio.shield(r.task)
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 - the task reports its own faults
            if quiet:
                return

    def _response_settings(self, params: ResponseIn | None) -> SessionSettings:
        s = self.settings
        if params is None:
            return s
        overrides = SessionIn(
            instructions=params.instructions, output_modalities=params.output_modalities,
            modalities=params.modalities, voice=params.voice, output_audio_format=params.output_audio_format,
            audio=params.audio.model_copy(update={"input": None}) if params.audio is not None else None,
            tools=params.tools, tool_choice=params.tool_choice, temperature=params.temperature,
            max_output_tokens=params.max_output_tokens if params.max_output_tokens is not None
            else params.max_response_output_tokens)
        return apply_session_update(s, overrides, self.config.voices)

    async def _start_response(self, params: ResponseIn | None) -> None:
        settings = self._response_settings(params)
        into = not (params is not None and params.conversation == "none")
        inputs = None
        if params is not None and params.input is not None:
            inputs = [await asyncio.to_thread(self._item_from, spec, f"response.input[{i}]")
                      for i, spec in enumerate(params.input)]
        r = _Response(id=new_id("resp"), settings=settings, into_conversation=into, input_items=inputs,
                      metadata=params.metadata if params is not None else None)
        self.response = r
        r.task = asyncio.create_task(self._run(r), name=f"realtime-{r.id}")

    def _render_response(self, r: _Response, status: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
        s = r.settings
        out: dict[str, Any] = {
            "id": r.id, "object": "realtime.response", "status": status, "status_details": details,
            "output": [i.render(self.dialect) for i in r.output],
            "conversation_id": None if not r.into_conversation else f"conv_{self.id[5:]}",
            "metadata": r.metadata, "usage": self._usage(r) if status != "in_progress" else None,
        }
        if self.dialect == "beta":
            out.update(modalities=["text", "audio"] if s.speaks else ["text"], voice=s.voice,
                       output_audio_format=s.output_format, temperature=s.temperature,
                       max_output_tokens=s.max_output_tokens)
        else:
            out.update(output_modalities=list(s.modalities), max_output_tokens=s.max_output_tokens,
                       audio={"output": {"format": format_object(s.output_format), "voice": s.voice}})
        return out

    def _usage(self, r: _Response) -> dict[str, Any]:
        resp = r.builder.response if r.builder is not None else None
        prompt, completion = (resp.usage.prompt_tokens, resp.usage.completion_tokens) if resp else (0, 0)
        audio_in = len(resp.input_units) if resp else 0
        audio_out = len(resp.units) if resp else 0
        return {
            "total_tokens": prompt + completion, "input_tokens": prompt, "output_tokens": completion,
            "input_token_details": {"text_tokens": prompt - audio_in, "audio_tokens": audio_in, "cached_tokens": 0,
                                    "image_tokens": 0, "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0}},
            "output_token_details": {"text_tokens": completion - audio_out, "audio_tokens": audio_out},
        }

    # -- planning a turn --

    def _plan(self, r: _Response) -> ChatTurn:
        """The conversation (or the response's own input) as one SpeechGPT turn."""
        s = r.settings
        items = r.input_items if r.input_items is not None else list(self.items)
        system: list[str] = [s.instructions] if s.instructions.strip() else []
        turns: list[Turn] = []
        user: list[str] = []
        reply: list[str] = []
        question: list[Item] = []
        names: dict[str, str] = {}

        def spoken(item: Item) -> str:
            return item.transcript or SPOKEN_PLACEHOLDER

        def flush() -> None:
            turns.append(Turn("\n".join(p for p in user if p.strip()), "\n".join(p for p in reply if p.strip())))
            user.clear(), reply.clear(), question.clear()

        for item in items:
            if item.type == "message" and item.role == "system":
                system.extend(t for t in item.texts if t.strip())
                continue
            if item.type == "function_call" or (item.type == "message" and item.role == "assistant"):
                if item.type == "function_call":
                    names[item.call_id or ""] = item.name or "tool"
                    try:
                        args = json.loads(item.arguments or "{}")
                    except json.JSONDecodeError:
                        args = item.arguments
                    reply.append(render_tool_calls([{"name": item.name, "args": args}]))
                else:
                    reply.append("".join(item.texts))
                continue
            if reply:  # a user side after an assistant side: that turn is complete
                user.extend(spoken(q) for q in question if q.samples is not None)
                flush()
            if item.type == "function_call_output":
                name = names.get(item.call_id or "", "tool")
                user.append(render_tool_result(ToolMessage(item.output or "", tool_call_id=item.call_id or "",
                                                           name=name), item.output or ""))
                continue
            user.extend(t for t in item.texts if t.strip())
            if item.audio:
                if item.samples is not None:
                    question.append(item)
                else:
                    user.append(spoken(item))
        if reply:
            raise ClientEventError("the conversation ends with an assistant item: SpeechGPT answers a "
                                   "user item (text or audio) or a function_call_output; add one first.",
                                   code="no_user_input")
        audio = np.concatenate([q.samples for q in question]) if question else None  # type: ignore[misc]
        text = "\n".join(user).strip() or None
        if text is None and audio is None:
            raise ClientEventError("there is nothing to answer: the conversation has no user item with "
                                   "text or audio since the last answer.", code="no_user_input")
        r.question = question

        specs: list[dict[str, Any]] = []
        choice = "none"
        if s.tools:
            specs = tool_specs([{"type": "function", "function": {k: t[k] for k in ("name", "description", "parameters")}}
                                for t in s.tools])
            try:
                choice = normalize_tool_choice(s.tool_choice, [t["name"] for t in specs])
            except ValueError as exc:
                raise ClientEventError(str(exc), param="tool_choice") from exc
        active = bool(specs) and choice != "none"
        forced = active and choice != "auto"
        system_text = "\n".join(system) or None
        if active:
            system_text = (system_text or META_INSTRUCTION).rstrip("\n") + "\n" + tool_prompt(specs, choice)
        context = int(self.runtime.model.context_length)
        limit = s.max_output_tokens if isinstance(s.max_output_tokens, int) else (self.config.default_max_tokens or context)
        max_new = min(limit, context)
        defaults = GenerationOptions()
        options = GenerationOptions(
            max_new_tokens=max_new, min_new_tokens=min(self.config.min_new_tokens, max_new),
            do_sample=s.temperature > 0, temperature=s.temperature if s.temperature > 0 else 1.0,
            top_p=defaults.top_p, top_k=defaults.top_k)
        names_list = [t["name"] for t in specs]
        return ChatTurn(
            system=system_text, history=tuple(turns), text=text, audio=audio, options=options, seed=None,
            speak=s.speaks and not forced, audio_requested=s.speaks, audio_format="pcm16", specs=specs,
            choice=choice, forced=forced,
            default_tool=(choice if choice in names_list else names_list[0] if choice == "any" and len(names_list) == 1
                          else None))

    # -- running a response --

    async def _run(self, r: _Response) -> None:
        status, details = "completed", None
        try:
            try:
                await self.send({"type": "response.created", "response": self._render_response(r, "in_progress")})
                turn = await asyncio.to_thread(self._plan, r)
                kwargs, stopper = await asyncio.to_thread(stream_kwargs, turn, self.runtime)
                builder = AnswerBuilder(turn, stopper, self.store, self.config.model_name, streaming=True)
                if turn.speak:
                    builder.encoder = OutputEncoder(r.settings.output_format)
                r.builder = builder
                events = self.track(self.runtime.astream(**kwargs))
                try:
                    async for event in events:
                        for delta in builder.feed(event):
                            await self._delta(r, delta)
                finally:
                    await events.aclose()
                deltas, reason = builder.final_deltas()
                for delta in deltas:
                    await self._delta(r, delta)
                if reason == "length":
                    status, details = "incomplete", {"type": "incomplete", "reason": "max_output_tokens"}
            except asyncio.CancelledError:
                if r.cancel_reason is None:  # cancelled from outside without a reason: the server stops
                    raise
                status, details = "cancelled", {"type": "cancelled", "reason": r.cancel_reason}
            except ClientEventError as exc:
                status = "failed"
                details = {"type": "failed", "error": {"type": exc.type, "code": exc.code, "message": exc.message}}
                await self.error(exc)
            except (APIError, SpeechGPTError, ValueError) as exc:
                message = exc.message if isinstance(exc, APIError) else str(exc)
                status = "failed"
                details = {"type": "failed", "error": {"type": "invalid_request_error", "code": "invalid_value",
                                                       "message": message}}
                await self.error(ClientEventError(message))
            except Exception as exc:
                log.exception("realtime response %s failed", r.id)
                status = "failed"
                message = f"Internal server error ({type(exc).__name__}); see the server log."
                details = {"type": "failed", "error": {"type": "server_error", "code": "server_error",
                                                       "message": message}}
                await self.error(ClientEventError(message, type="server_error", code="server_error"))
            await self._finish(r, status, details)
        finally:
            if self.response is r:
                self.response = None

    async def _heard_done(self, r: _Response) -> None:
        if r.heard_done or not r.question:
            r.heard_done = True
            return
        r.heard_done = True
        target = r.question[-1]
        target.transcript = r.heard.strip()
        turn = r.builder.turn if r.builder is not None else None
        seconds = turn.audio.size / SAMPLE_RATE if turn is not None and turn.audio is not None else 0.0
        if self.settings.transcription is not None:
            await self.send({"type": "conversation.item.input_audio_transcription.completed",
                             "item_id": target.id, "content_index": len(target.texts),
                             "transcript": target.transcript,
                             "usage": {"type": "duration", "seconds": round(seconds, 3)}})

    async def _ensure_message(self, r: _Response) -> Item:
        if r.message is not None:
            return r.message
        await self._heard_done(r)
        item = Item(id=new_id("item"), type="message", role="assistant", audio=r.builder is not None and r.builder.turn.speak,
                    status="in_progress")
        r.message = item
        r.output.append(item)
        index = len(r.output) - 1
        await self.send({"type": "response.output_item.added", "response_id": r.id, "output_index": index,
                         "item": item.render(self.dialect)})
        if r.into_conversation:
            previous = self.items[-1].id if self.items else None
            await self._add_item(item, previous, announce=False)
            await self._announce(item, previous, done=False)
        part = {"type": "audio", "transcript": ""} if item.audio else {"type": "text", "text": ""}
        await self.send({"type": "response.content_part.added", "response_id": r.id, "item_id": item.id,
                         "output_index": index, "content_index": 0, "part": part})
        return item

    def _where(self, r: _Response, item: Item) -> dict[str, Any]:
        return {"response_id": r.id, "item_id": item.id, "output_index": r.output.index(item), "content_index": 0}

    async def _delta(self, r: _Response, delta: dict[str, Any]) -> None:
        if "input_transcript" in delta:
            r.heard += delta["input_transcript"]
            if r.question and self.settings.transcription is not None:
                await self.send({"type": "conversation.item.input_audio_transcription.delta",
                                 "item_id": r.question[-1].id, "content_index": len(r.question[-1].texts),
                                 "delta": delta["input_transcript"]})
            return
        if "content" in delta:
            item = await self._ensure_message(r)
            item.texts.append(delta["content"])
            await self.send({"type": self.names["text.delta"], **self._where(r, item), "delta": delta["content"]})
            return
        if "audio" in delta:
            audio = delta["audio"]
            if audio.get("transcript"):
                item = await self._ensure_message(r)
                item.texts.append(audio["transcript"])
                await self.send({"type": self.names["transcript.delta"], **self._where(r, item),
                                 "delta": audio["transcript"]})
            if audio.get("data"):
                item = await self._ensure_message(r)
                n = len(audio["data"]) * 3 // 4 - audio["data"][-2:].count("=")
                r.audio_bytes += n
                item.audio_ms = r.audio_bytes / bytes_per_ms(r.settings.output_format)
                await self.send({"type": self.names["audio.delta"], **self._where(r, item), "delta": audio["data"]})
            return
        for call in delta.get("tool_calls", []):
            await self._heard_done(r)
            fn = call["function"]
            item = Item(id=new_id("item"), type="function_call", call_id=call["id"], name=fn["name"],
                        arguments="", status="in_progress")
            r.output.append(item)
            index = len(r.output) - 1
            await self.send({"type": "response.output_item.added", "response_id": r.id, "output_index": index,
                             "item": item.render(self.dialect)})
            previous = self.items[-1].id if self.items else None
            if r.into_conversation:
                await self._add_item(item, previous, announce=False)
                await self._announce(item, previous, done=False)
            where = {"response_id": r.id, "item_id": item.id, "output_index": index, "call_id": item.call_id}
            await self.send({"type": "response.function_call_arguments.delta", **where, "delta": fn["arguments"]})
            item.arguments, item.status = fn["arguments"], "completed"
            await self.send({"type": "response.function_call_arguments.done", **where, "name": item.name,
                             "arguments": item.arguments})
            await self.send({"type": "response.output_item.done", "response_id": r.id, "output_index": index,
                             "item": item.render(self.dialect)})
            if r.into_conversation and self.dialect == "ga":
                await self.send({"type": "conversation.item.done", "previous_item_id": previous,
                                 "item": item.render(self.dialect)})

    async def _finish(self, r: _Response, status: str, details: dict[str, Any] | None) -> None:
        await self._heard_done(r)
        item = r.message
        if item is not None:
            item.status = "completed" if status == "completed" else "incomplete"
            text = "".join(item.texts)
            where = self._where(r, item)
            if item.audio:
                await self.send({"type": self.names["audio.done"], **where})
                await self.send({"type": self.names["transcript.done"], **where, "transcript": text})
                part = {"type": "audio", "transcript": text}
            else:
                await self.send({"type": self.names["text.done"], **where, "text": text})
                part = {"type": "text", "text": text}
            await self.send({"type": "response.content_part.done", **where, "part": part})
            await self.send({"type": "response.output_item.done", "response_id": r.id,
                             "output_index": where["output_index"], "item": item.render(self.dialect)})
            if r.into_conversation and self.dialect == "ga":
                index = self.items.index(item) if item in self.items else 0
                await self.send({"type": "conversation.item.done",
                                 "previous_item_id": self.items[index - 1].id if index > 0 else None,
                                 "item": item.render(self.dialect)})
            if status == "cancelled" and item.audio:
                # barge-in / cancel: what was sent so far is what the user may have heard
                item.truncated = True
                await self.send({"type": "conversation.item.truncated", "item_id": item.id, "content_index": 0,
                                 "audio_end_ms": int(item.audio_ms)})
        await self.send({"type": "response.done", "response": self._render_response(r, status, details)})

