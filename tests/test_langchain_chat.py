"""SpeechGPTChat on the tiny model set: output and stream formats, tools, agents, loading.

A random tiny model says nothing sensible, so tests that check what becomes of an answer
steer its decoding through the ``logits_processors`` field (``ForceAnswer``); the library
only sees the generated tokens.
"""

from __future__ import annotations

import asyncio
import base64
import threading

import numpy as np
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel, ValidationError
from typing_extensions import TypedDict

from speechgpt_agent.integrations.langchain import SpeechGPTChat, message_audio
from speechgpt_agent.integrations.langchain._runtime import _Cache
from speechgpt_agent.prompt import META_INSTRUCTION
from speechgpt_agent.testing.steer import ForceAnswer, answer_ids

UNITS = [5, 17, 17, 999, 0, 42, 311, 8, 64, 128, 256, 512, 3, 77, 760, 91, 14, 2, 600, 123]
SPOKEN = "<sosp>" + "".join(f"<{u}>" for u in UNITS) + "<eosp>"
CALL = '{"tool": "get_weather", "arguments": {"location": "Paris"}}'


@pytest.fixture(scope="module")
def chat(tiny_model_set):
    s = tiny_model_set
    return SpeechGPTChat(model=s.model, adapter=s.adapter, speech_tokenizer=s.speech_tokenizer,
                         vocoder=s.vocoder, max_tokens=120, seed=0)


class Steer:
    """Forces one answer per generation, and records the prompt it was asked to continue.

    ``answers``: a fixed answer, or a function of the prompt's last user turn.
    """

    def __init__(self, chat: SpeechGPTChat, answers) -> None:
        self.lm = chat.runtime.model
        self.answers = answers
        self.prompts: list[str] = []

    def factory(self):
        state = {}

        def process(input_ids, scores):
            if "forced" not in state:
                prompt = self.lm.decode(input_ids[0].tolist())
                self.prompts.append(prompt)
                last = prompt.rsplit("[Human]", 1)[-1]
                answer = self.answers(last) if callable(self.answers) else self.answers
                state["forced"] = ForceAnswer(answer_ids(self.lm, answer), self.lm.eos_id)
            return state["forced"](input_ids, scores)

        return process


def steered(chat: SpeechGPTChat, answers, **fields) -> tuple[SpeechGPTChat, Steer]:
    steer = Steer(chat, answers)
    return chat.model_copy(update={"logits_processors": [steer.factory], **fields}), steer


@tool
def get_weather(location: str) -> str:
    """Get the weather at a location."""
    return f"Sunny in {location}."


def spoken_question(clips) -> HumanMessage:
    data = base64.b64encode(clips["hello_16k_mono.wav"]["path"].read_bytes()).decode()
    return HumanMessage([{"type": "audio", "base64": data, "mime_type": "audio/wav"}])


# --- output and stream formats -------------------------------------------------------------


def test_spoken_question_gets_a_text_and_spoken_answer(chat, clips, one_thread):
    model, _ = steered(chat, f"Hello how are you today; [ta] I am fine.; [ua] {SPOKEN}<eoa>")
    reply = model.invoke([spoken_question(clips)])
    assert [b["type"] for b in reply.content] == ["text", "audio"]
    assert reply.text == "I am fine."
    assert reply.content[1]["mime_type"] == "audio/wav"
    meta = reply.response_metadata
    assert meta["transcript"] == "Hello how are you today"
    assert meta["units"] == UNITS and meta["finish_reason"] == "stop" and meta["complete"]
    assert meta["model_name"] == str(chat.model) and meta["sample_rate"] == 16000
    usage = reply.usage_metadata
    heard = chat.runtime.speech_tokenizer.encode(clips["hello_16k_mono.wav"]["path"]).units
    assert usage["input_token_details"]["audio"] == len(heard) > 0
    assert usage["output_token_details"]["audio"] == len(UNITS)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    samples, rate = message_audio(reply)
    offline = chat.runtime.vocoder.synthesize(UNITS)
    assert rate == 16000 and samples.shape == offline.shape
    assert np.max(np.abs(samples - offline)) < 2e-4  # 16-bit wav of the same samples


