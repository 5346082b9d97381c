"""The embedded demo model: behaviour floors on a fixed subset of the quality benchmark.

The clips in tests/data/demo are the held-out voice (espeak-ng en-us+f4, never heard in
training) asking questions; four of them were never heard in training in any voice (the
arithmetic ones marked ``held_out_question``). benchmarks/demo_quality.py measures the full
set; these floors sit below its figures so that a broken runtime, loader or export fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from speechgpt_agent.demo import DEMO_DIR, DEMO_NAME, demo_parts
from speechgpt_agent.model import GenerationOptions
from speechgpt_agent.training.recipes.demo.evaluate import normalize as _norm

DATA = Path(__file__).parent / "data" / "demo"
CLIPS = json.loads((DATA / "clips.json").read_text())
pytestmark = pytest.mark.skipif(
    not (DEMO_DIR / "llm").is_dir(),
    reason="the demo model is not exported into speechgpt_agent/assets/demo yet "
           "(python -m speechgpt_agent.training.recipes.demo --export)")
GREEDY = GenerationOptions(do_sample=False, max_new_tokens=300, min_new_tokens=0)


@pytest.fixture(scope="module")
def demo(one_thread):
    from speechgpt_agent.pipeline import SpeechGPT

    return SpeechGPT.from_pretrained(DEMO_NAME, quantization=None, progress=False)


@pytest.fixture(scope="module")
def spoken_turns(demo):
    """The chain-of-modality answer to each clip (greedy), computed once for the tests below."""
    return {name: demo.chat(audio=DATA / name, output="both", options=GREEDY) for name in CLIPS}


def test_demo_is_small_and_complete():
    parts = demo_parts()
    total = sum(f.stat().st_size for p in (parts.model, parts.adapter, parts.speech_tokenizer, parts.vocoder)
                for f in p.rglob("*") if f.is_file())
    assert total <= 25 * 2**20
    card = json.loads((parts.model.parent / "card.json").read_text())
    assert card["asr_exact"] >= 0.8 and card["arithmetic_correct"] >= 0.8
    assert card["spoken_answer_consistent"] >= 0.6
    assert card["tool_call_correct"] >= 0.8 and card["tool_answer_correct"] >= 0.8


# Floors on the six clips, measured with the shipped model (greedy, CPU): 4/6 transcripts,
# 4/6 answers (6/6 with transcript, text and units), 3/6 spoken answers heard back as their text; one below each, so that a
# broken runtime, loader or export fails while a last-digit difference of another BLAS
# does not. benchmarks/demo_quality.py measures the full set.


def test_demo_transcribes_a_voice_it_never_heard(demo):
    right = sum(_norm(demo.transcribe(DATA / name, options=GREEDY)) == _norm(meta["question"])
                for name, meta in CLIPS.items())
    assert right >= 3, f"{right}/6 exact transcripts"


def test_demo_answers_spoken_questions_through_the_chain_of_modality(spoken_turns):
    right = whole = 0
    for name, meta in CLIPS.items():
        response = spoken_turns[name]
        right += _norm(response.text) == _norm(meta["answer"])
        whole += bool(_norm(response.transcript) and _norm(response.text) and response.units)
    assert right >= 3, f"{right}/6 right answers"
    assert whole >= 5, f"{whole}/6 chain-of-modality answers with transcript, text and units"


def test_demo_speaks_its_answers_so_that_it_can_hear_them_again(demo, spoken_turns):
    heard_back = 0
    for response in spoken_turns.values():
        if not response.units:
            continue  # no spoken answer (counted by the chain test above)
        assert response.audio is not None and response.sample_rate == 16_000
        assert len(response.audio) >= 0.2 * response.sample_rate
        echo = demo.transcribe(response.audio, sample_rate=response.sample_rate, options=GREEDY)
        heard_back += _norm(echo) == _norm(response.text)
    assert heard_back >= 2, f"{heard_back}/6 spoken answers heard back as their text"


@pytest.fixture(scope="module")
def calculator_chat(one_thread):
    """The demo as a greedy, text-only SpeechGPTChat bound to the calculator tool."""
    from speechgpt_agent.integrations.langchain import SpeechGPTChat, calculator

    return SpeechGPTChat(model="demo", quantization=None, modalities=["text"], temperature=0.0,
                         min_new_tokens=0, max_tokens=200).bind_tools([calculator])


@pytest.fixture(scope="module")
def tool_turn(calculator_chat):
    """One agent turn on "what is 4321 times 1234": the call, the tool's result, the final answer."""
    from langchain_core.messages import HumanMessage, ToolMessage

    from speechgpt_agent.integrations.langchain import calculator

    chat = calculator_chat
    question = "what is 4321 times 1234"
    ai = chat.invoke([HumanMessage(question)])
    assert ai.tool_calls and ai.tool_calls[0]["name"] == "calculator", f"no calculator call: {ai.content!r}"
    call = ai.tool_calls[0]
    result = calculator.invoke(call["args"])
    final = chat.invoke([HumanMessage(question), ai, ToolMessage(result, tool_call_id=call["id"], name="calculator")])
    return call, result, final


def test_demo_calls_the_calculator_in_the_tool_format_and_answers_from_its_result(tool_turn):
    """The agent loop runs: a parsed calculator call with an expression the tool evaluates, then an answer."""
    call, result, final = tool_turn
    assert set(call["args"]) == {"expression"}
    assert result.lstrip("-").isdigit(), f"the calculator could not evaluate {call['args']}: {result}"
    assert final.text.strip() and not final.tool_calls


def test_demo_copies_the_numbers_into_the_call_and_the_result_into_the_answer(tool_turn):
    call, result, final = tool_turn
    assert call["args"] == {"expression": "4321 * 1234"}
    assert result == str(4321 * 1234)
    assert final.text.strip() == result


def test_demo_copies_numbers_it_never_saw_into_calls_and_answers(calculator_chat):
    """A floor on fresh numbers: numbers of every length from 2 to 4 digits, sums, differences
    and products (the benchmark's 20 questions all pass; 4 of these 5 must)."""
    from langchain_core.messages import HumanMessage, ToolMessage

    from speechgpt_agent.integrations.langchain import calculator

    chat = calculator_chat
    cases = {"what is 57 plus 9041": "57 + 9041", "what is 808 minus 6123": "808 - 6123",
             "what is 7210 times 35": "7210 * 35", "what is 4096 plus 3333": "4096 + 3333",
             "what is 912 times 468": "912 * 468"}
    right = 0
    for question, expression in cases.items():
        ai = chat.invoke([HumanMessage(question)])
        if not ai.tool_calls or ai.tool_calls[0]["args"] != {"expression": expression}:
            continue
        call = ai.tool_calls[0]
        result = calculator.invoke(call["args"])
        final = chat.invoke([HumanMessage(question), ai, ToolMessage(result, tool_call_id=call["id"], name="calculator")])
        right += final.text.strip() == result
    assert right >= 4, f"{right}/5 exact calls answered with the tool's result"


def test_demo_command(tmp_path, capsys, one_thread):
    from speechgpt_agent.cli import main

    out = tmp_path / "answer.wav"
    assert main(["demo", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "transcript: what is seven plus five" in printed
    assert "answer: twelve" in printed
    assert "tool call: calculator(" in printed and "agent answer: " in printed
    assert out.is_file() and out.stat().st_size > 1000
