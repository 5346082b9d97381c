"""Audio collections: a folder of audio files or a JSON-lines manifest -> :class:`AudioItem` s.

A manifest line is ``{"audio": "clips/a.wav", "text": "transcript", "id": "a"}``:
``audio`` (alias ``path``) is required and relative paths are taken relative to the
manifest's folder; ``text`` is optional (``speechgpt-agent data label`` fills it in);
``id`` defaults to the audio path as written. Other fields are ignored.

A folder is searched recursively for audio files (sorted, so every process of a sharded run
sees the same order). A transcript is read from a ``.txt`` file of the same stem beside a
clip (``a.wav`` + ``a.txt``) when there is one. Ids are the paths relative to the folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .records import DataError, SkipReport, read_jsonl

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioItem",
    "manifest_record",
    "read_audio_items",
]

PathLike = str | os.PathLike

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff"})
"""Suffixes taken as audio in a folder: what libsndfile (soundfile) decodes."""


@dataclass(frozen=True)
class AudioItem:
    """One clip of a collection.

    Attributes:
        id: unique name of the clip in its collection (the key of resumed outputs).
        audio: path of the audio file.
        text: its transcript, or ``None`` when it has none yet.
    """

    id: str
    audio: Path
    text: str | None = None


def manifest_record(item: AudioItem, **extra: Any) -> dict[str, Any]:
    """The manifest line of ``item`` (``id``, ``audio``, ``text`` when known) plus ``extra`` fields."""
    record: dict[str, Any] = {"id": item.id, "audio": str(item.audio)}
    if item.text is not None:
        record["text"] = item.text
    record.update(extra)
    return record


def read_audio_items(source: PathLike, report: SkipReport | None = None) -> list[AudioItem]:
    """The clips of a folder or of a JSON-lines manifest, in a stable order.

    Manifest lines without an ``audio`` path, with a ``text`` that is not a string, or
    with an ``id`` seen before are skipped and recorded in ``report`` (without a report,
    they raise). Whether the audio exists is checked later, by the step that reads it.

    Raises:
        DataError: ``source`` does not exist, or a folder holds no audio file.
    """
    path = Path(source)
    if path.is_dir():
        items = _folder_items(path.resolve())
        if not items:
            raise DataError(
                f"{path} holds no audio file ({', '.join(sorted(AUDIO_EXTENSIONS))}); pass a "
                "folder of clips or a JSON-lines manifest with an 'audio' field per line."
            )
        return items
    if not path.is_file():
        raise DataError(f"{path} does not exist; pass a folder of audio files or a JSON-lines manifest.")
    return _manifest_items(path, report)


def _folder_items(folder: Path) -> list[AudioItem]:
    items = []
    for file in sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()):
        sidecar = file.with_suffix(".txt")
        text = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else None
        items.append(AudioItem(file.relative_to(folder).as_posix(), file, text))
    return items


def _manifest_items(path: Path, report: SkipReport | None) -> list[AudioItem]:
    base = path.parent.resolve()
    items: list[AudioItem] = []
    seen: set[str] = set()

    def bad(record_id: str, reason: str, detail: str) -> None:
        if report is None:
            raise DataError(f"{path}: record {record_id}: {reason} ({detail}).")
        report.skip(record_id, reason, detail)

    for number, record in enumerate(read_jsonl(path, report), start=1):
        audio = record.get("audio", record.get("path"))
        record_id = str(record.get("id", audio if isinstance(audio, str) else f"{path.name}:{number}"))
        text = record.get("text")
        if not isinstance(audio, str) or not audio.strip():
            bad(record_id, "invalid record", "no 'audio' path")
            continue
        if text is not None and not isinstance(text, str):
            bad(record_id, "invalid record", f"'text' is a {type(text).__name__}, not a string")
            continue
        if record_id in seen:
            bad(record_id, "duplicate id", f"id {record_id!r} appears more than once")
            continue
        seen.add(record_id)
        file = Path(os.path.expanduser(audio))
        items.append(AudioItem(record_id, file if file.is_absolute() else base / file, text))
    return items

