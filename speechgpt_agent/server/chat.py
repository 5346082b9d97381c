"""``POST /v1/chat/completions``: OpenAI's (audio) chat protocol onto one SpeechGPT turn.

Request -> turn (:func:`plan_turn`):

* ``system``/``developer`` messages replace SpeechGPT's meta instruction (joined, in order);
  the tool and JSON-answer sections of :mod:`speechgpt_agent.integrations.langchain.tool_calling`
  are appended to it, exactly as ``SpeechGPTChat`` does, so the server and the LangChain
  model prompt the same way and parse answers with the same parser;
* ``user`` messages: ``text`` and ``input_audio`` parts (base64 inline only, see
  :mod:`.audio_codec`); other parts (images, files) are refused;
* ``assistant`` messages: their text, their ``tool_calls`` in the JSON call form, or, for
  an earlier spoken answer sent back as ``audio: {"id"}``, the text the server stored for it
  (:mod:`.audio_store`);
* ``tool`` messages: ``Tool "name" returned: ...`` lines of the next user turn.

Everything after the last assistant message is the question; its audio enters the prompt
as speech units. Earlier spoken questions enter as their transcript (remembered by the
server when it first heard them; ``(spoken message)`` otherwise).

Answer (:class:`AnswerBuilder`):

* ``modalities: ["text"]`` (default): ``message.content``; streamed as ``delta.content``.
* ``modalities: ["text", "audio"]``: as OpenAI's audio models answer, ``message.content`` is
  ``null`` and ``message.audio = {"id", "data", "expires_at", "transcript"}`` (``data``:
  base64 in ``audio.format``: ``wav`` or ``flac`` at 16 kHz, ``pcm16`` raw 24 kHz;
  ``transcript``: the answer's text). Streamed: ``delta.audio.transcript`` pieces and
  ``delta.audio.data`` pieces (base64 pcm16, 24 kHz) as the vocoder emits them, while the
  model still generates; the first audio delta carries ``id``, the last ``expires_at``.
* ``tools``: a call becomes ``message.tool_calls`` / ``delta.tool_calls`` with
  ``finish_reason: "tool_calls"`` (and no audio). Arguments that are not valid JSON are
  passed on as the raw text, which OpenAI clients report as an invalid call.
* Extra field (OpenAI clients ignore it): ``message.input_transcript`` (streamed:
  ``delta.input_transcript`` pieces): what SpeechGPT heard in the spoken question (its
  chain-of-modality transcript), ``""`` for text questions.
* ``usage`` with ``prompt_tokens_details.audio_tokens`` (speech units of the question) and
  ``completion_tokens_details.audio_tokens`` (speech units of the answer); streamed in a
  last chunk when ``stream_options.include_usage``.

The server never queues requests itself: every request runs its own
:meth:`SpeechGPT.astream`; how concurrent turns share the model is the engine's business.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from langchain_core.messages import ToolMessage

from ..audio import SAMPLE_RATE
from ..integrations.langchain.answer_text import AnswerText, StopAfterThis
from ..integrations.langchain.tool_calling import (
    ParsedAnswer,
    json_answer_prompt,
    normalize_tool_choice,
    render_tool_calls,
    render_tool_result,
    tool_prompt,
    tool_specs,
)
from ..model import GenerationOptions
from ..parse import TextDelta, TranscriptDelta, Units
from ..pipeline import AudioChunk, Completed, Response
from ..prompt import META_INSTRUCTION, Turn
from .audio_codec import PCM16Encoder, decode_input_audio, encode_audio, speech_resampler
from .audio_store import AudioStore, audio_digest
from .config import ServerConfig
from .errors import APIError
from .protocol import ChatCompletionRequest, ChatMessage, InputAudioPart, OtherPart, TextPart

__all__ = ["AnswerBuilder", "ChatTurn", "plan_turn", "stream_kwargs"]

SPOKEN_PLACEHOLDER = "(spoken message)"
"""Stands for an earlier spoken question whose transcript the server does not know."""


# --- request -> turn -------------------------------------------------------------------------


@dataclass
class ChatTurn:
    """One request, ready for :meth:`SpeechGPT.astream`.

    Attributes:
        system, history, text, audio: the turn (``audio``: float32 mono 16 kHz ``[samples]``).
        options, seed: sampling.
        speak: vocode the answer (audio modality, no demanded call, no JSON answer).
        audio_format: ``message.audio`` encoding (``wav``, ``pcm16``, ``flac``).
        specs, choice, forced, default_tool, single_call: tool settings (``tool_calling``).
        json_answer: ``{}`` JSON mode, a schema, or ``None`` (free text).
        stops: stop sequences.
        audio_digests: digests of the question's clips (their transcript is remembered).
    """

    system: str | None
    history: tuple[Turn, ...]
    text: str | None
    audio: np.ndarray | None
    options: GenerationOptions
    seed: int | None
    speak: bool
    audio_requested: bool
    audio_format: str
    specs: list[dict[str, Any]] = field(default_factory=list)
    choice: str = "none"
    forced: bool = False
    default_tool: str | None = None
    single_call: bool = False
    json_answer: dict[str, Any] | None = None
    stops: list[str] = field(default_factory=list)
    audio_digests: list[str] = field(default_factory=list)

    @property
    def tools_active(self) -> bool:
        return bool(self.specs) and self.choice != "none"


def _unsupported(kind: str, where: str) -> APIError:
    return APIError(
        400,
        f"{where}: SpeechGPT takes text and audio only; got a {kind!r} part. Remove it, or "
        "describe it in text (SpeechGPT cannot see images or read documents).",
        param=where, code="unsupported_content",
    )


def _text_of(message: ChatMessage, where: str, *, audio_ok: bool = False) -> tuple[str, list[tuple[int, InputAudioPart]]]:
    """Text parts joined, and the audio parts with their index."""
    content = message.content
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    texts: list[str] = []
    audio: list[tuple[int, InputAudioPart]] = []
    for j, part in enumerate(content):
        if isinstance(part, TextPart):
            texts.append(part.text)
        elif isinstance(part, InputAudioPart) and audio_ok:
            audio.append((j, part))
        elif isinstance(part, OtherPart) and part.type == "refusal" and message.role == "assistant":
            continue
        elif isinstance(part, OtherPart) and part.type in ("text", "input_audio"):
            need = "text" if part.type == "text" else "input_audio: {data, format}"
            raise APIError(400, f"{where}.content[{j}]: a {part.type!r} part needs {need}.",
                           param=f"{where}.content[{j}]")
        else:
            raise _unsupported(part.type, f"{where}.content[{j}]")
    return "\n".join(t for t in texts if t.strip()), audio


def _tool_names(message: ChatMessage) -> dict[str, str]:
    return {c.id: c.function.name for c in message.tool_calls or [] if c.id}


def _assistant_text(message: ChatMessage, where: str, store: AudioStore) -> tuple[str, str]:
    """The assistant side of a turn, and the stored transcript of the question it answered."""
    text, _ = _text_of(message, where)
    heard = ""
    if message.audio is not None:
        stored = store.get_answer(message.audio.id)
        if stored is None:
            raise APIError(
                400,
                f"{where}.audio.id {message.audio.id!r} is unknown or expired (audio answers are "
                "kept for a while after they are returned). Send the assistant's answer as text "
                "content instead.", param=f"{where}.audio.id", code="audio_not_found")
        text = text or stored.text
        heard = stored.question_transcript
    calls = []
    for c in message.tool_calls or []:
        try:
            args = json.loads(c.function.arguments) if c.function.arguments.strip() else {}
        except json.JSONDecodeError:
            args = c.function.arguments
        calls.append({"name": c.function.name, "args": args})
    if calls:
        rendered = render_tool_calls(calls)
        text = f"{text}\n{rendered}" if text.strip() else rendered
    return text.strip(), heard


def _response_schema(req: ChatCompletionRequest) -> dict[str, Any] | None:
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {}
    if fmt.json_schema is None or fmt.json_schema.schema_ is None:
        raise APIError(400, "response_format json_schema needs json_schema.schema (a JSON schema).",
                       param="response_format.json_schema")
    return dict(fmt.json_schema.schema_)


def _options(req: ChatCompletionRequest, runtime: Any, config: ServerConfig) -> GenerationOptions:
    context = int(runtime.model.context_length)
    max_new = req.max_new_tokens
    if max_new is not None and max_new > context:
        name = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        raise APIError(400, f"{name}={max_new} is beyond the model's context window of {context} "
                            f"tokens (prompt and answer together); ask for at most {context}.",
                       param=name, code="context_length_exceeded")
    if max_new is None:
        max_new = min(config.default_max_tokens or context, context)
    defaults = GenerationOptions()
    temperature = defaults.temperature if req.temperature is None else float(req.temperature)
    return GenerationOptions(
        max_new_tokens=max_new,
        min_new_tokens=min(config.min_new_tokens, max_new),
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else 1.0,
        top_p=defaults.top_p if req.top_p is None else float(req.top_p),
        top_k=defaults.top_k,
    )


def _voice(req: ChatCompletionRequest, config: ServerConfig) -> None:
    voice = req.audio.voice if req.audio is not None else None
    if isinstance(voice, dict):
        voice = voice.get("id") or voice.get("name")
    if voice is not None and voice not in config.voices:
        raise APIError(400, f"voice {voice!r} is not available: this model speaks with one voice, "
                            f"named {', '.join(repr(v) for v in config.voices)} (the vocoder's own).",
                       param="audio.voice", code="unsupported_voice")


def plan_turn(req: ChatCompletionRequest, runtime: Any, config: ServerConfig, store: AudioStore) -> ChatTurn:
    """Translate a chat completion request into one SpeechGPT turn (see the module docstring).

    Runs in a worker thread: it decodes the question's audio.

    Raises:
        APIError: 400 for anything SpeechGPT cannot take, with the field at fault.
    """
    if len(req.messages) > config.max_messages:
        raise APIError(400, f"messages holds {len(req.messages)} messages; this server takes at most "
                            f"{config.max_messages} per request.", param="messages",
                       code="too_many_messages")
    modalities = req.modalities or ["text"]
    if "text" not in modalities:
        raise APIError(400, f"modalities must include 'text', got {modalities!r}.", param="modalities")
    audio_requested = "audio" in modalities
    audio_format = req.audio.format if req.audio is not None else "wav"
    if audio_requested:
        if runtime.vocoder is None:
            raise APIError(400, "this server's model has no vocoder, so it cannot answer with audio: "
                                "use modalities ['text'].", param="modalities")
        _voice(req, config)
        if req.stream and audio_format != "pcm16":
            raise APIError(400, f"audio.format {audio_format!r} cannot be streamed: with stream=true "
                                "use audio.format 'pcm16' (as OpenAI's audio models).",
                           param="audio.format")

    system: list[str] = []
    turns: list[Turn] = []
    user: list[str] = []
    spoken_pending = False
    pending_heard: list[str] = []
    question_audio: list[tuple[str, InputAudioPart]] = []
    last_was_ai = False
    names: dict[str, str] = {}
    for i, message in enumerate(req.messages):
        where = f"messages[{i}]"
        if message.role in ("system", "developer"):
            text, _ = _text_of(message, where)
            system.append(text)
            continue
        if message.role == "assistant":
            reply, heard = _assistant_text(message, where, store)
            names.update(_tool_names(message))
            if spoken_pending:
                known = [h for h in pending_heard if h]
                user.append(" ".join(known) if len(known) == len(pending_heard) and known
                            else heard or " ".join(known) or SPOKEN_PLACEHOLDER)
            if last_was_ai and not user and turns:
                prev = turns.pop()
                reply = f"{prev.assistant}\n{reply}".strip()
                user = [prev.user]
            turns.append(Turn("\n".join(p for p in user if p), reply))
            user, question_audio, pending_heard = [], [], []
            spoken_pending, last_was_ai = False, True
            continue
        last_was_ai = False
        if message.role in ("tool", "function"):
            text, _ = _text_of(message, where)
            name = message.name or names.get(message.tool_call_id or "") or "tool"
            user.append(render_tool_result(
                ToolMessage(text, tool_call_id=message.tool_call_id or "", name=name), text))
            continue
        text, parts = _text_of(message, where, audio_ok=True)
        if text.strip():
            user.append(text)
        for j, part in parts:
            spoken_pending = True
            digest = audio_digest(part.input_audio.data)
            pending_heard.append(store.get_transcript(digest) or "")
            question_audio.append((f"{where}.content[{j}].input_audio.data", part))
    if last_was_ai:
        raise APIError(400, "the conversation ends with an assistant message; SpeechGPT answers "
                            "the last user or tool message, so end with one of those.",
                       param="messages")

    samples = None
    if question_audio:
        resampler = speech_resampler(runtime)
        decoded = [decode_input_audio(p.input_audio.data, p.input_audio.format,
                                      max_seconds=config.max_audio_seconds, param=where,
                                      resampler=resampler)
                   for where, p in question_audio]
        samples = decoded[0] if len(decoded) == 1 else np.concatenate(decoded)
        seconds = samples.size / SAMPLE_RATE
        if seconds > config.max_audio_seconds:
            raise APIError(400, f"the question's audio lasts {seconds:.1f} s in all; this server takes "
                                f"at most {config.max_audio_seconds:g} s per request.",
                           param="messages", code="audio_too_long")
    text = "\n".join(user).strip() or None
    if text is None and samples is None:
        raise APIError(400, "the last user message is empty: give it some text or audio.",
                       param="messages")

    specs: list[dict[str, Any]] = []
    choice = "none"
    if req.tools:
        specs = tool_specs([t.model_dump(by_alias=True, exclude_none=True) for t in req.tools])
        try:
            choice = normalize_tool_choice(req.tool_choice, [s["name"] for s in specs])
        except ValueError as exc:
            raise APIError(400, str(exc), param="tool_choice") from exc
    elif req.tool_choice not in (None, "none", "auto"):
        raise APIError(400, f"tool_choice {req.tool_choice!r} needs tools.", param="tool_choice")
    tools_active = bool(specs) and choice != "none"
    forced = tools_active and choice not in ("auto", "none")
    names_list = [s["name"] for s in specs]
    json_answer = _response_schema(req)

    sections = tool_prompt(specs, choice) if tools_active else ""
    if json_answer is not None:
        sections += json_answer_prompt(json_answer or None)
    system_text = "\n".join(s for s in system if s.strip()) or None
    if sections:
        system_text = (system_text if system_text is not None else META_INSTRUCTION).rstrip("\n") + "\n" + sections
    return ChatTurn(
        system=system_text,
        history=tuple(turns),
        text=text,
        audio=samples,
        options=_options(req, runtime, config),
        seed=req.seed,
        speak=audio_requested and not forced and json_answer is None,
        audio_requested=audio_requested,
        audio_format=audio_format,
        specs=specs,
        choice=choice,
        forced=forced,
        default_tool=(choice if choice in names_list
                      else names_list[0] if choice == "any" and len(names_list) == 1 else None),
        single_call=req.parallel_tool_calls is False,
        json_answer=json_answer,
        stops=req.stops,
        audio_digests=[audio_digest(p.input_audio.data) for _, p in question_audio],
    )


def answer_grammar(turn: ChatTurn) -> Any:
    """The :class:`~speechgpt_agent.grammar.Grammar` constraining ``turn``'s answer, or ``None``.

    Tool calls (``tool_choice`` auto, required or a name) and JSON answers are constrained
    with the builders of :mod:`speechgpt_agent.grammar`, so that they always parse.

    Raises:
        APIError: 400 for a tool or response schema the grammar cannot enforce.
    """
    from ..grammar import GrammarError, json_answer_grammar, tool_call_grammar

    lead = "spoken" if turn.audio is not None else "text"
    try:
        if turn.tools_active:
            return tool_call_grammar(turn.specs, turn.choice, lead=lead, speech=turn.speak,
                                     parallel=not turn.single_call)
        if turn.json_answer is not None:
            return json_answer_grammar(turn.json_answer or None, lead=lead)
    except GrammarError as exc:
        raise APIError(400, str(exc), param="tools" if turn.tools_active else "response_format",
                       code="unsupported_schema") from exc
    return None


def stream_kwargs(turn: ChatTurn, runtime: Any) -> tuple[dict[str, Any], StopAfterThis]:
    """Arguments of :meth:`SpeechGPT.astream` for ``turn``, and its early-stop processor.

    The grammar goes to the engine (``grammar=``), which applies it its own way; the early
    stop is the engine's ``stop_event``, so both work on every engine.
    """
    stopper = StopAfterThis(runtime.model.eos_id)
    return {
        "text": turn.text,
        "audio": turn.audio,
        "sample_rate": SAMPLE_RATE if turn.audio is not None else None,
        "history": turn.history,
        "system": turn.system,
        "output": "both" if turn.speak else "text",
        "options": turn.options,
        "seed": turn.seed,
        "grammar": answer_grammar(turn),
        # without tools (or with tool_choice "none") and JSON, the answer never opens a call
        "allow_tool_calls": turn.tools_active or turn.json_answer is not None,
        "stop_event": stopper.event,
    }, stopper


# --- events -> OpenAI answer ----------------------------------------------------------------


def _usage(r: Response | None) -> dict[str, Any]:
    prompt, completion = (r.usage.prompt_tokens, r.usage.completion_tokens) if r else (0, 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"audio_tokens": len(r.input_units) if r else 0, "cached_tokens": 0},
        "completion_tokens_details": {"audio_tokens": len(r.units) if r else 0, "reasoning_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }


class AnswerBuilder:
    """Turns the :meth:`SpeechGPT.astream` events of one turn into OpenAI deltas and the final message.

    Text is held back while it could still become a stop sequence, and (with tools) from the
    first character that can open a tool call until it is known to be plain text; audio of a
    possible call is held too, and dropped if it was one.
    """

    def __init__(self, turn: ChatTurn, stopper: StopAfterThis, store: AudioStore, model: str,
                 *, streaming: bool) -> None:
        self.turn = turn
        self.stopper = stopper
        self.store = store
        self.model = model
        self.streaming = streaming
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.audio_id = AudioStore.new_id() if turn.speak else None
        self.follow = AnswerText(stops=turn.stops, tools_active=turn.tools_active,
                                 json_answer=turn.json_answer is not None, speak=turn.speak,
                                 default_tool=turn.default_tool, on_stop=stopper.set,
                                 forced=turn.forced, single_call=turn.single_call)
        self.heard = ""
        self.response: Response | None = None
        self.encoder = PCM16Encoder() if turn.speak and streaming else None
        self.held_audio: list[bytes] = []
        self._carry = b""
        self.audio_sent = False
        self.audio_pieces: list[np.ndarray] = []

    # -- text --

    def parsed(self) -> ParsedAnswer:
        if not self.turn.tools_active and self.turn.json_answer is not None:
            return ParsedAnswer(self.follow.text.strip())
        return self.follow.parsed()

    # -- deltas --

    def _text_delta(self, text: str) -> dict[str, Any]:
        if self.turn.speak:
            audio: dict[str, Any] = {"transcript": text}
            if not self.audio_sent:
                audio["id"] = self.audio_id
                self.audio_sent = True
            return {"audio": audio}
        return {"content": text}

    def _audio_delta(self, data: bytes, *, last: bool = False) -> dict[str, Any] | None:
        """A ``delta.audio.data`` piece. Pieces hold a multiple of 6 bytes (whole samples,
        whole base64 quanta) until the last, so that clients which join the base64 strings
        (LangChain merges streamed dicts so) still get one valid base64 text."""
        data = self._carry + data
        cut = len(data) if last else len(data) - len(data) % 6
        data, self._carry = data[:cut], data[cut:]
        if not data:
            return None
        audio: dict[str, Any] = {"data": base64.b64encode(data).decode("ascii")}
        if not self.audio_sent:
            audio["id"] = self.audio_id
            self.audio_sent = True
        return {"audio": audio}

    def feed(self, event: Any) -> list[dict[str, Any]]:
        """Deltas to stream for one event (often none)."""
        if isinstance(event, TextDelta):
            text = self.follow.feed(event.text)
            return [self._text_delta(text)] if text else []
        if isinstance(event, TranscriptDelta):
            self.heard += event.text
            return [{"input_transcript": event.text}] if event.text else []
        if isinstance(event, AudioChunk):
            if not self.streaming:
                self.audio_pieces.append(event.samples)
                return []
            if self.encoder is None:
                return []
            data = self.encoder.push(event.samples)
            if self.follow.opener() >= 0 or self.held_audio:  # maybe a spoken tool call: decided at the end
                self.held_audio.append(data)
                return []
            delta = self._audio_delta(data)
            return [delta] if delta else []
        if isinstance(event, Completed):
            self.response = event.response
        elif isinstance(event, Units):
            pass
        return []

    def _finish_reason(self, parsed: ParsedAnswer) -> str:
        reason = self.response.finish_reason if self.response is not None else "stop"
        cut = reason == "length" and not self.follow.stopped
        if parsed.tool_calls or (parsed.invalid_tool_calls and not cut):
            return "tool_calls"
        # a call cut off by max_tokens is "length", as OpenAI reports it (its raw arguments
        # are still passed on)
        return "length" if cut else "stop"

    @staticmethod
    def _tool_calls(parsed: ParsedAnswer) -> list[dict[str, Any]]:
        out = []
        for c in parsed.tool_calls:
            out.append({"id": c["id"], "type": "function",
                        "function": {"name": c["name"], "arguments": json.dumps(c["args"], ensure_ascii=False)}})
        for c in parsed.invalid_tool_calls:
            out.append({"id": c["id"], "type": "function",
                        "function": {"name": c["name"] or "", "arguments": c["args"] or ""}})
        return out

    def _remember(self, text: str) -> int | None:
        """Store the spoken answer under its id; its ``expires_at``."""
        for digest in self.turn.audio_digests:
            self.store.put_transcript(digest, self.heard.strip())
        if self.audio_id is None:
            return None
        return self.store.put_answer(self.audio_id, text, self.heard.strip()).expires_at

    def final_deltas(self) -> tuple[list[dict[str, Any]], str]:
        """The last deltas (rest of the text, held audio, tool calls) and the finish reason."""
        parsed = self.parsed()
        deltas: list[dict[str, Any]] = []
        rest = self.follow.unreleased(parsed.content)
        calls = self._tool_calls(parsed)
        if rest:
            deltas.append(self._text_delta(rest))
        if not calls:
            tail = b"".join(self.held_audio) + (self.encoder.flush() if self.encoder is not None else b"")
            delta = self._audio_delta(tail, last=True)
            if delta:
                deltas.append(delta)
        if calls:
            deltas.append({"tool_calls": [{"index": k, **c} for k, c in enumerate(calls)]})
        expires = self._remember(parsed.content)
        if self.audio_id is not None and not calls:
            deltas.append({"audio": {"id": self.audio_id, "expires_at": expires}}
                          if not self.audio_sent else {"audio": {"expires_at": expires}})
            self.audio_sent = True
        return deltas, self._finish_reason(parsed)

    # -- whole responses --

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None,
              include_usage: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if include_usage:
            out["usage"] = None
        return out

    def usage_chunk(self) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "system_fingerprint": None, "choices": [],
                "usage": _usage(self.response)}

    def message(self) -> dict[str, Any]:
        """The whole ``chat.completion`` object (non-streaming)."""
        parsed = self.parsed()
        calls = self._tool_calls(parsed)
        r = self.response
        message: dict[str, Any] = {"role": "assistant", "content": parsed.content or None,
                                   "refusal": None, "audio": None}
        samples = np.concatenate(self.audio_pieces) if self.audio_pieces else None
        expires = self._remember(parsed.content)
        if self.turn.speak and not calls and samples is not None and r is not None:
            data = encode_audio(samples, r.sample_rate, self.turn.audio_format)
            message["content"] = None
            message["audio"] = {"id": self.audio_id, "data": base64.b64encode(data).decode("ascii"),
                                "expires_at": expires, "transcript": parsed.content}
        if calls:
            message["tool_calls"] = calls
            message["content"] = parsed.content or None
        message["input_transcript"] = self.heard.strip()
        return {
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": self._finish_reason(parsed)}],
            "usage": _usage(r),
        }


async def consume(events: AsyncIterator[Any], builder: AnswerBuilder) -> None:
    """Feed every event of a non-streamed turn to ``builder``."""
    async for event in events:
        builder.feed(event)


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


async def sse_stream(first: Any, events: Any, builder: AnswerBuilder, *, include_usage: bool) -> AsyncIterator[bytes]:
    """The server-sent events of a streamed turn, ``first`` being its already-received first event.

    Closing this generator (the client went away) closes ``events``, which cancels the
    generation at its next token.
    """
    try:
        yield _sse(builder.chunk({"role": "assistant", "content": None if builder.turn.speak else ""},
                                 include_usage=include_usage))
        pending = [first]
        while True:
            for event in pending:
                for delta in builder.feed(event):
                    yield _sse(builder.chunk(delta, include_usage=include_usage))
            try:
                pending = [await events.__anext__()]
            except StopAsyncIteration:
                break
        deltas, reason = builder.final_deltas()
        for delta in deltas:
            yield _sse(builder.chunk(delta, include_usage=include_usage))
        yield _sse(builder.chunk({}, reason, include_usage=include_usage))
        if include_usage:
            yield _sse(builder.usage_chunk())
        yield b"data: [DONE]\n\n"
    except (asyncio.CancelledError, GeneratorExit):
        raise
    except Exception as exc:  # noqa: BLE001 - reported in the stream: the status line has gone
        from .errors import error_body

        status = 400 if isinstance(exc, (ValueError, APIError)) else 500
        message = exc.message if isinstance(exc, APIError) else f"{type(exc).__name__}: {exc}"
        yield _sse(error_body(message, type="invalid_request_error" if status == 400 else "server_error"))
    finally:
        await events.aclose()
