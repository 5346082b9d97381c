"""Pydantic models of the requests the server takes (the OpenAI wire format).

Only request bodies are modelled: responses are built as plain dicts by :mod:`.chat` and
:mod:`.audio_api` (their shape is documented there). Fields SpeechGPT cannot honour are
refused with a message rather than silently ignored (``n > 1``, ``logprobs``, image parts);
fields that change nothing for one local model (``user``, ``metadata``, ``store``,
``service_tier``, ``parallel_tool_calls`` ...) are accepted. Unknown fields are ignored, as
OpenAI-compatible servers do, so newer clients keep working; known fields of the wrong type
are a 400.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "AssistantAudioRef",
    "AudioOutput",
    "ChatCompletionRequest",
    "ChatMessage",
    "InputAudio",
    "InputAudioPart",
    "SpeechRequest",
    "TextPart",
]

InputAudioFormat = Literal["wav", "mp3", "flac", "ogg", "pcm16"]
OutputAudioFormat = Literal["wav", "pcm16", "flac"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Model):
    type: Literal["text"]
    text: str


class InputAudio(_Model):
    data: str = Field(description="base64 of the encoded clip (pcm16: raw 16-bit LE mono at 24 kHz)")
    format: InputAudioFormat


class InputAudioPart(_Model):
    type: Literal["input_audio"]
    input_audio: InputAudio


class OtherPart(_Model):
    """Any other part (``image_url``, ``file``, ``refusal`` ...): kept to refuse it by name."""

    model_config = ConfigDict(extra="allow")
    type: str


ContentPart = Annotated[TextPart | InputAudioPart | OtherPart, Field(union_mode="left_to_right")]


class FunctionCall(_Model):
    name: str
    arguments: str = ""


class ToolCall(_Model):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantAudioRef(_Model):
    id: str


class ChatMessage(_Model):
    """One message of ``messages``: system/developer, user, assistant or tool."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    audio: AssistantAudioRef | None = None


class AudioOutput(_Model):
    voice: str | dict[str, Any] | None = None
    format: OutputAudioFormat = "wav"


class FunctionSpec(_Model):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Model):
    type: Literal["function"] = "function"
    function: FunctionSpec


class JsonSchemaSpec(_Model):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Model):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class StreamOptions(_Model):
    include_usage: bool | None = None


class ChatCompletionRequest(_Model):
    """``POST /v1/chat/completions`` (the fields SpeechGPT reads; see the module docstring)."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    modalities: list[Literal["text", "audio"]] | None = None
    audio: AudioOutput | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None

    @model_validator(mode="after")
    def _supported(self) -> ChatCompletionRequest:
        if self.n not in (None, 1):
            raise ValueError(f"n={self.n} is not supported: SpeechGPT returns one choice (n=1).")
        if self.logprobs or self.top_logprobs:
            raise ValueError("logprobs are not supported by this server.")
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        if len(stops) > 4:
            raise ValueError(f"stop takes at most 4 sequences, got {len(stops)}.")
        return self

    @property
    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return [s for s in stops if s]

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class SpeechRequest(_Model):
    """``POST /v1/audio/speech``."""

    model: str
    input: str = Field(min_length=1, max_length=4096)
    voice: str | dict[str, Any] | None = None
    response_format: Literal["wav", "pcm", "flac"] = "wav"
    speed: float | None = Field(default=None, ge=0.25, le=4.0)
    instructions: str | None = None
    stream_format: Literal["audio"] | None = None
