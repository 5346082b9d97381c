"""SpeechGPT prompts: the released templates, task prefixes and the escaping of user text.

Everything here is plain string work; tokenization happens in :mod:`speechgpt_agent.model`.
The strings are those of the original code and data (``speechgpt/src/infer/cli_infer.py``
and the SpeechInstruct samples of the original README), character for character, because
the released weights were fine-tuned on exactly them:

* a prompt is ``META_INSTRUCTION + "[Human]: {question} <eoh>. [SpeechGPT]: "``;
* speech enters the question as its unit string ``<sosp><661><588>...<eosp>``;
* ASR and TTS are selected by an instruction followed by ``This is input:`` and the payload;
* a chain-of-modality answer reads ``{transcript}; [ta] {text}; [ua] <sosp>...<eosp><eoa>``.

Whitespace next to the added tokens (``[Human]``, ``<eoh>``, ``<sosp>`` ...) does not matter:
the released tokenizer strips it, so ``input: <sosp>`` and ``input:<sosp>`` give the same ids.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Literal

from .errors import PromptTooLongError, UnitError

__all__ = [
    "ADDED_TOKENS",
    "ASR_INSTRUCTION",
    "CONTROL_TOKENS",
    "EOA",
    "EOH",
    "EOSP",
    "EOS_ADDED",
    "HUMAN",
    "INPUT_MARKER",
    "META_INSTRUCTION",
    "NUM_UNITS",
    "SOSP",
    "SPEECHGPT",
    "TA",
    "TEMPLATE",
    "TTS_INSTRUCTION",
    "UA",
    "Task",
    "Turn",
    "as_history",
    "as_turn",
    "asr_question",
    "build_prompt",
    "chain_of_modality_answer",
    "escape_user_text",
    "format_units",
    "tts_question",
]

# --- the released vocabulary conventions -------------------------------------------------

NUM_UNITS = 1000
"""Size of the speech-unit codebook (mHuBERT layer 11, k-means 1000): unit ``n`` is ``<n>``."""

SOSP, EOSP = "<sosp>", "<eosp>"
HUMAN, SPEECHGPT, EOH, EOS_ADDED = "[Human]", "[SpeechGPT]", "<eoh>", "<eos>"
CONTROL_TOKENS: tuple[str, ...] = (SOSP, EOSP, HUMAN, SPEECHGPT, EOH, EOS_ADDED)
"""Added tokens after the unit tokens, in the order the original training scripts added them."""

ADDED_TOKENS: tuple[str, ...] = tuple(f"<{n}>" for n in range(NUM_UNITS)) + CONTROL_TOKENS
"""The 1006 tokens appended to LLaMA's 32000 (ids 32000..33005 in the release), in order."""

# Text markers: NOT tokens of the vocabulary, the model spells them with ordinary pieces.
EOA, TA, UA = "<eoa>", "[ta]", "[ua]"

# --- the released templates --------------------------------------------------------------

META_INSTRUCTION = (
    "You are an AI assistant whose name is SpeechGPT.\n"
    "- SpeechGPT is a intrinsic cross-modal conversational language model that is developed "
    "by Fudan University.  SpeechGPT can understand and communicate fluently with human "
    "through speech or text chosen by the user.\n"
    "- It can perceive cross-modal inputs and generate cross-modal outputs.\n"
)
"""The system text the released models were trained with (typos and double space included)."""

TEMPLATE = "[Human]: {question} <eoh>. [SpeechGPT]: "
"""One user turn; the model's answer follows it directly."""

INPUT_MARKER = "This is input:"
"""Separates an ASR/TTS instruction from its payload (the original CLI keyed on ``is input:``)."""

ASR_INSTRUCTION = "Can you transcribe the speech into a written format?"
"""An ASR instruction of SpeechInstruct's cross-modal set (shown on the project page)."""

TTS_INSTRUCTION = "Try to speak out this sentence, please."
"""A TTS instruction of SpeechInstruct's cross-modal set (the sample in the original README)."""

Task = Literal["chat", "asr", "tts"]


