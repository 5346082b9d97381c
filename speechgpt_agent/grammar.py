"""Grammar-constrained decoding: tool calls and structured answers that always parse.

SpeechGPT was never trained to call tools or to answer in JSON, so a prompt alone cannot
make it do either reliably. This module constrains decoding instead, as serving engines do,
with `xgrammar <https://github.com/mlc-ai/xgrammar>`_ (the default backend of vLLM's
structured outputs), so that the embedded engine and vLLM constrain identically.

Three layers:

* :class:`Grammar`, an engine-neutral, serialisable spec: ``kind`` (``"json_schema"``,
  ``"structural_tag"`` or ``"ebnf"``) and its ``source`` text. :meth:`Grammar.to_vllm`
  gives the keyword arguments of vLLM's ``StructuredOutputsParams``.
* Builders of the grammars of SpeechGPT's answer format (:func:`tool_call_grammar`,
  :func:`json_answer_grammar`). They constrain the *text part* of the chain of modality
  and nothing else::

      text question:   " [ta] <constrained><eoa>"
      spoken question: "{transcript}; [ta] <constrained><eoa>"
      spoken answer:   "... [ta] <constrained>; [ua] <sosp>...<eosp><eoa>"  (text answers only)

  The transcript and the speech units stay free text; a tool call always ends the answer
  (it is never spoken). JSON strings can never spell an answer marker or a vocabulary token
  (``<eoa>``, ``[ta]``, ``[ua]``, ``<sosp>``, ``[Human]``, ``<12>`` ...), which would end or
  split the text part in :mod:`speechgpt_agent.parse`.
  The guard of a turn with no tool bound (no text part may open with a call) is
  :func:`speechgpt_agent.grammar_guard.no_tool_call_grammar`.
* :class:`GrammarLogitsProcessor`: a transformers ``LogitsProcessor`` fed by an xgrammar
  ``GrammarMatcher`` and its token bitmask (CPU and CUDA logits), compiled against the
  model's tokenizer and cached per (tokenizer, grammar).

Example::

    grammar = tool_call_grammar(tool_specs([get_weather]), "any")
    processor = grammar.logits_processor(speechgpt.model)     # one per generation
    speechgpt.chat("Weather in Paris?", output="text", logits_processors=[processor])
"""

from __future__ import annotations

import copy
import json
import re
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from .errors import SpeechGPTError
from .prompt import EOA, EOH, EOS_ADDED, EOSP, HUMAN, SOSP, SPEECHGPT, TA, UA

__all__ = [
    "CALL_TRIGGER",
    "MARKER_EXCLUDES",
    "Grammar",
    "GrammarError",
    "GrammarKind",
    "GrammarLogitsProcessor",
    "compile_grammar",
    "json_answer_grammar",
    "strict_schema",
    "tool_call_grammar",
]

GrammarKind = Literal["json_schema", "structural_tag", "ebnf"]

CALL_TRIGGER = '{"tool"'
"""The opening of a call in the prompt's JSON convention (``{"tool": name, "arguments": ...}``).
With ``tool_choice="auto"`` the answer is free until it writes this; the call is then
constrained to completion."""

MARKER_EXCLUDES: tuple[str, ...] = (
    EOA, TA, UA, "[tq]", SOSP, EOSP, HUMAN, SPEECHGPT, EOH, EOS_ADDED, "<s>", "</s>",
    *(f"<{d}" for d in range(10)),
)
"""Substrings that no constrained JSON string may contain: the answer markers, SpeechGPT's
added tokens and ``<digit`` (the start of every unit token ``<0>``..``<999>``). A string
that spelled one would end the answer or split its text part (see :mod:`.parse`)."""

# JSON-schema keywords xgrammar cannot enforce (it ignores them): refused with their path
# rather than silently accepting output that the schema forbids.
_UNSUPPORTED_KEYWORDS = (
    "not", "if", "then", "else", "dependentSchemas", "dependentRequired", "dependencies",
    "unevaluatedProperties", "unevaluatedItems", "contains", "minContains", "maxContains",
    "uniqueItems", "propertyNames",
)
_UNSUPPORTED_REGEX = re.compile(r"\(\?[=!<]|\\[1-9]")  # lookaround, backreference
# One character of a bounded string: printable ASCII but " < [ \, and every other valid code
# point. Spelled as positive ranges: xgrammar's regex automaton for a negated class also
# accepts overlong and surrogate UTF-8 byte sequences, which decode to U+FFFD garbage.
_BOUNDED_CHAR = "[ -!#-;=-Z\\]-~\u00a0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
_SPACE = 1  # most consecutive whitespace characters inside constrained JSON
_TRANSCRIPT_TOKENS = 120  # most tokens of the free transcript before a constrained text part


