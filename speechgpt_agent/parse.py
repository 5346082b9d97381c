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
* The text before ``[ta]`` is the transcript only if ``[ta]`` follows and is itself followed
  by an answer (text, ``[ua]`` or units); otherwise it is the text answer. A text question's
  answer, an ASR transcription, and a spoken question answered without tags (``rome<eoa>``,
  ``rome; [ta]<eoa>``) carry no transcript: what the original CLI prints as the response
  there is our text answer.
* A speaker tag ``[SpeechGPT]`` that the model re-emits is dropped with the ``:`` after it,
  wherever it appears (one rule, in :class:`_Segmenter`, for both parsers; the stream parser
  passes the tag's control token to it as that text).
* Whitespace at the ends of each part and around units is dropped; ``<eoa>`` (or an end
  token such as ``</s>`` or ``[Human]``) ends the answer; a truncated answer is kept.
* Text is held back while it could still grow into a marker: a proper prefix of one
  (``[``, ``[t``, ``<eo``, ``[Speech``) and the separators before it (``;``, spaces). If the
  answer ends there (truncated by ``max_new_tokens``, cancelled, an end token) or a unit
  token follows, that held-back text is dropped, never emitted as content: ``twelve<e``
  gives ``twelve`` and ``...italy; [t`` gives ``...italy``.

The concatenation of the deltas of a kind always equals the matching field of ``Done``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from .prompt import NUM_UNITS

__all__ = [
    "SPEAKER_TAG",
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

SPEAKER_TAG = "[SpeechGPT]"
"""The answer's speaker tag; a model that re-emits it (``[SpeechGPT] : ...``) has it dropped."""

_MARKER = re.compile(r"\[(?:ta|ua|tq)\]|<eoa>|" + re.escape(SPEAKER_TAG))
_MARKER_WORDS = ("[ta]", "[ua]", "[tq]", "<eoa>", SPEAKER_TAG)
_LONGEST_PREFIX = max(len(w) for w in _MARKER_WORDS) - 1


def _holdback(s: str) -> int:
    """Index from which the end of ``s`` could still grow into a marker (with its separators)."""
    j = len(s)
    for n in range(min(len(s), _LONGEST_PREFIX), 0, -1):
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
        # "transcript" is read like "auto": an untagged answer to a spoken question is its answer
        self.lead_role: Literal["transcript", "text"] | None = (
            "text" if first_segment == "text" else None)
        self.parts = {"lead": _Part(), "transcript": _Part(), "text": _Part()}
        self.pending = ""  # held-back text: separators and/or a proper prefix of a marker
        self.after_speaker = False  # a [SpeechGPT] tag was dropped: drop a ":" right after it
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
        if role == "text" and self.segment == "text" and self.lead_role is None:
            self._decide_lead("transcript")  # [ta] is followed by an answer: the lead was a transcript
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

    def _drop_pending(self) -> None:
        """Forget held-back text: it never completed a marker, and nothing can extend it now."""
        self.pending, self.after_speaker = "", False

    def text(self, chunk: str) -> None:
        if self.done or not chunk:
            return
        self.pending += chunk
        while not self.done:
            if self.after_speaker:  # "[SpeechGPT] :" -> drop the ":" (spaces before it wait)
                rest = self.pending.lstrip()
                if not rest:
                    return
                self.after_speaker = False
                self.pending = rest[1:] if rest[0] == ":" else rest
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
        if word == SPEAKER_TAG:
            self.after_speaker = True
        elif word == "<eoa>" or self._single_part_over():
            self.pending = ""  # what follows the end is not part of the answer
            self.end(complete=True)
        elif word == "[ta]":
            # the lead is a transcript only once [ta] is followed by an answer (see _route)
            self.segment = "text"
        else:  # [ua]
            self._speech_begins()
            self.segment = "speech"

    def _speech_begins(self) -> None:
        """``[ua]`` or ``<sosp>``: text before it is the answer, or, after ``[ta]``, a transcript."""
        if self.segment == "lead":
            self._decide_lead("text")
        elif self.segment == "text" and self.lead_role is None:
            self._decide_lead("transcript")

    def _single_part_over(self) -> bool:
        """A single-part answer (ASR) has begun, so a tag or a unit span ends it."""
        return self.single_part and self.parts[self.lead_role or "lead"].content

    # non-text items
    def _item(self) -> bool:
        if self.done:
            return False
        self._drop_pending()
        self._interrupt()
        return True

    def sosp(self) -> None:
        if not self._item():
            return
        if self._single_part_over():
            self.end(complete=True)
            return
        self._speech_begins()
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
        self._drop_pending()
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
        ignore_ids: ids dropped without effect (``<s>``, ``<eoh>``). One that decodes to
            ``[SpeechGPT]`` is the speaker tag: it is dropped with the ``:`` after it, as
            :func:`parse_response` drops the tag in text.
        speaker_ids: ids of the ``[SpeechGPT]`` tag; default: those of ``ignore_ids`` that
            decode to it.
        first_segment: what text before any tag is. ``"auto"`` (default, the original's
            reading): a transcript if ``[ta]`` follows with an answer after it, else the text
            answer; it is held back until that is known (content after ``[ta]``, ``[ua]``,
            ``<sosp>`` or the end). ``"transcript"`` (spoken questions) is read the same way:
            a spoken question answered without tags (``rome<eoa>``) is answered ``rome``, so
            its lead cannot be streamed as a transcript before ``[ta]`` proves it is one.
            ``"text"`` (text questions, ASR) streams it at once as the text answer.
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
        speaker_ids: Collection[int] | None = None,
        first_segment: FirstSegment = "auto",
        single_part: bool = False,
    ) -> None:
        self._decoder = _IncrementalDecoder(decode)
        if speaker_ids is None:
            speaker_ids = [i for i in ignore_ids if decode([i]).strip() == SPEAKER_TAG]
        self._offset = unit_token_offset
        self._num_units = num_units
        self._sosp, self._eosp = sosp_id, eosp_id
        self._vocab_size = vocab_size
        self._end = frozenset(end_ids)
        self._speaker = frozenset(speaker_ids)
        self._ignore = frozenset(ignore_ids) - self._speaker
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
        if tid in self._speaker:
            self._flush_text()
            seg.text(SPEAKER_TAG)
        elif 0 <= tid - self._offset < self._num_units:
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

# SpeechGPT's added tokens (units, <sosp>, <eosp>, [Human], <eoh>, <eos>) strip the spaces
# before them when text is tokenized, so the spaces before one are its own here too: text held
# back before an item then parses as it does in a stream of the same text's token ids.
_ITEMS = re.compile(r"\s*(?:<sosp>|<eosp>|<(\d+)>|\[Human\]|<eoh>|<eos>)|</s>|<s>")


def parse_response(text: str) -> ParsedAnswer:
    """Parse a decoded answer, with or without the prompt before it.

    The counterpart of the original ``postprocess``: when ``text`` holds the prompt, the
    answer starts at its ``[SpeechGPT]`` (the first after the last ``<eoh>`` before the first
    ``<eoa>``), else at the start of ``text`` (so a generated answer followed by a made-up
    next turn parses right); it ends at ``<eoa>``. The tag and its ``:`` are dropped there
    and wherever else they appear, the rule the stream parser follows for a re-emitted tag,
    so a generated text parses as its token ids stream. Units are read from their spelled-out
    tokens ``<n>`` (``0..999``). For a multi-turn prompt, pass the generated text only.
    """
    eoa = text.find("<eoa>")
    end = eoa if eoa >= 0 else len(text)
    eoh = text.rfind("<eoh>", 0, end)
    start = text.find(SPEAKER_TAG, eoh, end) if eoh >= 0 else -1
    body = text[start:] if start >= 0 else text
    seg = _Segmenter("auto")
    pos = 0
    for item in _ITEMS.finditer(body):
        seg.text(body[pos:item.start()])
        pos = item.end()
        token = item.group(0).lstrip()
        if item.group(1) is not None:
            digits = item.group(1)
            if digits == str(int(digits)) and int(digits) < NUM_UNITS:
                seg.unit(int(digits))
            else:
                seg.text(item.group(0))  # "<1234>", "<007>": not unit tokens
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
