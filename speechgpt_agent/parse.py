"""Parsing of SpeechGPT answers, incrementally from token ids or at once from text.

A chain-of-modality answer reads ``{transcript}; [ta] {text}; [ua] <sosp><12>...<eosp><eoa>``;
other tasks give parts of it (a text answer alone, a transcript alone for ASR, units alone for
TTS). :class:`StreamParser` turns generated token ids into events as they arrive:
:class:`TranscriptDelta`, :class:`TextDelta`, :class:`Units` and a final :class:`Done`.
:func:`parse_response` does the same for a whole decoded text, like the original CLI's
``postprocess``.

Generated output is untrusted. Both parsers never raise on it and agree on the rules:

* Units come from unit token ids (``unit_token_offset + n``), never from decoded text, and are
  kept inside ``<sosp>..<eosp>`` or after ``[ua]``; stray ones are dropped.
* ``[ta]``, ``[ua]`` and ``<eoa>`` are text markers (the model spells them with several
  tokens); separators and spacing around them (``"; [ta]"``, ``";[ta]"``, ``" [ta]"``) do not
  matter, and a ``[tq]`` marker (the paper's transcript tag) is dropped.
* The text before ``[ta]`` is the transcript only if ``[ta]`` follows; otherwise it is the
  text answer (a text question's answer, or an ASR transcription, carries no tags).
* Whitespace at the ends of each part and around units is dropped; ``<eoa>`` (or an end
  token such as ``</s>`` or ``[Human]``) ends the answer; a truncated answer is kept.

The concatenation of the deltas of a kind always equals the matching field of ``Done``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from .prompt import NUM_UNITS

__all__ = [
    "Done",
    "Event",
    "FinishReason",
    "FirstSegment",
    "ParsedAnswer",
    "StreamParser",
    "TextDelta",
    "TranscriptDelta",
    "Units",
    "parse_response",
]

FinishReason = Literal["stop", "length", "cancelled", "error"]
FirstSegment = Literal["auto", "transcript", "text"]


@dataclass(frozen=True)
class TranscriptDelta:
    """More of the transcript of the user's speech (the answer's first part)."""

    text: str


@dataclass(frozen=True)
class TextDelta:
    """More of the text answer."""

    text: str


@dataclass(frozen=True)
class Units:
    """Speech units of the spoken answer (``0..999``), in order."""

    ids: tuple[int, ...]


@dataclass(frozen=True)
class ParsedAnswer:
    """A whole answer. ``complete`` is ``True`` when it ended with ``<eoa>``."""

    transcript: str
    text: str
    units: tuple[int, ...]
    complete: bool


@dataclass(frozen=True)
class Done:
    """The last event: why generation ended and the whole answer."""

    finish_reason: FinishReason
    transcript: str
    text: str
    units: tuple[int, ...]
    complete: bool

    @property
    def answer(self) -> ParsedAnswer:
        return ParsedAnswer(self.transcript, self.text, self.units, self.complete)


Event = TranscriptDelta | TextDelta | Units | Done

# --- the shared state machine ----------------------------------------------------------------

_MARKER = re.compile(r"\[(?:ta|ua|tq)\]|<eoa>")
_MARKER_WORDS = ("[ta]", "[ua]", "[tq]", "<eoa>")


def _holdback(s: str) -> int:
    """Index from which the end of ``s`` could still grow into a marker (with its separators)."""
    j = len(s)
    for n in range(min(len(s), 4), 0, -1):
        tail = s[-n:]
        if any(w.startswith(tail) and len(tail) < len(w) for w in _MARKER_WORDS):
            j = len(s) - n
            break
    while j > 0 and (s[j - 1].isspace() or s[j - 1] == ";"):
        j -= 1
    return j


class _Part:
    """Whitespace bookkeeping of one output part (transcript or text)."""

    __slots__ = ("content", "held", "pieces", "sep")

    def __init__(self) -> None:
        self.content = False  # something non-blank was emitted
        self.held = ""  # trailing whitespace, emitted only if more text follows
        self.sep = False  # the part was interrupted: join what follows with a space
        self.pieces: list[str] = []


class _Segmenter:
    """Classifies a stream of text chunks and unit items into answer parts.

    Chunking-invariant: how text is split into chunks does not change the result, which
    is what makes token-by-token parsing equal to whole-text parsing.
    """

    def __init__(self, first_segment: FirstSegment, single_part: bool = False) -> None:
        if first_segment not in ("auto", "transcript", "text"):
            raise ValueError(f"first_segment must be 'auto', 'transcript' or 'text', got {first_segment!r}.")
        self.single_part = single_part
        self.segment: Literal["lead", "text", "speech"] = "lead"
        self.lead_role: Literal["transcript", "text"] | None = (
            None if first_segment == "auto" else first_segment)
        self.parts = {"lead": _Part(), "transcript": _Part(), "text": _Part()}
        self.pending = ""
        self.in_span = False
        self.units: list[int] = []
        self.done = False
        self.complete = False
        self.events: list[Event] = []

    # roles
    def _role(self) -> str | None:
        if self.segment == "speech":
            return None
        if self.segment == "text":
            return "text"
        return self.lead_role or "lead"

    def _emit(self, role: str, s: str) -> None:
        self.parts[role].pieces.append(s)
        if role == "transcript":
            self.events.append(TranscriptDelta(s))
        elif role == "text":
            self.events.append(TextDelta(s))

    def _decide_lead(self, role: Literal["transcript", "text"]) -> None:
        if self.lead_role is not None:
            return
        self.lead_role = role
        lead = self.parts.pop("lead")
        deferred, lead.pieces = lead.pieces, []
        self.parts[role] = lead  # nothing else has written to `role` yet
        if deferred:
            self._emit(role, "".join(deferred))

    # text
    def _route(self, s: str) -> None:
        role = self._role()
        if role is None or not s:
            return
        part = self.parts[role]
        if not part.content or part.sep:  # whitespace after a part's start or a break is dropped
            s = s.lstrip()
            if not s:
                return
        body = s.rstrip()
        if not body:
            part.held += s
            return
        prefix = part.held if part.content else ""
        if part.sep and part.content and not prefix:
            prefix = " "
        self._emit(role, prefix + body)
        part.content, part.sep, part.held = True, False, s[len(body):]

    def _interrupt(self) -> None:
        role = self._role()
        if role is not None:
            part = self.parts[role]
            part.held = ""
            part.sep = part.sep or part.content

    def _flush_pending(self) -> None:
        pending, self.pending = self.pending, ""
        self._route(pending)

    def text(self, chunk: str) -> None:
        if self.done or not chunk:
            return
        self.pending += chunk
        while not self.done:
            m = _MARKER.search(self.pending)
            if m is None:
                k = _holdback(self.pending)
                self._route(self.pending[:k])
                self.pending = self.pending[k:]
                return
            start = m.start()  # the separators before a marker belong to it
            while start > 0 and (self.pending[start - 1].isspace() or self.pending[start - 1] == ";"):
                start -= 1
            self._route(self.pending[:start])
            self.pending = self.pending[m.end():]
            self._marker(m.group(0))

    def _marker(self, word: str) -> None:
        if word == "[tq]":
            return
        self._interrupt()
        if word == "<eoa>" or self._single_part_over():
            self.pending = ""  # what follows the end is not part of the answer
            self.end(complete=True)
        elif word == "[ta]":
            if self.segment == "lead":
                self._decide_lead("transcript")
            self.segment = "text"
        else:  # [ua]
            if self.segment == "lead":
                self._decide_lead("text")
            self.segment = "speech"

    def _single_part_over(self) -> bool:
        """A single-part answer (ASR) has begun, so a tag or a unit span ends it."""
        return self.single_part and self.parts[self.lead_role or "lead"].content

    # non-text items
    def _item(self) -> bool:
        if self.done:
            return False
        self._flush_pending()
        self._interrupt()
        return True

    def sosp(self) -> None:
        if not self._item():
            return
        if self._single_part_over():
            self.end(complete=True)
            return
        if self.segment == "lead":
            self._decide_lead("text")
        self.in_span = True

    def eosp(self) -> None:
        if self._item():
            self.in_span = False

    def unit(self, n: int) -> None:
        if self._item() and (self.in_span or self.segment == "speech"):
            self.units.append(n)
            self.events.append(Units((n,)))

    def end(self, *, complete: bool) -> None:
        if self.done:
            return
        self._flush_pending()
        self._interrupt()
        self._decide_lead("text")
        self.done, self.complete, self.pending = True, complete, ""

    def result(self) -> tuple[str, str, tuple[int, ...], bool]:
        return (
            "".join(self.parts["transcript"].pieces),
            "".join(self.parts["text"].pieces),
            tuple(self.units),
            self.complete,
        )

    def take_events(self) -> list[Event]:
        events, self.events = self.events, []
        return events


def _coalesce(events: Iterable[Event]) -> list[Event]:
    out: list[Event] = []
    for e in events:
        last = out[-1] if out else None
        if isinstance(e, Units) and isinstance(last, Units):
            out[-1] = Units(last.ids + e.ids)
        elif isinstance(e, (TextDelta, TranscriptDelta)) and type(e) is type(last):
            out[-1] = type(e)(last.text + e.text)  # type: ignore[union-attr]
        else:
            out.append(e)
    return out


# --- incremental detokenization ----------------------------------------------------------------


class _IncrementalDecoder:
    """Decodes a growing run of text tokens into new text, never splitting a character.

    Decodes a short window (the tokens of the last step plus the new ones) and emits what
    the new tokens added, so that spaces that the tokenizer renders from the context (LLaMA's
    ``▁``) come out right. Text ending in U+FFFD (an incomplete UTF-8 sequence of
    byte-fallback tokens) is held back until the character completes.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        text = self._advance(final=True) if self._read < len(self._ids) else ""
        self._ids, self._prefix, self._read = [], 0, 0
        return text

    def _advance(self, *, final: bool) -> str:
        before = self._decode(self._ids[self._prefix:self._read])
        full = self._decode(self._ids[self._prefix:])
        if not final and (full.endswith("\ufffd") or not full.startswith(before)):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return full.removeprefix(before)


