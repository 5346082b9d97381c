"""LangChain messages in, SpeechGPT turns out; audio content blocks both ways.

SpeechGPT reads one prompt: a system text, earlier turns as plain text, and the current
question as text and/or speech units (DESIGN.md section 2). :func:`to_turn_input` maps a
LangChain conversation onto it:

* ``SystemMessage`` texts replace the meta instruction (joined, in order);
* ``HumanMessage`` content: strings and ``text`` blocks, and audio in any of the forms
  LangChain passes around:

  - v1 blocks ``{"type": "audio", "base64": ..., "mime_type": "audio/wav"}`` and
    ``{"type": "audio", "url": "data:..." | "file:///..." | "https://..." | a local path}``
    (also ``{"type": "file", ...}`` blocks whose ``mime_type`` is ``audio/*``);
  - OpenAI blocks ``{"type": "input_audio", "input_audio": {"data": base64, "format": "wav"}}``;
  - legacy blocks ``{"type": "audio", "source_type": "base64" | "url", "data" | "url": ...}``.

  A ``file`` block whose bytes are audio (``RIFF``, ``OggS``, ``fLaC``, ``ID3`` ... magic
  numbers) is audio whatever its ``mime_type`` says: langchain-core turns an OpenAI
  ``{"type": "file", "file": {"file_data": "data:audio/wav;base64,..."}}`` block into a
  ``base64`` block labelled ``application/pdf`` before the model sees it.
  Images, PDFs, video and other blocks raise :class:`ValueError`.

  Safety: base64 fields (``base64``, ``data``, ``input_audio.data``) are only ever decoded,
  never opened as paths. ``http(s)://`` URLs are fetched only with ``allow_remote_audio``
  and local paths / ``file://`` URLs read only with ``allow_local_files`` (both off by
  default: messages may come from users, and following their URLs would be a server-side
  request forgery and a local file read). ``data:`` URLs are always fine.
* ``AIMessage``: its text, and its tool calls in the JSON form of
  :mod:`.tool_calling`, become the assistant side of a turn;
* ``ToolMessage``: ``Tool "name" returned: ...`` lines of the next user turn (a message
  without ``name`` takes the name of the call its ``tool_call_id`` answers).

Everything after the last ``AIMessage`` is the current question; its audio is decoded
(16 kHz mono) and enters the prompt as speech units. Earlier spoken turns enter as text
(their transcript, which the following ``AIMessage`` carries in
``response_metadata["transcript"]``), because units cost 50 tokens per second of the
2048-token window.
"""

from __future__ import annotations

import base64
import contextvars
import io
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from speechgpt_agent.audio import SAMPLE_RATE, Resampler, load_audio, wav_base64
from speechgpt_agent.audio import _b64decode as b64decode_lenient
from speechgpt_agent.audio import _data_url_bytes as data_url_bytes
from speechgpt_agent.audio import _sniff as sniff_container
from speechgpt_agent.errors import AudioError
from speechgpt_agent.prompt import Turn

from .tool_calling import render_tool_calls, render_tool_result

__all__ = [
    "MAX_DOWNLOAD_BYTES",
    "TurnInput",
    "audio_block",
    "audio_container",
    "decode_base64_audio",
    "load_audio_reference",
    "load_block_audio",
    "message_audio",
    "to_turn_input",
]

MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
"""Largest audio file fetched from an http(s) URL."""

SPOKEN_PLACEHOLDER = "(spoken message)"
"""Stands for earlier speech whose transcript is unknown."""

_OK_FILE_MIME = ("audio/", "application/ogg", "video/ogg")


@dataclass(frozen=True)
class TurnInput:
    """One SpeechGPT turn built from a conversation.

    Attributes:
        system: text replacing the meta instruction, or ``None`` (the released one).
        history: earlier turns as text, oldest first.
        text: the question's text, or ``None``.
        audio: the question's speech, float32 mono at 16 kHz ``[samples]``, or ``None``.
    """

    system: str | None
    history: tuple[Turn, ...]
    text: str | None
    audio: np.ndarray | None


