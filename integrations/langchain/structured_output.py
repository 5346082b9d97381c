"""``SpeechGPTChat.with_structured_output``: a constrained JSON answer (or a demanded call) parsed.

The answer is constrained by a grammar (:mod:`speechgpt_agent.grammar`), so what a parser
gets is valid JSON for the schema, with one exception: an answer that reached its token
limit (``max_tokens``) before the JSON closed. LangChain's parsers would then read the
partial JSON as far as it goes (``'{"cou'`` -> ``{}``) and report missing fields, or, for
a demanded call, return ``None``. The parsers here say what happened instead: an
:class:`~langchain_core.exceptions.OutputParserException` that names the token limit and
the fix, raised from ``invoke`` (and at the end of a ``stream``), or kept as
``parsing_error`` with ``include_raw=True``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage, BaseMessage, BaseMessageChunk
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
from langchain_core.outputs import Generation
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

from .tool_calling import complete_json_at, cut_off_error

if TYPE_CHECKING:
    from .chat_models import SpeechGPTChat

__all__ = ["check_finished", "structured_output"]

Method = Literal["json_schema", "function_calling", "json_mode"]


def _message_text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")


def check_finished(message: BaseMessage, *, tool: bool) -> None:
    """Raise if ``message`` holds no usable structured answer because of how it ended.

    Args:
        message: the chat model's answer (an ``AIMessage`` or the sum of a stream's chunks).
        tool: the answer is a demanded call (``method="function_calling"``), else a JSON answer.

    Raises:
        OutputParserException: the JSON (or the call) was cut off by the token limit, or the
            demanded call is invalid; the message says why and what to change.
    """
    meta = message.response_metadata or {}
    cut = meta.get("finish_reason") == "length"
    usage = getattr(message, "usage_metadata", None) or {}
    limit = int(usage.get("output_tokens") or 0)
    if tool:
        if isinstance(message, AIMessage) and not message.tool_calls and (message.invalid_tool_calls or cut):
            invalid = message.invalid_tool_calls
            errors = meta.get("invalid_tool_call_errors") or [c.get("error") for c in invalid]
            reason = next((e for e in errors if e), None) or (
                cut_off_error(limit) if cut else "the demanded tool call is not valid JSON.")
            raise OutputParserException(f"no structured answer: {reason}",
                                        llm_output=str(invalid[0].get("args") or "") if invalid else _message_text(message))
        return
    text = _message_text(message)
    start = text.find("{")
    if cut and (start < 0 or not complete_json_at(text, start)):
        raise OutputParserException(f"no structured answer: {cut_off_error(limit, 'JSON answer')}",
                                    llm_output=text)


class _FinishedCheck:
    """Mixin of a LangChain output parser: :func:`check_finished` before the final parse of
    an answer, and after the last chunk of a stream (whose partial parses it leaves alone)."""

    _tool_answer = False

    def parse_result(self, result: list[Generation], *, partial: bool = False) -> Any:
        message = getattr(result[0], "message", None) if result else None
        if not partial and message is not None:
            check_finished(message, tool=self._tool_answer)
        return super().parse_result(result, partial=partial)  # type: ignore[misc]

    @staticmethod
    def _summed(chunks: list[Any]) -> BaseMessage | None:
        messages = [c for c in chunks if isinstance(c, BaseMessage)]
        if not messages:
            return None
        total = messages[0]
        for m in messages[1:]:
            total = total + m if isinstance(total, BaseMessageChunk) else m  # type: ignore[operator]
        return total

    def _transform(self, input: Iterator[Any]) -> Iterator[Any]:
        seen: list[Any] = []

        def tap() -> Iterator[Any]:
            for chunk in input:
                seen.append(chunk)
                yield chunk

        yield from super()._transform(tap())  # type: ignore[misc]
        total = self._summed(seen)
        if total is not None:
            check_finished(total, tool=self._tool_answer)

    async def _atransform(self, input: AsyncIterator[Any]) -> AsyncIterator[Any]:
        seen: list[Any] = []

        async def tap() -> AsyncIterator[Any]:
            async for chunk in input:
                seen.append(chunk)
                yield chunk

        async for out in super()._atransform(tap()):  # type: ignore[misc]
            yield out
        total = self._summed(seen)
        if total is not None:
            check_finished(total, tool=self._tool_answer)


class _JsonAnswerParser(_FinishedCheck, JsonOutputParser):
    pass


class _PydanticAnswerParser(_FinishedCheck, PydanticOutputParser):
    pass


class _PydanticCallParser(_FinishedCheck, PydanticToolsParser):
    _tool_answer = True


class _KeyCallParser(_FinishedCheck, JsonOutputKeyToolsParser):
    _tool_answer = True


def structured_output(chat: SpeechGPTChat, schema: dict[str, Any] | type, *, method: Method,
                      include_raw: bool, strict: bool | None) -> Runnable[Any, Any]:
    """The runnable of :meth:`SpeechGPTChat.with_structured_output` (documented there)."""
    is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
    ls_format = {"kwargs": {"method": method}, "schema": schema}
    if method == "function_calling":
        name = convert_to_openai_tool(schema)["function"]["name"]
        llm = chat.bind_tools([schema], tool_choice=name, strict=strict, ls_structured_output_format=ls_format)
        parser: Runnable = (_PydanticCallParser(tools=[schema], first_tool_only=True) if is_pydantic
                            else _KeyCallParser(key_name=name, first_tool_only=True))
    elif method in ("json_schema", "json_mode"):
        response_format: dict[str, Any] = (
            {"type": "json_object"} if method == "json_mode"
            else {"type": "json_schema", "json_schema": {"schema": convert_to_json_schema(schema)}})
        if strict is not None and method == "json_schema":
            response_format["json_schema"]["strict"] = strict
        llm = chat.bind(response_format=response_format, modalities=["text"], ls_structured_output_format=ls_format)
        parser = (_PydanticAnswerParser(pydantic_object=schema) if is_pydantic  # type: ignore[arg-type]
                  else _JsonAnswerParser())
    else:
        raise ValueError(f"method must be 'json_schema', 'function_calling' or 'json_mode', got {method!r}.")
    if not include_raw:
        return llm | parser
    with_parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
    without = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=llm) | with_parsed.with_fallbacks([without], exception_key="parsing_error")


