"""Lazily loaded models shared by every LangChain object that names the same weights.

A :class:`~speechgpt_agent.integrations.langchain.SpeechGPTChat` is a cheap pydantic
object (LangChain copies it on every ``bind_tools``, ``with_structured_output`` or
``model_copy``); the 4-bit model behind it is not. Objects that name the same weights
(same :class:`RuntimeSpec`) therefore share one :class:`~speechgpt_agent.pipeline.SpeechGPT`,
loaded on first use. Loading happens once even when many threads ask at the same time;
different specs load independently. faster-whisper models are cached the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

__all__ = ["RuntimeSpec", "clear_cache", "load_runtime", "load_whisper"]

T = TypeVar("T")


@dataclass(frozen=True)
class RuntimeSpec:
    """Everything that decides which weights a :class:`SpeechGPT` holds.

    Fields mirror :meth:`speechgpt_agent.pipeline.SpeechGPT.from_pretrained`; paths are
    kept as given (hub ids or folders).
    """

    model: str
    adapter: str | None
    speech_tokenizer: str | None
    kmeans: str | None
    vocoder: str | None
    quantization: Literal["nf4", "int8"] | None
    device_map: str | None
    dtype: str | None
    device: str | None
    trust_pickle: bool


class _Cache:
    """A dict of loaded objects with one lock per key, so loads of one key never repeat."""

    def __init__(self) -> None:
        self._items: dict[Hashable, Any] = {}
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        item = self._items.get(key)
        if item is not None:
            return item
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            item = self._items.get(key)
            if item is None:
                item = load()  # an exception leaves nothing cached: the next call retries
                self._items[key] = item
            return item

    def clear(self) -> None:
        with self._guard:
            self._items.clear()
            self._locks.clear()


_RUNTIMES = _Cache()
_WHISPERS = _Cache()


def load_runtime(spec: RuntimeSpec) -> Any:
    """The shared :class:`~speechgpt_agent.pipeline.SpeechGPT` of ``spec``, loading it once.

    Raises:
        ModelNotFoundError, CheckpointError: as ``SpeechGPT.from_pretrained``.
    """

    def load() -> Any:
        import torch

        from speechgpt_agent.pipeline import SpeechGPT

        dtype = getattr(torch, spec.dtype) if spec.dtype else None
        return SpeechGPT.from_pretrained(
            spec.model,
            spec.adapter,
            speech_tokenizer=spec.speech_tokenizer,
            kmeans=spec.kmeans,
            vocoder=spec.vocoder,
            quantization=spec.quantization,
            device_map=spec.device_map,
            dtype=dtype,
            device=spec.device,
            trust_pickle=spec.trust_pickle,
            progress=False,
        )

    return _RUNTIMES.get(spec, load)


def load_whisper(model: str, device: str, compute_type: str) -> Any:
    """A shared ``faster_whisper.WhisperModel`` (size name such as ``"small"``, hub id or folder)."""

    def load() -> Any:
        from faster_whisper import WhisperModel

        return WhisperModel(model, device=device, compute_type=compute_type)

    return _WHISPERS.get((model, device, compute_type), load)


def clear_cache() -> None:
    """Forget every loaded model (they are freed once no object uses them any more)."""
    _RUNTIMES.clear()
    _WHISPERS.clear()