class GrammarError(SpeechGPTError, ValueError):
    """A grammar or JSON schema that cannot be enforced, named by its unsupported part.

    Raised when the grammar is built or compiled, before any generation starts.
    """


# --- the spec --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grammar:
    """An engine-neutral constraint on generated text.

    Attributes:
        kind: ``"json_schema"`` (``source`` is a JSON schema, the output is one JSON value),
            ``"structural_tag"`` (``source`` is an xgrammar / vLLM structural tag in JSON:
            free text, constrained tags, sequences ...) or ``"ebnf"`` (``source`` is an EBNF
            grammar in xgrammar's / GBNF syntax, ``root`` is the start rule).
        source: the text of the grammar, compact JSON for the JSON kinds (keys in their
            given order: properties are generated in schema order), so equal grammars have
            equal sources and share a compiled grammar.
        description: what it constrains, in words (for error messages and logs).

    Frozen and hashable; :meth:`to_dict` / :meth:`from_dict` serialise it.
    """

    kind: GrammarKind
    source: str
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("json_schema", "structural_tag", "ebnf"):
            raise GrammarError(f"grammar kind must be 'json_schema', 'structural_tag' or 'ebnf', "
                               f"got {self.kind!r}.")
        if not isinstance(self.source, str) or not self.source.strip():
            raise GrammarError("a grammar needs a non-empty source text.")

    # constructors

    @classmethod
    def from_json_schema(cls, schema: Mapping[str, Any] | bool, *, strict: bool = True,
                         description: str = "") -> Grammar:
        """One JSON value matching ``schema`` (nothing before or after it).

        Args:
            schema: a JSON schema (dict), or ``True`` for any JSON value.
            strict: objects without ``additionalProperties`` take no other properties.

        Raises:
            GrammarError: a keyword the grammar cannot enforce (named with its path).
        """
        checked = strict_schema(schema, strict=strict) if isinstance(schema, Mapping) else schema
        return cls("json_schema", _canonical(checked), description or "a JSON value")

    @classmethod
    def from_structural_tag(cls, tag: Mapping[str, Any], *, description: str = "") -> Grammar:
        """A structural tag (``{"type": "structural_tag", "format": {...}}``, xgrammar's format)."""
        if tag.get("type") != "structural_tag" or "format" not in tag:
            raise GrammarError('a structural tag is {"type": "structural_tag", "format": {...}}.')
        return cls("structural_tag", _canonical(tag), description or "a structural tag")

    @classmethod
    def from_ebnf(cls, ebnf: str, *, description: str = "") -> Grammar:
        """An EBNF grammar (xgrammar's syntax, start rule ``root``)."""
        return cls("ebnf", ebnf, description or "an EBNF grammar")

    # serialisation and other engines

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Grammar:
        return cls(str(data["kind"]), str(data["source"]), str(data.get("description", "")))  # type: ignore[arg-type]

    def to_vllm(self) -> dict[str, Any]:
        """Keyword arguments of vLLM's ``StructuredOutputsParams`` for this grammar.

        ``json_schema`` -> ``{"json": schema dict}``, ``ebnf`` -> ``{"grammar": text}``,
        ``structural_tag`` -> ``{"structural_tag": JSON text}``. Use with vLLM's xgrammar
        backend (``structured_outputs_config={"backend": "xgrammar"}``) so that both engines
        constrain identically::

            from vllm.sampling_params import SamplingParams, StructuredOutputsParams
            params = SamplingParams(structured_outputs=StructuredOutputsParams(**g.to_vllm()))

        The vocabulary is the same on both sides: vLLM builds xgrammar's tokenizer info from
        the Hugging Face tokenizer, as :func:`compile_grammar` does.
        """
        if self.kind == "json_schema":
            return {"json": json.loads(self.source)}
        if self.kind == "ebnf":
            return {"grammar": self.source}
        return {"structural_tag": self.source}

    # the embedded engine

    def compile(self, model: Any) -> Any:
        """The xgrammar ``CompiledGrammar`` for ``model``'s tokenizer (cached)."""
        return compile_grammar(self, model)

    def logits_processor(self, model: Any, *, after: Sequence[Any] = ()) -> GrammarLogitsProcessor:
        """A fresh :class:`GrammarLogitsProcessor` for one generation with ``model``.

        Raises:
            GrammarError: the grammar does not compile (before anything is generated).
        """
        return GrammarLogitsProcessor(self.compile(model), after=after, description=self.description)


