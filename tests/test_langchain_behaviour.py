"""SpeechGPTChat's LangChain behaviour: context budgeting, profile, token counting, arguments,
per-call model overrides, audio hidden in file blocks, streamed transcripts and invalid calls,
and the opt-in reading of URLs and local files (issue 19)."""

from __future__ import annotations

import base64

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import ValidationError

from speechgpt_agent.demo import DEMO_QUESTION
from speechgpt_agent.errors import AudioError
from speechgpt_agent.integrations.langchain import SpeechGPTChat
from speechgpt_agent.integrations.langchain._runtime import answer_budget, load_runtime
from speechgpt_agent.mel_units import MelUnitTokenizer
from speechgpt_agent.testing.steer import ForceAnswer, answer_ids


@tool
def get_weather(location: str) -> str:
    """Get the weather at a location."""
    return f"Sunny in {location}."


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@pytest.fixture(scope="module")
def chat(tiny_model_set):
    s = tiny_model_set
    return SpeechGPTChat(model=s.model, adapter=s.adapter, speech_tokenizer=s.speech_tokenizer,
                         vocoder=s.vocoder, max_tokens=60, seed=0)


def forced(chat: SpeechGPTChat, answer: str, **fields) -> SpeechGPTChat:
    lm = chat.runtime.model
    ids = answer_ids(lm, answer)
    return chat.model_copy(update={"logits_processors": [lambda: ForceAnswer(ids, lm.eos_id)], **fields})


def b64_message(path, text: str | None = None) -> HumanMessage:
    data = base64.b64encode(path.read_bytes()).decode()
    blocks = [{"type": "text", "text": text}] if text else []
    return HumanMessage([*blocks, {"type": "audio", "base64": data, "mime_type": "audio/wav"}])


# --- the context window ----------------------------------------------------------------------


