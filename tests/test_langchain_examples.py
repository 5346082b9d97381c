"""The examples run offline end to end when pointed at local model folders (the tiny set)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def run_example(monkeypatch, tiny_model_set, one_thread):
    monkeypatch.syspath_prepend(str(EXAMPLES))  # the examples import their _common helper
    s = tiny_model_set
    model_args = ["--model", str(s.model), "--adapter", str(s.adapter), "--speech-tokenizer",
                  str(s.speech_tokenizer), "--vocoder", str(s.vocoder), "--max-tokens", "24", "--seed", "0"]

    def run(name: str, *args: str) -> None:
        module = runpy.run_path(str(EXAMPLES / name), run_name="example")
        module["main"]([*model_args, *args])

    yield run
    for name in ("_common", "voice_agent"):
        sys.modules.pop(name, None)


def test_voice_agent(run_example, clips, tmp_path, capsys):
    run_example("voice_agent.py", "--audio", str(clips["hello_16k_mono.wav"]["path"]), "--text", "Hi",
                "--out", str(tmp_path / "answer.wav"))
    out = capsys.readouterr().out
    assert "human:" in out and "   ai:" in out and "heard:" in out


def test_voice_graph(run_example, tmp_path, capsys):
    run_example("voice_graph.py", "--text", "What is 2 + 3?", "--out", str(tmp_path / "answer.wav"))
    assert capsys.readouterr().out.strip()


def test_text_chatbot_with_voice_tools(run_example, clips, tmp_path, capsys):
    from speechgpt_agent.testing.whisper import make_tiny_whisper

    whisper = make_tiny_whisper(tmp_path / "whisper", always_predict="<|endoftext|>")
    run_example("text_chatbot_voice_tools.py", "--audio", str(clips["hello_16k_mono.wav"]["path"]),
                "--whisper-model", str(whisper), "--device", "cpu", "--out-dir", str(tmp_path / "out"))
    out = capsys.readouterr().out
    assert "human:" in out and "The recording:" in out
