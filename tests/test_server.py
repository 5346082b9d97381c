"""`speechgpt-agent serve` against real OpenAI clients (openai SDK, langchain-openai).

One server per module: the demo model, started by the test on 127.0.0.1 with a free port
as a subprocess (the console script), an API key and small limits so that every refusal
is cheap to provoke. Decoding is greedy (temperature 0) wherever an answer is checked.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from speechgpt_agent.demo import DEMO_QUESTION
from speechgpt_agent.integrations.langchain.calculator import calculator
from speechgpt_agent.testing.serve import running_server

KEY = "sk-test-serve"
DATA = Path(__file__).parent / "data"
QUESTION_B64 = base64.b64encode(DEMO_QUESTION.read_bytes()).decode()
SPOKEN = [{"role": "user", "content": [{"type": "input_audio",
                                        "input_audio": {"data": QUESTION_B64, "format": "wav"}}]}]
TEXT = [{"role": "user", "content": "what is two plus three"}]
AUDIO_OUT = {"modalities": ["text", "audio"], "audio": {"voice": "default", "format": "pcm16"}}
TOOLS = [{"type": "function", "function": {
    "name": "calculator", "description": calculator.description,
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                   "required": ["expression"]}}}]
# SPEECHGPT_TEST_ENGINE=vllm (set by .ci/vllm-env) serves the same tests from the vLLM engine
ENGINE = os.environ.get("SPEECHGPT_TEST_ENGINE", "transformers")
ENGINE_ARGS = ["--engine", "vllm", "--dtype", "float32", "--engine-arg", "kv_cache_memory_bytes=536870912",
               "--engine-arg", "max_num_seqs=32"] if ENGINE == "vllm" else []
MAX_AUDIO_S = 10
MAX_MB = 2
MAX_MESSAGES = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Base URL of a running demo server; stopped (by its pid) when the module ends."""
    log = tmp_path_factory.mktemp("serve") / "server.log"
    args = ["--model", "demo", "--api-key", KEY, "--threads", "1", "--max-audio-seconds", str(MAX_AUDIO_S),
            "--max-request-mb", str(MAX_MB), "--max-messages", str(MAX_MESSAGES), "--log-level", "warning",
            *ENGINE_ARGS]
    # vLLM starts its engine core in a second process: it takes longer
    with running_server(log, *args, timeout_s=600 if ENGINE == "vllm" else 180) as srv:
        yield srv.url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=120)


def _health(server: str) -> dict:
    return httpx.get(f"{server}/health", timeout=5).json()


def _pcm(b64: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype="<i2")


# --- answers ---------------------------------------------------------------------------------


def test_health_and_models(server, client):
    health = _health(server)
    assert health["status"] == "ok" and health["model"] == "demo" and health["engine"] == ENGINE
    assert [m.id for m in client.models.list()] == ["demo"]
    assert client.models.retrieve("demo").id == "demo"


