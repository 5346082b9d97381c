"""``SpeechGPTChat``: SpeechGPT as a LangChain chat model (text and audio in, text and audio out).

Quick start::

    from langchain_core.messages import HumanMessage
    from speechgpt_agent import SpeechGPTChat
    from speechgpt_agent.integrations.langchain import message_audio

    chat = SpeechGPTChat()  # fnlp/SpeechGPT-7B-cm + -com adapter, 4-bit; loaded on first use
    reply = chat.invoke([HumanMessage([
        {"type": "text", "text": "Please answer:"},
        {"type": "audio", "base64": wav_b64, "mime_type": "audio/wav"},
    ])])
    reply.text                                    # the text answer
    reply.response_metadata["transcript"]         # what SpeechGPT heard
    message_audio(reply)                          # (float32 samples, 16000)

Output format. An ``AIMessage`` whose ``content`` is a list of v1 content blocks: one
``{"type": "text", "text": ...}`` and, when the answer was spoken, one
``{"type": "audio", "base64": <16-bit PCM wav>, "mime_type": "audio/wav"}``. With
``modalities=["text"]`` the content is a plain string. ``response_metadata`` holds
``model_name``, ``model_provider`` (``"speechgpt"``), ``finish_reason`` (``"stop"``,
``"length"``, ``"cancelled"``), ``transcript`` (SpeechGPT's transcript of the user's
speech, ``""`` for text questions), ``units`` (the answer's speech units, 50 Hz frames
merged), ``sample_rate`` and ``complete`` (the answer ended with ``<eoa>``).
``usage_metadata`` counts prompt and answer tokens; ``input_token_details["audio"]`` and
``output_token_details["audio"]`` count the speech-unit tokens among them.

Stream format. ``stream``/``astream`` yield ``AIMessageChunk``s while the model generates:
text deltas as ``{"type": "text", "text": delta, "index": 0}`` blocks (all with index 0, so
that adding chunks concatenates them into one text block), and each piece of speech as soon
as the streaming vocoder produced it, as its own block ``{"type": "audio", "base64": <wav of
this piece>, "mime_type": "audio/wav", "index": k, "extras": {"offset": first sample,
"sample_rate": 16000}}`` with ``k = 1, 2, ...`` (distinct indexes, so added chunks keep the
pieces as consecutive blocks instead of merging their base64). The transcript of the
user's speech reaches the stream as soon as the parser knows it: chunks with empty content
whose ``response_metadata["transcript"]`` holds the next piece of it (adding chunks
concatenates them). The last chunk (``chunk_position="last"``) carries tool calls, usage
and the rest of ``response_metadata`` (and the transcript's remainder, usually ``""``).
Invalid tool calls stream as tool-call chunks whose args are the raw text (as in
``invoke``) when langchain-core's partial-JSON repair cannot turn it into a call; a
truncated call, which that repair would complete, goes as a JSON string. langchain-core
rebuilds streamed invalid calls with ``error=None``, so the reason is also kept in
``response_metadata["invalid_tool_call_errors"]`` (a list, in call order), in both paths. With
``modalities=["text"]`` chunks carry plain string deltas. ``stop`` sequences cut the text
before the first of them and end generation there (so nothing after them is spoken).
:func:`~speechgpt_agent.integrations.langchain.message_audio` joins the pieces of a summed
stream (or the single block of an invoked message) into one array.

Tools. SpeechGPT has no native tool format: :meth:`SpeechGPTChat.bind_tools` lists the tool
schemas in the system text and asks for ``{"tool": name, "arguments": {...}}`` (see
:mod:`.tool_calling`); the answer is parsed into ``tool_calls`` (malformed JSON into
``invalid_tool_calls``). While a call may be under way the stream holds the text back, and
generation ends as soon as a call is complete, so no speech is synthesized for it.
Without tools bound (or with ``tool_choice="none"``) and without a JSON answer, the answer's
text never opens with a call: decoding refuses it (:func:`speechgpt_agent.grammar_guard.no_tool_call_grammar`),
so a model that learned the convention answers in words instead.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, ModelProfile
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from pydantic import BaseModel, Field, field_validator, model_validator

from speechgpt_agent.model import (
    DEFAULT_ADAPTER,
    DEFAULT_MODEL,
    GenerationOptions,
)
from speechgpt_agent.pipeline import SpeechGPT
from speechgpt_agent.prompt import as_history

from ._runtime import (
    RuntimeSpec,
    context_length_hint,
    load_runtime,
    load_text_tokenizer,
    prompt_tokens_bound,
)
from .answer_message import PROVIDER
from .request import ChatRequest
from .structured_output import structured_output
from .tool_calling import (
    answer_grammar,
    normalize_tool_choice,
    tool_specs,
)

__all__ = ["SpeechGPTChat"]

DEFAULT_SPEECH_TOKENIZER = "voidful/mhubert-base"

Modality = Literal["text", "audio"]

_ALIASES = {"model_name": "model", "max_new_tokens": "max_tokens",
            "max_completion_tokens": "max_tokens", "stop_sequences": "stop"}
"""Other names of constructor arguments (those of other LangChain chat models)."""
_IGNORED = frozenset({"api_key"})
"""Arguments of hosted chat models, accepted and dropped: a local model has no API key."""


def _hashable(value: Any) -> Any:
    """``value`` made hashable (lists -> tuples, dicts -> sorted item tuples) for a runtime key."""
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return value


class SpeechGPTChat(BaseChatModel):
    """SpeechGPT (Zhang et al., 2023) as a LangChain chat model: hears and speaks.

    ``SpeechGPTChat()`` uses the released model set (``fnlp/SpeechGPT-7B-cm`` with the
    ``fnlp/SpeechGPT-7B-com`` chain-of-modality adapter, 4-bit NF4; the mHuBERT speech
    tokenizer and the unit HiFi-GAN vocoder). Every part is a hub id or a local folder.
    Nothing is loaded until the first call, and instances naming the same weights share one
    loaded model (so ``bind_tools`` copies, agents and tools cost no memory).

    Input: system, human, AI and tool messages; human messages hold text and audio content
    blocks (v1 ``audio`` blocks with base64 or a data/file/http URL, OpenAI ``input_audio``
    blocks, legacy ``source_type`` blocks). Output and stream formats: see the module
    docstring of :mod:`speechgpt_agent.integrations.langchain.chat_models`.

    Example::

        chat = SpeechGPTChat(model="/models/SpeechGPT-7B-cm", adapter="/models/SpeechGPT-7B-com",
                             speech_tokenizer="/models/mhubert-base", vocoder="/models/vocoder")
        for chunk in chat.stream("Tell me about the sea."):
            ...
    """

    # -- weights --
    model: str = DEFAULT_MODEL
    """Language model: hub id or folder in the ``fnlp/SpeechGPT-7B-cm`` layout."""
    adapter: str | None = DEFAULT_ADAPTER
    """peft LoRA adapter (hub id or folder), e.g. one made by ``speechgpt-agent train``; ``None`` for none."""
    speech_tokenizer: str | None = DEFAULT_SPEECH_TOKENIZER
    """mHuBERT speech tokenizer (hub id or folder); ``None`` for a model that takes no audio."""
    kmeans: str | None = None
    """k-means file of the speech tokenizer (default: the one beside it)."""
    vocoder: str | None = None
    """Unit HiFi-GAN vocoder (hub id or folder); ``None`` for the released one, ``""`` for none."""
    quantization: Literal["nf4", "int8"] | None = "nf4"
    """Weights of the language model: 4-bit NF4 (about 4 GB for 7B), LLM.int8 or unquantized."""
    device_map: str | None = None
    """transformers ``device_map`` of the language model (default: the GPU if any, else CPU)."""
    dtype: Literal["bfloat16", "float16", "float32"] | None = None
    """Compute dtype of the language model (default bfloat16; float16 for int8)."""
    device: str | None = None
    """Device of the speech tokenizer and vocoder (default: the GPU if any)."""
    trust_pickle: bool = False
    """Allow the upstream pickled k-means file (prefer ``speechgpt-agent convert`` once)."""
    engine: Literal["transformers", "vllm"] = "transformers"
    """Where generation runs: the embedded transformers engine, or vLLM (continuous batching,
    tensor / pipeline parallelism; DESIGN.md section 10)."""
    engine_args: dict[str, Any] = Field(default_factory=dict)
    """Engine arguments, e.g. ``{"tensor_parallel_size": 2}`` for vLLM."""

    # -- what to produce --
    modalities: list[Modality] = Field(default_factory=lambda: ["text", "audio"])
    """``["text", "audio"]``: answers are also spoken; ``["text"]``: text only (no vocoder work)."""
    temperature: float = 0.7
    """Sampling temperature; 0 decodes greedily. The default is the original CLI's."""
    top_p: float = 0.8
    """Nucleus sampling mass (the original CLI's)."""
    top_k: int = 50
    """Top-k sampling (the original CLI's); 0 disables it."""
    max_tokens: int | None = None
    """Most tokens generated per answer (text and speech units together; 50 units per second).
    ``None`` (default): whatever the prompt leaves of the model's context window (2048 tokens
    for SpeechGPT-7B, 1024 for the demo). Any value is clamped to what the prompt leaves, and
    the prompt is then budgeted from what the answer leaves (older turns dropped first); when
    a long history would leave less than a quarter of the window, the answer keeps a quarter.
    Alias: ``max_new_tokens``, ``max_completion_tokens``."""
    min_new_tokens: int = 10
    """Fewest tokens generated before the answer may end (the original CLI's 10)."""
    repetition_penalty: float = 1.0
    """transformers repetition penalty (1.0: none)."""
    seed: int | None = None
    """Makes sampling reproducible; ``None`` draws a fresh seed per call."""
    stop: list[str] | None = None
    """Stop sequences: the text answer ends before the first of them (generation stops there)."""
    streaming: bool = False
    """Use the streaming path for ``invoke`` too (callbacks then see every token)."""
    allow_remote_audio: bool = False
    """Fetch audio named by ``http(s)://`` URLs in message content. Off by default: with
    messages from users, following their URLs is a server-side request forgery. Pass audio
    as base64 (or a ``data:`` URL), or turn this on for trusted messages."""
    allow_local_files: bool = False
    """Read audio named by local paths and ``file://`` URLs in message content. Off by
    default: with messages from users it would read any file of this machine. ``base64``
    fields are only ever decoded, whatever this says."""
    timeout: float | None = None
    """Accepted for compatibility with LangChain's standard parameters and ignored: the model
    runs in this process, there is no request to time out. Bound answers with ``max_tokens``."""
    max_retries: int | None = None
    """Accepted for compatibility and ignored: there is no remote call to retry."""
    logits_processors: list[Callable[[], Any]] = Field(default_factory=list, exclude=True)
    """Constrained decoding: factories called once per generation, each returning a
    transformers ``LogitsProcessor`` (``(input_ids [1, T], scores [1, V]) -> scores``).
    Factories, not processors, because constraint processors (grammars, forced answers) keep
    per-generation state. Not serialized."""

    @field_validator("model", "adapter", "speech_tokenizer", "kmeans", "vocoder", mode="before")
    @classmethod
    def _path_to_str(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("modalities")
    @classmethod
    def _check_modalities(cls, value: list[str]) -> list[str]:
        if "text" not in value:
            raise ValueError("modalities must include 'text' (SpeechGPT always writes its answer).")
        return value

    @field_validator("temperature")
    @classmethod
    def _check_temperature(cls, value: float) -> float:
        if value < 0:
            raise ValueError(f"temperature must be >= 0 (0 decodes greedily), got {value}.")
        return value

    @model_validator(mode="before")
    @classmethod
    def _aliases_and_unknown_arguments(cls, values: Any) -> Any:
        """Map the usual aliases (``model_name`` ...) and refuse unknown arguments, which
        pydantic would drop silently (``tempurature=0`` would sample at 0.7)."""
        if not isinstance(values, dict):
            return values
        values = {k: v for k, v in values.items() if k not in _IGNORED}
        for alias, name in _ALIASES.items():
            if alias in values:
                value = values.pop(alias)
                if name in values and values[name] != value:
                    raise ValueError(f"{alias}={value!r} and {name}={values[name]!r} disagree; give one.")
                values[name] = value
        unknown = sorted(set(values) - set(cls.model_fields) - {
            f.alias for f in cls.model_fields.values() if f.alias})
        if unknown:
            import difflib

            known = sorted({*cls.model_fields, *_ALIASES})
            hints = [f"{u!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(u, known, 1))
                     else repr(u) for u in unknown]
            raise ValueError(f"SpeechGPTChat got unknown argument(s) {', '.join(hints)}.")
        return values

    @field_validator("max_tokens")
    @classmethod
    def _check_max_tokens(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"max_tokens must be >= 1, got {value}.")
        return value

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        self._options({})  # validate top_p, top_k, repetition_penalty ... now, not at the first call

    # -- LangChain plumbing --

    @property
    def _llm_type(self) -> str:
        return "speechgpt-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model, "adapter": self.adapter, "speech_tokenizer": self.speech_tokenizer,
            "kmeans": self.kmeans, "vocoder": self.vocoder, "quantization": self.quantization,
            "modalities": list(self.modalities), "temperature": self.temperature,
            "top_p": self.top_p, "top_k": self.top_k, "max_tokens": self.max_tokens,
            "min_new_tokens": self.min_new_tokens, "repetition_penalty": self.repetition_penalty,
            "seed": self.seed,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider=PROVIDER,
            ls_model_name=str(kwargs.get("model") or self.model),
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens),
        )
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    def _resolve_model_profile(self) -> ModelProfile | None:
        """What this model set can do: context window (from the model's ``config.json`` when it
        is local, 2048 for the released model), audio in and out, tool calling."""
        profile = ModelProfile(
            name=f"SpeechGPT ({self.model})", open_weights=True,
            text_inputs=True, audio_inputs=self.speech_tokenizer is not None,
            image_inputs=False, image_url_inputs=False, pdf_inputs=False, video_inputs=False,
            text_outputs=True, audio_outputs="audio" in self.modalities and self.vocoder != "",
            image_outputs=False, video_outputs=False, reasoning_output=False,
            tool_calling=True, tool_choice=True, tool_call_streaming=True,
            # with_structured_output works (a JSON answer, constrained), but through the
            # prompt, not a provider feature: agents then take their tool strategy
            structured_output=False, temperature=True, attachment=False,
        )
        context = context_length_hint(self.model)
        if context is not None:
            profile["max_input_tokens"] = context
            profile["max_output_tokens"] = context if self.max_tokens is None else min(self.max_tokens, context)
        return profile

    # -- counting tokens (the model's own tokenizer) --

    def _token_model(self) -> Any:
        spec = self._spec()
        from ._runtime import _RUNTIMES

        loaded = _RUNTIMES._items.get(spec)
        return loaded.model if loaded is not None else load_text_tokenizer(self.model)

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` in SpeechGPT's tokenizer (no ``<s>``; control tokens spelled
        in ``text`` count as such). Loads only the tokenizer if the model is not loaded."""
        return list(self._token_model().tokenizer.encode(text, add_special_tokens=False))

    def get_num_tokens(self, text: str) -> int:
        """Number of SpeechGPT tokens of ``text`` (see :meth:`get_token_ids`)."""
        return len(self.get_token_ids(text))

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        """Tokens of the prompt these messages (and tools) make, as SpeechGPT would read it.

        Speech counts one token per 20 ms (an upper bound of its units, as no speech tokenizer
        runs here); earlier spoken turns count as their transcripts.
        """
        request = ChatRequest(self, list(messages), None, {"tools": list(tools)} if tools else {})
        kw = request.stream_kwargs
        return prompt_tokens_bound(self._token_model().count_tokens, text=kw["text"], audio=kw["audio"],
                                   history=as_history(kw["history"]), system=kw["system"]) - 1

    # -- the runtime --

    def _spec(self, model: str | None = None) -> RuntimeSpec:
        """What to load: this instance's parts, or for another ``model`` (a per-call override)
        the parts ``SpeechGPTChat(model=model)`` would have (``"demo"``: all the demo's own)
        with this instance's quantization, devices and ``trust_pickle``."""
        own = model is None or str(model) == self.model
        return RuntimeSpec(
            model=self.model if own else str(model),
            adapter=self.adapter if own else DEFAULT_ADAPTER,
            speech_tokenizer=self.speech_tokenizer if own else DEFAULT_SPEECH_TOKENIZER,
            kmeans=self.kmeans if own else None, vocoder=self.vocoder if own else None,
            quantization=self.quantization,
            device_map=self.device_map, dtype=self.dtype, device=self.device,
            trust_pickle=self.trust_pickle, engine=self.engine,
            engine_args=tuple(sorted((k, _hashable(v)) for k, v in self.engine_args.items())),
        )

    @property
    def runtime(self) -> SpeechGPT:
        """The loaded :class:`~speechgpt_agent.pipeline.SpeechGPT` (loaded now if needed, shared)."""
        return load_runtime(self._spec())

    def _options(self, kwargs: dict[str, Any]) -> GenerationOptions:
        temperature = float(kwargs.get("temperature", self.temperature))
        requested = kwargs.get("max_tokens", self.max_tokens)
        max_new = int(requested) if requested is not None else GenerationOptions().max_new_tokens
        return GenerationOptions(
            max_new_tokens=max_new,
            min_new_tokens=min(self.min_new_tokens, max_new),
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else 1.0,
            top_p=float(kwargs.get("top_p", self.top_p)),
            top_k=int(kwargs.get("top_k", self.top_k)),
            repetition_penalty=self.repetition_penalty,
        )

    # -- generation --

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        request = ChatRequest(self, messages, stop, kwargs)
        runtime = load_runtime(request.spec)
        stream_kwargs, answer = request.start(runtime, streaming=False)
        events = runtime.stream(**stream_kwargs)
        try:
            for event in events:
                answer.feed(event)
        finally:
            events.close()
        return ChatResult(generations=[ChatGeneration(message=answer.message())])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        request = ChatRequest(self, messages, stop, kwargs)
        runtime = load_runtime(request.spec)
        stream_kwargs, answer = request.start(runtime, streaming=True)
        events = runtime.stream(**stream_kwargs)
        try:
            for event in events:
                for chunk in answer.feed(event):
                    if run_manager is not None:
                        run_manager.on_llm_new_token(chunk.message.text, chunk=chunk)
                    yield chunk
        finally:
            events.close()
        yield answer.last_chunk()

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        loop = asyncio.get_running_loop()
        request = await loop.run_in_executor(None, ChatRequest, self, messages, stop, kwargs)
        runtime = await loop.run_in_executor(None, load_runtime, request.spec)
        stream_kwargs, answer = request.start(runtime, streaming=True)
        events = runtime.astream(**stream_kwargs)
        try:
            async for event in events:
                for chunk in answer.feed(event):
                    if run_manager is not None:
                        await run_manager.on_llm_new_token(chunk.message.text, chunk=chunk)
                    yield chunk
        finally:
            await events.aclose()
        yield answer.last_chunk()

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        loop = asyncio.get_running_loop()
        request = await loop.run_in_executor(None, ChatRequest, self, messages, stop, kwargs)
        runtime = await loop.run_in_executor(None, load_runtime, request.spec)
        stream_kwargs, answer = request.start(runtime, streaming=False)
        events = runtime.astream(**stream_kwargs)
        try:
            async for event in events:
                answer.feed(event)
        finally:
            await events.aclose()
        return ChatResult(generations=[ChatGeneration(message=answer.message())])

    # -- tools and structured output --

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | Any],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        parallel_tool_calls: bool | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[Any, AIMessage]:
        """Offer tools to the model: described in the prompt, calls enforced by a grammar.

        The tools' JSON schemas are listed in the system text, and decoding is constrained
        (:mod:`speechgpt_agent.grammar`) so that a call is always
        ``{"tool": name, "arguments": {...}}`` with arguments valid for that tool's schema
        (see :mod:`.tool_calling`).

        Args:
            tools: ``BaseTool``s, functions, pydantic models, TypedDicts or JSON schemas.
            tool_choice: ``"auto"`` (default: the model answers freely, and a call it starts
                is constrained to completion), ``"none"``, ``"any"``/``"required"`` (the
                answer's text part is a call of one of the tools) or a tool name (a call of
                that tool). A demanded call is text only (never spoken).
            parallel_tool_calls: ``False``: one call per answer (``None``/``True`` also allow a
                JSON list of calls).
            strict: ``None``/``True`` (default): constrained, objects take no properties beyond
                their schema's; ``False``: the prompt alone asks for the form (no grammar;
                arguments may then not match the schema).

        Raises:
            ValueError: an unknown ``tool_choice``.
            speechgpt_agent.grammar.GrammarError: a schema keyword the grammar cannot enforce
                (named with the tool and its path); pass ``strict=False`` to bind it anyway.
        """
        specs = tool_specs(tools)
        choice = normalize_tool_choice(tool_choice, [s["name"] for s in specs])
        answer_grammar(specs, choice, parallel=parallel_tool_calls is not False, strict=strict)
        if parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = parallel_tool_calls
        if strict is not None:
            kwargs["strict"] = strict
        return self.bind(tools=specs, tool_choice=choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[Any, dict[str, Any] | BaseModel]:
        """Answers parsed into ``schema`` (pydantic model, TypedDict or JSON schema).

        Args:
            method: ``"json_schema"`` (default: the answer is constrained to a JSON object that
                matches the schema; the prompt also shows the schema), ``"function_calling"``
                (the schema becomes a demanded tool) or ``"json_mode"`` (constrained to a JSON
                object; the caller describes the schema).
            include_raw: return ``{"raw", "parsed", "parsing_error"}`` instead of raising on
                an answer that does not parse.
            strict: ``None``/``True`` (default): constrained by a grammar, objects take no
                properties beyond the schema's; ``False``: the prompt alone asks for it.

        The answer is text only (structured output is parsed, not spoken).

        Raises:
            speechgpt_agent.grammar.GrammarError: a schema keyword the grammar cannot enforce.
            langchain_core.exceptions.OutputParserException: (from the runnable, unless
                ``include_raw``) the answer reached ``max_tokens`` before its JSON closed,
                or the demanded call is invalid; the message names the limit to raise.
        """
        if kwargs:
            raise ValueError(f"unsupported arguments {sorted(kwargs)}.")
        return structured_output(self, schema, method=method, include_raw=include_raw, strict=strict)

