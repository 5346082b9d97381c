"""LangChain messages -> one SpeechGPT turn; every audio block form; audio blocks out."""

from __future__ import annotations

import base64
import http.server
import json
import threading

import numpy as np
import pytest
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from speechgpt_agent.audio import load_audio
from speechgpt_agent.errors import AudioError
from speechgpt_agent.integrations.langchain.messages import (
    SPOKEN_PLACEHOLDER,
    audio_block,
    load_audio_reference,
    message_audio,
    to_turn_input,
)
from speechgpt_agent.prompt import Turn


@pytest.fixture(scope="module")
def clip(clips):
    path = clips["weather_8k_mono.wav"]["path"]
    return {"path": path, "bytes": path.read_bytes(), "b64": base64.b64encode(path.read_bytes()).decode(),
            "samples": load_audio(path)}


def audio_forms(clip) -> dict[str, dict]:
    b64, path = clip["b64"], clip["path"]
    return {
        "v1 base64": {"type": "audio", "base64": b64, "mime_type": "audio/wav"},
        "v1 data url": {"type": "audio", "url": f"data:audio/wav;base64,{b64}"},
        "v1 file url": {"type": "audio", "url": path.resolve().as_uri()},
        "v1 path": {"type": "audio", "url": str(path)},
        "v1 file block": {"type": "file", "base64": b64, "mime_type": "audio/wav"},
        "openai input_audio": {"type": "input_audio", "input_audio": {"data": b64, "format": "wav"}},
        "openai file": {"type": "file", "file": {"file_data": f"data:audio/wav;base64,{b64}"}},
        "legacy base64": {"type": "audio", "source_type": "base64", "data": b64, "mime_type": "audio/wav"},
        "legacy url": {"type": "audio", "source_type": "url", "url": f"data:audio/wav;base64,{b64}"},
    }


LOCAL_FORMS = ("v1 file url", "v1 path")


def test_every_audio_form_gives_the_same_speech(clip):
    for name, block in audio_forms(clip).items():
        turn = to_turn_input([HumanMessage([{"type": "text", "text": "What is said?"}, block])],
                             allow_local_files=name in LOCAL_FORMS)
        assert turn.text == "What is said?", name
        np.testing.assert_array_equal(turn.audio, clip["samples"], err_msg=name)


def test_http_url_is_downloaded(clip, tmp_path):
    (tmp_path / "q.wav").write_bytes(clip["bytes"])

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(tmp_path), **k)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        np.testing.assert_array_equal(load_audio_reference(f"{url}/q.wav"), clip["samples"])
        message = HumanMessage([{"type": "audio", "url": f"{url}/q.wav"}])
        with pytest.raises(AudioError, match="remote audio is off.*allow_remote_audio=True"):
            to_turn_input([message])  # off by default: a URL from a user is not followed
        np.testing.assert_array_equal(to_turn_input([message], allow_remote_audio=True).audio,
                                      clip["samples"])
        with pytest.raises(AudioError, match="cannot download"):
            load_audio_reference(f"{url}/missing.wav")
    finally:
        server.shutdown()


@pytest.mark.parametrize(("block", "match"), [
    ({"type": "image", "base64": "iVBORw0KGgo=", "mime_type": "image/png"}, "'image' content block"),
    ({"type": "image_url", "image_url": {"url": "https://x/y.png"}}, "'image_url'"),
    ({"type": "file", "base64": "JVBERi0=", "mime_type": "application/pdf"}, "application/pdf"),
    ({"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0="}}, "application/pdf"),
    ({"type": "video", "url": "https://x/y.mp4"}, "'video'"),
    ({"type": "audio", "file_id": "file-123"}, "file store"),
    ({"type": "audio", "mime_type": "audio/wav"}, "no audio"),
    ({"type": "input_audio", "input_audio": {"format": "wav"}}, "input_audio.data"),
])
def test_unsupported_blocks_are_clear_value_errors(block, match):
    with pytest.raises(ValueError, match=match):
        to_turn_input([HumanMessage([{"type": "text", "text": "look"}, block])])