# --- audio references --------------------------------------------------------------------


def _download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read(MAX_DOWNLOAD_BYTES + 1)
    except OSError as exc:
        raise AudioError(f"cannot download audio from {url}: {exc}") from exc
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise AudioError(f"audio at {url} is larger than {MAX_DOWNLOAD_BYTES} bytes.")
    return data


def audio_container(data: bytes) -> str | None:
    """Name of the audio container ``data`` starts with (``"WAV"``, ``"Ogg"``, ``"FLAC"``,
    ``"MP3"`` ...), from its magic number; ``None`` when it does not look like audio."""
    found = sniff_container(bytes(data[:16]))
    if found is not None:
        return found[0]
    if len(data) >= 2 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0:
        return "MP3"  # an MPEG audio frame without an ID3 tag
    return None


def _not_audio(data: bytes, where: str) -> AudioError:
    head = bytes(data[:8])
    kind = ("a PDF" if head.startswith(b"%PDF") else "a PNG image" if head.startswith(b"\x89PNG")
            else "a JPEG image" if head.startswith(b"\xff\xd8\xff") else "text" if head.isascii()
            and all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "not a known audio format")
    return AudioError(
        f"{where} holds {len(data)} bytes that are not audio ({kind}; they start with {head!r}). "
        "Give an encoded audio file (wav, flac, ogg, mp3) as base64."
    )


_RESAMPLER: contextvars.ContextVar[Resampler] = contextvars.ContextVar("speechgpt_resampler", default="soxr")
"""How audio of other rates is brought to 16 kHz while :func:`to_turn_input` decodes (its
``resampler=``: the speech tokenizer's own, so a message's units are the Python API's)."""


def _load_audio(source: Any) -> np.ndarray:
    return load_audio(source, resampler=_RESAMPLER.get())


def decode_base64_audio(value: str, where: str = "the base64 field") -> np.ndarray:
    """Decode base64 of an encoded audio file (or a ``data:`` URL); never opens a path.

    Returns:
        float32 mono samples at 16 kHz ``[samples]``.

    Raises:
        AudioError: not base64, base64 of something that is not audio, or unreadable audio.
    """
    text = value.strip()
    if text[:5].lower() == "data:":
        data = data_url_bytes(text)
    else:
        decoded = b64decode_lenient(text)
        if decoded is None:
            raise AudioError(
                f"{where} is not valid base64 ({text[:40]!r}...): put base64 of an audio file "
                "there (a path or URL goes in a 'url' field).")
        data = decoded
    if not data:
        raise AudioError(f"{where} is empty: no audio.")
    if audio_container(data) is None:
        raise _not_audio(data, where)
    return _load_audio(data)


def load_audio_reference(ref: str, *, allow_remote: bool = True, allow_local: bool = True) -> np.ndarray:
    """Decode audio named by a string: a path, ``file://`` / ``http(s)://`` / ``data:`` URL, or base64.

    Args:
        ref: the reference.
        allow_remote: fetch ``http(s)://`` URLs (at most :data:`MAX_DOWNLOAD_BYTES`).
        allow_local: read local paths and ``file://`` URLs. With it off, a string that is
            no URL is decoded as base64 only.

    Returns:
        float32 mono samples at 16 kHz ``[samples]``.

    Raises:
        AudioError: unreachable, unreadable or invalid audio, or a reference of a kind that
            is not allowed.
    """
    if not isinstance(ref, str) or not ref.strip():
        raise AudioError("an audio reference must be a non-empty string (path, URL or base64).")
    ref = ref.strip()
    scheme = urllib.parse.urlsplit(ref).scheme.lower() if "://" in ref[:12] else ""
    if scheme in ("http", "https"):
        if not allow_remote:
            raise AudioError(
                f"audio URL {_short(ref)!r} was not fetched: remote audio is off. Pass the audio as "
                "base64, or allow fetching (SpeechGPTChat(allow_remote_audio=True)) if the "
                "messages come from a trusted source.")
        return _load_audio(_download(ref))
    if scheme == "file" or (not scheme and ref[:5].lower() != "data:" and allow_local):
        if not allow_local:
            raise AudioError(
                f"audio file {_short(ref)!r} was not read: local files are off. Pass the audio "
                "as base64, or allow them (SpeechGPTChat(allow_local_files=True)) if the "
                "messages come from a trusted source.")
        if scheme == "file":
            return _load_audio(Path(urllib.request.url2pathname(urllib.parse.urlsplit(ref).path)))
        return _load_audio(ref)  # a path (or base64, as load_audio tries both)
    if scheme:
        raise AudioError(f"unsupported audio URL scheme {scheme!r}: use file, http(s) or data URLs.")
    if ref[:5].lower() == "data:":
        return decode_base64_audio(ref, "the data URL")
    try:
        return decode_base64_audio(ref, "the audio reference")
    except AudioError as exc:
        if b64decode_lenient(ref) is None:
            raise AudioError(
                f"audio reference {_short(ref)!r} is neither a data: URL nor base64, and local "
                "files are off (allow_local_files=True reads paths and file:// URLs).") from exc
        raise


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _block_kind(block: dict[str, Any]) -> str:
    return str(block.get("type", "<no type>"))