# --- the streaming parser -------------------------------------------------------------------------


class StreamParser:
    """Turns generated token ids into answer events as they arrive.

    Args:
        decode: token ids -> text (a tokenizer's ``decode``); called on short runs of text
            tokens only, never on unit or control tokens.
        unit_token_offset: id of unit 0; unit ``n`` is ``unit_token_offset + n``.
        sosp_id, eosp_id: ids of ``<sosp>`` and ``<eosp>``.
        num_units: codebook size (1000).
        vocab_size: ids outside ``0..vocab_size-1`` are dropped.
        end_ids: ids that end the answer like ``<eoa>`` does (``</s>``, ``[Human]``).
        ignore_ids: ids dropped without effect (``<s>``, ``[SpeechGPT]``, ``<eoh>``).
        first_segment: what text before any tag is. ``"auto"`` (default, the original's
            reading): a transcript if ``[ta]`` follows, else the text answer; it is held back
            until that is known (``[ta]``, ``[ua]``, ``<sosp>`` or the end).
            ``"transcript"`` (spoken questions) or ``"text"`` (text questions, ASR) stream it at
            once as that kind.
        single_part: the answer is one text part (an ASR transcription carries no tags): once
            it has begun, ``[ta]``, ``[ua]`` or ``<sosp>`` end it like ``<eoa>`` does, so a model
            that runs on into a chain-of-modality answer (``...; [ta] tokyo; [ua] <sosp>...``)
            gives its transcription, not the transcription with an answer glued on, and
            generation stops there.

    Feed every generated token with :meth:`feed`, then call :meth:`close` once.
    """

    def __init__(
        self,
        decode: Callable[[Sequence[int]], str],
        *,
        unit_token_offset: int,
        sosp_id: int,
        eosp_id: int,
        num_units: int = NUM_UNITS,
        vocab_size: int | None = None,
        end_ids: Collection[int] = (),
        ignore_ids: Collection[int] = (),
        first_segment: FirstSegment = "auto",
        single_part: bool = False,
    ) -> None:
        self._decoder = _IncrementalDecoder(decode)
        self._offset = unit_token_offset
        self._num_units = num_units
        self._sosp, self._eosp = sosp_id, eosp_id
        self._vocab_size = vocab_size
        self._end = frozenset(end_ids)
        self._ignore = frozenset(ignore_ids)
        self._seg = _Segmenter(first_segment, single_part)
        self._closed = False

    @property
    def done(self) -> bool:
        """The answer has ended (``<eoa>`` or an end token); further tokens are ignored."""
        return self._seg.done

    def feed(self, token_id: int) -> list[Event]:
        """Take one generated token id; return the events it completes (often none)."""
        if self._closed or self._seg.done:
            return []
        tid = int(token_id)
        seg = self._seg
        if tid < 0 or (self._vocab_size is not None and tid >= self._vocab_size) or tid in self._ignore:
            return []
        if 0 <= tid - self._offset < self._num_units:
            self._flush_text()
            seg.unit(tid - self._offset)
        elif tid == self._sosp:
            self._flush_text()
            seg.sosp()
        elif tid == self._eosp:
            self._flush_text()
            seg.eosp()
        elif tid in self._end:
            self._flush_text()
            seg.end(complete=False)
        else:
            seg.text(self._decoder.push(tid))
        return seg.take_events()

    def feed_many(self, token_ids: Iterable[int]) -> list[Event]:
        """:meth:`feed` each id; adjacent events of one kind are merged."""
        events: list[Event] = []
        for t in token_ids:
            events.extend(self.feed(t))
        return _coalesce(events)

    def close(self, finish_reason: FinishReason = "stop") -> list[Event]:
        """End the stream: the remaining events and :class:`Done`. Later calls return ``[]``."""
        if self._closed:
            return []
        self._closed = True
        self._flush_text()
        self._seg.end(complete=False)
        transcript, text, units, complete = self._seg.result()
        return [*self._seg.take_events(),
                Done(finish_reason, transcript, text, units, complete)]

    def _flush_text(self) -> None:
        self._seg.text(self._decoder.flush())


