"""Grammar-constrained tool calls on the embedded demo model (no steering)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import jsonschema
import pytest
from langchain_core.messages import HumanMessage

from speechgpt_agent.demo import DEMO_DIR

DATA = Path(__file__).parent / "data" / "demo"
pytestmark = pytest.mark.skipif(not (DEMO_DIR / "llm").is_dir(), reason="the demo model is not exported")


@pytest.fixture(scope="module")
def demo_chat(one_thread):
    from speechgpt_agent.integrations.langchain import SpeechGPTChat

    return SpeechGPTChat(model="demo", quantization=None, modalities=["text"], temperature=0.0,
                         min_new_tokens=0, max_tokens=120)


@pytest.fixture(scope="module")
def calculator_schema():
    from langchain_core.utils.function_calling import convert_to_openai_tool

    from speechgpt_agent.integrations.langchain import calculator

    return convert_to_openai_tool(calculator)["function"]["parameters"]


def test_auto_calls_on_calculator_questions_and_answers_text_on_others(demo_chat, calculator_schema):
    from speechgpt_agent.integrations.langchain import calculator

    chat = demo_chat.bind_tools([calculator])  # tool_choice="auto": constrained once a call opens
    for question, expression in {"what is 4321 times 1234": "4321 * 1234",
                                 "what is 57 plus 9041": "57 + 9041"}.items():
        ai = chat.invoke([HumanMessage(question)])
        assert [c["name"] for c in ai.tool_calls] == ["calculator"] and not ai.invalid_tool_calls
        assert ai.tool_calls[0]["args"] == {"expression": expression}
    for question in ("what is the capital of england", "how many legs does a spider have"):
        ai = chat.invoke([HumanMessage(question)])
        assert not ai.tool_calls and not ai.invalid_tool_calls and ai.text.strip(), ai


def test_a_spoken_question_with_a_demanded_call_gives_a_valid_call(demo_chat, calculator_schema):
    from speechgpt_agent.integrations.langchain import calculator

    chat = demo_chat.bind_tools([calculator], tool_choice="any")
    clip = DATA / "what_is_eight_plus_five.wav"
    data = base64.b64encode(clip.read_bytes()).decode()
    ai = chat.invoke([HumanMessage([{"type": "audio", "base64": data, "mime_type": "audio/wav"}])])
    assert [c["name"] for c in ai.tool_calls] == ["calculator"] and not ai.invalid_tool_calls, ai
    jsonschema.validate(ai.tool_calls[0]["args"], calculator_schema)
    assert ai.response_metadata["transcript"].strip()  # the transcript stayed free
    assert ai.response_metadata["units"] == []  # a call is never spoken


def test_a_question_the_demo_never_calls_for_gets_the_demanded_tool(demo_chat):
    """Unconstrained, the demo only ever calls the calculator; a demanded weather call now parses."""
    weather = {"name": "get_weather", "description": "The weather in a city.", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}}
    ai = demo_chat.bind_tools([weather], tool_choice="get_weather").invoke("what is the weather in paris")
    assert [c["name"] for c in ai.tool_calls] == ["get_weather"] and not ai.invalid_tool_calls, ai
    jsonschema.validate(ai.tool_calls[0]["args"], weather["parameters"])


def test_structured_output_on_the_demo_closes_its_json_and_parses(demo_chat):
    """The demo was never taught JSON answers: what it writes into the strings is its own
    business, but bounded strings close, so the answer ends by the grammar and parses; an
    unbounded string it never closes within max_tokens, which is an error that says so
    (LangChain's parser would have filled the fields with the cut-off text)."""
    from langchain_core.exceptions import OutputParserException
    from pydantic import BaseModel, Field

    class Capital(BaseModel):
        country: str = Field(max_length=20)
        capital: str = Field(max_length=20)

    out = demo_chat.with_structured_output(Capital, include_raw=True).invoke("what is the capital of england")
    assert isinstance(out["parsed"], Capital) and out["parsing_error"] is None, out
    assert out["raw"].response_metadata["finish_reason"] == "stop"
    assert json.loads(out["raw"].text) == out["parsed"].model_dump()

    class Unbounded(BaseModel):
        country: str
        capital: str

    short = demo_chat.model_copy(update={"max_tokens": 12})
    with pytest.raises(OutputParserException, match="raise max_tokens"):
        short.with_structured_output(Unbounded).invoke("what is the capital of england")