def test_stream_chunks_add_up_to_the_invoked_answer(chat, clips, one_thread):
    answer = f"Hello how are you today; [ta] I am fine, thanks.; [ua] {SPOKEN}<eoa>"
    model, _ = steered(chat, answer)
    invoked = model.invoke([spoken_question(clips)])
    chunks = list(model.stream([spoken_question(clips)]))
    kinds = [[b["type"] for b in c.content] for c in chunks]
    texts = [c for c, k in zip(chunks, kinds) if k == ["text"]]
    audios = [c for c, k in zip(chunks, kinds) if k == ["audio"]]
    assert len(texts) > 1 and len(audios) > 1  # several deltas and several pieces of speech
    assert all(c.content[0]["index"] == 0 for c in texts)
    assert [c.content[0]["index"] for c in audios] == list(range(1, len(audios) + 1))
    assert audios[0].content[0]["extras"]["offset"] == 0
    assert chunks[-1].chunk_position == "last" and chunks[-1].response_metadata["units"] == UNITS
    assert all(c.usage_metadata is None for c in chunks[:-1])
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert [b["type"] for b in total.content_blocks].count("text") == 1
    assert total.text == invoked.text == "I am fine, thanks."
    assert total.usage_metadata == invoked.usage_metadata
    streamed, _ = message_audio(total)
    np.testing.assert_array_equal(streamed, message_audio(invoked)[0])

    async def collect():
        return [c async for c in model.astream([spoken_question(clips)])]

    achunks = asyncio.run(collect())
    assert [[b["type"] for b in c.content] for c in achunks] == kinds


def test_text_only_modality_answers_in_plain_text(chat, one_thread):
    model, _ = steered(chat, f"[ta] Fine.; [ua] {SPOKEN}<eoa>", modalities=["text"])
    reply = model.invoke("How are you?")
    assert reply.content == "Fine." and message_audio(reply) is None
    assert reply.response_metadata["units"] == UNITS  # spoken units are reported, not vocoded
    chunks = list(model.stream("How are you?"))
    assert all(isinstance(c.content, str) for c in chunks)


def test_system_message_replaces_the_meta_instruction(chat, one_thread):
    model, steer = steered(chat, "[ta] Yes.<eoa>")
    model.invoke([SystemMessage("You are a pirate."), HumanMessage("Hi")])
    model.invoke("Hi")
    with_system, default = steer.prompts
    assert with_system.startswith("You are a pirate.") and "Fudan" not in with_system
    assert default.startswith(META_INSTRUCTION.split("\n")[0])


def test_stop_sequences_cut_the_text_and_end_generation(chat, one_thread):
    answer = "[ta] One two three. Four five six seven eight nine ten.<eoa>"
    model, _ = steered(chat, answer)
    full = model.invoke("Count.")
    cut = model.invoke("Count.", stop=["Four"])
    assert cut.text.strip() == "One two three." and full.text.startswith(cut.text)
    assert cut.usage_metadata["output_tokens"] < full.usage_metadata["output_tokens"] - 5
    assert cut.response_metadata["finish_reason"] == "stop"
    streamed = "".join(c.text for c in model.stream("Count.", stop=["Four"]))
    assert streamed == cut.text
    assert model.model_copy(update={"stop": ["Four"]}).invoke("Count.").text == cut.text


def test_greedy_and_seeded_sampling_are_reproducible(chat, one_thread):
    async def both():
        return await chat.ainvoke("Hello"), await chat.ainvoke("Hello", seed=7)

    a, b = asyncio.run(both())
    assert chat.invoke("Hello").text == a.text
    assert chat.invoke("Hello", seed=7).text == b.text
    greedy = chat.model_copy(update={"temperature": 0.0, "seed": None})
    assert greedy.invoke("Hello").text == greedy.invoke("Hello").text


# --- tools --------------------------------------------------------------------------------


