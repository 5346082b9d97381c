"""The embedded engine: transformers (bitsandbytes NF4/int8, peft adapter), laptop CPU or one GPU.

One worker thread owns the model. :meth:`TransformersEngine.generate` queues a turn and
returns its :class:`~speechgpt_agent.engines.base.TokenStream` at once; the worker runs one
decoding step of each live turn in turn (round robin), so interleaved, abandoned and
concurrent streams all progress and none holds a lock across a ``yield``. Each turn has its
own KV cache and its own ``torch.Generator`` (sampling happens on the CPU), so a seed
reproduces a generation whatever else runs beside it. The logits processors are
transformers' own, in ``generate``'s order, so the sampling distribution is ``generate``'s.

A turn whose consumer falls ``max_ahead`` tokens behind is paused until it reads on; a
closed or garbage-collected stream is dropped at the worker's next step.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import inspect
import itertools
import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import PromptTooLongError
from ..prompt import EOA
from .base import Engine, EngineError, FinishReason, StopStringMatcher, TokenStream, _Channel

if TYPE_CHECKING:
    from ..model import GenerationOptions, SpeechGPTModel

__all__ = ["TransformersEngine", "validate_prompt_ids"]

_working: weakref.WeakSet[TransformersEngine] = weakref.WeakSet()
"""Engines that started a worker thread, stopped at interpreter exit."""


@atexit.register
def _stop_workers() -> None:
    for engine in list(_working):
        if engine._thread is not None:
            engine.shutdown()


@functools.cache
def _cache_kwarg() -> str:
    """Name of the KV-cache argument of LLaMA's forward (``cache`` since transformers 5.x)."""
    from transformers import LlamaForCausalLM

    params = inspect.signature(LlamaForCausalLM.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def validate_prompt_ids(input_ids: Sequence[int] | torch.Tensor, vocab_size: int,
                        context_length: int) -> torch.Tensor:
    """``input_ids`` as a ``[1, T]`` long tensor, checked against the vocabulary and context.

    Raises:
        ValueError: not one sequence, empty, or ids outside ``0..vocab_size-1``.
        PromptTooLongError: ``T >= context_length``.
    """
    ids = input_ids.detach().to(torch.long) if isinstance(input_ids, torch.Tensor) \
        else torch.as_tensor(list(input_ids), dtype=torch.long)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"input_ids must be one sequence ([T] or [1, T]), got {tuple(ids.shape)}.")
    if ids.numel() == 0:
        raise ValueError("input_ids is empty.")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
        raise ValueError(f"input_ids must be token ids in 0..{vocab_size - 1}.")
    if context_length - ids.shape[-1] <= 0:
        raise PromptTooLongError(
            f"the prompt has {ids.shape[-1]} tokens; the model's context window is "
            f"{context_length}. Shorten it (build_prompt(max_tokens=...)).")
    return ids


