"""Voice tools: faster-whisper on a tiny CTranslate2 Whisper, SpeechGPT ASR/TTS/voice turns,
inside ToolNode and a text chatbot's agent loop.

The tiny Whisper is built by the test (transformers config -> ctranslate2 converter, with a
tokenizer made by the test) and always predicts "a", so its transcripts are known. SpeechGPT
answers are steered through the chat model's ``logits_processors`` field.
"""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest
from faster_whisper import WhisperModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool

from speechgpt_agent.audio import load_audio
from speechgpt_agent.integrations.langchain import (
    SpeechGPTChat,
    SpeechToTextTool,
    TextToSpeechTool,
    VoiceTurnTool,
    message_audio,
)
from speechgpt_agent.testing.steer import ForceAnswer, answer_ids
from speechgpt_agent.testing.whisper import make_tiny_whisper

WHISPER_OPTIONS = {"temperature": 0.0, "max_new_tokens": 8}  # no fallback retries: fast


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    return make_tiny_whisper(tmp_path_factory.mktemp("whisper"), always_predict="a")


@pytest.fixture(scope="module")
def speechgpt(tiny_model_set):
    s = tiny_model_set
    return SpeechGPTChat(model=s.model, adapter=s.adapter, speech_tokenizer=s.speech_tokenizer,
                         vocoder=s.vocoder, max_tokens=80, seed=0)


@pytest.fixture
def clip(clips):
    return clips["hello_16k_mono.wav"]["path"]


def steer(chat: SpeechGPTChat, answer: str) -> SpeechGPTChat:
    lm = chat.runtime.model
    ids = answer_ids(lm, answer)
    return chat.model_copy(update={"logits_processors": [lambda: ForceAnswer(ids, lm.eos_id)]})


def stt(whisper_dir) -> SpeechToTextTool:
    return SpeechToTextTool(whisper_model=str(whisper_dir), device="cpu", compute_type="float32",
                            beam_size=1, whisper_options=WHISPER_OPTIONS)


def test_faster_whisper_transcribes_like_faster_whisper(whisper_dir, clip, one_thread):
    tool = stt(whisper_dir)
    direct = WhisperModel(str(whisper_dir), device="cpu", compute_type="float32")
    segments, _ = direct.transcribe(load_audio(clip), beam_size=1, language="en", **WHISPER_OPTIONS)
    expected = " ".join(s.text.strip() for s in segments)
    assert expected and set(expected) <= {"a", " "}  # the tiny model only says "a"

    text = tool.invoke({"audio": str(clip), "language": "en"})
    assert text == expected
    msg = tool.invoke({"type": "tool_call", "name": tool.name, "id": "c1",
                       "args": {"audio": clip.resolve().as_uri(), "language": "en"}})
    assert isinstance(msg, ToolMessage) and msg.content == expected and msg.tool_call_id == "c1"
    art = msg.artifact
    assert art["backend"] == "faster-whisper" and art["language"] == "en" and art["text"] == expected
    assert art["duration"] == pytest.approx(load_audio(clip).size / 16000)
    assert " ".join(s["text"] for s in art["segments"]) == expected

    data_url = "data:audio/wav;base64," + base64.b64encode(clip.read_bytes()).decode()
    assert asyncio.run(tool.ainvoke({"audio": data_url, "language": "en"})) == expected


