"""speechgpt-agent: SpeechGPT as a speech plugin for AI agents."""

from __future__ import annotations

from .errors import (
    AudioError,
    CheckpointError,
    ModelNotFoundError,
    SpeechGPTError,
    UnitError,
    UnsafeCheckpointError,
)

__version__ = "0.1.0"

__all__ = [
    "AudioError",
    "CheckpointError",
    "ModelNotFoundError",
    "SpeechGPTError",
    "UnitError",
    "UnsafeCheckpointError",
    "__version__",
]
