"""SpeechInstruct-format training data (``speechgpt-agent data build``).

The line formats are those of the original README, character for character (the released
weights were trained on them, spacing quirks included):

* stage 1 (``ma``), one unit sequence per line of ``train.txt`` / ``dev.txt``::

      <sosp><189><247><922>...<eosp>

* stage 2 (``cm``), cross-modal instructions, one JSON object per line::

      {"prefix": META_INSTRUCTION,
       "plain_text": "[Human]: {instruction} This is input: {text}<eoh> [SpeechGPT]: <sosp>...<eosp><eoa> "}

  (TTS, the README's sample; ASR swaps the payloads: units in, transcript out). Note
  ``<eoh> [SpeechGPT]:`` with no period and the space after ``<eoa>``;

* stage 3 (``com``), chain-of-modality instructions::

      {"prefix": META_INSTRUCTION,
       "plain_text": "[Human]: <sosp>...<eosp><eoh>. [SpeechGPT]: {transcript}; [ta] {answer}; [ua] <sosp>...<eosp><eoa>."}

  (speech in, speech out: the README's sample; note ``<eoh>.`` and the final period). The
  other three input/output formats keep its separators and drop the parts that do not
  exist (:func:`speechgpt_agent.prompt.chain_of_modality_answer`).

Input records come from ``speechgpt-agent data units`` (``{"id", "audio", "text"?, "units"}``)
and, for stage 3, a dialogue file (:func:`build_chain_of_modality`). Records that cannot make
a sample (no units, empty transcript, too many units, invalid units) are skipped and reported.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from speechgpt_agent.errors import UnitError
from speechgpt_agent.prompt import (
    ASR_INSTRUCTION,
    EOA,
    EOH,
    HUMAN,
    META_INSTRUCTION,
    SPEECHGPT,
    TTS_INSTRUCTION,
    asr_question,
    chain_of_modality_answer,
    escape_user_text,
    format_units,
    tts_question,
)

from .records import DataError, SkipReport, atomic_write_lines, read_jsonl

__all__ = [
    "ASR_TEMPLATES",
    "COM_FORMATS",
    "TTS_TEMPLATES",
    "BuildResult",
    "ComFormat",
    "Dialogue",
    "Direction",
    "UnitRecord",
    "build_chain_of_modality",
    "build_cross_modal",
    "build_unit_corpus",
    "chain_of_modality_example",
    "cross_modal_example",
    "read_dialogues",
    "read_unit_records",
    "unit_index",
    "unit_line",
]

PathLike = str | os.PathLike
Direction = Literal["asr", "tts"]
ComFormat = Literal["s2s", "s2t", "t2s", "t2t"]
"""Chain-of-modality input/output formats: speech or text instruction -> speech or text response."""
COM_FORMATS: tuple[ComFormat, ...] = ("s2s", "s2t", "t2s", "t2t")

ASR_TEMPLATES: tuple[str, ...] = (
    ASR_INSTRUCTION,
    "Please transcribe this speech into text.",
    "Write down what is said in this recording.",
    "Convert the spoken words into written text.",
    "What does the speaker say? Give me the exact words.",
    "Listen to the audio and type out its content.",
    "Turn this speech into a written transcript.",
    "Could you write out the words spoken in this clip?",
    "Recognize the speech and return the text.",
    "Transcribe the following audio, word for word.",
)
"""Instructions of the ASR direction; the first is the one the released model answers best."""

TTS_TEMPLATES: tuple[str, ...] = (
    TTS_INSTRUCTION,
    "Please read this sentence aloud.",
    "Say the following text out loud.",
    "Turn this text into speech.",
    "Could you speak these words for me?",
    "Read out the text below.",
    "Convert the following sentence into spoken audio.",
    "Give me a spoken version of this text.",
    "Pronounce this sentence, please.",
    "Speak the following words clearly.",
)
"""Instructions of the TTS direction; the first is the README's sample."""


# --- one sample --------------------------------------------------------------------------


def unit_line(units: Sequence[int]) -> str:
    """A stage-1 corpus line: ``<sosp><189><247>...<eosp>``.

    Raises:
        UnitError: empty, or a unit outside ``0..999``.
    """
    return format_units(units)