def test_unusable_audio_is_reported_to_the_model(whisper_dir, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEjunk")
    msg = stt(whisper_dir).invoke({"type": "tool_call", "name": "speech_to_text", "id": "c",
                                   "args": {"audio": str(bad)}})
    assert msg.status == "error" and "cannot use that audio" in msg.content


def test_speechgpt_asr_backend(speechgpt, clip, one_thread):
    tool = SpeechToTextTool(backend="speechgpt", speechgpt=steer(speechgpt, "hello how are you<eoa>"))
    text, art = tool._run(str(clip))
    assert text == "hello how are you" and art["backend"] == "speechgpt"


def test_text_to_speech_gives_a_wav_artifact_and_file(speechgpt, tmp_path, one_thread):
    units = [1, 2, 3, 40, 500]
    spoken = "<sosp>" + "".join(f"<{u}>" for u in units) + "<eosp><eoa>"
    tool = TextToSpeechTool(speechgpt=steer(speechgpt, spoken), output_dir=str(tmp_path))
    msg = tool.invoke({"type": "tool_call", "name": tool.name, "id": "t1", "args": {"text": "Good morning."}})
    block = msg.artifact
    assert block["type"] == "audio" and block["mime_type"] == "audio/wav"
    assert block["extras"]["units"] == units and block["extras"]["text"] == "Good morning."
    path = block["extras"]["path"]
    assert msg.content == path
    offline = speechgpt.runtime.vocoder.synthesize(units)
    samples, rate = message_audio(AIMessage([block]))
    assert rate == 16000 and np.max(np.abs(samples - offline)) < 2e-4
    np.testing.assert_array_equal(load_audio(path), samples)
    # no speech produced: an error message for the model, not an exception
    silent = TextToSpeechTool(speechgpt=steer(speechgpt, "nothing<eoa>"))
    err = silent.invoke({"type": "tool_call", "name": silent.name, "id": "t2", "args": {"text": "Hi."}})
    assert err.status == "error" and "no speech" in err.content


def test_voice_turn_answers_aloud(speechgpt, clip, one_thread):
    answer = "hello; [ta] Hi there.; [ua] <sosp><7><8><9><eosp><eoa>"
    tool = VoiceTurnTool(speechgpt=steer(speechgpt, answer))
    content, art = tool._run(str(clip))
    assert content == "Heard: hello\nAnswer: Hi there."
    assert art["transcript"] == "hello" and art["units"] == [7, 8, 9] and art["path"] is None
    assert art["audio"]["type"] == "audio" and art["audio"]["extras"]["duration"] > 0


def test_tools_run_in_a_tool_node_and_a_text_chatbots_agent(speechgpt, whisper_dir, clip, one_thread):
    from langchain.agents import create_agent
    from langgraph.graph import START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode

    tools = [stt(whisper_dir),
             TextToSpeechTool(speechgpt=steer(speechgpt, "<sosp><4><5><eosp><eoa>")),
             VoiceTurnTool(speechgpt=steer(speechgpt, "hi; [ta] Yes.; [ua] <sosp><6><eosp><eoa>"))]
    schema = convert_to_openai_tool(tools[0])["function"]["parameters"]
    assert set(schema["properties"]) == {"audio", "language"} and schema["required"] == ["audio"]

    calls = [{"type": "tool_call", "name": "speech_to_text", "id": "a", "args": {"audio": str(clip)}},
             {"type": "tool_call", "name": "text_to_speech", "id": "b", "args": {"text": "Hello."}},
             {"type": "tool_call", "name": "voice_turn", "id": "c", "args": {"audio": str(clip)}}]
    graph = StateGraph(MessagesState)
    graph.add_node("tools", ToolNode(tools))
    graph.add_edge(START, "tools")
    out = graph.compile().invoke({"messages": [AIMessage("", tool_calls=calls)]})["messages"]
    by_id = {m.tool_call_id: m for m in out if isinstance(m, ToolMessage)}
    assert by_id["a"].artifact["backend"] == "faster-whisper"
    assert by_id["b"].artifact["extras"]["units"] == [4, 5]
    assert by_id["c"].artifact["units"] == [6]

    # a text-only chatbot decides to transcribe, then answers with the transcript
    lm = speechgpt.runtime.model

    def script():
        state = {}

        def process(input_ids, scores):
            if "f" not in state:
                last = lm.decode(input_ids[0].tolist()).rsplit("[Human]", 1)[-1]
                answer = ("[ta] The recording says: a.<eoa>" if "returned:" in last else
                          f'[ta] {{"tool": "speech_to_text", "arguments": {{"audio": "{clip}"}}}}<eoa>')
                state["f"] = ForceAnswer(answer_ids(lm, answer), lm.eos_id)
            return state["f"](input_ids, scores)

        return process

    chatbot = speechgpt.model_copy(update={"modalities": ["text"], "max_tokens": 120,
                                           "logits_processors": [script]})
    result = create_agent(chatbot, tools=tools).invoke({"messages": [("user", "What does it say?")]})
    kinds = [m.type for m in result["messages"]]
    assert kinds == ["human", "ai", "tool", "ai"]
    assert result["messages"][2].artifact["text"].startswith("a")
    assert result["messages"][-1].content == "The recording says: a."


def test_voice_tools_fetch_no_url_and_read_files_only_when_allowed(tmp_path):
    from speechgpt_agent.integrations.langchain.tools import SpeechToTextTool

    tool = SpeechToTextTool(backend="speechgpt")
    out = tool.invoke({"audio": "http://127.0.0.1:9/never-fetched.wav"})
    assert "allow" in str(out).lower() and "url" in str(out).lower()
    closed = SpeechToTextTool(backend="speechgpt", allow_local_files=False)
    wav = tmp_path / "x.wav"
    wav.write_bytes(b"RIFF")
    out = closed.invoke({"audio": str(wav)})
    assert "allow_local_files" in str(out) or "local" in str(out).lower()
