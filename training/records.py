"""JSON-lines files of the data pipeline, and the report of the records a step skipped.

Every data step (``units``, ``label``, ``build``) reads and writes JSON lines, skips bad
records instead of failing the whole run, and says what it skipped: a :class:`SkipReport`
counts skipped records by reason, keeps their ids and details, prints a summary and writes
them to a ``*.skipped.jsonl`` file beside the output. Nothing is dropped silently.

Outputs that a later run resumes (:class:`JsonlAppender`) are appended one flushed line per
record; a line cut short by a kill is detected and removed when the file is reopened.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from speechgpt_agent.errors import SpeechGPTError

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "DataError",
    "JsonlAppender",
    "SkipReport",
    "SkippedRecord",
    "atomic_write_lines",
    "read_jsonl",
    "skipped_path",
]

PathLike = str | os.PathLike


class DataError(SpeechGPTError, ValueError):
    """Training data that cannot be used at all (missing input file, no usable record)."""


@dataclass(frozen=True)
class SkippedRecord:
    """One record left out of an output, and why."""

    id: str
    reason: str
    """Short fixed category, e.g. ``"missing audio"``, ``"empty transcript"``."""
    detail: str = ""
    """The specific message (the error raised, the length found ...)."""


@dataclass
class SkipReport:
    """The records a data step left out, grouped by reason.

    ``report.skip(id, reason, detail)`` records one; ``len(report)`` counts them;
    ``report.counts`` maps each reason to its count; :meth:`summary` is one line for a log.
    """

    step: str
    """Name of the step, for messages (``"units"``, ``"build cm"``)."""
    records: list[SkippedRecord] = field(default_factory=list)

    def skip(self, record_id: str, reason: str, detail: str = "") -> None:
        self.records.append(SkippedRecord(str(record_id), reason, detail))

    def extend(self, other: SkipReport) -> None:
        self.records.extend(other.records)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def counts(self) -> dict[str, int]:
        """Number of skipped records per reason, most frequent first."""
        return dict(Counter(r.reason for r in self.records).most_common())

    def summary(self) -> str:
        """``"units: skipped 3 record(s): missing audio 2, unreadable audio 1"`` (or none)."""
        if not self.records:
            return f"{self.step}: no record skipped"
        reasons = ", ".join(f"{reason} {n}" for reason, n in self.counts.items())
        return f"{self.step}: skipped {len(self.records)} record(s): {reasons}"

    def write(self, path: PathLike) -> Path:
        """Write the skipped records as JSON lines (``id``, ``reason``, ``detail``) to ``path``."""
        return atomic_write_lines(
            path,
            (json.dumps({"id": r.id, "reason": r.reason, "detail": r.detail}, ensure_ascii=False)
             for r in self.records),
        )


def skipped_path(output: PathLike) -> Path:
    """Where the skip report of ``output`` goes: ``units.jsonl`` -> ``units.skipped.jsonl``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.skipped.jsonl" if output.suffix else f"{output.name}.skipped.jsonl")


def read_jsonl(path: PathLike, report: SkipReport | None = None) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, one per non-blank line.

    A line that is not a JSON object is skipped and recorded in ``report`` (reason
    ``"invalid json"``, id ``file:line``); without a report it raises :class:`DataError`.

    Raises:
        DataError: the file does not exist or cannot be read.
    """
    path = Path(path)
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}.") from exc
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                obj, problem = None, f"not JSON ({exc.msg})"
            else:
                problem = None if isinstance(obj, dict) else f"a JSON {type(obj).__name__}, not an object"
            if problem is None:
                yield obj
            elif report is not None:
                report.skip(f"{path.name}:{number}", "invalid json", problem)
            else:
                raise DataError(f"{path}:{number} is {problem}; every line must be a JSON object.")


def atomic_write_lines(path: PathLike, lines: Iterable[str]) -> Path:
    """Write ``lines`` (each without its newline) to ``path`` through a temporary file and a rename.

    A reader never sees a half-written file, and a failure leaves the old file in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            for line in lines:
                handle.write(line)
                handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class JsonlAppender:
    """An output of JSON lines that a killed run resumes.

    Opening it reads the records already there (their ``key`` field is in :attr:`done`),
    cuts off a last line left incomplete by a kill, and appends from there. Each
    :meth:`write` appends one line and flushes it, so at most the record being written
    when a process dies is lost, and it is redone by the next run.

    Use as a context manager; :meth:`close` also fsyncs the file.
    """

    def __init__(self, path: PathLike, *, key: str = "id") -> None:
        self.path = Path(path)
        self.key = key
        self.done: set[str] = set()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        good, newline_missing = self._scan_existing()
        self._handle = self.path.open("a+b")
        self._handle.truncate(good)
        self._handle.seek(good)
        if newline_missing:
            self._handle.write(b"\n")

    def _scan_existing(self) -> tuple[int, bool]:
        """Read the finished records.

        Returns the byte length to keep (a last line cut short by a kill is dropped) and
        whether the kept text lacks its final newline (a complete record written by hand).

        Raises:
            DataError: a line before the last one is not JSON (the file was edited by hand).
        """
        if not self.path.exists():
            return 0, False
        good = 0
        with self.path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    obj = json.loads(line) if line.strip() else None
                except ValueError as exc:
                    if line.endswith(b"\n"):
                        raise DataError(
                            f"{self.path}:{number} is not JSON, so the file cannot be resumed; "
                            "fix or remove that line, or write to a new file."
                        ) from exc
                    return good, False  # the last line, cut short by a kill: redo it
                good += len(line)
                if isinstance(obj, dict) and self.key in obj:
                    self.done.add(str(obj[self.key]))
                if not line.endswith(b"\n"):
                    return good, True
        return good, False

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line and flush it."""
        self._handle.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        self._handle.flush()
        if self.key in record:
            self.done.add(str(record[self.key]))

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