def cross_modal_example(direction: Direction, *, units: Sequence[int], text: str,
                        instruction: str | None = None) -> dict[str, str]:
    """One stage-2 sample ``{"prefix", "plain_text"}``.

    Args:
        direction: ``"tts"`` (text in, units out: the README's sample) or ``"asr"``
            (units in, transcript out).
        units: reduced units of the speech.
        text: its transcript (escaped, so it cannot spell control tokens).
        instruction: the task instruction; default the first of :data:`ASR_TEMPLATES` /
            :data:`TTS_TEMPLATES`.

    Raises:
        UnitError: invalid units. ValueError: empty text or unknown direction.
    """
    if not text.strip():
        raise ValueError("the transcript is empty.")
    if direction == "tts":
        question = tts_question(text, instruction or TTS_INSTRUCTION)
        answer = format_units(units)
    elif direction == "asr":
        question = asr_question(units, instruction or ASR_INSTRUCTION)
        answer = escape_user_text(text)
    else:
        raise ValueError(f"direction must be 'asr' or 'tts', got {direction!r}.")
    return {"prefix": META_INSTRUCTION,
            "plain_text": f"{HUMAN}: {question}{EOH} {SPEECHGPT}: {answer}{EOA} "}


def chain_of_modality_example(
    fmt: ComFormat,
    *,
    question: str,
    answer: str,
    question_units: Sequence[int] | None = None,
    answer_units: Sequence[int] | None = None,
) -> dict[str, str]:
    """One stage-3 sample ``{"prefix", "plain_text"}``.

    Args:
        fmt: ``"s2s"`` (the README's sample), ``"s2t"``, ``"t2s"`` or ``"t2t"``: instruction
            and response as speech (``s``) or text (``t``).
        question: the instruction's text (for speech instructions: its transcript).
        answer: the response's text.
        question_units: units of the spoken instruction (``s2*``).
        answer_units: units of the spoken response (``*2s``).

    Raises:
        ValueError: a unit sequence the format needs is missing, or a text is empty.
        UnitError: invalid units.
    """
    if fmt not in COM_FORMATS:
        raise ValueError(f"format must be one of {COM_FORMATS}, got {fmt!r}.")
    if not question.strip() or not answer.strip():
        raise ValueError("the question and the answer need a non-empty text.")
    speech_in, speech_out = fmt[0] == "s", fmt[2] == "s"
    if speech_in and question_units is None:
        raise ValueError(f"format {fmt} needs question_units.")
    if speech_out and answer_units is None:
        raise ValueError(f"format {fmt} needs answer_units.")
    asked = format_units(question_units) if speech_in else escape_user_text(question)
    response = chain_of_modality_answer(
        text=answer, transcript=question if speech_in else None,
        units=answer_units if speech_out else None)
    return {"prefix": META_INSTRUCTION,
            "plain_text": f"{HUMAN}: {asked}{EOH}. {SPEECHGPT}: {response}."}


# --- inputs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitRecord:
    """A clip's units (a line of ``data units`` output): ``units`` are reduced units."""

    id: str
    units: tuple[int, ...]
    text: str | None = None
    audio: str | None = None


@dataclass(frozen=True)
class Dialogue:
    """One exchange for stage 3: texts, and the units of their recordings when there are any."""

    id: str
    question: str
    answer: str
    question_units: tuple[int, ...] | None = None
    answer_units: tuple[int, ...] | None = None


def _as_units(value: Any) -> tuple[int, ...] | None:
    if not isinstance(value, list) or not all(isinstance(u, int) and not isinstance(u, bool) for u in value):
        return None
    return tuple(value)


def read_unit_records(paths: Iterable[PathLike], report: SkipReport) -> list[UnitRecord]:
    """The records of one or more ``data units`` outputs (shards included), in file order.

    Lines without a list of integer ``units`` are skipped into ``report``; a repeated id
    keeps its first record.

    Raises:
        DataError: a file does not exist.
    """
    records: dict[str, UnitRecord] = {}
    for path in paths:
        for number, obj in enumerate(read_jsonl(path, report), start=1):
            record_id = str(obj.get("id", obj.get("audio", f"{Path(path).name}:{number}")))
            units = _as_units(obj.get("units"))
            text = obj.get("text")
            if units is None:
                report.skip(record_id, "invalid record", "'units' is not a list of integers")
            elif text is not None and not isinstance(text, str):
                report.skip(record_id, "invalid record", "'text' is not a string")
            elif record_id in records:
                report.skip(record_id, "duplicate id", f"seen before; {path} line {number} ignored")
            else:
                audio = obj.get("audio")
                records[record_id] = UnitRecord(record_id, units, text,
                                                str(audio) if audio is not None else None)
    return list(records.values())