def _unsupported(block: dict[str, Any]) -> ValueError:
    kind = _block_kind(block)
    mime = block.get("mime_type") or block.get("media_type")
    nested = block.get("file")
    if not mime and isinstance(nested, dict) and str(nested.get("file_data", "")).startswith("data:"):
        mime = str(nested["file_data"])[5:].split(";")[0].split(",")[0]
    what = f"{kind!r} content block" + (f" ({mime})" if mime else "")
    return ValueError(
        f"SpeechGPTChat takes text and audio only; got a {what}. Remove it, or describe it "
        "in text (SpeechGPT cannot see images or read documents)."
    )


def load_block_audio(block: dict[str, Any], *, allow_remote: bool = False,
                     allow_local: bool = False) -> np.ndarray:
    """Decode the audio of one content block (any form listed in the module docstring).

    Args:
        block: the content block.
        allow_remote: fetch ``http(s)://`` URLs.
        allow_local: read local paths and ``file://`` URLs.

    Returns:
        float32 mono samples at 16 kHz ``[samples]``.

    Raises:
        ValueError: not an audio block, or an audio block that holds no usable reference.
        AudioError: the audio itself is unreadable, is not audio, or its URL is not allowed.
    """
    kind = _block_kind(block)
    if kind == "input_audio":
        payload = block.get("input_audio") or {}
        data = payload.get("data")
        if not isinstance(data, str) or not data:
            raise ValueError("an 'input_audio' block needs input_audio.data (base64 audio).")
        return decode_base64_audio(data, "input_audio.data")
    if kind == "file":
        nested = block.get("file")
        if isinstance(nested, dict):  # OpenAI {"type": "file", "file": {"file_data": ...}}
            url = nested.get("file_data") or ""
            if isinstance(url, str) and _is_audio_file(block):
                return decode_base64_audio(url, "file.file_data")
            raise _unsupported(block)
        if not _is_audio_file(block):
            raise _unsupported(block)
    elif kind != "audio":
        raise _unsupported(block)
    source_type = block.get("source_type")
    if source_type == "base64" or (source_type is None and "data" in block and "base64" not in block):
        return decode_base64_audio(_require_str(block, "data"), "the block's 'data' field")
    if source_type == "url" or (source_type is None and "url" in block):
        return load_audio_reference(_require_str(block, "url"), allow_remote=allow_remote,
                                    allow_local=allow_local)
    if "base64" in block:
        return decode_base64_audio(_require_str(block, "base64"), "the block's 'base64' field")
    if "file_id" in block or source_type == "id":
        raise ValueError(
            "audio blocks that reference a provider file store (file_id / source_type 'id') "
            "cannot be read locally; pass the audio as base64 or a url."
        )
    raise ValueError(f"the audio block has no audio: expected 'base64' or 'url' (keys: {sorted(block)}).")


def _require_str(block: dict[str, Any], key: str) -> str:
    value = block.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"audio block field {key!r} must be a non-empty string.")
    return value


