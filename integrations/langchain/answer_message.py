"""One answer of ``SpeechGPTChat``: the runtime's events of a turn -> LangChain chunks and message.

:class:`AnswerMessage` follows the turn's events (text, transcript, units, audio pieces, the
final response) and gives the chunks to stream and the final ``AIMessage`` (the formats are
in :mod:`.chat_models`); it ends generation early (a stop sequence, a complete tool call or
JSON answer) through :class:`.answer_text.StopAfterThis`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk

from speechgpt_agent.audio import SAMPLE_RATE
from speechgpt_agent.parse import TextDelta, TranscriptDelta, Units
from speechgpt_agent.pipeline import AudioChunk, Completed, Response

from .answer_text import AnswerText, StopAfterThis
from .messages import audio_block
from .tool_calling import ParsedAnswer

if TYPE_CHECKING:
    from .request import ChatRequest

__all__ = ["PROVIDER", "AnswerMessage", "args_survive_merging"]

PROVIDER = "speechgpt"


def args_survive_merging(args: Any) -> bool:
    """Whether raw invalid-call args stay what they are when streamed chunks are added:
    langchain-core re-parses merged args with its partial-JSON repair, and args it repairs
    into an object would become a (wrong) valid call."""
    from langchain_core.utils.json import parse_partial_json

    if not isinstance(args, str) or not args:
        return False
    try:
        return not isinstance(parse_partial_json(args), dict)
    except Exception:  # noqa: BLE001 - unparseable: it stays an invalid call, args unchanged
        return True


class AnswerMessage:
    """Turns the runtime's events of one turn into LangChain chunks, and into the final message.

    Holds back text that could still become a stop sequence, and (with tools bound) text
    from the first character that can open a tool call, until it is known to be plain text.
    """

    def __init__(self, request: ChatRequest, stopper: StopAfterThis, *, streaming: bool) -> None:
        self.request = request
        self.streaming = streaming
        self.stopper = stopper
        self.follow = AnswerText(stops=request.stops, tools_active=request.tools_active,
                                 json_answer=request.json_answer is not None, speak=request.speak,
                                 default_tool=request.default_tool, on_stop=stopper.set,
                                 forced=request.forced, single_call=request.single_call)
        self.transcript = ""
        self.sent_transcript = ""  # the part of it already streamed in chunk metadata
        self.units: list[int] = []
        self.audio_blocks: list[dict[str, Any]] = []
        self.held_audio: list[dict[str, Any]] = []
        self.response: Response | None = None

    # -- text --

    def parsed(self) -> ParsedAnswer:
        """The answer's text and tool calls; a call cut off by the token limit says so."""
        r = self.response
        cut_off = self.request.options.max_new_tokens if r is not None and r.finish_reason == "length" else None
        return self.follow.parsed(cut_off=cut_off)

    # -- events -> chunks --

    def _text_chunk(self, text: str) -> AIMessageChunk:
        if self.request.text_only:
            return AIMessageChunk(content=text)
        return AIMessageChunk(content=[{"type": "text", "text": text, "index": 0}])

    def feed(self, event: Any) -> list[ChatGenerationChunk]:
        """Chunks to stream for one runtime event (often none)."""
        if isinstance(event, TextDelta):
            text = self.follow.feed(event.text)
            return [ChatGenerationChunk(message=self._text_chunk(text))] if text else []
        if isinstance(event, TranscriptDelta):
            self.transcript += event.text
            if self.streaming and event.text:
                self.sent_transcript += event.text
                empty: list[Any] | str = "" if self.request.text_only else []
                return [ChatGenerationChunk(message=AIMessageChunk(
                    content=empty, response_metadata={"transcript": event.text}))]
        elif isinstance(event, Units):
            self.units.extend(event.ids)
        elif isinstance(event, AudioChunk) and self.streaming:
            block = audio_block(event.samples, event.sample_rate, offset=event.offset,
                                sample_rate=event.sample_rate)
            block["index"] = len(self.audio_blocks) + len(self.held_audio) + 1
            if self.follow.opener() >= 0:  # maybe a spoken tool call: decided at the end
                self.held_audio.append(block)
            else:
                self.audio_blocks.append(block)
                return [ChatGenerationChunk(message=AIMessageChunk(content=[block]))]
        elif isinstance(event, Completed):
            self.response = event.response
        return []

    def last_chunk(self) -> ChatGenerationChunk:
        """The final chunk: the rest of the text, tool calls, usage and metadata."""
        parsed = self.parsed()
        content: list[Any] | str = [] if not self.request.text_only else ""
        rest = self.follow.unreleased(parsed.content)
        if rest:
            content = rest if self.request.text_only else [{"type": "text", "text": rest, "index": 0}]
        if not parsed.tool_calls and not parsed.invalid_tool_calls and self.held_audio:
            assert isinstance(content, list)
            content.extend(self.held_audio)
        chunks = [tool_call_chunk(name=name, args=args, id=call_id, index=i)
                  for i, (name, args, call_id) in enumerate(parsed.stream_args())]
        n_valid = len(parsed.tool_calls)
        for i, call in enumerate(parsed.invalid_tool_calls):
            if args_survive_merging(call["args"]):
                chunks[n_valid + i]["args"] = call["args"]  # as invoke has them
        metadata = self._metadata(parsed)
        full = metadata["transcript"]
        metadata["transcript"] = full[len(self.sent_transcript):] if full.startswith(self.sent_transcript) else ""
        return ChatGenerationChunk(message=AIMessageChunk(
            content=content,
            tool_call_chunks=chunks,
            usage_metadata=self._usage(),
            response_metadata=metadata,
            chunk_position="last",
        ))

    def message(self) -> AIMessage:
        """The whole answer as one message (``invoke``)."""
        parsed = self.parsed()
        calls = parsed.tool_calls or parsed.invalid_tool_calls
        audio = None if self.response is None or calls else self.response.audio
        if self.request.text_only:
            content: str | list[Any] = parsed.content
        else:
            keep_text = parsed.content or (audio is None and not calls)
            content = [{"type": "text", "text": parsed.content}] if keep_text else []
            if audio is not None:
                content.append(audio_block(audio, self.response.sample_rate))  # type: ignore[union-attr]
        return AIMessage(
            content=content,
            tool_calls=parsed.tool_calls,
            invalid_tool_calls=parsed.invalid_tool_calls,
            usage_metadata=self._usage(),
            response_metadata=self._metadata(parsed),
        )

    def _usage(self) -> UsageMetadata:
        r = self.response
        prompt, completion = (r.usage.prompt_tokens, r.usage.completion_tokens) if r else (0, 0)
        return UsageMetadata(
            input_tokens=prompt,
            output_tokens=completion,
            total_tokens=prompt + completion,
            input_token_details={"audio": len(r.input_units) if r else 0},
            output_token_details={"audio": len(r.units) if r else 0},
        )

    def _metadata(self, parsed: ParsedAnswer | None = None) -> dict[str, Any]:
        r = self.response
        reason = r.finish_reason if r else "cancelled"
        if self.follow.stopped:
            reason = "stop"
        extra: dict[str, Any] = {}
        if parsed is not None and parsed.invalid_tool_calls:
            extra["invalid_tool_call_errors"] = [c.get("error") or "" for c in parsed.invalid_tool_calls]
        return extra | {
            "model_name": self.request.model_name,
            "model_provider": PROVIDER,
            "finish_reason": reason,
            "transcript": r.transcript if r else self.transcript,
            "units": list(r.units) if r else list(self.units),
            "sample_rate": r.sample_rate if r else SAMPLE_RATE,
            "complete": bool(r and r.complete),
        }