# --- whole-text parsing ------------------------------------------------------------------------------

_ANSWER_START = re.compile(r"\[SpeechGPT\]\s*:?")
_ITEMS = re.compile(r"<sosp>|<eosp>|<(\d+)>|\[Human\]|</s>|\[SpeechGPT\]|<eoh>|<eos>|<s>")


def parse_response(text: str) -> ParsedAnswer:
    """Parse a decoded answer, with or without the prompt before it.

    The counterpart of the original ``postprocess``: the answer starts after the first
    ``[SpeechGPT]`` (and its ``:``) before the first ``<eoa>``, else at the start of ``text``
    (so a generated answer followed by a made-up next turn parses right); it ends at
    ``<eoa>``. Units are read from their spelled-out tokens ``<n>`` (``0..999``). For a
    multi-turn prompt, pass the generated text only.
    """
    eoa = text.find("<eoa>")
    m = _ANSWER_START.search(text, 0, eoa if eoa >= 0 else len(text))
    body = text[m.end():] if m else text
    seg = _Segmenter("auto")
    pos = 0
    for item in _ITEMS.finditer(body):
        seg.text(body[pos:item.start()])
        pos = item.end()
        token = item.group(0)
        if item.group(1) is not None:
            digits = item.group(1)
            if digits == str(int(digits)) and int(digits) < NUM_UNITS:
                seg.unit(int(digits))
            else:
                seg.text(token)  # "<1234>", "<007>": not unit tokens
        elif token == "<sosp>":
            seg.sosp()
        elif token == "<eosp>":
            seg.eosp()
        elif token in ("[Human]", "</s>"):
            seg.end(complete=False)
        if seg.done:
            break
    else:
        seg.text(body[pos:])
    seg.end(complete=False)
    transcript, answer_text, units, complete = seg.result()
    return ParsedAnswer(transcript, answer_text, units, complete)