def _canonical(obj: Any) -> str:
    # keys keep their order: a schema's property order is the order the JSON is written in
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


# --- JSON schemas ---------------------------------------------------------------------------------


def strict_schema(schema: Mapping[str, Any], *, strict: bool = True) -> dict[str, Any]:
    """A copy of ``schema`` ready for the grammar, after checking what it can enforce.

    * ``strict``: every object schema without ``additionalProperties`` gets
      ``additionalProperties: false`` (as OpenAI's strict mode; xgrammar's default too),
      so the model cannot wander into made-up keys.
    * A string with ``minLength``/``maxLength`` (and no ``pattern``, ``format``, ``enum``
      or ``const``) becomes a ``pattern`` of that many valid characters other than ``<``,
      ``[``, ``"``, ``\\`` and control characters: xgrammar cannot apply length bounds together
      with the marker exclusions (:data:`MARKER_EXCLUDES`), and a bounded string that can
      hold neither ``<`` nor ``[`` never spells a marker.

    Raises:
        GrammarError: a keyword the grammar cannot enforce (``not``, ``if``/``then``,
            ``uniqueItems``, ``contains`` ...) or a ``pattern`` with lookaround or
            backreferences, named with its JSON path.
    """
    if not isinstance(schema, Mapping):
        raise GrammarError(f"a JSON schema must be an object, got {type(schema).__name__}.")
    out = copy.deepcopy(dict(schema))
    _walk(out, "#", strict)
    return out


def _walk(node: Any, path: str, strict: bool) -> None:
    if isinstance(node, list):
        for i, item in enumerate(node):
            _walk(item, f"{path}/{i}", strict)
        return
    if not isinstance(node, dict):
        return
    for key in _UNSUPPORTED_KEYWORDS:
        if key in node:
            raise GrammarError(
                f"the JSON schema uses {key!r} at {path}, which the grammar cannot enforce "
                "(supported: type, properties, required, additionalProperties, items, prefixItems, "
                "enum, const, anyOf, oneOf, allOf, $ref/$defs, minimum/maximum, minItems/maxItems, "
                "pattern, format, minLength/maxLength). Drop it, or pass strict=False to send the "
                "schema in the prompt only (unconstrained).")
    pattern = node.get("pattern")
    if isinstance(pattern, str) and _UNSUPPORTED_REGEX.search(pattern):
        raise GrammarError(f"the pattern {pattern!r} at {path} uses lookaround or a backreference, "
                           "which the grammar cannot enforce.")
    types = node.get("type")
    is_object = types == "object" or (isinstance(types, list) and "object" in types) or \
        ("properties" in node and "type" not in node)
    if strict and is_object and "additionalProperties" not in node:
        node["additionalProperties"] = False
    is_string = types == "string"
    if is_string and ("minLength" in node or "maxLength" in node) and not any(
            k in node for k in ("pattern", "format", "enum", "const")):
        low = int(node.pop("minLength", 0))
        high = node.pop("maxLength", None)
        node["pattern"] = f"^{_BOUNDED_CHAR}{{{low},{'' if high is None else int(high)}}}$"
    for key, value in node.items():
        if key in ("enum", "const", "default", "examples", "description", "title"):
            continue
        if key in ("properties", "$defs", "definitions", "patternProperties"):
            if isinstance(value, dict):
                for name, sub in value.items():
                    _walk(sub, f"{path}/{key}/{name}", strict)
            continue
        _walk(value, f"{path}/{key}", strict)


# --- the SpeechGPT answer format --------------------------------------------------------------------

Lead = Literal["text", "spoken"]


def _const(value: str) -> dict[str, Any]:
    return {"type": "const_string", "value": value}


