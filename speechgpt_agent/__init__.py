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
    "SpeechGPT",
    "SpeechGPTChat",
    "SpeechGPTError",
    "SpeechToTextTool",
    "TextToSpeechTool",
    "UnitError",
    "UnsafeCheckpointError",
    "VoiceTurnTool",
    "__version__",
]

# The runtime and LangChain objects load on first access: `import speechgpt_agent` stays light.
_LANGCHAIN_EXPORTS = ("SpeechGPTChat", "SpeechToTextTool", "TextToSpeechTool", "VoiceTurnTool")


def __getattr__(name: str):
    if name == "SpeechGPT":
        from .pipeline import SpeechGPT

        return SpeechGPT
    if name in _LANGCHAIN_EXPORTS:
        from .integrations import langchain

        return getattr(langchain, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
