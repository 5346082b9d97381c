"""Voice tools: give any LangChain chat model (text-only ones included) ears and a mouth.

Each tool is a ``BaseTool`` with sync and async paths and ``response_format
"content_and_artifact"``: the model reads short text, the audio travels as the artifact of
the ``ToolMessage`` (so it never fills the context window). Audio arguments are strings,
as a model can write them: a file path, a ``file://``, ``http(s)://`` or
``data:audio/...;base64,`` URL, or base64 of an audio file.

* :class:`SpeechToTextTool`: speech -> text, with faster-whisper (model size or folder,
  device, compute type) or SpeechGPT's own ASR.
* :class:`TextToSpeechTool`: text -> speech with SpeechGPT's TTS and the unit vocoder; a wav
  file path (with ``output_dir``) and the audio as a base64 wav artifact.
* :class:`VoiceTurnTool`: speech in -> SpeechGPT's spoken answer (transcript, text answer,
  audio).

They work with ``bind_tools`` of any chat model and inside LangGraph's ``ToolNode``.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any, Literal

import numpy as np
from langchain_core.callbacks import AsyncCallbackManagerForToolRun, CallbackManagerForToolRun
from langchain_core.tools import BaseTool, ToolException
from pydantic import BaseModel, Field

from speechgpt_agent.audio import SAMPLE_RATE, write_wav
from speechgpt_agent.errors import AudioError

from ._runtime import load_whisper
from .chat_models import SpeechGPTChat
from .messages import audio_block, load_audio_reference

__all__ = ["SpeechToTextTool", "TextToSpeechTool", "VoiceTurnTool"]

_AUDIO_HELP = (
    "The speech: a file path, a file:// or http(s):// URL, a data:audio/...;base64 URL, "
    "or base64 of an audio file."
)


class SpeechToTextInput(BaseModel):
    """Arguments of :class:`SpeechToTextTool`."""

    audio: str = Field(description=_AUDIO_HELP)
    language: str | None = Field(
        default=None, description="Language code such as 'en' if known; detected otherwise.")


class TextToSpeechInput(BaseModel):
    """Arguments of :class:`TextToSpeechTool`."""

    text: str = Field(description="The text to speak aloud.")


class VoiceTurnInput(BaseModel):
    """Arguments of :class:`VoiceTurnTool`."""

    audio: str = Field(description=_AUDIO_HELP)
    instruction: str | None = Field(
        default=None, description="Optional text said along with the speech.")


def _generation_kwargs(chat: SpeechGPTChat) -> dict[str, Any]:
    """Sampling settings and constraint processors of ``chat`` for a direct runtime call."""
    return {
        "options": chat._options({}),
        "seed": chat.seed,
        "logits_processors": [factory() for factory in chat.logits_processors],
    }


def _load(audio: str, tool: _VoiceTool) -> np.ndarray:
    """Decode an audio argument; unusable audio is reported to the model, not raised at it.

    The argument is written by a model (which a user may steer), so URLs are fetched only
    when the tool allows it (``allow_remote_audio``), and paths read only with
    ``allow_local_files``."""
    try:
        return load_audio_reference(audio, allow_remote=tool.allow_remote_audio,
                                    allow_local=tool.allow_local_files)
    except AudioError as exc:
        raise ToolException(f"cannot use that audio: {exc}") from exc


def _save(samples: np.ndarray, sample_rate: int, output_dir: str | None) -> str | None:
    if output_dir is None:
        return None
    path = Path(output_dir).expanduser() / f"speech-{uuid.uuid4().hex[:12]}.wav"
    return str(write_wav(path, samples, sample_rate))


class _VoiceTool(BaseTool):
    """Shared plumbing: content-and-artifact results, errors reported to the model, async."""

    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"
    handle_tool_error: bool = True
    """Report failures the model can fix (unreadable audio, no speech produced) back to it as
    the tool's answer (a ``ToolMessage`` with ``status="error"``) instead of raising."""
    allow_remote_audio: bool = False
    """Fetch ``http(s)://`` URLs named in the tool's arguments. Off by default: the arguments
    come from a model, and a fetch it is talked into is a server-side request forgery."""
    allow_local_files: bool = True
    """Read local paths and ``file://`` URLs named in the arguments (how an agent passes a
    recording it was given). Turn off where users can steer the model and files are private."""

    async def _arun(self, *args: Any, run_manager: AsyncCallbackManagerForToolRun | None = None,
                    **kwargs: Any) -> Any:
        # the work is blocking (decoding, the model); a worker thread keeps the loop free
        return await asyncio.to_thread(self._run, *args, **kwargs)