def read_dialogues(
    path: PathLike, report: SkipReport, unit_index: Mapping[str, Sequence[int]] | None = None
) -> list[Dialogue]:
    """Stage-3 dialogues from JSON lines.

    A line is ``{"id"?, "question": str, "answer": str}`` plus, for a spoken side, either
    its units (``"question_units"`` / ``"answer_units"``: lists of integers) or its audio
    (``"question_audio"`` / ``"answer_audio"``: a path or an id of a ``data units`` record,
    looked up in ``unit_index``). Lines without both texts, or whose audio has no units
    in the index, are skipped into ``report``.
    """
    index = unit_index or {}
    path = Path(path)
    dialogues = []
    for number, obj in enumerate(read_jsonl(path, report), start=1):
        record_id = str(obj.get("id", f"{path.name}:{number}"))
        question, answer = obj.get("question"), obj.get("answer")
        if not isinstance(question, str) or not isinstance(answer, str):
            report.skip(record_id, "invalid record", "'question' and 'answer' must be strings")
            continue
        sides: dict[str, tuple[int, ...] | None] = {}
        for side in ("question", "answer"):
            units = _as_units(obj.get(f"{side}_units"))
            audio = obj.get(f"{side}_audio")
            if units is None and audio is not None:
                found = index.get(str(audio))
                if found is None:
                    found = index.get(str((path.parent / str(audio)).resolve()))
                if found is None:
                    report.skip(record_id, "missing units",
                                f"{side}_audio {audio!r} is not in the units files (run `data units` on it)")
                    break
                units = tuple(found)
            sides[side] = units
        else:
            dialogues.append(Dialogue(record_id, question, answer, sides["question"], sides["answer"]))
    return dialogues


def unit_index(records: Iterable[UnitRecord]) -> dict[str, tuple[int, ...]]:
    """Units by record id, by audio path as written, and by resolved audio path."""
    index: dict[str, tuple[int, ...]] = {}
    for record in records:
        index.setdefault(record.id, record.units)
        if record.audio:
            index.setdefault(record.audio, record.units)
            index.setdefault(str(Path(record.audio).resolve()), record.units)
    return index


# --- corpora -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildResult:
    """Files written by a build, their sample counts, and the skipped records."""

    train: Path
    dev: Path | None
    train_count: int
    dev_count: int
    report: SkipReport


def _split(n: int, dev_fraction: float, seed: int) -> tuple[list[int], set[int]]:
    """Shuffled source indices and the set of those held out for dev (at least one if asked)."""
    if not 0.0 <= dev_fraction < 1.0:
        raise ValueError(f"dev_fraction must be in [0, 1), got {dev_fraction}.")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_dev = 0 if dev_fraction == 0 or n < 2 else max(1, round(n * dev_fraction))
    return order, set(order[:n_dev])


def _write(out_dir: Path, name: str, suffix: str, lines: list[str], report: SkipReport,
           dev: list[str]) -> BuildResult:
    report.write(out_dir / "skipped.jsonl")
    if not lines:
        raise DataError(f"build {name}: no usable record ({report.summary()}, listed in "
                        f"{out_dir / 'skipped.jsonl'}); no training file written.")
    train = atomic_write_lines(out_dir / f"train{suffix}", lines)
    dev_path = atomic_write_lines(out_dir / f"dev{suffix}", dev) if dev else None
    return BuildResult(train, dev_path, len(lines), len(dev), report)


def _too_long(n_units: int, max_units: int | None) -> bool:
    return max_units is not None and n_units > max_units


def build_unit_corpus(
    records: Sequence[UnitRecord],
    out_dir: PathLike,
    *,
    dev_fraction: float = 0.01,
    max_units: int | None = None,
    seed: int = 0,
    report: SkipReport | None = None,
) -> BuildResult:
    """Stage-1 corpus: ``train.txt`` and ``dev.txt`` with one ``<sosp>...<eosp>`` line per clip.

    Args:
        records: clips with units (:func:`read_unit_records`).
        out_dir: output folder.
        dev_fraction: share of the clips held out for ``dev.txt`` (at least one when > 0).
        max_units: clips with more units are skipped (``None``: no limit; stage 1 packs
            sequences into blocks, so long ones are fine).
        seed: seeds the split.
        report: where skipped records go (default: a new report, returned in the result).
    """
    report = report if report is not None else SkipReport("build ma")
    lines: list[str] = []
    for record in records:
        if _too_long(len(record.units), max_units):
            report.skip(record.id, "too long", f"{len(record.units)} units > max_units {max_units}")
            continue
        try:
            lines.append(unit_line(record.units))
        except UnitError as exc:
            report.skip(record.id, "invalid units", str(exc))
    order, dev = _split(len(lines), dev_fraction, seed)
    return _write(Path(out_dir), "ma", ".txt", [lines[i] for i in order if i not in dev], report,
                  [lines[i] for i in order if i in dev])