def _regex(pattern: str) -> dict[str, Any]:
    return {"type": "regex", "pattern": pattern}


def _seq(*elements: dict[str, Any]) -> dict[str, Any]:
    return {"type": "sequence", "elements": list(elements)}


def _or(*elements: dict[str, Any]) -> dict[str, Any]:
    return elements[0] if len(elements) == 1 else {"type": "or", "elements": list(elements)}


def _json(schema: Mapping[str, Any] | bool) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": schema, "excludes": list(MARKER_EXCLUDES),
            "max_whitespace_cnt": _SPACE}


def _any_text(*excludes: str) -> dict[str, Any]:
    return {"type": "any_text", "excludes": list(excludes)}


def _lead(lead: Lead) -> dict[str, Any]:
    """Everything before the constrained text: ``" [ta] "``, after the transcript if spoken."""
    ta = _regex(r" ?\[ta\] ?")
    if lead == "text":
        return ta
    if lead == "spoken":  # the transcript (possibly empty: a question of text and speech)
        # no "<" (a transcript never holds one: the model cannot end the answer here with
        # <eoa>) and at most _TRANSCRIPT_TOKENS tokens, then "; [ta]" is the only way on
        transcript = {**_any_text(TA, UA, "<", "{"), "max_tokens": _TRANSCRIPT_TOKENS}
        return _seq(transcript, _regex(r"; ?\[ta\] ?|\[ta\] ?"))
    raise GrammarError(f"lead must be 'text' or 'spoken', got {lead!r}.")


def _text_end(speech: bool) -> dict[str, Any]:
    """After a text (or JSON) answer: ``<eoa>``, the end token, or ``; [ua]`` and free units."""
    end = {"type": "optional", "content": _const(EOA)}
    if not speech:
        return end
    return _or(end, _seq(_regex(r" ?; ?\[ua\]"), {"type": "any_text"}))


def _call_tag(spec: Mapping[str, Any], strict: bool) -> dict[str, Any]:
    name = spec["name"]
    params = spec.get("parameters") or {"type": "object", "properties": {}}
    try:
        schema = strict_schema(params, strict=strict)
    except GrammarError as exc:
        raise GrammarError(f"tool {name!r}: {exc}") from None
    begin = json.dumps({"tool": name}, ensure_ascii=False)[:-1] + ', "arguments": '
    return {"type": "tag", "begin": begin, "content": _json(schema), "end": "}"}


def _calls(specs: Sequence[Mapping[str, Any]], strict: bool, parallel: bool) -> dict[str, Any]:
    tags = [_call_tag(s, strict) for s in specs]
    one = _or(*tags)
    if not parallel:
        return one
    many = _seq(_const("["), {"type": "tags_with_separator", "tags": tags, "separator": ", ",
                              "at_least_one": True}, _const("]"))
    return _or(one, many)


def tool_call_grammar(
    specs: Sequence[Mapping[str, Any]],
    choice: str,
    *,
    lead: Lead = "text",
    speech: bool = False,
    parallel: bool = True,
    strict: bool = True,
) -> Grammar:
    """The grammar of an answer that calls the bound tools.

    Args:
        specs: ``{"name", "description", "parameters"}`` of each tool (``tool_specs``).
        choice: ``"any"`` (a call of one of the tools is the whole text part), a tool name
            (a call of that tool), or ``"auto"`` (free text until :data:`CALL_TRIGGER`, then
            a complete call of one of the tools; or a free text answer).
        lead: ``"text"`` for a text question (the answer starts at ``[ta]``), ``"spoken"``
            when the question holds speech (a free transcript comes first).
        speech: a free-text answer (``"auto"`` only) may go on to ``; [ua]`` and units.
        parallel: also allow a JSON list of calls.
        strict: objects take no properties beyond their schema's (see :func:`strict_schema`).

    Raises:
        GrammarError: no tools, an unknown choice, or a schema keyword the grammar cannot
            enforce (named with the tool and its path).
    """
    if not specs:
        raise GrammarError("tool_call_grammar needs at least one tool.")
    names = [s["name"] for s in specs]
    if choice not in ("any", "auto") and choice not in names:
        raise GrammarError(f"tool_choice {choice!r} is neither 'any', 'auto' nor a bound tool "
                           f"({', '.join(names)}).")
    chosen = [s for s in specs if s["name"] == choice] if choice in names else list(specs)
    calls = _calls(chosen, strict, parallel)
    call_end = {"type": "optional", "content": _const(EOA)}  # a call is never spoken
    if choice == "auto":
        free = _any_text(CALL_TRIGGER, EOA, UA)
        body = _or(_seq(free, calls, call_end), _seq(free, _text_end(speech)))
        what = f"an answer that may call {', '.join(names)}"
    else:
        body = _seq(calls, call_end)
        what = f"a call of {' or '.join(s['name'] for s in chosen)}"
    tag = {"type": "structural_tag", "format": _seq(_lead(lead), body)}
    return Grammar.from_structural_tag(tag, description=what)