@dataclass(frozen=True)
class Turn:
    """One earlier exchange of a conversation, as plain text.

    Spoken turns are given by their transcripts: replaying their units would spend the
    2048-token context window at 50 tokens per second of audio.
    """

    user: str
    assistant: str


# --- units -------------------------------------------------------------------------------


def format_units(units: Sequence[int]) -> str:
    """Render reduced speech units as the model reads them: ``[1, 2] -> "<sosp><1><2><eosp>"``.

    Raises:
        UnitError: empty sequence, a non-integer, or a unit outside ``0..999``.
    """
    if isinstance(units, (str, bytes)):
        raise UnitError("units must be a sequence of integers, not a string.")
    try:
        values = list(units)
    except TypeError as exc:
        raise UnitError(f"units must be a sequence of integers, got {type(units).__name__}.") from exc
    if not values:
        raise UnitError("the unit sequence is empty: the audio gave no speech units.")
    for i, u in enumerate(values):
        if isinstance(u, bool) or not isinstance(u, Integral):
            raise UnitError(f"unit {i} is {u!r} ({type(u).__name__}); units are integers.")
        if not 0 <= int(u) < NUM_UNITS:
            raise UnitError(f"unit {i} is {int(u)}, outside the codebook 0..{NUM_UNITS - 1}.")
    return SOSP + "".join(f"<{int(u)}>" for u in values) + EOSP


# --- escaping ----------------------------------------------------------------------------

# An opening bracket that would start a vocabulary token or a text marker: "<12>", "<sosp>",
# "<eoh>", "<s>", "</s>", "<unk>", "<eoa>", "[Human]", "[SpeechGPT]", "[ta]", "[ua]", "[tq]".
_FORGEABLE = re.compile(
    r"<(?=(?:\d+|sosp|eosp|eoh|eos|eoa|s|/s|unk)>)|\[(?=(?:human|speechgpt|ta|ua|tq)\])",
    re.IGNORECASE,
)
_SURROGATE = re.compile("[\ud800-\udfff]")