def test_tool_call_is_parsed_and_not_spoken(chat, one_thread):
    model, steer = steered(chat, f"[ta] {CALL}; [ua] {SPOKEN}<eoa>")
    bound = model.bind_tools([get_weather])
    reply = bound.invoke("Weather in Paris?")
    (call,) = reply.tool_calls
    assert call["name"] == "get_weather" and call["args"] == {"location": "Paris"}
    assert call["id"].startswith("call_") and call["type"] == "tool_call"
    assert reply.text == "" and message_audio(reply) is None
    # generation ended with the call: no units were generated for it
    assert reply.usage_metadata["output_token_details"]["audio"] == 0
    assert '{"name": "get_weather"' in steer.prompts[0] and "only when it helps" in steer.prompts[0]
    total = None
    for chunk in bound.stream("Weather in Paris?"):
        assert not any(b.get("type") == "text" and "{" in b.get("text", "") for b in chunk.content)
        total = chunk if total is None else total + chunk
    assert [(c["name"], c["args"]) for c in total.tool_calls] == [("get_weather", {"location": "Paris"})]
    assert message_audio(total) is None


def test_text_before_a_call_streams_and_forced_choice_is_prompted(chat, one_thread):
    model, steer = steered(chat, f"[ta] Let me check. {CALL}<eoa>")
    # strict=False: the prompt-only path (a grammar-forced call has no text before it)
    bound = model.bind_tools([get_weather], tool_choice="get_weather", strict=False)
    reply = bound.invoke("Weather?")
    assert reply.text == "Let me check." and len(reply.tool_calls) == 1
    assert 'You must call the tool "get_weather"' in steer.prompts[0]
    text = "".join(c.text for c in bound.stream("Weather?"))
    assert text == "Let me check."


@pytest.mark.parametrize("bad", [
    '{"tool": "get_weather", "arguments": {location: Paris}}',
    '{"tool": "get_weather", "arguments": {"location": "Paris"',
])
def test_malformed_calls_become_invalid_tool_calls(chat, bad, one_thread):
    model, _ = steered(chat, f"[ta] {bad}<eoa>")
    bound = model.bind_tools([get_weather], strict=False)  # a grammar would never let it break
    reply = bound.invoke("Weather?")
    assert not reply.tool_calls
    (invalid,) = reply.invalid_tool_calls
    assert invalid["name"] == "get_weather" and invalid["error"]
    total = None
    for chunk in bound.stream("Weather?"):
        total = chunk if total is None else total + chunk
    assert not total.tool_calls and [c["name"] for c in total.invalid_tool_calls] == ["get_weather"]
    # (an agent binds its tools with the grammar on, under which no call can come out broken:
    # tests/test_grammar.py covers that path)


def weather_script(last_turn: str) -> str:
    if "returned:" in last_turn:
        return f"[ta] It is sunny in Paris.; [ua] {SPOKEN}<eoa>"
    return f"[ta] {CALL}<eoa>"


def test_agent_loop_with_create_agent(chat, one_thread):
    from langchain.agents import create_agent

    model, steer = steered(chat, weather_script)
    agent = create_agent(model, tools=[get_weather], system_prompt="You report the weather.")
    messages = agent.invoke({"messages": [("user", "What is the weather in Paris?")]})["messages"]
    assert [m.type for m in messages] == ["human", "ai", "tool", "ai"]
    assert messages[1].tool_calls[0]["args"] == {"location": "Paris"}
    assert messages[2].content == "Sunny in Paris." and messages[2].tool_call_id == messages[1].tool_calls[0]["id"]
    assert messages[3].text == "It is sunny in Paris." and message_audio(messages[3]) is not None
    # the second prompt replays the call and carries the tool's result
    assert steer.prompts[1].startswith("You report the weather.")
    assert CALL in steer.prompts[1] and 'Tool "get_weather" returned: Sunny in Paris.' in steer.prompts[1]


