"""Typed errors of speechgpt-agent.

Every error a user can cause (bad audio, a wrong path, an unsafe checkpoint, malformed
model output) is raised as one of these, with a message that says what to do. Each also
derives from the built-in exception a caller would naturally catch (``ValueError``,
``FileNotFoundError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class SpeechGPTError(Exception):
    """Base class of every error raised on purpose by speechgpt-agent."""


class AudioError(SpeechGPTError, ValueError):
    """Audio that cannot be used: unreadable, truncated, empty, NaN/Inf, too long, wrong rate."""


class UnitError(SpeechGPTError, ValueError):
    """A speech-unit sequence that a model cannot take (id outside the codebook, bad shape)."""


class CheckpointError(SpeechGPTError, ValueError):
    """A checkpoint whose content is not in the format that was expected."""


class UnsafeCheckpointError(CheckpointError):
    """A pickled checkpoint that would need arbitrary code execution to load.

    Raised unless the caller consents with ``trust_pickle=True`` or converts the file
    once with ``speechgpt-agent convert``.
    """


class ModelNotFoundError(SpeechGPTError, FileNotFoundError):
    """A model folder, file or hub id that cannot be found locally or downloaded."""


class PromptTooLongError(SpeechGPTError, ValueError):
    """A prompt that does not fit the model's context window, even without conversation history."""
