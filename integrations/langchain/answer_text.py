"""The text part of an answer as it streams, under the tool-call and stop-sequence rules.

``SpeechGPTChat`` and the OpenAI server both follow a generated text answer the same way, so
both use this one class: it holds back text that could still become a stop sequence and, with
tools bound, text from the first character that can open a call until it is known to be
plain text; it cuts the answer at a stop sequence; and it asks for the generation to end
(``on_stop``) once what follows is not wanted: a stop sequence, a complete call, or a
complete JSON answer (unless speech follows it), which :class:`StopAfterThis` carries out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import torch

from .tool_calling import CALL_OPENERS, ParsedAnswer, complete_json_at, parse_tool_calls

__all__ = ["AnswerText", "StopAfterThis", "stop_holdback"]


def stop_holdback(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that could still grow into a stop sequence."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class AnswerText:
    """Follows one answer's text deltas.

    Args:
        stops: stop sequences (the answer ends before the first one).
        tools_active: tools are bound, so a call may open.
        json_answer: the answer is one JSON value (structured output).
        speak: speech follows the text (a JSON answer then does not end the generation).
        default_tool: the tool a bare-arguments call means (one bound tool), or ``None``.
        forced: a call was demanded (``tool_choice`` any or a name): text is read as a call.
        single_call: at most one call (``parallel_tool_calls=False``).
        on_stop: called (possibly more than once) when the generation should end.
    """

    def __init__(self, *, stops: Sequence[str], tools_active: bool, json_answer: bool, speak: bool,
                 default_tool: str | None, on_stop: Callable[[], None], forced: bool = False,
                 single_call: bool = False) -> None:
        self.stops = list(stops)
        self.tools_active = tools_active
        self.json_answer = json_answer
        self.speak = speak
        self.default_tool = default_tool
        self.forced = forced
        self.single_call = single_call
        self.on_stop = on_stop
        self.text = ""
        """All text received, cut at a stop sequence."""
        self.emitted = ""
        """The prefix of :attr:`text` released so far."""
        self.stopped = False
        """A stop sequence was seen."""

    def opener(self) -> int:
        """Where a tool call may open in :attr:`text` (``-1``: nowhere, or no tools)."""
        if not self.tools_active:
            return -1
        hits = [i for i in (self.text.find(c) for c in CALL_OPENERS) if i >= 0]
        return min(hits) if hits else -1

    def _call_complete(self, opener: int) -> bool:
        """Whether the JSON value at the first bracket after ``opener`` is complete and a call."""
        start = next((i for i in range(opener, len(self.text)) if self.text[i] in "{["), -1)
        if start < 0 or not complete_json_at(self.text, start):
            return False
        return bool(parse_tool_calls(self.text[start:], default_tool=self.default_tool).tool_calls)

    def feed(self, delta: str) -> str:
        """Take a text delta; return the text now safe to release (possibly ``""``)."""
        if self.stopped:
            return ""
        self.text += delta
        cuts = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
        if cuts:
            self.text = self.text[: min(cuts)]
            self.stopped = True
            self.on_stop()
        end = len(self.text) - (0 if self.stopped else stop_holdback(self.text, self.stops))
        opener = self.opener()
        if opener >= 0:
            end = min(end, len(self.text[:opener].rstrip()))
            if not self.stopped and any(c in delta for c in "}]") and self._call_complete(opener):
                self.on_stop()
        elif self.json_answer and not self.speak and "}" in delta:
            start = self.text.find("{")
            if start >= 0 and complete_json_at(self.text, start):
                self.on_stop()
        if end <= len(self.emitted):
            return ""
        out = self.text[len(self.emitted): end]
        self.emitted = self.text[:end]
        return out

    def parsed(self, cut_off: int | None = None) -> ParsedAnswer:
        """The whole answer: its text and, with tools bound, its tool calls.

        Args:
            cut_off: the generation's token limit when it ended there (finish reason
                ``"length"``): an unfinished call then says so (:func:`.cut_off_error`).
        """
        if not self.tools_active:
            return ParsedAnswer(self.text)
        parsed = parse_tool_calls(self.text, default_tool=self.default_tool, forced=self.forced,
                                  cut_off=None if self.stopped else cut_off)
        if self.single_call:
            parsed.tool_calls = parsed.tool_calls[:1]
            parsed.invalid_tool_calls = parsed.invalid_tool_calls[: 1 - len(parsed.tool_calls)]
        return parsed

    def unreleased(self, content: str) -> str:
        """The part of the final ``content`` not released yet (``""`` if it no longer
        continues what was released)."""
        return content[len(self.emitted):] if content.startswith(self.emitted) else ""


class StopAfterThis:
    """Ends the answer once :meth:`set` was called (a stop sequence or a complete tool call /
    JSON answer was seen: what follows is not wanted, so it is not generated or vocoded):
    through the engine's ``stop_event`` on any engine, or as a logits processor forcing eos
    (embedded engine). ``SpeechGPTChat`` and the server both end answers through it; placed
    after every other logits processor, so that it wins."""

    def __init__(self, eos_id: int) -> None:
        self.eos_id = eos_id
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    @property
    def event(self) -> threading.Event:
        """Set by :meth:`set`: the engine's ``stop_event`` for the turn."""
        return self._event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if not self._event.is_set():
            return scores
        forced = torch.full_like(scores, float("-inf"))
        forced[..., self.eos_id] = 0.0
        return forced
