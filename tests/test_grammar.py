"""Grammar-constrained decoding (speechgpt_agent.grammar) on a tiny random model.

A random model cannot call a tool or write JSON by itself; here nothing steers it but the
grammar, so every call that parses and validates is the grammar's doing. Schemas bound
their strings and integers (``maxLength``, ``maximum``): a random model never closes an
unbounded string within a token budget, a trained one does.
"""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import pytest
import torch
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from speechgpt_agent.grammar import (
    MARKER_EXCLUDES,
    Grammar,
    GrammarError,
    json_answer_grammar,
    strict_schema,
    tool_call_grammar,
)
from speechgpt_agent.integrations.langchain import SpeechGPTChat
from speechgpt_agent.integrations.langchain.tool_calling import tool_specs

# --- three tools: nested, enum and optional arguments -------------------------------------------


class Route(BaseModel):
    origin: str = Field(max_length=8)
    destination: str = Field(max_length=8)


class BookFlight(BaseModel):
    """Book a flight."""

    route: Route
    passengers: int = Field(ge=1, le=9)
    cabin: Literal["economy", "business", "first"] = "economy"


class _Alarm(TypedDict):
    hour: Literal[6, 7, 8]
    day: Literal["mon", "tue", "wed"]


class SetAlarm(_Alarm, total=False):
    """Set an alarm."""

    snooze: bool


GET_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 10},
                "unit": {"enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "where": {"type": "object", "properties": {"lat": {"type": "integer", "minimum": -90,
                                                                    "maximum": 90}},
                          "required": ["lat"]},
            },
            "required": ["city"],
        },
    },
}
TOOLS = [BookFlight, SetAlarm, GET_WEATHER]
SCHEMAS = {convert_to_openai_tool(t)["function"]["name"]: convert_to_openai_tool(t)["function"]["parameters"]
           for t in TOOLS}


class Answer(BaseModel):
    """An answer."""

    verdict: Literal["yes", "no", "maybe"]
    score: int = Field(ge=0, le=100)
    note: str | None = Field(default=None, max_length=12)
    tags: list[Literal["a", "b"]] = Field(default_factory=list, max_length=2)


@pytest.fixture(scope="module")
def chat(tiny_model_set, one_thread):
    s = tiny_model_set
    return SpeechGPTChat(model=s.model, adapter=s.adapter, speech_tokenizer=s.speech_tokenizer,
                         vocoder=s.vocoder, modalities=["text"], temperature=1.0, top_k=0,
                         top_p=1.0, min_new_tokens=0, max_tokens=160)


@pytest.fixture(scope="module")
def lm(chat):
    return chat.runtime.model


def _valid_calls(message) -> list[tuple[str, dict]]:
    assert not message.invalid_tool_calls, message.invalid_tool_calls
    assert message.tool_calls, f"no call in {message.content!r}"
    for call in message.tool_calls:
        jsonschema.validate(call["args"], SCHEMAS[call["name"]])
    return [(c["name"], c["args"]) for c in message.tool_calls]


# --- the model-free parts ----------------------------------------------------------------------------


def test_spec_is_serialisable_and_maps_to_vllm():
    g = tool_call_grammar(tool_specs(TOOLS), "any")
    assert Grammar.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    assert set(g.to_vllm()) == {"structural_tag"} and json.loads(g.to_vllm()["structural_tag"])["type"] == "structural_tag"
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert Grammar.from_json_schema(schema).to_vllm() == {
        "json": {**schema, "additionalProperties": False}}
    assert Grammar.from_ebnf('root ::= "yes" | "no"').to_vllm() == {"grammar": 'root ::= "yes" | "no"'}
    # equal requests give equal specs (the compile cache key)
    assert tool_call_grammar(tool_specs(TOOLS), "any") == g


@pytest.mark.parametrize(("schema", "part"), [
    ({"type": "object", "properties": {"x": {"not": {"type": "string"}}}}, "'not' at #/properties/x"),
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "'uniqueItems' at #"),
    ({"type": "string", "pattern": "(?=a)b"}, "lookaround"),
])
def test_unenforceable_schemas_name_their_part(schema, part):
    with pytest.raises(GrammarError, match=part.replace("(", r"\(").replace("[", r"\[")):
        json_answer_grammar(schema)
    spec = {"name": "t", "description": "", "parameters": {"type": "object", "properties": {"v": schema}}}
    with pytest.raises(GrammarError, match="tool 't'"):
        tool_call_grammar([spec], "any")


