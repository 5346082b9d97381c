"""The JSON tool-call convention: prompt section, parsing of answers, stream chunks."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessageChunk, ToolMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from speechgpt_agent.integrations.langchain.tool_calling import (
    normalize_tool_choice,
    parse_tool_calls,
    render_tool_calls,
    render_tool_result,
    tool_prompt,
    tool_specs,
)


@tool
def get_weather(location: str) -> str:
    """Get the weather at a location."""
    return "sunny"


class Person(BaseModel):
    """A person."""

    name: str = Field(description="full name")
    age: int


def test_specs_from_tools_models_and_schemas():
    specs = tool_specs([get_weather, Person, {"name": "noop", "description": "Do nothing.",
                                             "parameters": {"type": "object", "properties": {}}}])
    assert [s["name"] for s in specs] == ["get_weather", "Person", "noop"]
    assert specs[0]["parameters"]["properties"]["location"]["type"] == "string"
    assert specs[1]["parameters"]["required"] == ["name", "age"]
    # the same tool twice (a model and its schema) is described once
    assert len(tool_specs([Person, Person.model_json_schema()])) == 1


def test_prompt_lists_schemas_and_the_choice():
    specs = tool_specs([get_weather, Person])
    auto = tool_prompt(specs, "auto")
    lines = auto.splitlines()
    assert json.loads(next(ln for ln in lines if ln.startswith('{"name": "get_weather"'))) == specs[0]
    assert '{"tool": "<tool name>", "arguments": {<arguments>}}' in auto
    assert "only when it helps" in auto
    assert "must call one of the tools" in tool_prompt(specs, "any")
    assert 'must call the tool "Person"' in tool_prompt(specs, "Person")
    assert tool_prompt(specs, "none") == ""


@pytest.mark.parametrize(("choice", "expected"), [
    (None, "auto"), ("auto", "auto"), ("none", "none"), (False, "none"), ("any", "any"),
    ("required", "any"), (True, "any"), ("get_weather", "get_weather"),
    ({"type": "function", "function": {"name": "get_weather"}}, "get_weather"),
    ({"name": "get_weather"}, "get_weather"),
])
def test_tool_choice_forms(choice, expected):
    assert normalize_tool_choice(choice, ["get_weather"]) == expected


@pytest.mark.parametrize("choice", ["get_time", {"type": "function", "function": {"name": "x"}}, 3])
def test_bad_tool_choice_names_the_tools(choice):
    with pytest.raises(ValueError, match="get_weather"):
        normalize_tool_choice(choice, ["get_weather"])


@pytest.mark.parametrize(("text", "content"), [
    ('{"tool": "get_weather", "arguments": {"location": "Paris"}}', ""),
    ('Let me check. {"tool": "get_weather", "arguments": {"location": "Paris"}}', "Let me check."),
    ('```json\n{"tool": "get_weather", "arguments": {"location": "Paris"}}\n```', ""),
    ('{"name": "get_weather", "args": {"location": "Paris"}} done', "done"),
    ('{"tool": "get_weather", "arguments": "{\\"location\\": \\"Paris\\"}"}', ""),
    ('{"function": {"name": "get_weather", "arguments": "{\\"location\\": \\"Paris\\"}"}}', ""),
])
def test_call_forms(text, content):
    parsed = parse_tool_calls(text)
    assert parsed.content == content
    assert [(c["name"], c["args"]) for c in parsed.tool_calls] == [("get_weather", {"location": "Paris"})]
    assert parsed.tool_calls[0]["id"].startswith("call_") and not parsed.invalid_tool_calls


def test_several_calls_get_distinct_ids():
    parsed = parse_tool_calls('[{"tool": "a", "arguments": {}}, {"tool": "b", "arguments": {"x": 1}}]')
    assert [(c["name"], c["args"]) for c in parsed.tool_calls] == [("a", {}), ("b", {"x": 1})]
    assert len({c["id"] for c in parsed.tool_calls}) == 2


@pytest.mark.parametrize("text", [
    "It is sunny in Paris.",
    "The list is [1, 2, 3] and the set {a, b}.",
    '{"name": "Bob", "age": 3}',  # JSON, but no call: an answer
    "",
])
def test_plain_answers_stay_text(text):
    parsed = parse_tool_calls(text)
    assert parsed.content == text and not parsed.tool_calls and not parsed.invalid_tool_calls


@pytest.mark.parametrize("text", [
    '{"tool": "get_weather", "arguments": {location: Paris}}',  # not JSON
    '{"tool": "get_weather", "arguments": {"location": "Par',  # truncated by max_tokens
    '{"tool": "get_weather", "arguments": {"location": "Paris"}}}',  # an extra brace... is fine
])
def test_malformed_calls_are_invalid_not_errors(text):
    parsed = parse_tool_calls(text)
    if text.endswith("}}}"):
        assert parsed.tool_calls and parsed.content == "}"
        return
    assert not parsed.tool_calls
    (bad,) = parsed.invalid_tool_calls
    assert bad["name"] == "get_weather" and bad["args"] == text and "JSON" in bad["error"]
    assert bad["id"].startswith("call_")


def test_non_object_arguments_are_invalid():
    (bad,) = parse_tool_calls('{"tool": "f", "arguments": [1, 2]}').invalid_tool_calls
    assert bad["name"] == "f" and json.loads(bad["args"]) == [1, 2]


def test_forced_calls_and_bare_arguments():
    # the demanded tool takes a bare object as its arguments (structured output)
    parsed = parse_tool_calls('{"name": "Bob", "age": 3}', default_tool="Person", forced=True)
    assert [(c["name"], c["args"]) for c in parsed.tool_calls] == [("Person", {"name": "Bob", "age": 3})]
    # broken JSON under a demanded call is an invalid call even without a tool name
    (bad,) = parse_tool_calls('{"name": Bob}', default_tool="Person", forced=True).invalid_tool_calls
    assert bad["name"] == "Person"
    # not demanded: broken JSON without a tool name is just text
    assert parse_tool_calls('{"name": Bob}').content == '{"name": Bob}'


def _merged(parsed) -> AIMessageChunk:
    chunks = [AIMessageChunk(content="", tool_call_chunks=[tool_call_chunk(name=n, args=a, id=i, index=k)])
              for k, (n, a, i) in enumerate(parsed.stream_args())]
    total = AIMessageChunk(content="", chunk_position="last")
    for c in chunks:
        total = total + c
    return total


ANSWERS = st.sampled_from([
    '{"tool": "f", "arguments": {"a": 1}}',
    '{"tool": "f", "arguments": {"a": "x", "b": [1, {"c": null}]}}',
    '[{"tool": "f", "arguments": {}}, {"tool": "g", "arguments": {"q": "é"}}]',
    '{"tool": "f", "arguments": {"a": 1',
    '{"tool": "f", "arguments": {"a": "unterminated',
    '{"tool": "f", "arguments": [1]}',
    '{"tool": "f" "arguments": {}}',
])


@settings(max_examples=30, deadline=None)
@given(ANSWERS, st.text(alphabet="abc .", max_size=8))
def test_stream_chunks_merge_into_the_same_calls(answer, prefix):
    parsed = parse_tool_calls(prefix + answer)
    merged = _merged(parsed)
    assert [(c["name"], c["args"], c["id"]) for c in merged.tool_calls] == \
        [(c["name"], c["args"], c["id"]) for c in parsed.tool_calls]
    assert [(c["name"], c["id"]) for c in merged.invalid_tool_calls] == \
        [(c["name"], c["id"]) for c in parsed.invalid_tool_calls]


def test_history_rendering_matches_the_asked_form():
    calls = [{"name": "get_weather", "args": {"location": "Paris"}, "id": "1"}]
    assert json.loads(render_tool_calls(calls)) == {"tool": "get_weather", "arguments": {"location": "Paris"}}
    two = json.loads(render_tool_calls(calls + [{"name": "f", "args": {}, "id": "2"}]))
    assert [c["tool"] for c in two] == ["get_weather", "f"]
    assert parse_tool_calls(render_tool_calls(calls)).tool_calls[0]["args"] == {"location": "Paris"}
    ok = ToolMessage("sunny", tool_call_id="1", name="get_weather")
    err = ToolMessage("boom", tool_call_id="1", name="get_weather", status="error")
    assert render_tool_result(ok, "sunny") == 'Tool "get_weather" returned: sunny'
    assert render_tool_result(err, "boom") == 'Tool "get_weather" failed: boom'