def json_answer_grammar(
    schema: Mapping[str, Any] | None,
    *,
    lead: Lead = "text",
    speech: bool = False,
    strict: bool = True,
) -> Grammar:
    """The grammar of a structured answer: the text part is one JSON value.

    Args:
        schema: the JSON schema of the answer, or ``None`` for any JSON object (JSON mode).
        lead, strict: as in :func:`tool_call_grammar`.
        speech: the JSON answer may be followed by ``; [ua]`` and free speech units.

    Raises:
        GrammarError: a schema keyword the grammar cannot enforce.
    """
    body: Mapping[str, Any] = {"type": "object"} if schema is None else strict_schema(schema, strict=strict)
    tag = {"type": "structural_tag", "format": _seq(_lead(lead), _json(body), _text_end(speech))}
    what = "a JSON object" if schema is None else f"a JSON answer matching {schema.get('title', 'its schema')}"
    return Grammar.from_structural_tag(tag, description=what)


# --- compiling -------------------------------------------------------------------------------------


class _Compiler:
    """xgrammar's tokenizer info and compiler for one tokenizer, with an LRU of compiled grammars."""

    MAX_CACHED = 64

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: Sequence[int]) -> None:
        import xgrammar as xgr

        self.vocab_size = vocab_size
        self.stop_ids = list(stop_ids)
        self.info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_ids))
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=1)
        self.cache: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self.lock = threading.Lock()

    def compile(self, grammar: Grammar) -> Any:
        key = (grammar.kind, grammar.source)
        with self.lock:
            hit = self.cache.get(key)
            if hit is not None:
                self.cache.move_to_end(key)
                return hit
            try:
                if grammar.kind == "json_schema":
                    compiled = self.compiler.compile_json_schema(
                        grammar.source, any_whitespace=False, strict_mode=True)
                elif grammar.kind == "structural_tag":
                    compiled = self.compiler.compile_structural_tag(grammar.source)
                else:
                    compiled = self.compiler.compile_grammar(grammar.source)
            except (RuntimeError, ValueError, TypeError) as exc:
                raise GrammarError(
                    f"cannot compile {grammar.description or 'the grammar'}: {_xgr_message(exc)}"
                ) from None
            self.cache[key] = compiled
            while len(self.cache) > self.MAX_CACHED:
                self.cache.popitem(last=False)
            return compiled