def escape_user_text(text: str) -> str:
    """Make user text unable to forge control tokens or answer markers.

    A space is inserted after the opening bracket of anything spelled like a token of the
    vocabulary or a marker of the answer format: ``<sosp>`` becomes ``< sosp>``, ``<12>``
    becomes ``< 12>``, ``[Human]`` becomes ``[ Human]``, ``<eoa>`` becomes ``< eoa>``. No
    vocabulary token contains a space, so none can match across the insertion, and the text
    stays readable ASCII that LLaMA's tokenizer splits into ordinary pieces (unlike zero-width
    or look-alike characters, which become byte-fallback tokens the model rarely saw).
    Matching ignores case, so ``<SOSP>`` is escaped too, although only exact spellings are
    tokens. Lone surrogates (not encodable text, e.g. from broken JSON) become U+FFFD.
    Other text is returned unchanged.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}.")
    text = _SURROGATE.sub("\ufffd", text)
    return _FORGEABLE.sub(lambda m: m.group(0) + " ", text)


# --- questions and answers ---------------------------------------------------------------


def asr_question(units: Sequence[int], instruction: str = ASR_INSTRUCTION, *, reference: bool = False) -> str:
    """Question asking for the transcript of speech: ``"{instruction} This is input: <sosp>...<eosp>"``.

    ``reference=True`` writes it as the original CLI built it from what the user typed
    (``"... This is input: x.wav"`` with the path replaced by its units): no space between
    ``input:`` and ``<sosp>``.
    """
    sep = "" if reference else " "
    return f"{escape_user_text(instruction)} {INPUT_MARKER}{sep}{format_units(units)}"


def tts_question(text: str, instruction: str = TTS_INSTRUCTION) -> str:
    """Question asking to speak ``text``: ``"{instruction} This is input: {text}"``."""
    if not text.strip():
        raise ValueError("tts: the text to speak is empty.")
    return f"{escape_user_text(instruction)} {INPUT_MARKER} {escape_user_text(text)}"


def chain_of_modality_answer(
    *,
    text: str,
    transcript: str | None = None,
    units: Sequence[int] | None = None,
) -> str:
    """The answer of one chain-of-modality turn, as the released model writes it.

    The four SpeechInstruct input/output combinations::

        speech in, speech out: "{transcript}; [ta] {text}; [ua] <sosp>...<eosp><eoa>"
        speech in, text out:   "{transcript}; [ta] {text}<eoa>"
        text in, speech out:   "[ta] {text}; [ua] <sosp>...<eosp><eoa>"
        text in, text out:     "[ta] {text}<eoa>"

    The first is the SpeechInstruct sample of the original README verbatim; the others keep
    its separators and drop the parts that do not exist. Text parts are escaped.
    """
    parts: list[str] = []
    if transcript is not None:
        parts.append(escape_user_text(transcript))
    parts.append(f"{TA} {escape_user_text(text)}")
    if units is not None:
        parts.append(f"{UA} {format_units(units)}")
    return "; ".join(parts) + EOA


def _question(question: str | None, units: Sequence[int] | None, task: Task | None,
              instruction: str | None = None, reference: bool = False) -> str:
    text = question.strip() if question is not None else ""
    if task in (None, "chat"):
        if units is not None and text:
            return f"{escape_user_text(text)} {format_units(units)}"
        if units is not None:
            return format_units(units)  # a spoken question: its units are the whole question
        if not text:
            raise ValueError("chat: give a question, units, or both.")
        return escape_user_text(text)
    if task == "asr":
        if units is None:
            raise ValueError("asr: give the units of the speech to transcribe.")
        return asr_question(units, text or instruction or ASR_INSTRUCTION, reference=reference)
    if task == "tts":
        if units is not None:
            raise ValueError("tts: give the text to speak as question, not units.")
        return tts_question(text, instruction or TTS_INSTRUCTION)
    raise ValueError(f"task must be 'chat', 'asr' or 'tts', got {task!r}.")


def as_turn(item: object, index: int = 0) -> Turn:
    """One history entry as a :class:`Turn`.

    Accepts a :class:`Turn`, a ``(user, assistant)`` tuple or list, and a mapping with
    ``"user"`` and ``"assistant"`` keys (``"human"``/``"ai"`` also work).

    Raises:
        TypeError: any other shape, or a part that is not a string (the message names
            ``index``, the entry's position in the history).
    """
    if isinstance(item, Turn):
        user, assistant = item.user, item.assistant
    elif isinstance(item, Mapping):
        user = item.get("user", item.get("human"))
        assistant = item.get("assistant", item.get("ai"))
        if user is None or assistant is None:
            raise TypeError(
                f"history[{index}] is a dict with keys {sorted(map(str, item))}; a history entry "
                "needs 'user' and 'assistant' keys (or pass Turn(user, assistant)).")
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        user, assistant = item
    else:
        raise TypeError(
            f"history[{index}] is {type(item).__name__} {item!r:.80}; a history entry is "
            "Turn(user, assistant), a (user, assistant) pair or {'user': ..., 'assistant': ...}.")
    if not isinstance(user, str) or not isinstance(assistant, str):
        raise TypeError(
            f"history[{index}] holds {type(user).__name__}/{type(assistant).__name__}; the user "
            "and assistant sides of a history entry are strings.")
    return item if isinstance(item, Turn) else Turn(user, assistant)


def as_history(history: Iterable[object]) -> list[Turn]:
    """Every entry of ``history`` as a :class:`Turn` (see :func:`as_turn`).

    Raises:
        TypeError: ``history`` is not a sequence of entries, or an entry has another shape.
    """
    if isinstance(history, (str, bytes, Mapping)) or not isinstance(history, Iterable):
        raise TypeError(
            f"history must be a list of earlier turns, got {type(history).__name__}.")
    return [as_turn(item, i) for i, item in enumerate(history)]


def _render_turn(turn: Turn) -> str:
    return TEMPLATE.format(question=escape_user_text(turn.user)) + escape_user_text(turn.assistant) + EOA + "\n"


def _render(system: str, history: Sequence[Turn], question: str) -> str:
    return system + "".join(_render_turn(t) for t in history) + TEMPLATE.format(question=question)


def _fitting_turns(
    system: str, turns: Sequence[Turn], question: str, max_tokens: int, count_tokens: Callable[[str], int]
) -> int:
    """How many of the newest ``turns`` fit ``max_tokens`` with the system text and question.

    Each turn is tokenized once, followed by the ``[Human]`` that always follows it in the
    prompt (the tokenizer strips the whitespace next to added tokens, so the turn's final
    newline costs nothing there), less the tokens of ``[Human]`` alone (with ``<s>``). A history
    of ``n`` turns costs ``n + 2`` tokenizer calls, not ``O(n^2)`` work. Turns are delimited
    by added tokens, which the tokenizer splits on first, so the counts add up;
    :func:`build_prompt` checks the sum with one count of the final prompt.
    """
    budget = max_tokens - count_tokens(_render(system, (), question))
    if budget < 0 or not turns:
        return 0
    seam = count_tokens(HUMAN)
    keep = 0
    for turn in reversed(turns):
        budget -= count_tokens(_render_turn(turn) + HUMAN) - seam
        if budget < 0:
            break
        keep += 1
    return keep


def build_prompt(
    question: str | None = None,
    *,
    units: Sequence[int] | None = None,
    task: Task | None = None,
    history: Sequence[Turn] = (),
    system: str | None = None,
    max_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
    instruction: str | None = None,
    reference: bool = False,
) -> str:
    """Build the full prompt of one turn; the model's answer is its continuation.

    Args:
        question: the user's text (escaped here). For ``task="asr"`` an optional custom
            instruction; for ``task="tts"`` the sentence to speak.
        units: reduced speech units of the user's audio (``0..999``).
        task: ``"chat"`` (default): speech and/or text in, the model chooses the answer form
            (spoken questions get the chain-of-modality answer); ``"asr"``: transcribe
            ``units``; ``"tts"``: speak ``question``.
        history: earlier turns, oldest first (:class:`Turn`, ``(user, assistant)`` pairs or
            ``{"user", "assistant"}`` dicts); rendered as text with ``<eoa>`` endings.
        system: replaces :data:`META_INSTRUCTION` (escaped; a final newline is added).
        max_tokens: budget of prompt tokens (context window minus room for the answer).
            Needs ``count_tokens``. Oldest turns are dropped, with a warning, until it fits
            (each turn is tokenized once: linear in the length of the history).
        count_tokens: number of tokens of a prompt string (``SpeechGPTModel.count_tokens``).
        instruction: the ASR / TTS instruction before ``This is input:`` (default
            :data:`ASR_INSTRUCTION` / :data:`TTS_INSTRUCTION`; for ASR, ``question`` too).
        reference: the ASR question exactly as the original CLI built it (see
            :func:`asr_question`).

    Raises:
        ValueError: inconsistent arguments (no question, ``asr`` without units ...).
        TypeError: a history entry of another shape.
        UnitError: invalid units.
        PromptTooLongError: the question alone does not fit ``max_tokens``.
    """
    q = _question(question, units, task, instruction, reference)
    if system is None:
        sys_text = META_INSTRUCTION
    else:
        sys_text = escape_user_text(system)
        if not sys_text.endswith("\n"):
            sys_text += "\n"
    turns = as_history(history)
    if max_tokens is None:
        return _render(sys_text, turns, q)
    if count_tokens is None:
        raise ValueError("max_tokens needs count_tokens (e.g. SpeechGPTModel.count_tokens).")
    keep = _fitting_turns(sys_text, turns, q, max_tokens, count_tokens)
    dropped = len(turns) - keep
    prompt = _render(sys_text, turns[dropped:], q)
    n = count_tokens(prompt)
    while n > max_tokens and dropped < len(turns):
        # the per-turn counts are exact up to merges at the seams; rarely one more goes
        dropped += 1
        prompt = _render(sys_text, turns[dropped:], q)
        n = count_tokens(prompt)
    if n > max_tokens:
        raise PromptTooLongError(
            f"the prompt needs {n} tokens but only {max_tokens} are available, even without "
            "history. Use shorter audio or text, or allow fewer new tokens for the answer."
        )
    if dropped:
        warnings.warn(
            f"dropped the {dropped} oldest conversation turn(s) to fit the prompt into "
            f"{max_tokens} tokens.",
            stacklevel=2,
        )
    return prompt
