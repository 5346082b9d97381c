"""Transcripts for clips that have none (``speechgpt-agent data label``), with faster-whisper.

The output is a manifest (``{"id", "audio", "text", ...}`` per line) in which every clip has
a transcript: clips that came with one keep it; the others are transcribed, and get the
``"language"`` Whisper used beside their text. A clip whose transcript comes out empty
(silence, music, a model that heard nothing) is skipped and reported, never written with an
empty text. Like ``units``, the output is appended and resumed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from speechgpt_agent.audio import DEFAULT_MAX_SECONDS, load_audio
from speechgpt_agent.errors import AudioError

from .manifest import AudioItem, manifest_record
from .records import JsonlAppender, SkipReport

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

__all__ = ["DEFAULT_WHISPER", "WhisperOptions", "label_items", "load_whisper"]

PathLike = str | os.PathLike

DEFAULT_WHISPER = "large-v3"
"""faster-whisper model used when none is named: the most accurate, for training labels."""


@dataclass(frozen=True)
class WhisperOptions:
    """How clips are transcribed.

    Attributes:
        model: a faster-whisper size name (``"large-v3"``, ``"small"`` ...), a hub id of a
            CTranslate2 Whisper, or a local folder holding one.
        language: language code of the speech (``"en"``); ``None`` detects it per clip.
        compute_type: CTranslate2 compute type (``"default"``, ``"int8"``, ``"float16"``,
            ``"int8_float16"`` ...).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        device_index: GPU index (one process per GPU: its ``LOCAL_RANK``).
        beam_size: beam width of decoding.
        cpu_threads: CPU threads (0: CTranslate2's default).
    """

    model: str = DEFAULT_WHISPER
    language: str | None = None
    compute_type: str = "default"
    device: str = "auto"
    device_index: int = 0
    beam_size: int = 5
    cpu_threads: int = 0


def load_whisper(options: WhisperOptions) -> WhisperModel:
    """Load the faster-whisper model ``options`` name.

    Raises:
        ValueError: an unknown compute type or device (from CTranslate2).
        RuntimeError: the model cannot be found or downloaded.
    """
    from faster_whisper import WhisperModel

    return WhisperModel(
        str(options.model), device=options.device, device_index=options.device_index,
        compute_type=options.compute_type, cpu_threads=options.cpu_threads,
    )


def label_items(
    items: Sequence[AudioItem],
    output: PathLike,
    model: WhisperModel,
    *,
    language: str | None = None,
    beam_size: int = 5,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    progress: bool = True,
    **transcribe_options: Any,
) -> SkipReport:
    """Write a manifest in which every clip of ``items`` has a transcript.

    Args:
        items: the clips; those whose ``text`` is a non-blank string are copied as they are.
        output: JSON-lines manifest; created, or resumed when it exists.
        model: a loaded faster-whisper model (:func:`load_whisper`).
        language: language code passed to Whisper (``None``: detected per clip).
        beam_size: beam width.
        max_seconds: longer clips are skipped (``None``: no limit).
        progress: show a tqdm progress bar.
        **transcribe_options: more arguments of ``WhisperModel.transcribe``
            (``vad_filter``, ``initial_prompt`` ...).

    Returns:
        The skipped clips: ``missing audio``, ``unreadable audio``, ``empty transcript``.
    """
    from tqdm.auto import tqdm

    report = SkipReport("label")
    with JsonlAppender(output) as out:
        todo = [item for item in items if item.id not in out.done]
        for item in tqdm(todo, total=len(items), initial=len(items) - len(todo), desc="label",
                         unit="clip", disable=not progress, dynamic_ncols=True):
            if item.text is not None and item.text.strip():
                out.write(manifest_record(item))
                continue
            if not item.audio.is_file():
                report.skip(item.id, "missing audio", f"{item.audio} does not exist")
                continue
            try:
                samples = load_audio(item.audio, max_seconds=max_seconds)  # 16 kHz, as Whisper
            except AudioError as exc:
                report.skip(item.id, "unreadable audio", str(exc))
                continue
            segments, info = model.transcribe(samples, language=language, beam_size=beam_size,
                                              **transcribe_options)
            text = "".join(segment.text for segment in segments).strip()
            if not text:
                report.skip(item.id, "empty transcript",
                            f"Whisper heard no speech (language {info.language})")
                continue
            out.write(manifest_record(AudioItem(item.id, item.audio, text), language=info.language))
    return report
