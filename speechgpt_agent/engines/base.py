"""The engine seam (DESIGN.md section 10): prompt token ids in, generated token ids out.

Everything above an engine (:class:`~speechgpt_agent.pipeline.SpeechGPT`, the answer parser,
the streaming vocoder, ``SpeechGPTChat``, the CLI and the server) sees only
:class:`Engine` and :class:`TokenStream`, so the embedded transformers engine and vLLM are
interchangeable.

A :class:`TokenStream` is the consumer's end of one generation. It is an iterator and an
async iterator of token ids; the producing side (a worker thread, vLLM's engine loop) pushes
ids into it through a :class:`_Channel`, so a consumer never holds a lock across a ``yield``
and any number of streams can be read interleaved from one thread. Closing a stream (or
dropping the last reference to it) cancels its generation at the next token.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import SpeechGPTError

__all__ = ["Engine", "EngineError", "FinishReason", "StopStringMatcher", "TokenStream"]

FinishReason = Literal["stop", "length", "cancelled"]


class EngineError(SpeechGPTError, RuntimeError):
    """A generation engine that cannot start or failed while generating."""


_END = object()


class _Channel:
    """A thread-safe queue of token ids from one producer to one consumer (sync or asyncio).

    The producer calls :meth:`put` / :meth:`finish` / :meth:`fail` from any thread; the
    consumer blocks in :meth:`get` or awaits :meth:`aget`. :attr:`backlog` (ids produced but
    not yet consumed) lets a producer pause a stream that nobody reads; ``on_consume(backlog)``
    tells it after each read, so it can resume one.
    """

    def __init__(self, on_consume: Callable[[int], None] | None = None) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._cond = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._on_consume = on_consume
        self.closed = False
        self.reason: FinishReason | None = None
        """Why the producer ended (set by :meth:`finish`)."""

    @property
    def backlog(self) -> int:
        return len(self._items)

    def _push(self, item: Any) -> None:
        with self._cond:
            if self.closed:
                return
            if item is _END or isinstance(item, BaseException):
                self.closed = True
            self._items.append(item)
            self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the consumer's loop is closed: nobody waits any more
                pass

    def put(self, token_id: int) -> None:
        self._push(token_id)

    def finish(self, reason: FinishReason = "stop") -> None:
        if not self.closed:
            self.reason = reason
        self._push(_END)

    def fail(self, exc: BaseException) -> None:
        self._push(exc)

    def _pop(self) -> Any:
        item = self._items.popleft()
        if self._on_consume is not None:
            self._on_consume(len(self._items))
        return item

    def get(self) -> Any:
        with self._cond:
            while not self._items:
                self._cond.wait()
            return self._pop()

    async def aget(self) -> Any:
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._items:
                    return self._pop()
                event = asyncio.Event()
                self._waiters.append((loop, event))
            await event.wait()


class TokenStream(Iterator[int], AsyncIterator[int]):
    """The generated token ids of one prompt, as the engine produces them.

    Iterate it (``for``) or ``async for`` it (one consumer). End-of-sequence is not yielded;
    the tokens spelling a stop string are. When iteration ends, :attr:`finish_reason` says
    why: ``"stop"`` (eos or a stop string), ``"length"`` (``max_new_tokens`` or the context
    window) or ``"cancelled"`` (:meth:`cancel` / :meth:`close`). :attr:`tokens` holds the
    ids consumed so far and :attr:`prompt_tokens` the prompt's length.

    Closing the stream, cancelling it, or dropping every reference to it stops its
    generation at the engine's next step and frees its state there (KV cache, batch slot).
    """

    def __init__(self, prompt_tokens: int, cancel: Callable[[], None],
                 channel: _Channel | None = None) -> None:
        self.prompt_tokens = int(prompt_tokens)
        self.tokens: list[int] = []
        self.finish_reason: FinishReason | None = None
        self._cancelled = False
        self._cancel_fn = cancel
        self._channel = channel if channel is not None else _Channel()
        # a stream nobody holds any more is cancelled, so an abandoned generator frees its slot
        self._finalizer = weakref.finalize(self, cancel)

    # -- the producer's side (engines) --

    @property
    def channel(self) -> _Channel:
        """Where the engine puts this stream's ids. Engines hold the channel, never the
        stream, so that a stream nobody reads can be garbage-collected (and cancelled)."""
        return self._channel

    # -- the consumer's side --

    def __iter__(self) -> TokenStream:
        return self

    def __aiter__(self) -> TokenStream:
        return self

    def _take(self, item: Any) -> int:
        if item is _END:
            self._end(self._channel.reason or "stop")
        if isinstance(item, BaseException):
            self.finish_reason = "cancelled"
            self._finalizer.detach()
            raise item
        self.tokens.append(int(item))
        return int(item)

    def _end(self, reason: FinishReason) -> None:
        if self.finish_reason is None:
            self.finish_reason = reason
        self._finalizer.detach()
        raise StopIteration

    def __next__(self) -> int:
        if self.finish_reason is not None:
            raise StopIteration
        if self._cancelled:
            self._end("cancelled")
        return self._take(self._channel.get())

    async def __anext__(self) -> int:
        if self.finish_reason is not None:
            raise StopAsyncIteration
        if self._cancelled:
            self.finish_reason = "cancelled"
            self._finalizer.detach()
            raise StopAsyncIteration
        item = await self._channel.aget()
        try:
            return self._take(item)
        except StopIteration:
            raise StopAsyncIteration from None

    def cancel(self) -> None:
        """Stop the generation at its next step (thread-safe); the stream ends with what it
        has consumed, ``finish_reason == "cancelled"``."""
        self._cancelled = True
        self._cancel_fn()

    def close(self) -> None:
        """End the stream now: cancel its generation and drop what it has not consumed."""
        if self.finish_reason is None:
            self.cancel()
            self.finish_reason = "cancelled"
        self._finalizer.detach()

    async def aclose(self) -> None:
        self.close()


@dataclass
class StopStringMatcher:
    """Detects stop strings (e.g. ``<eoa>``, several tokens) in decoded generated text.

    Decodes only a window of the last tokens (long enough for the longest stop string), as
    the stop string may be split over tokens in any way.
    """

    stop_strings: tuple[str, ...]
    decode: Callable[[Sequence[int]], str]

    def __post_init__(self) -> None:
        self.window = 8 + 4 * max((len(s) for s in self.stop_strings), default=0)

    def matches(self, tokens: Sequence[int]) -> bool:
        if not self.stop_strings:
            return False
        tail = self.decode(tokens[-self.window:])
        return any(s in tail for s in self.stop_strings)


class Engine(ABC):
    """Where generation runs: prompt token ids + sampling options -> a :class:`TokenStream`.

    Engines are thread-safe: any number of threads and asyncio tasks may call
    :meth:`generate` and read their streams at the same time.
    """

    name: str = "engine"

    @abstractmethod
    def generate(
        self,
        prompt_ids: Sequence[int],
        options: Any = None,
        *,
        seed: int | None = None,
        stop_strings: Sequence[str] = (),
        logits_processors: Sequence[Any] = (),
        grammar: Any = None,
        adapter: bool = True,
        stop_event: threading.Event | None = None,
    ) -> TokenStream:
        """Start generating the continuation of ``prompt_ids``.

        Args:
            prompt_ids: token ids of the prompt (``<s>`` included).
            options: :class:`~speechgpt_agent.model.GenerationOptions` (default: the
                original CLI's sampling settings).
            seed: reproducible sampling; ``None`` draws a fresh seed.
            stop_strings: texts that end the generation once the decoded tokens spell them;
                their tokens are yielded.
            logits_processors: transformers ``LogitsProcessor``s (embedded engine only).
            grammar: a :class:`~speechgpt_agent.grammar.Grammar` constraining the output,
                or ``None``.
            adapter: apply the loaded LoRA adapter (``False``: the base model alone).
            stop_event: once set (from any thread), the generation ends before its next
                token as if the model had stopped (``finish_reason == "stop"``): for a
                caller that has seen what it wanted (a complete tool call, a stop sequence).

        Raises:
            ValueError: empty prompt, ids outside the vocabulary, bad options.
            PromptTooLongError: the prompt fills the context window.
            EngineError: the engine cannot take this request.
        """

    def shutdown(self) -> None:
        """Stop the engine's workers and free what it holds (optional)."""
