"""What the server remembers between requests: its spoken answers, by id, for a while.

OpenAI clients send an earlier spoken answer back as ``{"role": "assistant", "audio":
{"id": ...}}`` instead of its audio. SpeechGPT reads earlier turns as text, so the store
keeps, per returned audio id, the answer's text (its transcript) and SpeechGPT's transcript
of the question that it answered; a conversation that reuses the id gets both back.

The transcripts of spoken questions are also kept by a digest of their audio, so that a
question clip sent again in the history of a later request enters that request's prompt as
what SpeechGPT heard the first time (chain of modality) without a second ASR pass.

Entries expire (``ttl_s``, OpenAI's ``audio.expires_at``) and the oldest go first beyond
``max_entries``, so memory stays bounded whatever clients do.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["AudioStore", "StoredAnswer", "audio_digest"]


@dataclass(frozen=True)
class StoredAnswer:
    """One spoken answer the server returned.

    Attributes:
        text: the answer's text (``message.audio.transcript``).
        question_transcript: SpeechGPT's transcript of the spoken question, or ``""``.
        expires_at: Unix time (s) after which the id is forgotten.
    """

    text: str
    question_transcript: str
    expires_at: int


def audio_digest(data: bytes | str) -> str:
    """A short digest of a clip's bytes (or its base64 text) keying its transcript."""
    raw = data.encode("ascii", "replace") if isinstance(data, str) else data
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


class AudioStore:
    """Thread-safe, bounded, expiring memory of answers and of question transcripts.

    Args:
        ttl_s: seconds an entry lives (default one hour).
        max_entries: most entries of each kind kept; the oldest are dropped first.
    """

    def __init__(self, ttl_s: float = 3600.0, max_entries: int = 10_000) -> None:
        if ttl_s <= 0 or max_entries < 1:
            raise ValueError(f"ttl_s must be > 0 and max_entries >= 1, got {ttl_s}, {max_entries}.")
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._answers: OrderedDict[str, StoredAnswer] = OrderedDict()
        self._transcripts: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def new_id() -> str:
        """A fresh audio id (``audio_`` + 32 hex digits), as OpenAI's look."""
        return f"audio_{secrets.token_hex(16)}"

    def _expire(self, now: float) -> None:
        for table in (self._answers, self._transcripts):
            while table:
                _key, value = next(iter(table.items()))
                expiry = value.expires_at if isinstance(value, StoredAnswer) else value[1]
                if expiry > now and len(table) <= self.max_entries:
                    break
                table.popitem(last=False)

    def put_answer(self, audio_id: str, text: str, question_transcript: str = "") -> StoredAnswer:
        """Remember the answer returned under ``audio_id``; returns it with its expiry."""
        now = time.time()
        entry = StoredAnswer(text, question_transcript, int(now + self.ttl_s))
        with self._lock:
            self._answers[audio_id] = entry
            self._expire(now)
        return entry

    def get_answer(self, audio_id: str) -> StoredAnswer | None:
        """The answer returned under ``audio_id``, or ``None`` (unknown or expired)."""
        with self._lock:
            self._expire(time.time())
            return self._answers.get(audio_id)

    def put_transcript(self, digest: str, transcript: str) -> None:
        """Remember what SpeechGPT heard in the clip with ``digest``."""
        if not transcript:
            return
        now = time.time()
        with self._lock:
            self._transcripts[digest] = (transcript, now + self.ttl_s)
            self._transcripts.move_to_end(digest)
            self._expire(now)

    def get_transcript(self, digest: str) -> str | None:
        with self._lock:
            self._expire(time.time())
            hit = self._transcripts.get(digest)
            return hit[0] if hit else None