class SpeechToTextTool(_VoiceTool):
    """Transcribe speech to text.

    Content: the transcript. Artifact: ``{"text", "language", "duration" (s), "segments":
    [{"start", "end", "text"}], "backend"}``.

    Example::

        stt = SpeechToTextTool(whisper_model="small", device="cpu", compute_type="int8")
        llm.bind_tools([stt])
    """

    name: str = "speech_to_text"
    description: str = "Transcribe recorded speech into text. " + _AUDIO_HELP
    args_schema: type[BaseModel] = SpeechToTextInput

    backend: Literal["faster-whisper", "speechgpt"] = "faster-whisper"
    """``"faster-whisper"``, or ``"speechgpt"`` for SpeechGPT's own ASR task (no second model)."""
    whisper_model: str = "small"
    """faster-whisper model: a size (``"tiny"`` ... ``"large-v3"``), a hub id or a CTranslate2 folder."""
    device: str = "auto"
    """faster-whisper device: ``"auto"``, ``"cpu"`` or ``"cuda"``."""
    compute_type: str = "default"
    """faster-whisper (CTranslate2) compute type: ``"default"``, ``"int8"``, ``"float16"`` ..."""
    beam_size: int = 5
    """faster-whisper beam size."""
    language: str | None = None
    """Default language code (``None``: detected), overridden by the call's ``language``."""
    whisper_options: dict[str, Any] = Field(default_factory=dict)
    """More keyword arguments of ``WhisperModel.transcribe`` (``vad_filter``, ``temperature``,
    ``initial_prompt`` ...)."""
    speechgpt: SpeechGPTChat | None = None
    """The SpeechGPT model of ``backend="speechgpt"`` (default: ``SpeechGPTChat()``)."""

    def _run(self, audio: str, language: str | None = None,
             run_manager: CallbackManagerForToolRun | None = None) -> tuple[str, dict[str, Any]]:
        samples = _load(audio, self)
        duration = samples.size / SAMPLE_RATE
        if self.backend == "speechgpt":
            chat = self.speechgpt or SpeechGPTChat()
            text = chat.runtime.transcribe(samples, sample_rate=SAMPLE_RATE, **_generation_kwargs(chat))
            artifact = {"text": text, "language": language or self.language, "duration": duration,
                        "segments": [{"start": 0.0, "end": duration, "text": text}],
                        "backend": "speechgpt"}
        else:
            model = load_whisper(self.whisper_model, self.device, self.compute_type)
            options = {"beam_size": self.beam_size, **self.whisper_options}
            segments, info = model.transcribe(samples, language=language or self.language, **options)
            parts = [{"start": s.start, "end": s.end, "text": s.text.strip()} for s in segments]
            text = " ".join(p["text"] for p in parts if p["text"])
            artifact = {"text": text, "language": info.language, "duration": duration,
                        "segments": parts, "backend": "faster-whisper"}
        return text, artifact


class TextToSpeechTool(_VoiceTool):
    """Speak text aloud with SpeechGPT's TTS task and the unit HiFi-GAN vocoder.

    Content: the path of the written wav file (with ``output_dir``), else a short note.
    Artifact: an audio content block ``{"type": "audio", "base64": <16-bit wav>, "mime_type":
    "audio/wav", "extras": {"path", "duration", "sample_rate", "units", "text"}}``.
    """

    name: str = "text_to_speech"
    description: str = "Speak a text aloud: returns a wav recording of it."
    args_schema: type[BaseModel] = TextToSpeechInput

    speechgpt: SpeechGPTChat = Field(default_factory=SpeechGPTChat)
    """The SpeechGPT model (its sampling settings apply)."""
    output_dir: str | None = None
    """Folder for wav files; ``None``: the audio is only in the artifact."""

    def _run(self, text: str, run_manager: CallbackManagerForToolRun | None = None,
             ) -> tuple[str, dict[str, Any]]:
        if not text.strip():
            raise ToolException("text_to_speech needs some text to speak.")
        response = self.speechgpt.runtime.speak(text, **_generation_kwargs(self.speechgpt))
        if response.audio is None or response.audio.size == 0:
            raise ToolException("SpeechGPT produced no speech for this text; try rephrasing it.")
        path = _save(response.audio, response.sample_rate, self.output_dir)
        duration = response.audio.size / response.sample_rate
        block = audio_block(response.audio, response.sample_rate, path=path, duration=duration,
                            sample_rate=response.sample_rate, units=list(response.units), text=text)
        content = path or f"Spoke {duration:.1f} s of audio (audio/wav, {response.sample_rate} Hz)."
        return content, block


class VoiceTurnTool(_VoiceTool):
    """Let SpeechGPT hear a recording and answer it aloud (one chain-of-modality turn).

    Content: ``"Heard: <transcript>\\nAnswer: <text answer>"``. Artifact: ``{"transcript",
    "text", "units", "finish_reason", "audio", "path"}`` where ``audio`` is the spoken answer
    as an audio content block (base64 wav; ``None`` if the answer was not spoken) and
    ``path`` its wav file (with ``output_dir``).
    """

    name: str = "voice_turn"
    description: str = ("Answer a spoken question with speech: returns what was heard, the "
                        "answer's text, and the spoken answer. " + _AUDIO_HELP)
    args_schema: type[BaseModel] = VoiceTurnInput

    speechgpt: SpeechGPTChat = Field(default_factory=SpeechGPTChat)
    """The SpeechGPT model (its sampling settings apply)."""
    output_dir: str | None = None
    """Folder for wav files of the spoken answers; ``None``: the audio is only in the artifact."""

    def _run(self, audio: str, instruction: str | None = None,
             run_manager: CallbackManagerForToolRun | None = None) -> tuple[str, dict[str, Any]]:
        samples = _load(audio, self)
        r = self.speechgpt.runtime.chat(instruction or None, samples, sample_rate=SAMPLE_RATE,
                                        **_generation_kwargs(self.speechgpt))
        artifact: dict[str, Any] = {"transcript": r.transcript, "text": r.text, "units": list(r.units),
                                    "finish_reason": r.finish_reason, "audio": None, "path": None}
        if r.audio is not None and r.audio.size:
            artifact["path"] = _save(r.audio, r.sample_rate, self.output_dir)
            artifact["audio"] = audio_block(r.audio, r.sample_rate, sample_rate=r.sample_rate,
                                            duration=r.audio.size / r.sample_rate)
        return f"Heard: {r.transcript}\nAnswer: {r.text}", artifact