def test_answer_budget_leaves_the_prompt_what_the_answer_does_not_take():
    for context in (1024, 2048):
        for prompt in (10, 300, 600, 700, 900, 2000):
            for requested in (None, 1, 100, 2048, 10_000):
                n = answer_budget(context, prompt, requested)
                assert 1 <= n <= context and (requested is None or n <= requested)
                pipeline_budget = context - min(n, context // 2)  # SpeechGPT's prompt budget
                if prompt + min(requested or context, context // 4) <= context:
                    assert pipeline_budget >= prompt  # nothing is dropped when it fits
                    assert n == min(requested or context, context - prompt)  # the answer gets the rest
    assert answer_budget(1024, 700, None) == 324 and answer_budget(1024, 700, 2048) == 324
    assert answer_budget(1024, 1000, None) == 256  # a long history: a quarter stays for the answer


def test_demo_answers_a_spoken_question_with_a_tool_bound(one_thread):
    """The demo's context is 1024: the old default of 2048 new tokens left the prompt 512."""
    from speechgpt_agent.integrations.langchain import calculator

    chat = SpeechGPTChat(model="demo", quantization=None, temperature=0.0, seed=0)
    assert chat.max_tokens is None and chat.profile["max_input_tokens"] == 1024
    question = b64_message(DEMO_QUESTION)  # about 2 s; said four times: an 8 s question
    question = HumanMessage(question.content * 4)
    for max_tokens in (None, 2048):
        reply = chat.bind_tools([calculator]).invoke([question], max_tokens=max_tokens)
        usage = reply.usage_metadata
        assert usage["input_tokens"] > 512  # more than the old budget allowed
        assert usage["input_tokens"] + usage["output_tokens"] <= 1024


def test_profile_describes_the_model_set(chat, tiny_model_set):
    p = chat.profile
    assert p["max_input_tokens"] == chat.runtime.model.context_length
    assert p["audio_inputs"] and p["audio_outputs"] and p["text_inputs"] and p["text_outputs"]
    assert p["tool_calling"] and p["tool_choice"] and p["structured_output"] is False
    assert not p["image_inputs"] and not p["pdf_inputs"]
    deaf = SpeechGPTChat(model=tiny_model_set.model, speech_tokenizer=None, modalities=["text"])
    assert not deaf.profile["audio_inputs"] and not deaf.profile["audio_outputs"]
    assert SpeechGPTChat().profile["max_input_tokens"] == 2048  # the release, nothing loaded


def test_token_counts_use_the_models_tokenizer(chat, one_thread):
    tok = chat.runtime.model.tokenizer
    text = "Hello there, <sosp> what is 12 + 30?"
    assert chat.get_token_ids(text) == tok.encode(text, add_special_tokens=False) != []
    assert chat.get_num_tokens(text) == len(chat.get_token_ids(text)) > 5
    messages = [HumanMessage("What is the weather in Paris?"), AIMessage("Sunny."), HumanMessage("And Rome?")]
    reply = forced(chat, "[ta] Rainy.<eoa>").invoke(messages)
    counted = chat.get_num_tokens_from_messages(messages)
    assert abs(counted - reply.usage_metadata["input_tokens"]) <= 1  # token healing may take one
    assert chat.get_num_tokens_from_messages(messages, tools=[get_weather]) > counted + 20


# --- constructor and per-call arguments --------------------------------------------------------


def test_aliases_are_accepted_and_unknown_arguments_refused():
    assert SpeechGPTChat(model_name="demo").model == "demo"
    assert SpeechGPTChat(max_new_tokens=7).max_tokens == 7
    assert SpeechGPTChat(stop_sequences=["x"]).stop == ["x"]
    SpeechGPTChat(timeout=60, max_retries=2)  # LangChain's standard parameters: accepted
    with pytest.raises(ValidationError, match="'tempurature' \\(did you mean 'temperature'\\?\\)"):
        SpeechGPTChat(tempurature=0)
    with pytest.raises(ValidationError, match="unknown argument.*'frobnicate'"):
        SpeechGPTChat(frobnicate=True)
    with pytest.raises(ValidationError, match="disagree"):
        SpeechGPTChat(model="demo", model_name="other")


def test_a_per_call_model_loads_that_model_with_its_own_parts(chat, one_thread):
    spec = chat._spec("demo")
    assert (spec.model, spec.adapter, spec.vocoder) != (chat.model, chat.adapter, chat.vocoder)
    demo = load_runtime(spec)
    assert isinstance(demo.speech_tokenizer, MelUnitTokenizer)  # the demo's, not the instance's mHuBERT
    assert demo.vocoder is not chat.runtime.vocoder and demo.model.context_length == 1024
    reply = chat.invoke([b64_message(DEMO_QUESTION)], model="demo", temperature=0.0, max_tokens=40)
    assert reply.response_metadata["model_name"] == "demo"
    assert chat._spec(chat.model) == chat._spec()  # naming the instance's own model changes nothing


# --- audio that langchain-core relabels; URLs and files -----------------------------------------


def test_an_openai_file_block_with_audio_reaches_the_model(chat, clips, one_thread):
    data = base64.b64encode(clips["hello_16k_mono.wav"]["path"].read_bytes()).decode()
    message = HumanMessage([{"type": "file", "file": {"file_data": f"data:audio/wav;base64,{data}"}}])
    reply = forced(chat, "hi; [ta] Hello.<eoa>").invoke([message])  # langchain-core: "application/pdf"
    assert reply.usage_metadata["input_token_details"]["audio"] > 0


def test_urls_and_local_files_in_messages_are_opt_in(chat, clips, one_thread):
    path = clips["hello_16k_mono.wav"]["path"]
    for url in (path.resolve().as_uri(), str(path)):
        message = HumanMessage([{"type": "audio", "url": url, "mime_type": "audio/wav"}])
        with pytest.raises(AudioError, match="allow_local_files=True"):
            chat.invoke([message])
        reply = forced(chat, "hi; [ta] Hello.<eoa>", allow_local_files=True).invoke([message])
        assert reply.usage_metadata["input_token_details"]["audio"] > 0
    with pytest.raises(AudioError, match="allow_remote_audio=True"):
        chat.invoke([HumanMessage([{"type": "audio", "url": "http://169.254.169.254/latest/meta-data"}])])
    with pytest.raises(AudioError, match="not valid base64"):  # a path in a base64 field is not opened
        chat.invoke([HumanMessage([{"type": "audio", "base64": str(path), "mime_type": "audio/wav"}])])


# --- the stream -----------------------------------------------------------------------------------


def test_the_transcript_is_streamed_as_soon_as_it_is_known(chat, clips, one_thread):
    model = forced(chat, "hello how are you; [ta] I am fine.<eoa>")
    message = b64_message(clips["hello_16k_mono.wav"]["path"])
    chunks = list(model.stream([message]))
    first_text = next(i for i, c in enumerate(chunks) if c.text)
    heard = [c.response_metadata["transcript"] for c in chunks[:first_text]
             if c.response_metadata.get("transcript")]
    assert "".join(heard) == "hello how are you"  # before any of the answer
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    invoked = model.invoke([message])
    assert total.response_metadata["transcript"] == invoked.response_metadata["transcript"] == "hello how are you"
    assert total.text == invoked.text == "I am fine."


def test_streamed_invalid_tool_calls_equal_invoked_ones(chat, one_thread):
    bad = '{"tool": "get_weather", "arguments": {location: Paris}}'
    model = forced(chat, f"[ta] {bad}<eoa>", modalities=["text"])
    bound = model.bind_tools([get_weather], strict=False)
    invoked = bound.invoke("Weather?")
    total = None
    for chunk in bound.stream("Weather?"):
        total = chunk if total is None else total + chunk
    assert not invoked.tool_calls and not total.tool_calls
    (a,), (b,) = invoked.invalid_tool_calls, total.invalid_tool_calls
    assert (a["name"], a["args"]) == (b["name"], b["args"]) == ("get_weather", bad)
    assert a["error"]
    assert (invoked.response_metadata["invalid_tool_call_errors"]
            == total.response_metadata["invalid_tool_call_errors"] == [a["error"]])
    follow = bound.invoke(["Weather?", invoked, ToolMessage("bad call", tool_call_id=a["id"])])
    assert isinstance(follow, AIMessage)