def _xgr_message(exc: BaseException) -> str:
    """xgrammar's error text without its C++ source location prefix."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"^\[[\d:]+\]\s*\S+:\d+:\s*", "", text)


_COMPILERS: weakref.WeakKeyDictionary[Any, _Compiler] = weakref.WeakKeyDictionary()
_COMPILERS_LOCK = threading.Lock()


def compile_grammar(grammar: Grammar, model: Any) -> Any:
    """Compile ``grammar`` against ``model``'s tokenizer; cached per (tokenizer, grammar).

    Args:
        grammar: the spec.
        model: a :class:`~speechgpt_agent.model.SpeechGPTModel` (its ``tokenizer``,
            ``vocab_size`` - the model's, the 1000 unit tokens and the added tokens
            included - and its end tokens ``eos_id`` and ``eos_ids``, which every grammar
            allows wherever the answer may end).

    Returns:
        An ``xgrammar.CompiledGrammar``.

    Raises:
        GrammarError: the grammar does not compile; the message names the part.
    """
    tokenizer = model.tokenizer
    vocab_size = int(model.vocab_size)
    stop_ids = sorted({int(model.eos_id), *(int(i) for i in getattr(model, "eos_ids", ()))})
    with _COMPILERS_LOCK:
        entry = _COMPILERS.get(tokenizer)
        if entry is None or entry.vocab_size != vocab_size or entry.stop_ids != stop_ids:
            entry = _Compiler(tokenizer, vocab_size, stop_ids)
            _COMPILERS[tokenizer] = entry
    return entry.compile(grammar)


# --- the logits processor -----------------------------------------------------------------------------


class GrammarLogitsProcessor:
    """A transformers ``LogitsProcessor`` that allows only tokens the grammar accepts.

    Call it once per step as ``processor(input_ids [1, T], scores [1, V]) -> scores``: the
    first call records the prompt length ``T``; every later call first feeds the tokens
    sampled since to the xgrammar ``GrammarMatcher``, then fills the matcher's token bitmask
    (``int32 [1, ceil(V / 32)]``, on the CPU) and sets the scores of disallowed tokens to
    ``-inf`` in place, on the scores' device (CPU or CUDA). Once the grammar is complete
    only the end token is allowed.

    Args:
        compiled: an ``xgrammar.CompiledGrammar`` (:func:`compile_grammar`).
        after: processors applied to the masked scores, e.g. transformers' top-k / top-p
            warpers: filtering *after* masking keeps their share of the allowed tokens
            (vLLM's order too), where filtering first could leave no allowed token at all.
        description: what the grammar constrains, for warnings.

    If earlier processors left no allowed token a finite score (a forced token outside the
    grammar, top-k before the mask), the grammar wins: the allowed tokens get equal scores.
    If a token the grammar rejects is fed anyway (a later processor forced it), the
    processor warns and stops constraining this generation. One instance per generation.
    """

    def __init__(self, compiled: Any, *, after: Sequence[Any] = (), description: str = "") -> None:
        import xgrammar as xgr

        self._xgr = xgr
        self.matcher = xgr.GrammarMatcher(compiled)
        self.vocab_size = int(compiled.tokenizer_info.vocab_size)
        self.bitmask = xgr.allocate_token_bitmask(1, self.vocab_size)
        self.after = tuple(after)
        self.description = description
        self.prompt_length: int | None = None
        self.accepted = 0
        self.failed = False
        self._device_mask: torch.Tensor | None = None

    @property
    def completed(self) -> bool:
        """The tokens accepted so far form a complete match of the grammar."""
        return bool(self.matcher.is_completed())

    def _feed(self, input_ids: torch.Tensor) -> None:
        if self.prompt_length is None:
            self.prompt_length = int(input_ids.shape[-1])
            return
        new = input_ids[0, self.prompt_length + self.accepted:].tolist()
        for tid in new:
            self.accepted += 1
            if self.matcher.is_terminated() or not self.matcher.accept_token(int(tid)):
                self.failed = True
                warnings.warn(
                    f"token {tid} does not fit {self.description or 'the grammar'} (another logits "
                    "processor forced it); decoding is no longer constrained.", stacklevel=2)
                return

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[0] != 1 or scores.shape[0] != 1:
            raise ValueError("GrammarLogitsProcessor constrains one sequence (batch size 1), got "
                             f"input_ids {tuple(input_ids.shape)} and scores {tuple(scores.shape)}.")
        if not self.failed:
            self._feed(input_ids)
        if not self.failed and not self.matcher.is_terminated():
            self.matcher.fill_next_token_bitmask(self.bitmask)
            mask = self.bitmask
            if scores.device.type != "cpu":
                if self._device_mask is None or self._device_mask.device != scores.device:
                    self._device_mask = torch.empty_like(self.bitmask, device=scores.device)
                self._device_mask.copy_(self.bitmask, non_blocking=True)
                mask = self._device_mask
            self._xgr.apply_token_bitmask_inplace(scores, mask, vocab_size=self.vocab_size)
            if not torch.isfinite(scores).any():
                scores = self._uniform_allowed(scores, mask)
        for proc in self.after:
            scores = proc(input_ids, scores)
        return scores

    def _uniform_allowed(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Equal scores for the grammar's tokens (earlier processors allowed none of them)."""
        flat = torch.zeros_like(scores)
        self._xgr.apply_token_bitmask_inplace(flat, mask, vocab_size=self.vocab_size)
        if scores.shape[-1] > self.vocab_size:
            flat[..., self.vocab_size:] = float("-inf")
        return flat
