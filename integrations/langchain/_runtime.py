"""Lazily loaded models shared by every LangChain object that names the same weights.

A :class:`~speechgpt_agent.integrations.langchain.SpeechGPTChat` is a cheap pydantic
object (LangChain copies it on every ``bind_tools``, ``with_structured_output`` or
``model_copy``); the 4-bit model behind it is not. Objects that name the same weights
(same :class:`RuntimeSpec`) therefore share one :class:`~speechgpt_agent.pipeline.SpeechGPT`,
loaded on first use. Loading happens once even when many threads ask at the same time;
different specs load independently. faster-whisper models are cached the same way.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

__all__ = [
    "RuntimeSpec", "answer_budget", "clear_cache", "context_length_hint", "fit_options", "load_runtime",
    "load_text_tokenizer", "load_whisper", "prompt_tokens_bound",
]

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
    engine: str = "transformers"
    engine_args: tuple[tuple[str, Any], ...] = ()


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
            engine=spec.engine,  # type: ignore[arg-type]
            engine_args=dict(spec.engine_args),
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
    _TOKENIZERS.clear()


# --- what fits the context window --------------------------------------------------------

RELEASED_CONTEXT = 2048
"""Context window of the released SpeechGPT-7B models (LLaMA-7B's 2048 positions)."""

_HOP = 320
"""Samples per speech-unit frame at 16 kHz (50 frames per second, mHuBERT and the demo's)."""


def model_folder(model: str) -> Path | None:
    """The local folder of a language model reference (``"demo"``, a folder or a cached
    hub id), without downloading anything; ``None`` when it is not on this machine."""
    from speechgpt_agent.demo import DEMO_DIR, DEMO_NAME

    if model == DEMO_NAME:
        return DEMO_DIR / "llm"
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "config.json")
    except Exception:  # noqa: BLE001 - not a repo id, no cache: simply unknown
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def context_length_hint(model: str) -> int | None:
    """Context window of ``model`` read from its ``config.json`` when it is local (cheap: no
    weights, no download); the released 2048 for the released model; else ``None``."""
    from speechgpt_agent.model import DEFAULT_MODEL

    folder = model_folder(model)
    if folder is not None:
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            return int(config["max_position_embeddings"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return RELEASED_CONTEXT if model == DEFAULT_MODEL else None


def load_text_tokenizer(model: str) -> Any:
    """A shared tokenizer-only :class:`~speechgpt_agent.model.SpeechGPTModel` of ``model``
    (config, tokenizer and vocabulary; no weights), for counting tokens before loading."""

    def load() -> Any:
        from speechgpt_agent.demo import DEMO_NAME, demo_parts
        from speechgpt_agent.model import SpeechGPTModel

        ref = demo_parts().model if model == DEMO_NAME else model
        return SpeechGPTModel.from_pretrained(ref, None, quantization=None, weights=False, progress=False)

    return _TOKENIZERS.get(model, load)


_TOKENIZERS = _Cache()


def prompt_tokens_bound(
    count_tokens: Callable[[str], int],
    *,
    text: str | None,
    audio: Any,
    history: Any,
    system: str | None,
) -> int:
    """Tokens of the prompt ``SpeechGPT.stream`` will build, at most (before any history is dropped).

    The speech enters as one unit token per 20 ms frame (``len(audio) // 320 + 1`` at 16 kHz),
    which bounds the units a speech tokenizer gives (runs of equal units are merged), so the
    bound needs no speech tokenizer run. One token more allows for token healing.

    Args:
        count_tokens: the model's ``count_tokens``.
        text, history, system: as for ``SpeechGPT.stream``.
        audio: float32 samples at 16 kHz ``[samples]``, or ``None``.
    """
    from speechgpt_agent.prompt import build_prompt

    units = None if audio is None else [0] * (len(audio) // _HOP + 1)
    return count_tokens(build_prompt(text, units=units, history=history, system=system)) + 1


def answer_budget(context: int, prompt_tokens: int, requested: int | None) -> int:
    """Most new tokens for an answer: ``requested`` (``None``: as many as fit) clamped to what the
    prompt leaves of the ``context`` window.

    When the prompt leaves less than a quarter of the window (a long history), the answer
    keeps a quarter of it (at most ``requested``) and ``SpeechGPT`` drops the oldest turns to
    make room: ``SpeechGPT`` budgets the prompt as ``context - min(max_new_tokens, context // 2)``,
    so this choice never makes it drop history that fits.
    """
    want = context if requested is None else max(1, min(requested, context))
    floor = min(want, max(1, context // 4))
    return max(floor, min(want, context - prompt_tokens))


def fit_options(options: Any, context: int, prompt_tokens: int, requested: int | None) -> Any:
    """``options`` (a ``GenerationOptions``) with ``max_new_tokens`` from :func:`answer_budget`
    (and ``min_new_tokens`` no larger than it)."""
    import dataclasses

    max_new = answer_budget(context, prompt_tokens, requested)
    return dataclasses.replace(options, max_new_tokens=max_new,
                               min_new_tokens=min(options.min_new_tokens, max_new))
