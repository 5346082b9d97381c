"""The examples run offline end to end when pointed at local model folders (the tiny set).

A random tiny model decides nothing sensible, so each example's SpeechGPTChat is steered
(``logits_processors``, as in test_langchain_chat.py): it is made to call the example's tool,
then to answer with the tool's result as it reads it in its prompt. Everything between (the
call's parsing, the agent or graph loop, the tool run, the result in the next prompt, the
streaming vocoder) is the real code, so each asserted line appears only when a tool ran.
"""

from __future__ import annotations

import re
import runpy
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import soundfile as sf

from speechgpt_agent.testing.steer import ForceAnswer, answer_ids

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SPOKEN = "<sosp>" + "".join(f"<{u}>" for u in (5, 17, 999, 0, 42, 311, 8, 64, 128, 256, 3, 77)) + "<eosp>"

Reply = Callable[[str], str]
"""The forced answer, from the last user turn of the prompt (what follows its last ``[Human]``)."""


def tool_result(last_turn: str, tool: str) -> str | None:
    """What ``Tool "<tool>" returned: ...`` says in the prompt's last user turn, if it is there."""
    found = re.search(rf'Tool "{tool}" returned:\s*(.*?)\s*<eoh>', last_turn, re.DOTALL)
    return found.group(1) if found else None


def scripted(chat, reply: Reply):
    """``chat`` steered: each generation is forced to ``reply(last user turn)``, then eos."""
    lm = chat.runtime.model

    def factory():
        state: dict = {}

        def process(input_ids, scores):
            if "forced" not in state:
                last = lm.decode(input_ids[0].tolist()).rsplit("[Human]", 1)[-1]
                state["forced"] = ForceAnswer(answer_ids(lm, reply(last)), lm.eos_id)
            return state["forced"](input_ids, scores)

        return process

    return chat.model_copy(update={"logits_processors": [factory]})


@pytest.fixture
def run_example(monkeypatch, tiny_model_set, one_thread):
    """``run(name, *args, speech=reply, text=reply)``: run an example's ``main``, with its
    SpeechGPTChat (``speech``) and its text-only chatbot (``text``) steered."""
    monkeypatch.syspath_prepend(str(EXAMPLES))  # the examples import their _common helper
    import _common

    s = tiny_model_set
    model_args = ["--model", str(s.model), "--adapter", str(s.adapter), "--speech-tokenizer",
                  str(s.speech_tokenizer), "--vocoder", str(s.vocoder), "--max-tokens", "120", "--seed", "0"]

    def run(name: str, *args: str, speech: Reply | None = None, text: Reply | None = None) -> None:
        real = _common.chat_from_args

        def steered(parsed, **overrides):
            chat = real(parsed, **overrides)
            reply = text if overrides.get("modalities") == ["text"] else speech
            return scripted(chat, reply) if reply else chat

        monkeypatch.setattr(_common, "chat_from_args", steered)
        module = runpy.run_path(str(EXAMPLES / name), run_name="example")
        module["main"]([*model_args, *args])

    yield run
    for name in ("_common", "voice_agent"):
        sys.modules.pop(name, None)


def assert_spoken_wav(path: Path) -> None:
    audio, rate = sf.read(path)
    assert rate == 16_000 and audio.ndim == 1 and audio.size > 0 and abs(audio).max() > 0


def test_voice_agent(run_example, clips, tmp_path, capsys):
    call = '{"tool": "get_weather", "arguments": {"location": "Lyon"}}'

    def reply(last: str) -> str:
        result = tool_result(last, "get_weather")
        return f"[ta] {call}<eoa>" if result is None else f"[ta] {result}; [ua] {SPOKEN}<eoa>"

    run_example("voice_agent.py", "--audio", str(clips["hello_16k_mono.wav"]["path"]), "--text", "Hi",
                "--out", str(tmp_path / "answer.wav"), speech=reply)
    out = capsys.readouterr().out
    weather = "It is sunny and 22 degrees in Lyon."  # get_weather's own words, nowhere in the input
    assert f" tool: {weather!r}" in out  # the tool ran on the model's call
    assert f"   ai: {weather!r}" in out  # the answer read the result back from its prompt
    assert "calls [{'name': 'get_weather', 'args': {'location': 'Lyon'}" in out
    assert "heard:" in out and f"spoken answer: {tmp_path / 'answer.wav'}" in out
    assert_spoken_wav(tmp_path / "answer.wav")


def test_voice_graph(run_example, tmp_path, capsys):
    call = '{"tool": "add", "arguments": {"a": 2, "b": 3}}'

    def reply(last: str) -> str:
        result = tool_result(last, "add")
        return f"[ta] {call}<eoa>" if result is None else f"[ta] The sum is {result}.; [ua] {SPOKEN}<eoa>"

    run_example("voice_graph.py", "--text", "What is 2 + 3?", "--out", str(tmp_path / "answer.wav"),
                speech=reply)
    out = capsys.readouterr().out
    # "5.0" is the float add() returns: only the ToolNode's run puts it in the model's prompt
    assert "The sum is 5.0." in out
    assert f"spoken answer: {tmp_path / 'answer.wav'}" in out
    assert_spoken_wav(tmp_path / "answer.wav")


def test_text_chatbot_with_voice_tools(run_example, clips, tmp_path, capsys):
    from speechgpt_agent.testing.whisper import make_tiny_whisper

    whisper = make_tiny_whisper(tmp_path / "whisper", always_predict="<|endoftext|>")
    audio = Path(clips["hello_16k_mono.wav"]["path"]).resolve()

    def chatbot(last: str) -> str:  # transcribe, read the transcript aloud, then say where it is
        if (heard := tool_result(last, "speech_to_text")) is not None:
            spoken = heard or "nothing was said"
            return f'[ta] {{"tool": "text_to_speech", "arguments": {{"text": "{spoken}"}}}}<eoa>'
        if (wav := tool_result(last, "text_to_speech")) is not None:
            return f"[ta] Read aloud in {wav}<eoa>"
        if "The recording:" in last:
            return f'[ta] {{"tool": "speech_to_text", "arguments": {{"audio": "{audio}"}}}}<eoa>'
        return "[ta] unexpected turn<eoa>"  # ends the loop (e.g. a tool error came back)

    out_dir = tmp_path / "out"
    run_example("text_chatbot_voice_tools.py", "--audio", str(audio), "--whisper-model", str(whisper),
                "--device", "cpu", "--out-dir", str(out_dir),
                text=chatbot, speech=lambda last: f"{SPOKEN}<eoa>")
    out = capsys.readouterr().out
    # faster-whisper's artifact, then the wav the TTS tool wrote: lines only the tools print
    assert " tool: '' (artifact: ['backend', 'duration', 'language', 'segments', 'text'])" in out
    (wav,) = out_dir.glob("speech-*.wav")
    assert f" tool: {str(wav)!r} (artifact: ['base64', 'extras', 'mime_type', 'type'])" in out
    assert f"   ai: 'Read aloud in {wav}'" in out
    assert_spoken_wav(wav)