def logits_processors(model: SpeechGPTModel, opts: GenerationOptions, prompt_len: int,
                      device: torch.device) -> Any:
    """transformers' processors for ``opts``, in ``generate``'s order."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        MinNewTokensLengthLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
    )

    from ..model import top_k_top_p_warpers

    procs = LogitsProcessorList()
    if opts.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(opts.repetition_penalty))
    if opts.min_new_tokens > 0:
        procs.append(MinNewTokensLengthLogitsProcessor(
            prompt_len, opts.min_new_tokens, sorted(model.eos_ids), device=str(device)))
    if opts.do_sample:
        if opts.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(opts.temperature))
        procs.extend(top_k_top_p_warpers(opts))
    return procs


class _Turn:
    """Worker-side state of one generation: KV cache, sequence, sampler, processors."""

    def __init__(self, engine: TransformersEngine, prompt: torch.Tensor, options: GenerationOptions,
                 generator: torch.Generator, stop: StopStringMatcher, max_new_tokens: int,
                 extra_processors: Sequence[Any], adapter: bool,
                 stop_event: threading.Event | None = None) -> None:
        from transformers.cache_utils import DynamicCache

        model = engine.model
        self.engine = engine
        self.options = options
        self.generator = generator
        self.stop = stop
        self.max_new = max_new_tokens
        self.extra = tuple(extra_processors)
        self.adapter = adapter
        self.stop_event = stop_event
        self.processors: Any = None  # built at the first step, on the logits' device
        self.cache: Any = DynamicCache(config=model.model.config)
        self.sequence = prompt
        self.next_input = prompt
        self.prompt_tokens = prompt.shape[-1]
        self.generated: list[int] = []
        self.cancelled = threading.Event()
        self.channel: _Channel | None = None
        self.stop_after_last = False

    def cancel(self) -> None:
        self.cancelled.set()
        self.engine._wake()

    def release(self) -> None:
        self.cache = self.sequence = self.next_input = None

    def step(self) -> tuple[int | None, FinishReason | None]:
        """One forward pass: ``(token, None)`` or ``(None, finish_reason)``."""
        if self.stop_after_last or (self.stop_event is not None and self.stop_event.is_set()):
            return None, "stop"
        if len(self.generated) >= self.max_new:
            return None, "length"
        owner = self.engine.model
        lm = owner.model
        with torch.inference_mode(), self.engine._adapter_context(self.adapter):
            out = lm(input_ids=self.next_input, use_cache=True, logits_to_keep=1,
                     **{_cache_kwarg(): self.cache})
            logits = out.logits[:, -1, :].float()
            self.sequence = self.sequence.to(logits.device)  # no-op unless split over devices
            if self.processors is None:
                self.processors = logits_processors(owner, self.options, self.prompt_tokens,
                                                    logits.device)
                self.processors.extend(self.extra)
            scores = self.processors(self.sequence, logits)
            if self.options.do_sample:
                # drawn on the CPU: one small copy per token, and the same seed gives the
                # same draws whatever device the model runs on
                probs = torch.softmax(scores, dim=-1).cpu()
                token = torch.multinomial(probs, 1, generator=self.generator)
            else:
                token = scores.argmax(dim=-1, keepdim=True)
            self.sequence = torch.cat([self.sequence, token.to(logits.device)], dim=-1)
            self.next_input = token.to(self.next_input.device)
        tid = int(token)
        if tid in owner.eos_ids:
            return None, "stop"
        self.generated.append(tid)
        self.stop_after_last = self.stop.matches(self.generated)
        return tid, None


class TransformersEngine(Engine):
    """The embedded engine over a loaded :class:`~speechgpt_agent.model.SpeechGPTModel`.

    Args:
        model: the loaded model (weights, tokenizer, vocabulary).
        max_ahead: tokens a turn may run ahead of its consumer before it is paused.
    """

    name = "transformers"

    IDLE_EXIT_S = 5.0
    """Seconds without any turn after which the worker thread exits (it restarts on demand)."""

    def __init__(self, model: SpeechGPTModel, *, max_ahead: int = 64) -> None:
        if getattr(model, "model", None) is None:
            raise EngineError("the transformers engine needs a SpeechGPTModel with its weights loaded.")
        self.model = model
        self.max_ahead = int(max_ahead)
        self._cond = threading.Condition()
        self._pending: list[_Turn] = []
        self._thread: threading.Thread | None = None
        self._closed = False
        self._seq = itertools.count()

    # -- adapter on/off --

    def _adapter_context(self, enabled: bool) -> Any:
        import contextlib

        if enabled:
            return contextlib.nullcontext()
        disable = getattr(self.model.model, "disable_adapter", None)
        if disable is None:
            return contextlib.nullcontext()  # no (unmerged) adapter: the base model already
        return disable()

    # -- the public seam --

    def generate(
        self,
        prompt_ids: Sequence[int] | torch.Tensor,
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

        if self._closed:
            raise EngineError("this engine is shut down.")
        if not adapter and self.model.adapter_merged:
            raise EngineError("the adapter is merged into the weights: the base model alone is "
                              "not available (load with merge_adapter=False).")
        opts = options or GenerationOptions()
        ids = validate_prompt_ids(prompt_ids, self.model.vocab_size, self.model.context_length)
        procs = list(logits_processors)
        if grammar is not None:
            make = getattr(grammar, "logits_processor", None)
            if make is None:
                raise EngineError(f"the transformers engine cannot apply grammar {grammar!r}: it "
                                  "has no logits_processor(model) method.")
            # the grammar's mask comes before top-k / top-p, as in vLLM: filtering first could
            # leave none of the tokens it allows (it would then choose among all of them)
            from ..model import top_k_top_p_warpers

            warpers = top_k_top_p_warpers(opts) if opts.do_sample else []
            procs.append(make(self.model, after=warpers) if warpers else make(self.model))
            if warpers:
                opts = dataclasses.replace(opts, top_k=0, top_p=1.0)
        room = self.model.context_length - ids.shape[-1]
        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(int(seed))
        stop = StopStringMatcher(tuple(stop_strings), self.model.tokenizer.decode)
        turn = _Turn(self, ids.to(self.model.device), opts, generator, stop,
                     min(opts.max_new_tokens, room), procs, adapter, stop_event)
        stream = TokenStream(turn.prompt_tokens, turn.cancel)
        resume_at = self.max_ahead - 1

        def consumed(backlog: int) -> None:
            # a paused turn (backlog at max_ahead) can go on: wake the worker only then,
            # not for every token read
            if backlog == resume_at:
                self._wake()

        stream.channel._on_consume = consumed
        turn.channel = stream.channel
        with self._cond:
            self._pending.append(turn)
            self._ensure_worker()
            self._cond.notify_all()
        return stream

    def shutdown(self) -> None:
        """Cancel every turn in flight (their streams raise :class:`EngineError`) and stop
        the worker thread after its current step. Also run at interpreter exit: a daemon
        thread still inside a torch op while the interpreter tears down aborts the process."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    # -- the worker --

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _ensure_worker(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="speechgpt-engine", daemon=True)
            self._thread.start()
            _working.add(self)

    def _finish(self, turn: _Turn, reason: FinishReason, exc: BaseException | None = None) -> None:
        channel = turn.channel
        turn.release()
        if channel is None:
            return
        if exc is not None:
            channel.fail(exc)
        else:
            channel.finish(reason)

    def _work(self) -> None:
        live: list[_Turn] = []
        while True:
            with self._cond:
                live.extend(self._pending)
                self._pending.clear()
                if self._closed:
                    for turn in live:
                        self._finish(turn, "cancelled", EngineError("the engine was shut down."))
                    return
                runnable = [t for t in live if t.cancelled.is_set() or t.channel is None
                            or t.channel.backlog < self.max_ahead
                            or (t.stop_event is not None and t.stop_event.is_set())]
                if not live:
                    # idle: wait for a turn, and let the thread go after a while so an unused
                    # engine (and its model) can be freed
                    if not self._cond.wait(timeout=self.IDLE_EXIT_S) and not self._pending:
                        self._thread = None
                        return
                    continue
                if not runnable:
                    # nothing to do until a consumer reads or a turn is cancelled
                    self._cond.wait(timeout=1.0)
                    continue
            for turn in runnable:
                if turn.cancelled.is_set():
                    self._finish(turn, "cancelled")
                    live.remove(turn)
                    continue
                try:
                    token, reason = turn.step()
                except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises
                    self._finish(turn, "cancelled", exc if isinstance(exc, Exception)
                                 else EngineError(f"generation failed: {exc!r}"))
                    live.remove(turn)
                    continue
                if reason is not None:
                    self._finish(turn, reason)
                    live.remove(turn)
                elif turn.channel is not None:
                    turn.channel.put(token)