def test_spoken_question_gets_a_spoken_answer(client):
    r = client.chat.completions.create(model="demo", messages=SPOKEN, temperature=0,
                                       modalities=["text", "audio"],
                                       audio={"voice": "default", "format": "wav"})
    message = r.choices[0].message
    assert message.content is None and message.audio.transcript == "twelve"
    assert message.model_extra["input_transcript"] == "what is seven plus five"
    samples, rate = sf.read(io.BytesIO(base64.b64decode(message.audio.data)))
    assert rate == 16000 and 0.3 < samples.size / rate < 5 and np.abs(samples).max() > 0.01
    assert message.audio.id.startswith("audio_") and message.audio.expires_at > time.time()
    assert r.choices[0].finish_reason == "stop"
    usage = r.usage
    assert usage.prompt_tokens_details.audio_tokens > 10 and usage.completion_tokens_details.audio_tokens > 5
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streamed_audio_pieces_join_into_the_non_streamed_audio(client):
    whole = client.chat.completions.create(model="demo", messages=SPOKEN, temperature=0, **AUDIO_OUT)
    expected = _pcm(whole.choices[0].message.audio.data)
    stream = client.chat.completions.create(model="demo", messages=SPOKEN, temperature=0, stream=True,
                                            stream_options={"include_usage": True}, **AUDIO_OUT)
    pieces, transcript, heard, order, usage, ids = [], "", "", [], None, set()
    for chunk in stream:
        if not chunk.choices:
            usage = chunk.usage
            continue
        delta = chunk.choices[0].delta
        if delta.audio is not None:
            ids.add(delta.audio.id) if delta.audio.id else None
            if delta.audio.data:
                pieces.append(_pcm(delta.audio.data))
                order.append("audio")
            if delta.audio.transcript:
                transcript += delta.audio.transcript
                order.append("text")
        heard += (delta.model_extra or {}).get("input_transcript", "")
        if chunk.choices[0].finish_reason:
            order.append(chunk.choices[0].finish_reason)
    assert transcript == "twelve" and heard == "what is seven plus five"
    assert len(pieces) >= 2, "the audio came in one piece: it was not streamed"
    np.testing.assert_array_equal(np.concatenate(pieces), expected)
    assert expected.size / 24000 > 0.3  # pcm16 is OpenAI's 24 kHz
    assert order[-1] == "stop" and order.index("audio") < len(order) - 1
    assert len(ids) == 1 and usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_text_question(client):
    r = client.chat.completions.create(model="demo", messages=TEXT, temperature=0)
    assert r.choices[0].message.content == "five" and r.choices[0].message.audio is None
    chunks = client.chat.completions.create(model="demo", messages=TEXT, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "five"
    # a stop sequence cuts the answer before it (and ends generation there), streamed or not
    cut = client.chat.completions.create(model="demo", messages=TEXT, temperature=0, stop=["iv"])
    assert cut.choices[0].message.content == "f" and cut.choices[0].finish_reason == "stop"
    chunks = client.chat.completions.create(model="demo", messages=TEXT, temperature=0, stop="iv", stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "f"


def test_calculator_tool_round_trip(client):
    question = [{"role": "user", "content": "what is 1234 times 5678"}]
    r = client.chat.completions.create(model="demo", messages=question, tools=TOOLS, temperature=0)
    assert r.choices[0].finish_reason == "tool_calls"
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "calculator"
    assert json.loads(call.function.arguments) == {"expression": "1234 * 5678"}
    result = calculator.invoke(json.loads(call.function.arguments))
    follow = [*question, r.choices[0].message.model_dump(exclude_none=True),
              {"role": "tool", "tool_call_id": call.id, "content": result}]
    final = client.chat.completions.create(model="demo", messages=follow, tools=TOOLS, temperature=0)
    assert final.choices[0].finish_reason == "stop" and final.choices[0].message.content == "7006652"
    # streamed: the call arrives as delta.tool_calls, no text
    deltas = [c.choices[0] for c in client.chat.completions.create(
        model="demo", messages=question, tools=TOOLS, temperature=0, stream=True) if c.choices]
    calls = [tc for d in deltas for tc in d.delta.tool_calls or []]
    assert [json.loads(tc.function.arguments) for tc in calls] == [{"expression": "1234 * 5678"}]
    assert deltas[-1].finish_reason == "tool_calls" and not "".join(d.delta.content or "" for d in deltas)


def test_a_call_or_json_answer_cut_off_by_max_tokens_finishes_with_length(client):
    """As OpenAI reports it: ``finish_reason`` "length" with the unfinished call's raw
    arguments, and the OpenAI client's ``parse`` raises its length error."""
    from pydantic import BaseModel

    class Sum(BaseModel):
        answer: int

    question = [{"role": "user", "content": "what is 1234 times 5678"}]
    r = client.chat.completions.create(model="demo", messages=question, tools=TOOLS, tool_choice="required",
                                       temperature=0, max_tokens=6)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 6
    raw = r.choices[0].message.tool_calls[0].function.arguments
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(model="demo", messages=TEXT, response_format=Sum, temperature=0, max_tokens=2)


def test_structured_output(client):
    from pydantic import BaseModel

    class Sum(BaseModel):
        answer: int

    r = client.chat.completions.parse(model="demo", messages=TEXT, response_format=Sum, temperature=0)
    assert isinstance(r.choices[0].message.parsed, Sum)
    r = client.chat.completions.create(model="demo", messages=TEXT, temperature=0,
                                       response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_langchain_agent_with_the_calculator(server):
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=f"{server}/v1", api_key=KEY, model="demo", temperature=0, max_retries=0,
                     model_kwargs={"modalities": ["text", "audio"], "audio": {"voice": "default", "format": "wav"}})
    agent = create_agent(llm, [calculator])
    messages = agent.invoke({"messages": [HumanMessage("what is 1234 times 5678")]})["messages"]
    calls = [m for m in messages if isinstance(m, AIMessage) and m.tool_calls]
    assert calls and calls[0].tool_calls[0]["args"] == {"expression": "1234 * 5678"}
    assert any(isinstance(m, ToolMessage) and m.content == "7006652" for m in messages)
    final = messages[-1]
    assert isinstance(final, AIMessage) and not final.tool_calls
    spoken = final.additional_kwargs.get("audio") or {}
    assert (final.content or spoken.get("transcript")) == "7006652"


def test_earlier_spoken_answer_is_resolved_by_its_id(client):
    first = client.chat.completions.create(model="demo", messages=SPOKEN, temperature=0, **AUDIO_OUT)
    audio_id = first.choices[0].message.audio.id
    follow = [*SPOKEN, {"role": "assistant", "audio": {"id": audio_id}}, *TEXT]
    r = client.chat.completions.create(model="demo", messages=follow, temperature=0)
    assert r.choices[0].message.content.strip()
    with pytest.raises(openai.BadRequestError, match="unknown or expired"):
        client.chat.completions.create(model="demo", temperature=0, messages=[
            *SPOKEN, {"role": "assistant", "audio": {"id": "audio_" + "0" * 32}}, *TEXT])


def test_transcriptions(client):
    assert client.audio.transcriptions.create(model="demo", file=DEMO_QUESTION.open("rb")).text == \
        "what is seven plus five"
    text = client.audio.transcriptions.create(model="demo", file=DEMO_QUESTION.open("rb"), response_format="text")
    assert text.strip() == "what is seven plus five"
    verbose = client.audio.transcriptions.create(model="demo", file=DEMO_QUESTION.open("rb"),
                                                 response_format="verbose_json")
    assert verbose.text == "what is seven plus five"
    assert verbose.duration == pytest.approx(sf.info(str(DEMO_QUESTION)).duration, abs=0.01)
    flac = DATA / "question_22k_stereo.flac"  # another rate, channels and codec
    assert client.audio.transcriptions.create(model="demo", file=flac.open("rb")).text.startswith("what is")


def test_speech(client):
    wav = client.audio.speech.create(model="demo", voice="default", input="twelve", response_format="wav").read()
    samples, rate = sf.read(io.BytesIO(wav))
    assert rate == 16000 and samples.size / rate > 0.3 and np.abs(samples).max() > 0.01
    with client.audio.speech.with_streaming_response.create(
            model="demo", voice="default", input="twelve", response_format="pcm") as response:
        pcm = b"".join(response.iter_bytes())
    assert len(pcm) % 2 == 0
    assert len(pcm) / 2 / 24000 == pytest.approx(samples.size / rate, abs=0.01)


# --- concurrency -------------------------------------------------------------------------------


_STREAM_AND_HANG = textwrap.dedent("""
    import sys, time, openai
    c = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0)
    s = c.chat.completions.create(model="demo", messages=[{"role": "user", "content": "what is two plus three"}],
                                  temperature=0, stream=True)
    next(iter(s))
    print("started", flush=True)
    time.sleep(600)
""")


def test_16_concurrent_streaming_clients_and_one_killed_mid_stream(server, client):
    expected = {"spoken": client.chat.completions.create(model="demo", messages=SPOKEN, temperature=0,
                                                         **AUDIO_OUT).choices[0].message.audio,
                "text": "five"}

    async def one(aclient, k: int) -> tuple[str, str, int]:
        spoken = k % 2 == 0
        stream = await aclient.chat.completions.create(
            model="demo", messages=SPOKEN if spoken else TEXT, temperature=0, stream=True,
            **(AUDIO_OUT if spoken else {}))
        text, audio, reason = "", [], None
        async for chunk in stream:
            choice = chunk.choices[0]
            if choice.delta.audio is not None:
                text += choice.delta.audio.transcript or ""
                audio += [_pcm(choice.delta.audio.data)] if choice.delta.audio.data else []
            text += choice.delta.content or ""
            reason = choice.finish_reason or reason
        return ("spoken" if spoken else "text"), text, reason, (np.concatenate(audio) if audio else None)

    async def many():
        aclient = openai.AsyncOpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=300)
        return await asyncio.wait_for(asyncio.gather(*(one(aclient, k) for k in range(16))), timeout=300)

    killed = subprocess.Popen([sys.executable, "-c", _STREAM_AND_HANG, f"{server}/v1", KEY],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert killed.stdout.readline().strip() == "started"
        os.kill(killed.pid, signal.SIGKILL)  # mid-stream, while 16 others are served
        results = asyncio.run(many())
    finally:
        if killed.poll() is None:
            os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=10)
    assert len(results) == 16
    for kind, text, reason, audio in results:
        assert reason == "stop"
        if kind == "text":
            assert text == "five" and audio is None
        else:
            assert text == expected["spoken"].transcript
            # concurrent turns' vocoder steps run batched (speechgpt_agent.vocoder_batch): the
            # same audio up to float rounding, which may move a pcm16 sample by one step
            reference = _pcm(expected["spoken"].data)
            assert audio.shape == reference.shape
            assert np.abs(audio.astype(np.int32) - reference).max() <= 1
    deadline = time.monotonic() + 30
    while _health(server)["active_turns"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _health(server)["active_turns"] == 0, "a turn kept running after every client had gone"


# --- refusals ----------------------------------------------------------------------------------


def _post(server: str, body: dict | bytes, *, key: str | None = KEY, path: str = "/v1/chat/completions"):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, bytes):
        headers["Content-Type"] = "application/json"
        return httpx.post(f"{server}{path}", content=body, headers=headers, timeout=60)
    return httpx.post(f"{server}{path}", json=body, headers=headers, timeout=60)


def _spoken(data: str, fmt: str = "wav") -> dict:
    return {"model": "demo", "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": data, "format": fmt}}]}]}