def test_agent_loop_in_a_langgraph_graph(chat, one_thread):
    from langgraph.graph import END, START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode, tools_condition

    model, _ = steered(chat, weather_script)
    bound = model.bind_tools([get_weather])
    graph = StateGraph(MessagesState)
    graph.add_node("model", lambda state: {"messages": [bound.invoke(state["messages"])]})
    graph.add_node("tools", ToolNode([get_weather]))
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", tools_condition, {"tools": "tools", END: END})
    graph.add_edge("tools", "model")
    app = graph.compile()
    final = app.invoke({"messages": [HumanMessage("Weather in Paris?")]})["messages"]
    assert isinstance(final[2], ToolMessage) and final[-1].text == "It is sunny in Paris."
    streamed = [c for c, meta in app.stream({"messages": [HumanMessage("Weather in Paris?")]},
                                           stream_mode="messages") if meta["langgraph_node"] == "model"]
    assert "".join(c.text for c in streamed if c.type == "AIMessageChunk") == "It is sunny in Paris."


# --- structured output -----------------------------------------------------------------------


class Joke(BaseModel):
    setup: str
    punchline: str


class JokeDict(TypedDict):
    setup: str
    punchline: str


JOKE = '{"setup": "Why?", "punchline": "Because."}'


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_structured_output(chat, method, one_thread):
    # with function_calling the grammar demands the call form of the schema's tool
    def answer(name: str) -> str:
        return f'[ta] {{"tool": "{name}", "arguments": {JOKE}}}<eoa>' if method == "function_calling" \
            else f"[ta] {JOKE}<eoa>"

    model, steer = steered(chat, answer("Joke"))
    assert model.with_structured_output(Joke, method=method).invoke("A joke") == Joke(setup="Why?", punchline="Because.")
    as_dict = steered(chat, answer("JokeDict"))[0].with_structured_output(JokeDict, method=method).invoke("A joke")
    assert as_dict == {"setup": "Why?", "punchline": "Because."}
    if method == "json_schema":
        assert '"punchline": {' in steer.prompts[0] and "only a JSON object" in steer.prompts[0]


def test_structured_output_include_raw_reports_parse_errors(chat, one_thread):
    model, _ = steered(chat, "[ta] no joke today<eoa>")
    out = model.with_structured_output(Joke, include_raw=True, strict=False).invoke("A joke")
    assert out["parsed"] is None and out["parsing_error"] is not None
    assert isinstance(out["raw"], AIMessage) and out["raw"].text == "no joke today"


# --- loading and errors ----------------------------------------------------------------------


def test_instances_with_the_same_weights_share_one_runtime(chat, tiny_model_set):
    s = tiny_model_set
    twin = SpeechGPTChat(model=str(s.model), adapter=s.adapter, speech_tokenizer=s.speech_tokenizer,
                         vocoder=s.vocoder, temperature=0.1)
    assert twin.runtime is chat.runtime
    assert chat.bind_tools([get_weather]).bound.runtime is chat.runtime
    assert SpeechGPTChat().model == "fnlp/SpeechGPT-7B-cm"  # constructing loads nothing


def test_concurrent_first_use_loads_once():
    cache, calls, barrier = _Cache(), [], threading.Barrier(8)

    def load():
        calls.append(1)
        return object()

    results = []

    def worker():
        barrier.wait()
        results.append(cache.get("key", load))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len({id(r) for r in results}) == 1


def test_bad_settings_and_calls_fail_clearly(chat):
    with pytest.raises(ValidationError, match="text"):
        SpeechGPTChat(modalities=["audio"])
    with pytest.raises(ValidationError, match="temperature"):
        SpeechGPTChat(temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        SpeechGPTChat(top_p=2)
    with pytest.raises(ValueError, match="get_weather"):
        chat.bind_tools([get_weather], tool_choice="get_time")
    with pytest.raises(TypeError, match="frequency_penalty"):
        chat.invoke("hi", frequency_penalty=1.0)
    with pytest.raises(ValueError, match="ends with an AI message"):
        chat.invoke([HumanMessage("hi"), AIMessage("hello")])
    with pytest.raises(ValueError, match="image"):
        chat.invoke([HumanMessage([{"type": "image", "url": "https://x/y.png"}])])