def test_strict_schema_closes_objects_and_bounds_strings_without_markers():
    out = strict_schema({"type": "object", "properties": {"s": {"type": "string", "maxLength": 4},
                                                          "o": {"properties": {}}}})
    assert out["additionalProperties"] is False and out["properties"]["o"]["additionalProperties"] is False
    pattern = out["properties"]["s"]["pattern"]
    import re
    assert re.fullmatch(pattern.strip("^$"), "ab c") and not re.fullmatch(pattern.strip("^$"), "abcde")
    assert not re.fullmatch(pattern.strip("^$"), "a<b") and not re.fullmatch(pattern.strip("^$"), "[ta]")
    assert strict_schema({"type": "object"}, strict=False) == {"type": "object"}


def _accepts(lm, grammar: Grammar, text: str) -> bool:
    import xgrammar as xgr

    matcher = xgr.GrammarMatcher(grammar.compile(lm))
    ids = lm.encode(text)[1:]  # no <s>
    return all(matcher.accept_token(i) for i in ids) and matcher.is_completed()


def test_grammars_cover_the_text_part_of_the_answer_format(lm):
    specs = [{"name": "calc", "description": "", "parameters": {
        "type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}]
    call = '{"tool": "calc", "arguments": {"expression": "1 + 2"}}'
    forced, auto = tool_call_grammar(specs, "any"), tool_call_grammar(specs, "auto", speech=True)
    spoken = tool_call_grammar(specs, "calc", lead="spoken")
    assert _accepts(lm, forced, f"[ta] {call}<eoa>") and _accepts(lm, forced, f"[ta] [{call}, {call}]")
    assert not _accepts(lm, forced, "[ta] hello<eoa>")
    assert not _accepts(lm, forced, '[ta] {"tool": "other", "arguments": {}}')
    assert not _accepts(lm, forced, '[ta] {"tool": "calc", "arguments": {"expression": 3}}')
    assert not _accepts(lm, tool_call_grammar(specs, "any", parallel=False), f"[ta] [{call}]")
    # a call is never spoken; a text answer may be
    assert not _accepts(lm, auto, f"[ta] {call}; [ua] <sosp><1><eosp><eoa>")
    assert _accepts(lm, auto, "[ta] london; [ua] <sosp><1><2><eosp><eoa>")
    assert _accepts(lm, auto, f"[ta] Let me see. {call}<eoa>") and _accepts(lm, auto, "[ta] london<eoa>")
    assert _accepts(lm, spoken, f"what is one plus two; [ta] {call}<eoa>")
    js = json_answer_grammar({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                             speech=True)
    assert _accepts(lm, js, '[ta] {"a": 5}; [ua] <sosp><3><eosp><eoa>') and _accepts(lm, js, '[ta] {"a": 5}<eoa>')
    assert not _accepts(lm, js, '[ta] {"a": 5, "b": 1}<eoa>')
    assert not _accepts(lm, json_answer_grammar(None), "[ta] [1]<eoa>")


@pytest.mark.parametrize("marker", [m for m in MARKER_EXCLUDES if not m[1:].isdigit()] + ["<12>"])
def test_json_strings_never_spell_a_marker_or_a_unit(lm, marker):
    specs = [{"name": "say", "description": "", "parameters": {
        "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}]
    grammar = tool_call_grammar(specs, "any")
    assert _accepts(lm, grammar, '[ta] {"tool": "say", "arguments": {"text": "a b"}}')
    assert not _accepts(lm, grammar, f'[ta] {{"tool": "say", "arguments": {{"text": "a{marker}b"}}}}')


def test_compiled_grammars_are_cached_per_tokenizer(lm):
    g = tool_call_grammar(tool_specs(TOOLS), "any")
    assert g.compile(lm) is g.compile(lm)
    assert tool_call_grammar(tool_specs(TOOLS), "any").compile(lm) is g.compile(lm)
    with pytest.raises(GrammarError, match='Unsupported type "frob"'):
        json_answer_grammar({"type": "frob"}).compile(lm)


def test_processor_masks_accepts_and_ends(lm):
    grammar = Grammar.from_structural_tag(
        {"type": "structural_tag", "format": {"type": "const_string", "value": " yes"}})
    proc = grammar.logits_processor(lm)
    prompt = torch.tensor([lm.encode("[Human]: ok <eoh>. [SpeechGPT]:")])
    seq = prompt
    out = []
    for _ in range(8):
        scores = proc(seq, torch.zeros(1, lm.vocab_size))
        assert scores.shape == (1, lm.vocab_size) and torch.isfinite(scores).sum() >= 1
        token = int(scores.argmax())
        if token == lm.eos_id:
            break
        out.append(token)
        seq = torch.cat([seq, torch.tensor([[token]])], dim=-1)
    assert lm.decode(out).strip() == "yes" and proc.completed
    # every earlier processor forbade everything: the grammar's tokens get equal scores
    fresh = grammar.logits_processor(lm)
    scores = fresh(prompt, torch.full((1, lm.vocab_size), float("-inf")))
    allowed = torch.isfinite(scores[0]).nonzero().flatten().tolist()
    assert 0 < len(allowed) < lm.vocab_size // 20
    assert all("yes".startswith(lm.decode([t]).strip()) for t in allowed)


def test_processor_runs_warpers_after_the_mask(lm):
    from transformers.generation.logits_process import TopKLogitsWarper

    grammar = Grammar.from_structural_tag(
        {"type": "structural_tag", "format": {"type": "const_string", "value": " yes"}})
    scores = torch.randn(1, lm.vocab_size)
    out = grammar.logits_processor(lm, after=[TopKLogitsWarper(1)])(
        torch.tensor([[1, 5]]), scores)
    assert torch.isfinite(out).sum() == 1  # top-1 of the allowed tokens, not of all


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_processor_on_cuda_scores_matches_cpu(lm):
    grammar = tool_call_grammar(tool_specs(TOOLS), "any")
    ids = torch.tensor([lm.encode("[Human]: ok <eoh>. [SpeechGPT]:")])
    cpu = grammar.logits_processor(lm)(ids, torch.randn(1, lm.vocab_size, generator=torch.Generator().manual_seed(0)))
    gpu = grammar.logits_processor(lm)(ids.cuda(), torch.randn(1, lm.vocab_size, generator=torch.Generator().manual_seed(0)).cuda())
    assert gpu.device.type == "cuda" and torch.equal(torch.isfinite(cpu), torch.isfinite(gpu.cpu()))


# --- the random model, constrained ----------------------------------------------------------------


def test_fifty_demanded_calls_are_all_valid(chat):
    model = chat.bind_tools(TOOLS, tool_choice="any")
    names = []
    for seed in range(50):
        calls = _valid_calls(model.invoke("Do something.", seed=seed))
        names += [name for name, _ in calls]
    assert set(names) == set(SCHEMAS), f"the random model never picked some tool: {set(names)}"


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_a_named_tool_choice_always_calls_that_tool(chat, name):
    model = chat.bind_tools(TOOLS, tool_choice={"type": "function", "function": {"name": name}})
    for seed in range(8):
        assert {n for n, _ in _valid_calls(model.invoke("Go.", seed=seed))} == {name}


def test_a_single_call_when_parallel_calls_are_off(chat):
    model = chat.bind_tools(TOOLS, tool_choice="required", parallel_tool_calls=False)
    for seed in range(10):
        assert len(_valid_calls(model.invoke("Go.", seed=100 + seed))) == 1


def test_streamed_calls_are_valid(chat):
    model = chat.bind_tools(TOOLS, tool_choice="any")
    for seed in range(5):
        full = None
        for chunk in model.stream("Go.", seed=200 + seed):
            full = chunk if full is None else full + chunk
        _valid_calls(full)


def test_fifty_structured_outputs_are_all_valid(chat):
    schema = Answer.model_json_schema()
    as_model = chat.with_structured_output(Answer)
    as_json = chat.with_structured_output(schema)
    as_typed = chat.with_structured_output(SetAlarm)
    for seed in range(20):
        out = as_model.invoke("Judge.", seed=seed)
        assert isinstance(out, Answer)
        jsonschema.validate(out.model_dump(exclude_unset=True), schema)
    for seed in range(15):
        jsonschema.validate(as_json.invoke("Judge.", seed=seed), schema)
    for seed in range(15):
        jsonschema.validate(as_typed.invoke("Alarm.", seed=seed), SCHEMAS["SetAlarm"])


def test_an_answer_cut_off_by_max_tokens_says_so_instead_of_parsing_partly(chat):
    """Four tokens cannot hold the JSON: LangChain's parsers would read ``'{"ver'`` as ``{}``
    (a dict schema then "parses"), or find no call (``None``); here every path names the token limit and the fix."""
    from langchain_core.exceptions import OutputParserException

    short = chat.model_copy(update={"max_tokens": 4})
    for runnable in (short.with_structured_output(Answer), short.with_structured_output(Answer.model_json_schema()),
                     short.with_structured_output(Answer, method="function_calling")):
        with pytest.raises(OutputParserException, match=r"token limit \(4 new tokens\).*raise max_tokens"):
            runnable.invoke("Judge.", seed=0)
        with pytest.raises(OutputParserException, match="raise max_tokens"):
            list(runnable.stream("Judge.", seed=0))  # the partial values first, then the error
    out = short.with_structured_output(Answer, include_raw=True).invoke("Judge.", seed=0)
    assert out["parsed"] is None and "raise max_tokens" in str(out["parsing_error"])
    assert out["raw"].response_metadata["finish_reason"] == "length" and out["raw"].usage_metadata["output_tokens"] == 4
    # a demanded call cut off: an invalid call that says why, streamed or not
    for limit in (4, 12):  # before the call opened, and inside it
        model = chat.bind_tools(TOOLS, tool_choice="any", max_tokens=limit)
        message = model.invoke("Go.", seed=1)
        assert not message.tool_calls and len(message.invalid_tool_calls) == 1, message
        assert f"token limit ({limit} new tokens)" in message.invalid_tool_calls[0]["error"]
        full = None
        for chunk in model.stream("Go.", seed=1):
            full = chunk if full is None else full + chunk
        assert not full.tool_calls and full.invalid_tool_calls
        assert full.response_metadata["invalid_tool_call_errors"] == [message.invalid_tool_calls[0]["error"]]
    # with room, the same calls and answers parse
    assert _valid_calls(chat.bind_tools(TOOLS, tool_choice="any").invoke("Go.", seed=1))
    assert isinstance(chat.with_structured_output(Answer).invoke("Judge.", seed=0), Answer)


def test_json_mode_gives_json_objects(chat):
    model = chat.bind(response_format={"type": "json_object"}, max_tokens=60)
    for seed in range(5):
        message = model.invoke("JSON please.", seed=seed)
        if message.response_metadata["finish_reason"] == "stop":
            assert isinstance(json.loads(message.text), dict)


def test_strict_false_leaves_decoding_free(chat):
    out = chat.with_structured_output(Answer, include_raw=True, strict=False).invoke("Judge.", seed=0)
    assert out["parsed"] is None and out["parsing_error"] is not None  # a random model, unconstrained


def test_a_schema_that_cannot_compile_fails_before_generation(chat):
    calls = []

    def record():
        def proc(input_ids, scores):
            calls.append(1)
            return scores
        return proc

    model = chat.model_copy(update={"logits_processors": [record]})
    bad = {"type": "object", "properties": {"x": {"type": "frob"}}}
    with pytest.raises(GrammarError, match="frob"):
        model.bind(response_format={"type": "json_schema", "json_schema": {"schema": bad}}).invoke("Hi.")
    with pytest.raises(GrammarError, match="'not' at"):
        model.bind_tools([{"name": "t", "description": "", "parameters": {
            "type": "object", "properties": {"x": {"not": {}}}}}], tool_choice="any")
    assert not calls