def test_bad_audio_is_an_audio_error(tmp_path):
    with pytest.raises(AudioError):
        to_turn_input([HumanMessage([{"type": "audio", "base64": base64.b64encode(b"not audio").decode(),
                                      "mime_type": "audio/wav"}])])
    with pytest.raises(AudioError, match="scheme"):
        load_audio_reference("ftp://example.com/a.wav")


def test_conversation_maps_onto_turns():
    messages = [
        SystemMessage("You are terse."),
        HumanMessage("What is the weather in Paris?"),
        AIMessage("", tool_calls=[{"name": "get_weather", "args": {"location": "Paris"}, "id": "c1"}]),
        ToolMessage("Sunny.", tool_call_id="c1", name="get_weather"),
        AIMessage([{"type": "text", "text": "It is sunny."}, {"type": "audio", "base64": "AAAA"}]),
        SystemMessage("Be nice."),
        HumanMessage("Thanks!"),
        HumanMessage([{"type": "text", "text": "And tomorrow?"}]),
    ]
    turn = to_turn_input(messages)
    assert turn.system == "You are terse.\nBe nice."
    call = '{"tool": "get_weather", "arguments": {"location": "Paris"}}'
    assert turn.history == (
        Turn("What is the weather in Paris?", call),
        Turn('Tool "get_weather" returned: Sunny.', "It is sunny."),
    )
    assert turn.text == "Thanks!\nAnd tomorrow?" and turn.audio is None


def test_tool_results_end_a_turn_and_double_messages_merge():
    turn = to_turn_input([
        HumanMessage("hello"), HumanMessage("hello"), AIMessage("hi"), AIMessage("there"),
        HumanMessage("1 + 2?"),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "x"}]),
        ToolMessage([{"type": "text", "text": "3"}], tool_call_id="x", name="add", status="error"),
    ])
    assert turn.history[0] == Turn("hello\nhello", "hi\nthere")
    assert turn.text == 'Tool "add" failed: 3'
    assert turn.system is None  # the released meta instruction


def test_earlier_speech_enters_as_its_transcript(clip):
    spoken = HumanMessage([{"type": "audio", "base64": clip["b64"], "mime_type": "audio/wav"}])
    turn = to_turn_input([
        spoken, AIMessage("Sunny.", response_metadata={"transcript": "what is the weather"}),
        spoken, AIMessage("Still sunny."),
        HumanMessage("ok"),
    ])
    assert [t.user for t in turn.history] == ["what is the weather", SPOKEN_PLACEHOLDER]
    assert turn.audio is None  # only the current question's speech is decoded


def test_several_clips_in_the_question_are_joined(clip):
    block = {"type": "audio", "base64": clip["b64"], "mime_type": "audio/wav"}
    turn = to_turn_input([HumanMessage([block]), HumanMessage([block])])
    np.testing.assert_array_equal(turn.audio, np.concatenate([clip["samples"]] * 2))
    assert turn.text is None


@pytest.mark.parametrize("messages", [
    [], [HumanMessage("hi"), AIMessage("hello")], [HumanMessage("  ")], [SystemMessage("only")],
])
def test_conversations_without_a_question_are_refused(messages):
    with pytest.raises(ValueError):
        to_turn_input(messages)


def test_audio_blocks_round_trip_and_join():
    rng = np.random.default_rng(0)
    a = (rng.uniform(-0.5, 0.5, 800)).astype(np.float32)
    b = (rng.uniform(-0.5, 0.5, 333)).astype(np.float32)
    block = audio_block(a, 16000, offset=0)
    assert block["type"] == "audio" and block["mime_type"] == "audio/wav" and block["extras"] == {"offset": 0}
    assert base64.b64decode(block["base64"])[:4] == b"RIFF"
    one = AIMessage([{"type": "text", "text": "x"}, block])
    samples, rate = message_audio(one)
    assert rate == 16000 and np.max(np.abs(samples - a)) <= 1 / 32768
    # stream pieces: distinct indexes keep them apart when chunks are added
    first = AIMessageChunk([{"type": "text", "text": "x", "index": 0}, {**audio_block(a, 16000), "index": 1}])
    second = AIMessageChunk([{"type": "text", "text": "y", "index": 0}, {**audio_block(b, 16000), "index": 2}])
    total = first + second
    assert [blk["type"] for blk in total.content] == ["text", "audio", "audio"] and total.text == "xy"
    joined, _ = message_audio(total)
    assert joined.size == a.size + b.size
    assert message_audio(AIMessage("no audio")) is None
    json.dumps(total.content)  # plain JSON: serializable in any checkpointer