def build_cross_modal(
    records: Sequence[UnitRecord],
    out_dir: PathLike,
    *,
    directions: Sequence[Direction] = ("asr", "tts"),
    asr_templates: Sequence[str] = ASR_TEMPLATES,
    tts_templates: Sequence[str] = TTS_TEMPLATES,
    dev_fraction: float = 0.0,
    max_units: int | None = None,
    seed: int = 0,
    report: SkipReport | None = None,
) -> BuildResult:
    """Stage-2 instructions: ``train.jsonl`` (and ``dev.jsonl``) of ``{"prefix", "plain_text"}``.

    Every clip gives one sample per direction, each with an instruction drawn at random
    from the direction's templates. Dev samples are held out by clip, so a clip's ASR and
    TTS samples fall on the same side.

    Args:
        records: clips with units and transcripts.
        directions: ``"asr"`` and/or ``"tts"``.
        asr_templates, tts_templates: instructions to draw from.
        dev_fraction: share of clips held out (default none: the trainer holds out
            ``val_set_size`` samples itself, as the original does).
        max_units: clips with more units are skipped.
        seed: seeds the template draws and the split.
        report: where skipped records go (default: a new report, returned in the result).
    """
    if not directions or any(d not in ("asr", "tts") for d in directions):
        raise ValueError(f"directions must be a non-empty subset of ('asr', 'tts'), got {directions!r}.")
    if not asr_templates or not tts_templates:
        raise ValueError("asr_templates and tts_templates must not be empty.")
    report = report if report is not None else SkipReport("build cm")
    rng = random.Random(seed)
    groups: list[list[str]] = []
    for record in records:
        if record.text is None or not record.text.strip():
            report.skip(record.id, "empty transcript", "no text to pair with the units")
            continue
        if _too_long(len(record.units), max_units):
            report.skip(record.id, "too long", f"{len(record.units)} units > max_units {max_units}")
            continue
        try:
            groups.append([
                json.dumps(cross_modal_example(
                    d, units=record.units, text=record.text,
                    instruction=rng.choice(asr_templates if d == "asr" else tts_templates)),
                    ensure_ascii=False)
                for d in directions
            ])
        except UnitError as exc:
            report.skip(record.id, "invalid units", str(exc))
    order, dev = _split(len(groups), dev_fraction, seed)
    return _write(Path(out_dir), "cm", ".jsonl",
                  [line for i in order if i not in dev for line in groups[i]], report,
                  [line for i in order if i in dev for line in groups[i]])


def build_chain_of_modality(
    dialogues: Sequence[Dialogue],
    out_dir: PathLike,
    *,
    formats: Sequence[ComFormat] = COM_FORMATS,
    dev_fraction: float = 0.0,
    max_units: int | None = None,
    seed: int = 0,
    report: SkipReport | None = None,
) -> BuildResult:
    """Stage-3 instructions: ``train.jsonl`` (and ``dev.jsonl``) of ``{"prefix", "plain_text"}``.

    Every dialogue gives one sample per requested format that its data allows (speech
    formats need the units of that side); a dialogue that allows none is skipped.

    Args:
        dialogues: from :func:`read_dialogues`.
        formats: subset of ``("s2s", "s2t", "t2s", "t2t")``.
        dev_fraction: share of dialogues held out (default none, as for stage 2).
        max_units: samples with more units (question + answer) are left out.
        seed: seeds the split.
        report: where skipped records go (default: a new report, returned in the result).
    """
    if not formats or any(f not in COM_FORMATS for f in formats):
        raise ValueError(f"formats must be a non-empty subset of {COM_FORMATS}, got {formats!r}.")
    report = report if report is not None else SkipReport("build com")
    groups: list[list[str]] = []
    for d in dialogues:
        if not d.question.strip() or not d.answer.strip():
            report.skip(d.id, "empty transcript", "the question or the answer has no text")
            continue
        possible = [f for f in formats if (f[0] == "t" or d.question_units is not None)
                    and (f[2] == "t" or d.answer_units is not None)]
        if not possible:
            report.skip(d.id, "missing units", f"none of the formats {list(formats)} can be built "
                        "without the units of the spoken side(s)")
            continue
        samples = []
        for fmt in possible:
            n = (len(d.question_units or ()) if fmt[0] == "s" else 0) + \
                (len(d.answer_units or ()) if fmt[2] == "s" else 0)
            if _too_long(n, max_units):
                report.skip(f"{d.id}/{fmt}", "too long", f"{n} units > max_units {max_units}")
                continue
            try:
                samples.append(json.dumps(chain_of_modality_example(
                    fmt, question=d.question, answer=d.answer, question_units=d.question_units,
                    answer_units=d.answer_units), ensure_ascii=False))
            except UnitError as exc:
                report.skip(f"{d.id}/{fmt}", "invalid units", str(exc))
        if samples:
            groups.append(samples)
    order, dev = _split(len(groups), dev_fraction, seed)
    return _write(Path(out_dir), "com", ".jsonl",
                  [line for i in order if i not in dev for line in groups[i]], report,
                  [line for i in order if i in dev for line in groups[i]])