# --- messages -> one turn ----------------------------------------------------------------


def _split_human(content: str | list[Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """Texts and audio blocks of a human message; anything else raises."""
    if isinstance(content, str):
        return [content], []
    texts: list[str] = []
    audio: list[dict[str, Any]] = []
    for block in content:
        if isinstance(block, str):
            texts.append(block)
        elif not isinstance(block, dict):
            raise TypeError(f"message content blocks must be str or dict, got {type(block).__name__}.")
        elif block.get("type") == "text":
            texts.append(str(block.get("text", "")))
        elif block.get("type") in ("audio", "input_audio", "file"):
            if block.get("type") == "file" and not _is_audio_file(block):
                raise _unsupported(block)
            audio.append(block)
        else:
            raise _unsupported(block)
    return texts, audio


def _is_audio_file(block: dict[str, Any]) -> bool:
    """Whether a ``file`` block holds audio: by its media type, or by its bytes' magic number."""
    nested = block.get("file")
    if isinstance(nested, dict):
        url = str(nested.get("file_data", ""))
        if url.lower().startswith(("data:audio/", "data:application/ogg")):
            return True
        payload = url.partition(",")[2] if url[:5].lower() == "data:" else ""
        return _base64_is_audio(payload)
    if str(block.get("mime_type") or "").startswith(_OK_FILE_MIME):
        return True
    data = block.get("base64") if "base64" in block else block.get("data")
    return isinstance(data, str) and _base64_is_audio(data)


def _base64_is_audio(text: str) -> bool:
    """Whether base64 ``text`` starts with the magic number of an audio container."""
    head = "".join(text[:64].split())[:24]  # 24 characters: the first 18 bytes
    decoded = b64decode_lenient(head[: len(head) // 4 * 4])
    return decoded is not None and audio_container(decoded) is not None


def _tool_text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif isinstance(block, dict) and block.get("type") in ("json", "non_standard"):
            parts.append(str(block.get("json", block.get("value", ""))))
        else:
            raise _unsupported(block if isinstance(block, dict) else {"type": type(block).__name__})
    return "\n".join(parts)


def _role(message: BaseMessage) -> str:
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, HumanMessage):
        return "human"
    if isinstance(message, AIMessage):
        return "ai"
    if isinstance(message, (ToolMessage, FunctionMessage)):
        return "tool"
    if isinstance(message, ChatMessage):
        role = {"user": "human", "assistant": "ai", "system": "system", "tool": "tool"}.get(message.role)
        if role is not None:
            return role
        raise ValueError(f"ChatMessage role {message.role!r} is not supported (user, assistant, system, tool).")
    raise ValueError(f"unsupported message type {type(message).__name__}.")


def _assistant_text(message: BaseMessage) -> str:
    text = message.text.strip() if isinstance(message.content, (str, list)) else ""
    calls = getattr(message, "tool_calls", None) or []
    if calls:
        rendered = render_tool_calls(calls)
        text = f"{text}\n{rendered}" if text else rendered
    return text


def to_turn_input(messages: Sequence[BaseMessage], *, allow_remote_audio: bool = False,
                  allow_local_files: bool = False,
                  resampler: Resampler | Callable[[], Resampler] = "soxr") -> TurnInput:
    """Map a conversation onto one SpeechGPT turn (see the module docstring).

    Args:
        messages: the conversation.
        allow_remote_audio: fetch audio from ``http(s)://`` URLs in the messages.
        allow_local_files: read audio from local paths and ``file://`` URLs in the messages.
        resampler: how the question's audio reaches 16 kHz (or a function giving it, called
            only when there is audio): the speech tokenizer's own.

    Raises:
        ValueError: no messages, a conversation that does not end with a human or tool
            message, or unsupported content (images, PDFs ...).
        AudioError: unreadable audio in the current question, or a URL that is not allowed.
    """
    if not messages:
        raise ValueError("no messages: give SpeechGPTChat at least one human message.")
    system: list[str] = []
    turns: list[Turn] = []
    user: list[str] = []
    user_audio: list[dict[str, Any]] = []
    spoken_pending = False
    last_was_ai = False
    call_names: dict[str, str] = {}  # tool_call_id -> tool name, from the AI messages' calls
    for message in messages:
        role = _role(message)
        if role == "system":
            system.append(message.text)
            continue
        if role == "ai":
            for call in getattr(message, "tool_calls", None) or []:
                if call.get("id") and call.get("name"):
                    call_names[call["id"]] = call["name"]
            reply = _assistant_text(message)
            if spoken_pending:
                transcript = str(message.response_metadata.get("transcript") or "").strip()
                user.append(transcript or SPOKEN_PLACEHOLDER)
            if last_was_ai and not user and turns:
                prev = turns.pop()
                reply = f"{prev.assistant}\n{reply}".strip()
                user = [prev.user]
            turns.append(Turn("\n".join(p for p in user if p), reply))
            user, user_audio, spoken_pending, last_was_ai = [], [], False, True
            continue
        last_was_ai = False
        if role == "tool":
            if isinstance(message, ToolMessage):
                if not message.name and message.tool_call_id in call_names:
                    message = message.model_copy(update={"name": call_names[message.tool_call_id]})
                user.append(render_tool_result(message, _tool_text(message)))
            else:
                user.append(f'Tool "{message.name or "tool"}" returned: {_tool_text(message)}')
            continue
        texts, audio = _split_human(message.content)
        user.extend(t for t in texts if t.strip())
        if audio:
            user_audio.extend(audio)
            spoken_pending = True
    if last_was_ai:
        raise ValueError(
            "the conversation ends with an AI message; SpeechGPTChat answers the last human "
            "or tool message, so end with one of those."
        )
    samples = None
    if user_audio:
        token = _RESAMPLER.set(resampler() if callable(resampler) else resampler)
        try:
            parts = [load_block_audio(b, allow_remote=allow_remote_audio, allow_local=allow_local_files)
                     for b in user_audio]
        finally:
            _RESAMPLER.reset(token)
        samples = parts[0] if len(parts) == 1 else np.concatenate(parts)
    text = "\n".join(user).strip() or None
    if text is None and samples is None:
        raise ValueError("the last human message is empty: give it some text or audio.")
    return TurnInput(
        system="\n".join(s for s in system if s.strip()) or None,
        history=tuple(turns),
        text=text,
        audio=samples,
    )


# --- answers -> content blocks -----------------------------------------------------------


def audio_block(samples: np.ndarray, sample_rate: int = SAMPLE_RATE, /, **extras: Any) -> dict[str, Any]:
    """A LangChain v1 audio content block holding ``samples`` as a base64 16-bit wav.

    Args:
        samples: float32 mono ``[samples]``.
        sample_rate: Hz.
        extras: stored under ``"extras"`` (e.g. ``offset`` in samples for stream chunks).
    """
    block: dict[str, Any] = {"type": "audio", "mime_type": "audio/wav",
                             "base64": wav_base64(samples, sample_rate)}
    if extras:
        block["extras"] = extras
    return block


def message_audio(message: BaseMessage) -> tuple[np.ndarray, int] | None:
    """The spoken answer of a message: its audio blocks decoded and joined in order.

    Works on an invoked ``AIMessage`` (one block) and on the sum of streamed
    ``AIMessageChunk``s (one block per audio chunk).

    Returns:
        ``(float32 samples [samples], sample rate in Hz)``, or ``None`` without audio.
    """
    parts: list[np.ndarray] = []
    rate = None
    content = message.content if isinstance(message.content, list) else []
    for block in content:
        if isinstance(block, dict) and block.get("type") == "audio" and block.get("base64"):
            data, sr = sf.read(io.BytesIO(base64.b64decode(block["base64"])), dtype="float32")
            if rate is not None and sr != rate:
                raise AudioError(f"audio blocks of one message have different rates ({rate}, {sr} Hz).")
            rate = sr
            parts.append(data if data.ndim == 1 else data.mean(axis=1))
    if not parts:
        return None
    return np.concatenate(parts), int(rate)  # type: ignore[arg-type]