def test_local_files_are_read_only_when_allowed(clip):
    for name in LOCAL_FORMS:
        message = HumanMessage([audio_forms(clip)[name]])
        with pytest.raises(AudioError, match="local files are off.*allow_local_files=True"):
            to_turn_input([message])
        np.testing.assert_array_equal(to_turn_input([message], allow_local_files=True).audio,
                                      clip["samples"])
    with pytest.raises(AudioError, match="local files are off"):
        load_audio_reference(str(clip["path"]), allow_local=False)


@pytest.mark.parametrize("field", ["base64", "data"])
def test_a_base64_field_is_never_opened_as_a_path(clip, field):
    block = {"type": "audio", field: str(clip["path"]), "mime_type": "audio/wav"}
    if field == "data":
        block["source_type"] = "base64"
    for allow in (False, True):  # not even when local files are allowed
        with pytest.raises(AudioError, match="not valid base64") as info:
            to_turn_input([HumanMessage([block])], allow_local_files=allow)
        assert "not found" not in str(info.value)


@pytest.mark.parametrize(("payload", "kind"), [
    (b"%PDF-1.4 a document", "a PDF"), (b"\x89PNG\r\n\x1a\n....", "a PNG image"),
    (b"hello, this is plain text", "text"), (bytes(range(200, 240)), "not a known audio format"),
])
def test_base64_of_something_else_says_it_is_not_audio(payload, kind):
    b64 = base64.b64encode(payload).decode()
    for block in ({"type": "audio", "base64": b64, "mime_type": "audio/wav"},
                  {"type": "input_audio", "input_audio": {"data": b64, "format": "wav"}}):
        with pytest.raises(AudioError, match=f"not audio \\({kind}") as info:
            to_turn_input([HumanMessage([block])])
        assert "not found" not in str(info.value)


@pytest.mark.parametrize("name", ["hello_16k_mono.wav", "numbers_44k_mono.ogg", "question_22k_stereo.flac"])
def test_a_file_block_that_langchain_labelled_pdf_is_audio_by_its_bytes(clips, name):
    """langchain-core turns OpenAI's {"type": "file", "file": {"file_data": "data:audio/..."}}
    into {"type": "file", "base64": ..., "mime_type": "application/pdf"}."""
    from langchain_core.language_models._utils import _normalize_messages

    data = clips[name]["path"].read_bytes()
    b64 = base64.b64encode(data).decode()
    openai = HumanMessage([{"type": "file", "file": {"file_data": f"data:audio/wav;base64,{b64}"}}])
    normalized = _normalize_messages([openai])[0]
    assert normalized.content[0]["mime_type"] == "application/pdf"  # what the model is given
    expected = load_audio(data)
    for message in (openai, normalized):
        np.testing.assert_array_equal(to_turn_input([message]).audio, expected)
    pdf = {"type": "file", "base64": base64.b64encode(b"%PDF-1.4 x").decode(), "mime_type": "application/pdf"}
    with pytest.raises(ValueError, match="application/pdf"):
        to_turn_input([HumanMessage([pdf])])


def test_a_tool_message_without_name_takes_the_name_of_its_call():
    turn = to_turn_input([
        HumanMessage("weather and time?"),
        AIMessage("", tool_calls=[{"name": "get_weather", "args": {}, "id": "c1"},
                                  {"name": "get_time", "args": {}, "id": "c2"}]),
        ToolMessage("Sunny.", tool_call_id="c1"),
        ToolMessage("noon", tool_call_id="c2", status="error"),
        ToolMessage("?", tool_call_id="unknown"),
    ])
    assert turn.text == ('Tool "get_weather" returned: Sunny.\nTool "get_time" failed: noon\n'
                         'Tool "tool" returned: ?')