def _wav_b64(seconds: float) -> str:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(seconds * 16000), np.int16), 16000, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode()


REFUSALS = {
    "no key": ({"body": {"model": "demo", "messages": TEXT}, "key": None}, 401, "Missing API key"),
    "wrong key": ({"body": {"model": "demo", "messages": TEXT}, "key": "sk-wrong"}, 401, "Incorrect API key"),
    "a path": ({"body": _spoken("/etc/passwd")}, 400, "never reads files or fetches URLs"),
    "a file URL": ({"body": _spoken("file:///etc/passwd")}, 400, "never reads files or fetches URLs"),
    "an http URL": ({"body": _spoken("https://example.com/question.wav")}, 400, "never reads files"),
    "corrupt audio": ({"body": _spoken(base64.b64encode(b"RIFF\x00\x00junk" * 50).decode())}, 400,
                      "input_audio.data"),
    "not base64": ({"body": _spoken("this is not audio!")}, 400, "not valid base64"),
    "an image part": ({"body": {"model": "demo", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}}, 400,
        "text and audio only"),
    "an unknown voice": ({"body": {"model": "demo", "messages": TEXT, "modalities": ["text", "audio"],
                                    "audio": {"voice": "alloy", "format": "wav"}}}, 400, "'default'"),
    "wav streamed": ({"body": {"model": "demo", "messages": TEXT, "stream": True, "modalities": ["text", "audio"],
                                "audio": {"voice": "default", "format": "wav"}}}, 400, "use audio.format 'pcm16'"),
    "audio too long": ({"body": _spoken(_wav_b64(MAX_AUDIO_S + 2))}, 400, f"at most {MAX_AUDIO_S} s"),
    "too many messages": ({"body": {"model": "demo", "messages": TEXT * (MAX_MESSAGES + 1)}}, 400,
                          f"at most {MAX_MESSAGES}"),
    "max_tokens beyond the context": ({"body": {"model": "demo", "messages": TEXT, "max_tokens": 100_000}},
                                      400, "beyond the model's context window"),
    "a field of the wrong type": ({"body": {"model": "demo", "messages": TEXT, "temperature": "hot"}},
                                  400, "temperature"),
    "n > 1": ({"body": {"model": "demo", "messages": TEXT, "n": 2}}, 400, "n=2 is not supported"),
    "a prompt too long": ({"body": {"model": "demo", "messages": [{"role": "user", "content": "seven " * 3000}]}},
                          400, "the prompt needs"),
    "an unknown model": ({"body": {"model": "gpt-4o", "messages": TEXT}}, 404, "serves 'demo'"),
    "no messages": ({"body": {"model": "demo", "messages": []}}, 400, "messages"),
    "ending with the assistant": ({"body": {"model": "demo", "messages": [
        *TEXT, {"role": "assistant", "content": "five"}]}}, 400, "ends with an assistant message"),
    "an unknown tool_choice": ({"body": {"model": "demo", "messages": TEXT, "tools": TOOLS,
                                          "tool_choice": "weather"}}, 400, "tool_choice"),
    "invalid JSON": ({"body": b'{"model": "demo", "messages": ['}, 400, "Invalid request"),
    "a body too large": ({"body": {"model": "demo", "messages": TEXT, "pad": "x" * (MAX_MB * 1024 * 1024)}},
                         413, "at most"),
    "a speech voice": ({"body": {"model": "demo", "input": "twelve", "voice": "alloy"}, "path": "/v1/audio/speech"},
                       400, "'default'"),
    "an unknown route": ({"body": {}, "path": "/v1/embeddings"}, 404, "Unknown route"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_have_a_status_and_an_openai_error_body(server, case):
    kwargs, status, message = REFUSALS[case]
    r = _post(server, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error["message"], error
    assert set(error) == {"message", "type", "param", "code"}


def test_refusals_through_the_openai_client(server, client):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="sk-wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError, match="voice 'alloy' is not available"):
        client.chat.completions.create(model="demo", messages=TEXT, modalities=["text", "audio"],
                                       audio={"voice": "alloy", "format": "wav"})
    with pytest.raises(openai.BadRequestError, match="response_format 'srt' is not supported"):
        client.audio.transcriptions.create(model="demo", file=DEMO_QUESTION.open("rb"), response_format="srt")


def test_the_server_survives_every_refusal_unchanged(server, client):
    for kwargs, _, _ in REFUSALS.values():
        _post(server, **kwargs)
    assert _health(server)["status"] == "ok"
    r = client.chat.completions.create(model="demo", messages=TEXT, temperature=0)
    assert r.choices[0].message.content == "five"
