"""One ``SpeechGPTChat`` call, prepared: its runtime, prompt, tools, grammar and sampling.

:class:`ChatRequest` checks the per-call options, turns the LangChain messages into the turn
(:mod:`.messages`), adds the tool and JSON-answer sections to the system text
(:mod:`.tool_calling`), picks the grammar, and gives the ``SpeechGPT.stream`` arguments
with fresh logits processors and the :class:`~.answer_message.AnswerMessage` that follows
the answer.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from langchain_core.messages import BaseMessage
from langchain_core.utils.function_calling import convert_to_json_schema

from speechgpt_agent.audio import SAMPLE_RATE
from speechgpt_agent.model import top_k_top_p_warpers
from speechgpt_agent.pipeline import SpeechGPT
from speechgpt_agent.prompt import META_INSTRUCTION

from ._runtime import fit_options, load_runtime, prompt_tokens_bound
from .answer_message import AnswerMessage
from .answer_text import StopAfterThis
from .messages import to_turn_input
from .tool_calling import (
    answer_grammar,
    json_answer_prompt,
    normalize_tool_choice,
    tool_prompt,
    tool_specs,
)

if TYPE_CHECKING:
    from .chat_models import SpeechGPTChat

__all__ = ["CALL_KWARGS", "ChatRequest"]

CALL_KWARGS = frozenset({
    "tools", "tool_choice", "parallel_tool_calls", "response_format", "model", "temperature",
    "top_p", "top_k", "max_tokens", "seed", "modalities", "strict",
})
"""The options a call may pass (``invoke(..., **kwargs)``, ``bind(...)``)."""


class ChatRequest:
    """One call, prepared: the runtime, the ``SpeechGPT.stream`` arguments, tool settings."""

    def __init__(self, chat: SpeechGPTChat, messages: list[BaseMessage], stop: list[str] | None,
                 kwargs: dict[str, Any]) -> None:
        unknown = sorted(set(kwargs) - CALL_KWARGS)
        if unknown:
            raise TypeError(
                f"SpeechGPTChat does not take {', '.join(unknown)}; per-call options are "
                f"{', '.join(sorted(CALL_KWARGS))}."
            )
        self.chat = chat
        self.model_name = str(kwargs.get("model") or chat.model)
        self.stops = [s for s in (stop if stop is not None else chat.stop or []) if s]
        self.spec = chat._spec(self.model_name)
        spec = self.spec
        turn = to_turn_input(messages, allow_remote_audio=chat.allow_remote_audio,
                             allow_local_files=chat.allow_local_files,
                             resampler=lambda: getattr(load_runtime(spec).speech_tokenizer, "resampler", "soxr"))
        self.requested_max = kwargs.get("max_tokens", chat.max_tokens)

        tools = kwargs.get("tools") or []
        self.specs = tool_specs(tools) if tools else []
        names = [s["name"] for s in self.specs]
        self.choice = normalize_tool_choice(kwargs.get("tool_choice"), names) if self.specs else "none"
        self.tools_active = bool(self.specs) and self.choice != "none"
        self.forced = self.choice not in ("auto", "none")
        self.default_tool = (self.choice if self.choice in names
                             else names[0] if self.choice == "any" and len(names) == 1 else None)
        self.single_call = kwargs.get("parallel_tool_calls") is False
        self.json_answer = _response_schema(kwargs.get("response_format"))

        sections = tool_prompt(self.specs, self.choice) if self.tools_active else ""
        if self.json_answer is not None:
            sections += json_answer_prompt(self.json_answer or None)
        system = turn.system
        if sections:
            base = system if system is not None else META_INSTRUCTION
            system = base.rstrip("\n") + "\n" + sections
        modalities = kwargs.get("modalities") or chat.modalities
        if "text" not in modalities:
            raise ValueError(f"modalities must include 'text', got {modalities!r}.")
        # the grammar that makes the convention hold (None: free decoding); a JSON answer
        # can be spoken after its text part when it is constrained, a demanded call never
        strict = kwargs.get("strict")
        if strict is None and isinstance(kwargs.get("response_format"), dict):
            strict = (kwargs["response_format"].get("json_schema") or {}).get("strict")
        speak = "audio" in modalities and not self.forced
        self.grammar = answer_grammar(
            self.specs if self.tools_active else [], self.choice, self.json_answer,
            spoken=turn.audio is not None, speech=speak, parallel=not self.single_call,
            strict=strict)
        speak = speak and (self.json_answer is None or self.grammar is not None)
        self.speak = speak
        self.text_only = "audio" not in modalities

        self.options = chat._options(kwargs)
        self.stream_kwargs: dict[str, Any] = {
            "text": turn.text,
            "audio": turn.audio,
            "sample_rate": SAMPLE_RATE if turn.audio is not None else None,
            "history": turn.history,
            "system": system,
            "output": "both" if speak else "text",
            "options": self.options,
            "seed": kwargs.get("seed", chat.seed),
            # without tools (or with tool_choice "none") and JSON: the answer's text never
            # opens with a call (SpeechGPT.stream's no_tool_call_grammar)
            "allow_tool_calls": self.tools_active or self.json_answer is not None,
        }

    def _fit_to_context(self, runtime: SpeechGPT) -> None:
        """Clamp the answer's ``max_new_tokens`` to what the prompt leaves of the context window
        (``max_tokens=None``: all of it), so the prompt budget is what the answer leaves."""
        lm, kw = runtime.model, self.stream_kwargs
        bound = prompt_tokens_bound(lm.count_tokens, text=kw["text"], audio=kw["audio"],
                                    history=kw["history"], system=kw["system"])
        self.options = fit_options(self.options, lm.context_length, bound, self.requested_max)
        self.stream_kwargs = {**kw, "options": self.options}

    def start(self, runtime: SpeechGPT, *, streaming: bool) -> tuple[dict[str, Any], AnswerMessage]:
        """``SpeechGPT.stream`` arguments of this call (fresh logits processors) and its answer."""
        self._fit_to_context(runtime)
        answer = AnswerMessage(self, StopAfterThis(runtime.model.eos_id), streaming=streaming)
        processors = [factory() for factory in self.chat.logits_processors]
        stream_kwargs = dict(self.stream_kwargs)
        if getattr(runtime.engine, "name", "transformers") != "transformers":
            # an engine without transformers logits processors (vLLM) takes the grammar and
            # the early stop as such (structured outputs; an aborted request)
            stream_kwargs.update(grammar=self.grammar, stop_event=answer.stopper.event)
            return {**stream_kwargs, "logits_processors": processors}, answer
        if self.grammar is not None:
            # compiled (cached) before generation starts, so a bad schema raises here; top-k
            # and top-p filter after the grammar's mask, not before it
            opts = self.options
            warpers = top_k_top_p_warpers(opts) if opts.do_sample else []
            processors.append(self.grammar.logits_processor(runtime.model, after=warpers))
            stream_kwargs["options"] = dataclasses.replace(opts, top_k=0, top_p=1.0)
        processors.append(answer.stopper)
        return {**stream_kwargs, "logits_processors": processors}, answer


def _response_schema(response_format: Any) -> dict[str, Any] | None:
    """``{}`` for JSON mode, the schema for a JSON-schema answer, ``None`` for free text."""
    if response_format is None:
        return None
    if isinstance(response_format, dict):
        kind = response_format.get("type")
        if kind == "json_object":
            return {}
        if kind == "json_schema":
            inner = response_format.get("json_schema") or {}
            return dict(inner.get("schema") or inner)
        if "properties" in response_format or kind == "object":
            return dict(response_format)
    if isinstance(response_format, type):
        return convert_to_json_schema(response_format)
    raise ValueError(
        f"response_format {response_format!r} is not supported: use {{'type': 'json_object'}}, "
        "{'type': 'json_schema', 'json_schema': {'schema': ...}}, a JSON schema or a pydantic model."
    )
