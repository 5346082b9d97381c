"""``GET /v1/realtime`` (OpenAI's Realtime protocol) against real clients: the ``openai``
client's realtime connections (GA and beta), raw websockets for what clients never send,
and pipecat's ``OpenAIRealtimeLLMService`` when a pipecat interpreter is at hand.

One demo server per module, started by the test on 127.0.0.1 (stopped by its pid), with an
API key and small limits. Speech is the demo question ("what is seven plus five") resampled
to 24 kHz pcm16, framed by digital silence, sent in 100 ms pieces. Decoding is greedy
(``temperature: 0``) wherever an answer is checked.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import soxr

openai = pytest.importorskip("openai")
websockets = pytest.importorskip("websockets")
pytest.importorskip("silero_vad")

from speechgpt_agent.demo import DEMO_QUESTION, DEMO_TOOL_QUESTION
from speechgpt_agent.integrations.langchain.calculator import calculator
from speechgpt_agent.testing.serve import running_server

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

KEY = "sk-test-realtime"
MAX_AUDIO_S = 8
MAX_MB = 1
RATE = 24000
PIECE = RATE // 10  # 100 ms
LEAD_S, TAIL_S = 0.6, 1.5
TOOLS = [{"type": "function", "name": "calculator", "description": calculator.description,
          "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                         "required": ["expression"]}}]
VAD = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}


def _question_24k() -> np.ndarray:
    x, sr = sf.read(DEMO_QUESTION, dtype="float32")
    return soxr.resample(x, sr, RATE).astype(np.float32)


QUESTION = _question_24k()


def _pcm(x: np.ndarray) -> bytes:
    return np.clip(np.round(x * 32767), -32768, 32767).astype("<i2").tobytes()


def _framed(lead_s: float = LEAD_S, tail_s: float = TAIL_S) -> np.ndarray:
    return np.concatenate([np.zeros(int(lead_s * RATE), np.float32), QUESTION,
                           np.zeros(int(tail_s * RATE), np.float32)])


def _speech_edges_ms(x: np.ndarray, rate: int = RATE) -> tuple[float, float]:
    """First and last 10 ms frame whose RMS exceeds 5% of the loudest frame's (a plain energy VAD)."""
    hop = rate // 100
    frames = x[: len(x) // hop * hop].reshape(-1, hop)
    rms = np.sqrt((frames ** 2).mean(axis=1))
    loud = np.flatnonzero(rms > 0.05 * rms.max())
    return loud[0] * 10.0, (loud[-1] + 1) * 10.0


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Base URL of a running demo server; stopped (by its pid) when the module ends."""
    log = tmp_path_factory.mktemp("realtime") / "server.log"
    with running_server(log, "--model", "demo", "--api-key", KEY, "--threads", "1",
                        "--max-audio-seconds", str(MAX_AUDIO_S), "--max-request-mb", str(MAX_MB),
                        "--log-level", "warning") as srv:
        yield srv.url
        assert srv.alive(), f"the server died:\n{srv.log_tail()}"
        assert "Traceback" not in srv.log_tail(10**7), srv.log_tail()


def _client(server: str, key: str = KEY):
    return openai.AsyncOpenAI(base_url=f"{server}/v1", api_key=key, max_retries=0,
                              websocket_base_url=server.replace("http://", "ws://") + "/v1")


async def _until(conn, kind: str, events: list, timeout: float = 60.0):
    """Receive events (appended to ``events``) until one of type ``kind``; return it."""
    async def loop():
        async for ev in conn:
            events.append((time.monotonic(), ev))
            if ev.type == kind:
                return ev
        raise AssertionError(f"the connection closed before {kind}")
    return await asyncio.wait_for(loop(), timeout)


async def _stream(conn, audio: np.ndarray, *, pace_s: float = 0.0) -> None:
    data = _pcm(audio)
    step = PIECE * 2
    for i in range(0, len(data), step):
        await conn.input_audio_buffer.append(audio=_b64(data[i:i + step]))
        if pace_s:
            await asyncio.sleep(pace_s)


def _types(events) -> list[str]:
    return [ev.type for _, ev in events]


def _joined(events, kind: str) -> str:
    return "".join(ev.delta for _, ev in events if ev.type == kind)


def _audio(events, kind: str = "response.output_audio.delta") -> bytes:
    return b"".join(base64.b64decode(ev.delta) for _, ev in events if ev.type == kind)


def _active_turns(server: str) -> int:
    return httpx.get(f"{server}/health", timeout=5).json()["active_turns"]


# --- a spoken turn with server VAD -------------------------------------------------------------


async def test_spoken_question_with_server_vad(server):
    audio = _framed()
    start_ms, end_ms = _speech_edges_ms(audio)
    events: list = []
    async with _client(server).realtime.connect(model="demo") as conn:
        created = await _until(conn, "session.created", events)
        assert created.session.audio.input.turn_detection.type == "server_vad"  # the protocol's default
        await conn.session.update(session={"type": "realtime", "temperature": 0,
                                           "audio": {"input": {"turn_detection": VAD}}})
        updated = await _until(conn, "session.updated", events)
        assert updated.session.audio.input.turn_detection.silence_duration_ms == 500
        feeder = asyncio.create_task(_stream(conn, audio, pace_s=0.1))  # real time
        done = await _until(conn, "response.done", events, timeout=120)
        await feeder
    types = _types(events)
    started = next(ev for _, ev in events if ev.type == "input_audio_buffer.speech_started")
    stopped = next(ev for _, ev in events if ev.type == "input_audio_buffer.speech_stopped")
    # the protocol's positions: audio_start_ms includes prefix_padding_ms, audio_end_ms the silence
    assert abs(started.audio_start_ms + VAD["prefix_padding_ms"] - start_ms) <= 300, (started, start_ms)
    assert abs(stopped.audio_end_ms - VAD["silence_duration_ms"] - end_ms) <= 300, (stopped, end_ms)
    assert started.item_id == stopped.item_id
    heard = [ev for _, ev in events if ev.type == "conversation.item.input_audio_transcription.completed"]
    assert [h.transcript for h in heard] == ["what is seven plus five"] and heard[0].item_id == started.item_id
    assert _joined(events, "response.output_audio_transcript.delta") == "twelve"
    pcm = np.frombuffer(_audio(events), dtype="<i2")
    assert 0.3 < pcm.size / RATE < 5 and np.abs(pcm).max() > 300  # speech, at 24 kHz
    order = [types.index(t) for t in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                                      "input_audio_buffer.committed", "response.created",
                                      "response.output_audio.delta", "response.output_audio.done",
                                      "response.done")]
    assert order == sorted(order), types
    assert done.response.status == "completed"
    (item,) = done.response.output
    assert item.type == "message" and item.content[0].transcript == "twelve"
    usage = done.response.usage
    assert usage.input_token_details.audio_tokens > 10 and usage.output_token_details.audio_tokens > 5
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


async def test_manual_commit_in_the_beta_dialect_with_g711(server):
    """turn_detection null: the client commits. Beta event names; G.711 mu-law in, A-law out."""
    x8 = soxr.resample(QUESTION, RATE, 8000)
    ulaw = audioop.lin2ulaw(_pcm(x8), 2)
    events: list = []
    async with _client(server).beta.realtime.connect(model="demo") as conn:
        await _until(conn, "session.created", events)
        await conn.session.update(session={"turn_detection": None, "temperature": 0,
                                           "input_audio_format": "g711_ulaw", "output_audio_format": "g711_alaw"})
        updated = await _until(conn, "session.updated", events)
        assert updated.session.turn_detection is None and updated.session.input_audio_format == "g711_ulaw"
        for i in range(0, len(ulaw), 800):  # 100 ms at 8 kHz
            await conn.input_audio_buffer.append(audio=_b64(ulaw[i:i + 800]))
        await conn.input_audio_buffer.commit()
        await _until(conn, "input_audio_buffer.committed", events)
        await conn.response.create()
        done = await _until(conn, "response.done", events, timeout=120)
    types = _types(events)
    assert "input_audio_buffer.speech_started" not in types  # no server VAD
    assert "conversation.item.created" in types and "conversation.item.added" not in types
    assert _joined(events, "response.audio_transcript.delta") == "twelve"
    heard = [ev.transcript for _, ev in events if ev.type == "conversation.item.input_audio_transcription.completed"]
    assert heard == ["what is seven plus five"]
    alaw = _audio(events, "response.audio.delta")
    pcm = np.frombuffer(audioop.alaw2lin(alaw, 2), dtype="<i2")
    assert 0.3 < len(alaw) / 8000 < 5 and np.abs(pcm).max() > 300
    assert done.response.status == "completed"


async def test_text_modality_and_text_items(server):
    events: list = []
    async with _client(server).realtime.connect(model="demo") as conn:
        await conn.session.update(session={"type": "realtime", "temperature": 0, "output_modalities": ["text"],
                                           "audio": {"input": {"turn_detection": None}}})
        await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                  "content": [{"type": "input_text", "text": "what is two plus three"}]})
        await conn.response.create()
        done = await _until(conn, "response.done", events)
    assert _joined(events, "response.output_text.delta") == "five"
    assert "response.output_audio.delta" not in _types(events)
    assert done.response.output[0].content[0].text == "five"


# --- tools -------------------------------------------------------------------------------------


async def test_function_call_round_trip_with_the_calculator(server):
    events: list = []
    async with _client(server).realtime.connect(model="demo") as conn:
        await conn.session.update(session={"type": "realtime", "temperature": 0, "tools": TOOLS,
                                           "tool_choice": "auto", "output_modalities": ["text"],
                                           "audio": {"input": {"turn_detection": None}}})
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": DEMO_TOOL_QUESTION}]})  # numbers in neither prompt nor data
        await conn.response.create()
        done = await _until(conn, "response.done", events)
        args = [ev for _, ev in events if ev.type == "response.function_call_arguments.done"]
        assert len(args) == 1 and args[0].name == "calculator"
        assert json.loads(args[0].arguments) == {"expression": "4725 * 1609"}
        assert _joined(events, "response.function_call_arguments.delta") == args[0].arguments
        (call,) = done.response.output
        assert call.type == "function_call" and call.call_id == args[0].call_id
        assert not _joined(events, "response.output_text.delta")
        result = calculator.invoke(json.loads(args[0].arguments))
        events.clear()
        await conn.conversation.item.create(item={"type": "function_call_output", "call_id": call.call_id,
                                                  "output": result})
        await conn.response.create()
        final = await _until(conn, "response.done", events)
    assert _joined(events, "response.output_text.delta") == str(4725 * 1609) == result
    assert final.response.status == "completed"


# --- barge-in --------------------------------------------------------------------------------


async def test_barge_in_cancels_the_answer_and_reports_the_audio_sent(server):
    """A second utterance while the answer streams: the answer is cancelled (turn_detected), its
    audio sent so far is reported truncated, and the second utterance gets its own answer."""
    second = QUESTION[: int(0.3 * RATE)]  # the second utterance's first 300 ms, in one append
    for attempt in range(3):
        events: list = []
        async with _client(server).realtime.connect(model="demo") as conn:
            await conn.session.update(session={"type": "realtime", "temperature": 0,
                                               "audio": {"input": {"turn_detection": VAD}}})
            await _stream(conn, _framed(tail_s=0.7))
            first = await _until(conn, "response.created", events, timeout=60)
            async for ev in conn:  # barge in as soon as the answer has begun
                events.append((time.monotonic(), ev))
                if ev.type in ("response.output_audio.delta", "response.done"):
                    break
            if ev.type == "response.done":
                continue  # the whole answer came before any of it could be interrupted: retry
            await conn.input_audio_buffer.append(audio=_b64(_pcm(second)))
            cancelled = await _until(conn, "response.done", events)
            if cancelled.response.status == "completed":
                continue  # it ended before the speech was heard: retry
            await _stream(conn, np.concatenate([QUESTION[len(second):], np.zeros(RATE, np.float32)]))
            answered = await _until(conn, "response.done", events, timeout=120)
            break
    else:
        pytest.fail("the demo answered too fast to be interrupted in 3 tries")
    types = _types(events)
    assert cancelled.response.id == first.response.id and cancelled.response.status == "cancelled"
    assert cancelled.response.status_details.reason == "turn_detected"
    assert types.index("input_audio_buffer.speech_started") < types.index("response.done")
    (item,) = cancelled.response.output
    sent = [ev for _, ev in events if ev.type == "response.output_audio.delta" and ev.response_id == first.response.id]
    sent_ms = sum(len(base64.b64decode(ev.delta)) for ev in sent) / 48  # pcm16 24 kHz
    truncated = [ev for _, ev in events if ev.type == "conversation.item.truncated"]
    assert len(truncated) == 1 and truncated[0].item_id == item.id
    assert sent and truncated[0].audio_end_ms == int(sent_ms) > 0
    assert item.status == "incomplete"
    assert answered.response.status == "completed" and answered.response.id != first.response.id
    later = [ev for _, ev in events if ev.type == "response.output_audio_transcript.delta"
             and ev.response_id == answered.response.id]
    assert "".join(ev.delta for ev in later) == "twelve"
    deadline = time.monotonic() + 10
    while _active_turns(server) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert _active_turns(server) == 0


async def test_client_cancel_and_truncate(server):
    events: list = []
    async with _client(server).realtime.connect(model="demo") as conn:
        await conn.session.update(session={"type": "realtime", "temperature": 0,
                                           "audio": {"input": {"turn_detection": None}}})
        await _stream(conn, QUESTION)
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        await conn.response.create()  # one at a time
        err = await _until(conn, "error", events)
        assert err.error.code == "conversation_already_has_active_response"
        done = await _until(conn, "response.done", events, timeout=120)
        item = done.response.output[0]
        full_ms = len(_audio(events)) // 48
        await conn.conversation.item.truncate(item_id=item.id, content_index=0, audio_end_ms=full_ms // 2)
        truncated = await _until(conn, "conversation.item.truncated", events)
        assert truncated.audio_end_ms == full_ms // 2
        await conn.conversation.item.truncate(item_id=item.id, content_index=0, audio_end_ms=full_ms + 1000)
        assert (await _until(conn, "error", events)).error.param == "audio_end_ms"
        await conn.response.cancel()
        assert (await _until(conn, "error", events)).error.code == "response_cancel_not_active"


# --- many sessions -----------------------------------------------------------------------------


async def test_eight_concurrent_sessions(server):
    async def one(k: int) -> tuple[str, str, float]:
        events: list = []
        async with _client(server).realtime.connect(model="demo") as conn:
            await conn.session.update(session={"type": "realtime", "temperature": 0,
                                               "audio": {"input": {"turn_detection": VAD}}})
            await _stream(conn, _framed(lead_s=0.1 * k, tail_s=0.8))
            await _until(conn, "response.done", events, timeout=240)
        heard = [ev.transcript for _, ev in events if ev.type == "conversation.item.input_audio_transcription.completed"]
        return (heard[0] if heard else "", _joined(events, "response.output_audio_transcript.delta"),
                len(_audio(events)) / 48000)

    results = await asyncio.gather(*(one(k) for k in range(8)))
    assert [r[:2] for r in results] == [("what is seven plus five", "twelve")] * 8
    assert all(r[2] > 0.3 for r in results)
    assert _active_turns(server) == 0


# --- faults ------------------------------------------------------------------------------------


def _ws_url(server: str) -> str:
    return server.replace("http://", "ws://") + "/v1/realtime?model=demo"


async def _raw(server: str, **kwargs):
    return await websockets.connect(_ws_url(server), additional_headers={"Authorization": f"Bearer {KEY}"},
                                    max_size=None, **kwargs)


async def _next_of(ws, kind: str, timeout: float = 30.0) -> dict:
    async def loop():
        while True:
            event = json.loads(await ws.recv())
            if event["type"] == kind:
                return event
    return await asyncio.wait_for(loop(), timeout)


async def test_malformed_events_get_error_events_and_the_session_goes_on(server):
    ws = await _raw(server)
    try:
        await _next_of(ws, "session.created")
        cases = [
            ("{not json", "invalid_json"),
            ("[1, 2]", "invalid_event"),
            (json.dumps({"event_id": "e1"}), "invalid_event"),
            (json.dumps({"type": "no.such.event", "event_id": "e2"}), "invalid_event"),
            (json.dumps({"type": "input_audio_buffer.append"}), "invalid_value"),
            (json.dumps({"type": "input_audio_buffer.append", "audio": "***"}), "invalid_audio"),
            (json.dumps({"type": "session.update", "session": {"voice": "alloy"}}), "unsupported_voice"),
            (json.dumps({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/opus"}}}}}),
             "unsupported_audio_format"),
            (json.dumps({"type": "session.update", "session": {"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 7}}}}}),
             "invalid_value"),
            (json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                                       "content": [{"type": "input_image"}]}}),
             "unsupported_content"),
            (json.dumps({"type": "conversation.item.truncate", "item_id": "nope", "audio_end_ms": 0}), "item_not_found"),
            (json.dumps({"type": "input_audio_buffer.commit"}), "input_audio_buffer_commit_empty"),
            (json.dumps({"type": "response.cancel"}), "response_cancel_not_active"),
            (json.dumps({"type": "response.create"}), None),  # nothing to answer: a failed response
        ]
        for text, code in cases:
            await ws.send(text)
            if code is None:
                done = await _next_of(ws, "response.done")
                assert done["response"]["status"] == "failed"
                assert done["response"]["status_details"]["error"]["code"] == "no_user_input"
                continue
            err = await _next_of(ws, "error")
            assert err["error"]["code"] == code, (text, err)
            assert err["error"]["message"]
        # an event beyond the server's limit (MAX_MB), and a buffer beyond MAX_AUDIO_S
        await ws.send(json.dumps({"type": "session.update", "event_id": "e3",
                                  "session": {"audio": {"input": {"turn_detection": None}}}}))
        await _next_of(ws, "session.updated")
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (MAX_MB * 1024 * 1024 + 8)}))
        assert (await _next_of(ws, "error"))["error"]["code"] == "event_too_large"
        second = _b64(b"\0\0" * RATE)
        for _ in range(MAX_AUDIO_S):
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": second}))
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": second}))
        assert (await _next_of(ws, "error"))["error"]["code"] == "input_audio_buffer_too_long"
        await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        await _next_of(ws, "input_audio_buffer.cleared")
        await ws.send(json.dumps({"type": "session.update", "session": {"instructions": "still here"}}))
        assert (await _next_of(ws, "session.updated"))["session"]["instructions"] == "still here"
    finally:
        await ws.close()


async def test_handshake_refusals(server):
    with pytest.raises(websockets.InvalidStatus) as bad_key:
        await websockets.connect(_ws_url(server), additional_headers={"Authorization": "Bearer nope"})
    assert bad_key.value.response.status_code == 401
    assert json.loads(bad_key.value.response.body)["error"]["code"] == "invalid_api_key"
    with pytest.raises(websockets.InvalidStatus) as no_key:
        await websockets.connect(_ws_url(server))
    assert no_key.value.response.status_code == 401
    with pytest.raises(websockets.InvalidStatus) as bad_model:
        await websockets.connect(_ws_url(server).replace("model=demo", "model=gpt-realtime"),
                                 additional_headers={"Authorization": f"Bearer {KEY}"})
    assert bad_model.value.response.status_code == 404
    # a browser sends its key as a subprotocol
    async with websockets.connect(_ws_url(server), subprotocols=["realtime", f"openai-insecure-api-key.{KEY}"]) as ws:
        assert ws.subprotocol == "realtime"
        assert (await _next_of(ws, "session.created"))["session"]["model"] == "demo"


async def test_a_dropped_connection_cancels_its_turn(server):
    ws = await _raw(server)
    await _next_of(ws, "session.created")
    await ws.send(json.dumps({"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}}))
    await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": _b64(_pcm(QUESTION))}))
    await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
    await ws.send(json.dumps({"type": "response.create"}))
    await _next_of(ws, "response.created")
    ws.transport.abort()  # no close frame: the peer just vanishes
    deadline = time.monotonic() + 15
    while _active_turns(server) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert _active_turns(server) == 0
    events: list = []
    async with _client(server).realtime.connect(model="demo") as conn:  # the server goes on
        await conn.session.update(session={"type": "realtime", "temperature": 0, "output_modalities": ["text"],
                                           "audio": {"input": {"turn_detection": None}}})
        await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                  "content": [{"type": "input_text", "text": "what is two plus three"}]})
        await conn.response.create()
        await _until(conn, "response.done", events)
    assert _joined(events, "response.output_text.delta") == "five"


# --- pipecat -----------------------------------------------------------------------------------


def _pipecat_python() -> str | None:
    """An interpreter with pipecat-ai: $SPEECHGPT_PIPECAT_PYTHON, this one, or none."""
    env = os.environ.get("SPEECHGPT_PIPECAT_PYTHON")
    if env:
        if not shutil.which(env):  # named (CI: .ci/tests) but missing: a failure, not a skip
            pytest.fail(f"SPEECHGPT_PIPECAT_PYTHON={env} is not an interpreter")
        return env
    try:
        import pipecat.services.openai.realtime.llm  # noqa: F401
    except ImportError:
        return None
    return sys.executable


def test_pipecat_pipeline_gets_answer_audio(server, tmp_path):
    python = _pipecat_python()
    if python is None:
        pytest.skip("pipecat-ai is not installed here (pip install 'pipecat-ai[openai]', or point "
                    "SPEECHGPT_PIPECAT_PYTHON at an interpreter that has it)")
    wav = tmp_path / "question_24k.wav"
    sf.write(wav, _framed(), RATE, subtype="PCM_16")
    out = tmp_path / "pipecat.json"
    script = Path(__file__).with_name("realtime_pipecat_client.py")
    run = subprocess.run([python, str(script), "--url", server.replace("http://", "ws://") + "/v1/realtime",
                          "--key", KEY, "--wav", str(wav), "--out", str(out)],
                         check=False, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["audio_frames"] > 0 and result["audio_seconds"] > 0.3, result
    assert result["sample_rate"] == RATE and result["peak"] > 300
    assert result["user_transcript"] == "what is seven plus five"
    assert result["bot_transcript"] == "twelve"
