"""Generation engines behind one seam (DESIGN.md section 10).

``load_engine("transformers", model)`` is the embedded engine (one worker thread owns the
weights); ``load_engine("vllm", model, **engine_args)`` runs vLLM's ``AsyncLLM`` in this
process (continuous batching, paged KV cache, LoRA, tensor / pipeline parallelism, Ray).
Both return token ids through the same :class:`TokenStream`.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Literal

from .base import Engine, EngineError, FinishReason, StopStringMatcher, TokenStream

if TYPE_CHECKING:
    from ..model import SpeechGPTModel

__all__ = [
    "ENGINES",
    "Engine",
    "EngineError",
    "EngineName",
    "FinishReason",
    "StopStringMatcher",
    "TokenStream",
    "default_engine",
    "load_engine",
    "parse_engine_arg",
]

EngineName = Literal["transformers", "vllm"]
ENGINES: tuple[str, ...] = ("transformers", "vllm")

_defaults_lock = threading.Lock()


def load_engine(name: str, model: SpeechGPTModel, **engine_args: Any) -> Engine:
    """The engine ``name`` over ``model``.

    Args:
        name: ``"transformers"`` (embedded; needs ``model`` loaded with its weights) or
            ``"vllm"`` (``model`` may be loaded with ``weights=False``: vLLM loads them).
        model: the loaded SpeechGPT model (tokenizer, vocabulary, paths).
        engine_args: passed to the engine: :class:`TransformersEngine` takes ``max_ahead``;
            :class:`~speechgpt_agent.engines.vllm_engine.VLLMEngine` takes vLLM's engine
            arguments (``tensor_parallel_size``, ``pipeline_parallel_size``,
            ``distributed_executor_backend``, ``max_num_seqs``, ``kv_cache_memory_bytes``, ...).

    Raises:
        ValueError: an unknown engine name.
        EngineError: the engine is not installed or cannot start.
    """
    if name == "transformers":
        from .transformers_engine import TransformersEngine

        return TransformersEngine(model, **engine_args)
    if name == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(model, **engine_args)
    raise ValueError(f"unknown engine {name!r}: choose one of {', '.join(ENGINES)}.")


def default_engine(model: SpeechGPTModel) -> Engine:
    """The one embedded engine of ``model`` (shared by every :class:`SpeechGPT` over it)."""
    with _defaults_lock:
        # kept on the model (a cycle the garbage collector frees with it; the engine's
        # worker thread exits when idle, so it does not keep the model alive)
        engine = getattr(model, "_speechgpt_default_engine", None)
        if engine is None:
            engine = load_engine("transformers", model)
            model._speechgpt_default_engine = engine  # type: ignore[union-attr]
        return engine


def parse_engine_arg(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of a command line's ``--engine-arg``: the value is JSON when it parses
    (``2``, ``true``, ``0.5``, ``"ray"``), else the text itself.

    Raises:
        ValueError: no ``=``, or an empty key.
    """
    import json

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value
