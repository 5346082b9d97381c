"""Tool calling for a model without a native tool format: a JSON convention in the prompt.

SpeechGPT was never trained on tool calls, so :class:`SpeechGPTChat` describes the bound
tools in its system text and asks for one compact JSON form::

    {"tool": "get_weather", "arguments": {"location": "Paris"}}

(several calls: a JSON list of such objects). Earlier calls are written back into the
conversation in the same form, so few-shot histories teach it; tool results come back as
``Tool "get_weather" returned: ...`` lines of the next user turn.

Decoding is constrained so that the convention always holds (:mod:`speechgpt_agent.grammar`,
xgrammar): :func:`answer_grammar` gives the grammar of an answer for the bound tools and the
``tool_choice`` (a demanded call is the whole text part of the answer, its arguments valid
for the tool's JSON schema; with ``"auto"`` a call is constrained from its opening
``{"tool"`` on) or for a structured answer. The prompt still describes the tools: the
grammar decides the form, the model still needs to know what the tools are for.

Parsing the answer is lenient about what a model does around the JSON (a code fence, text
before or after it, ``"name"``/``"args"`` instead of ``"tool"``/``"arguments"``, arguments
as a JSON string) but strict about the JSON itself, and never raises: an attempted call that
is not valid JSON (malformed, or truncated by ``max_tokens``) becomes an
``invalid_tool_call`` that an agent can report back to the model.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import InvalidToolCall, ToolCall, ToolMessage
from langchain_core.messages.tool import invalid_tool_call, tool_call
from langchain_core.utils.function_calling import convert_to_openai_tool

from speechgpt_agent.grammar import (
    CALL_TRIGGER,
    Grammar,
    json_answer_grammar,
    tool_call_grammar,
)

__all__ = [
    "CALL_OPENERS",
    "CALL_TRIGGER",
    "ParsedAnswer",
    "answer_grammar",
    "complete_json_at",
    "cut_off_error",
    "json_answer_prompt",
    "new_call_id",
    "normalize_tool_choice",
    "parse_tool_calls",
    "render_tool_calls",
    "render_tool_result",
    "tool_prompt",
    "tool_specs",
]

CALL_OPENERS = "{[`"
"""Characters that can open a tool call (a JSON object or list, or a code fence)."""

_ARGS_KEYS = ("arguments", "args", "parameters", "input")
_FENCE_BEFORE = re.compile(r"```[A-Za-z]*\s*$")
_FENCE_AFTER = re.compile(r"^\s*```")
_NAME_HINT = re.compile(r'"tool"\s*:\s*"([^"\\]*)"')


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def new_call_id() -> str:
    """A fresh tool-call id (``call_`` + 24 hex digits)."""
    return f"call_{uuid.uuid4().hex[:24]}"


# --- the prompt side ---------------------------------------------------------------------


def tool_specs(tools: Sequence[Any]) -> list[dict[str, Any]]:
    """``{"name", "description", "parameters"}`` of each tool.

    Args:
        tools: anything :func:`~langchain_core.utils.function_calling.convert_to_openai_tool`
            takes: ``BaseTool``, functions, pydantic models, TypedDicts, JSON schemas,
            OpenAI tool dicts.

    A tool given twice under one name (e.g. a pydantic model and its JSON schema) is
    described once, the first time.
    """
    specs: list[dict[str, Any]] = []
    seen: set[str] = set()
    for t in tools:
        fn = convert_to_openai_tool(t)["function"]
        spec = {"name": fn["name"], "description": fn.get("description", "")}
        spec["parameters"] = fn.get("parameters") or {"type": "object", "properties": {}}
        if spec["name"] not in seen:
            seen.add(spec["name"])
            specs.append(spec)
    return specs


def normalize_tool_choice(tool_choice: Any, names: Sequence[str]) -> str:
    """Reduce LangChain/OpenAI ``tool_choice`` forms to ``"auto"``, ``"none"``, ``"any"`` or a name.

    Accepted: ``None``/``"auto"``; ``"none"``; ``"any"``/``"required"``/``True``; a tool
    name; ``{"type": "function", "function": {"name": ...}}``; ``{"name": ...}``.

    Raises:
        ValueError: an unknown form, or a name that is not among ``names``.
    """
    choice: Any = tool_choice
    if choice is None or choice == "auto" or choice is False:
        return "auto" if choice is not False else "none"
    if choice is True or choice in ("any", "required"):
        return "any"
    if choice == "none":
        return "none"
    if isinstance(choice, dict):
        choice = (choice.get("function") or {}).get("name") or choice.get("name")
    if isinstance(choice, str) and choice in names:
        return choice
    raise ValueError(
        f"tool_choice {tool_choice!r} is not supported: use 'auto', 'none', 'any' "
        f"('required'), or the name of a bound tool ({', '.join(names) or 'none bound'})."
    )


def tool_prompt(specs: Sequence[dict[str, Any]], choice: str) -> str:
    """The system-text section that describes the tools and the JSON call form.

    Args:
        specs: from :func:`tool_specs`.
        choice: from :func:`normalize_tool_choice`; ``"none"`` gives ``""``.
    """
    if choice == "none" or not specs:
        return ""
    if choice == "auto":
        rule = "Call a tool only when it helps to answer; otherwise answer normally."
    elif choice == "any":
        rule = "You must call one of the tools now."
    else:
        rule = f'You must call the tool "{choice}" now.'
    lines = [
        ("- SpeechGPT can use tools. To call one, SpeechGPT replies with only this JSON: "
        '{"tool": "<tool name>", "arguments": {<arguments>}}'),
        ("- To call several tools at once, SpeechGPT replies with a JSON list of such objects. "
        "Tool results come back in the next message."),
        f"- {rule}",
        "- The tools, as JSON schemas:",
        *(_dumps(s) for s in specs),
    ]
    return "\n".join(lines) + "\n"


def json_answer_prompt(schema: dict[str, Any] | None) -> str:
    """The system-text section that asks for a bare JSON answer (structured output)."""
    if schema is None:
        return "- SpeechGPT answers with only a JSON object and nothing else.\n"
    return (
        "- SpeechGPT answers with only a JSON object that matches this JSON schema, and "
        f"nothing else: {_dumps(schema)}\n"
    )


def answer_grammar(
    specs: Sequence[dict[str, Any]],
    choice: str,
    json_schema: dict[str, Any] | None = None,
    *,
    spoken: bool = False,
    speech: bool = False,
    parallel: bool = True,
    strict: bool | None = None,
) -> Grammar | None:
    """The grammar that constrains an answer to the convention, or ``None`` for a free answer.

    Args:
        specs: from :func:`tool_specs` (``[]``: no tools).
        choice: from :func:`normalize_tool_choice`.
        json_schema: a structured answer: its JSON schema, ``{}`` for any JSON object (JSON
            mode), ``None`` for none. Used when no tool is active.
        spoken: the question holds speech, so the answer starts with a free transcript.
        speech: a text (or JSON) answer may be spoken after it (``; [ua]`` units). A call
            never is.
        parallel: a demanded call may be a JSON list of calls (``parallel_tool_calls``).
        strict: ``False`` leaves decoding free (the prompt alone asks for the form, as
            without a grammar); ``None``/``True`` constrain, objects taking no properties
            beyond their schema's.

    Raises:
        speechgpt_agent.grammar.GrammarError: a schema the grammar cannot enforce (named).
    """
    if strict is False:
        return None
    lead = "spoken" if spoken else "text"
    if specs and choice != "none":
        return tool_call_grammar(specs, choice, lead=lead, speech=speech, parallel=parallel)
    if json_schema is not None:
        return json_answer_grammar(json_schema or None, lead=lead, speech=speech)
    return None


def render_tool_calls(calls: Sequence[dict[str, Any]]) -> str:
    """Earlier tool calls written as the model is asked to write them (for history)."""
    objs = [{"tool": c.get("name") or "", "arguments": c.get("args") or {}} for c in calls]
    return _dumps(objs[0] if len(objs) == 1 else objs)


def render_tool_result(message: ToolMessage, text: str) -> str:
    """One tool result as a line of the user turn that follows a call."""
    name = message.name or "tool"
    verb = "failed" if message.status == "error" else "returned"
    return f'Tool "{name}" {verb}: {text}'


# --- the answer side ---------------------------------------------------------------------


@dataclass
class ParsedAnswer:
    """An answer split into its text and its tool calls.

    Attributes:
        content: the text around the calls (code fences removed), or the whole answer when
            it holds no call.
        tool_calls: well-formed calls, each with a fresh id.
        invalid_tool_calls: attempted calls that are not usable JSON, with the raw text as
            ``args`` and the reason as ``error``.
    """

    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    invalid_tool_calls: list[InvalidToolCall] = field(default_factory=list)

    def stream_args(self) -> list[tuple[str | None, str, str]]:
        """``(name, args string, id)`` of every call, for ``tool_call_chunks``.

        Chosen so that LangChain's merging of the chunks (``parse_partial_json`` of the
        args) gives back the same valid and invalid calls: valid args as a JSON object,
        invalid ones as a JSON string (or the non-object value), which never parse to an
        object.
        """
        out = [(c["name"], _dumps(c["args"]), c["id"] or new_call_id()) for c in self.tool_calls]
        # an invalid call's raw text goes as a JSON string: LangChain's partial-JSON repair
        # of streamed args would otherwise complete a truncated call into a "valid" one
        out += [(c["name"], _dumps(c["args"] or ""), c["id"] or new_call_id())
                for c in self.invalid_tool_calls]
        return out


def _call_from(obj: Any, default_tool: str | None) -> tuple[str, Any] | None:
    """``(name, arguments)`` of one call object, or ``None`` if ``obj`` is not one.

    A call is ``{"tool": name, ...}``, ``{"name"|"function": name, "arguments"|...: ...}``
    or OpenAI's ``{"function": {"name", "arguments"}}``. Any other object is the arguments
    of ``default_tool`` when there is one (a model that answers a forced call with the bare
    arguments), else no call.
    """
    if not isinstance(obj, dict):
        return None
    fn = obj.get("function")
    has_args = any(k in obj for k in _ARGS_KEYS)
    if isinstance(obj.get("tool"), str):
        name = obj["tool"]
    elif isinstance(fn, dict) and isinstance(fn.get("name"), str):
        obj, name = fn, fn["name"]
    elif has_args and isinstance(obj.get("name"), str):
        name = obj["name"]
    elif has_args and isinstance(fn, str):
        name = fn
    elif default_tool:
        return default_tool, obj
    else:
        return None
    args = next((obj[k] for k in _ARGS_KEYS if k in obj), {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            pass  # stays a string: reported as an invalid call
    return name.strip(), args


def complete_json_at(text: str, start: int) -> bool:
    """Whether a complete JSON value (strictly parsed) starts at ``text[start]``."""
    try:
        json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError:
        return False
    return True


def _decode(text: str) -> tuple[Any, int] | None:
    """The JSON value at the start of ``text`` and its length (strict JSON), or ``None``."""
    try:
        return json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError:
        return None


def _around(text: str, start: int, end: int) -> str:
    before = _FENCE_BEFORE.sub("", text[:start]).rstrip()
    after = _FENCE_AFTER.sub("", text[end:]).strip()
    return f"{before} {after}" if before and after else before or after


def cut_off_error(limit: int, what: str = "tool call") -> str:
    """The error of an answer that reached its token limit inside ``what``: the call (or JSON
    answer) is not malformed but unfinished, and a larger ``max_tokens`` is the fix."""
    return (f"the answer reached its token limit ({limit} new tokens) inside the {what}, before "
            f"it closed: raise max_tokens (now {limit}).")


def parse_tool_calls(text: str, *, default_tool: str | None = None, forced: bool = False,
                     cut_off: int | None = None) -> ParsedAnswer:
    """Find the tool calls in a model answer. Never raises.

    Args:
        text: the answer's text.
        default_tool: the tool that a JSON object without a tool name calls (when exactly
            one tool can be called, e.g. ``tool_choice`` names it, or structured output);
            only a JSON object that opens the answer's first bracket counts.
        forced: the prompt demanded a call (``tool_choice`` ``"any"`` or a name): text that
            opens JSON but does not parse is then an invalid call even without a tool name.
        cut_off: the answer ended at this token limit (finish reason ``"length"``): a call
            that does not parse is then reported as unfinished (:func:`cut_off_error`), not
            as malformed.

    Returns:
        The text and the calls. The first JSON value that is a call (an object with a
        ``"tool"``/``"name"`` key, or a list of them) is taken; text that is no call is all
        ``content``.
    """
    for n, m in enumerate(re.finditer(r"[{\[]", text)):
        start = m.start()
        decoded = _decode(text[start:])
        if decoded is None:
            continue
        value, length = decoded
        items = value if isinstance(value, list) else [value]
        # bare arguments only at the first opener, never an object nested in a broken call
        bare = default_tool if n == 0 and len(items) == 1 else None
        calls = [_call_from(v, bare) for v in items]
        if not items or any(c is None for c in calls):
            continue
        parsed = ParsedAnswer(_around(text, start, start + length))
        for name, args in calls:  # type: ignore[misc]
            if isinstance(args, dict):
                parsed.tool_calls.append(tool_call(name=name, args=args, id=new_call_id()))
            else:
                parsed.invalid_tool_calls.append(invalid_tool_call(
                    name=name, args=_dumps(args), id=new_call_id(),
                    error=f"the arguments of {name!r} are not a JSON object: {_dumps(args)}",
                ))
        return parsed
    # no parseable call: was one attempted?
    opener = re.search(r"[{\[]", text)
    if opener is not None:
        hint = _NAME_HINT.search(text, opener.start())
        if hint is not None or forced:
            name = hint.group(1).strip() if hint is not None else default_tool
            start = text.rfind("{", opener.start(), hint.start()) if hint is not None else -1
            start = start if start >= 0 else opener.start()
            raw = text[start:]
            return ParsedAnswer(
                _FENCE_BEFORE.sub("", text[:start]).rstrip(),
                invalid_tool_calls=[invalid_tool_call(
                    name=name, args=raw, id=new_call_id(),
                    error=cut_off_error(cut_off) if cut_off is not None else
                    "the model's tool call is not valid JSON; expected "
                    '{"tool": "<name>", "arguments": {...}}.',
                )],
            )
    if forced and cut_off is not None:  # the demanded call had not even opened
        return ParsedAnswer("", invalid_tool_calls=[invalid_tool_call(
            name=default_tool, args=text.strip(), id=new_call_id(), error=cut_off_error(cut_off))])
    return ParsedAnswer(text)
