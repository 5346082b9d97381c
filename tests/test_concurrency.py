"""Many turns on one set of weights (issue: serving engines): SpeechGPT and SpeechGPTChat over the
embedded engine never block one caller on another's open stream, read interleaved streams from
one thread, and give every concurrent caller the answer it gets alone."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from speechgpt_agent.demo import DEMO_DIR, DEMO_NAME
from speechgpt_agent.model import GenerationOptions
from speechgpt_agent.parse import TextDelta
from speechgpt_agent.pipeline import AudioChunk, Completed

DATA = Path(__file__).parent / "data" / "demo"
pytestmark = pytest.mark.skipif(not (DEMO_DIR / "llm").is_dir(), reason="the demo model is not exported")
GREEDY = GenerationOptions(do_sample=False, max_new_tokens=300, min_new_tokens=0)
QUESTION = DEMO_DIR / "question.wav"  # "what is seven plus five"


@pytest.fixture(scope="module")
def demo(one_thread):
    from speechgpt_agent.pipeline import SpeechGPT

    return SpeechGPT.from_pretrained(DEMO_NAME, quantization=None, progress=False)


@pytest.fixture(scope="module")
def alone(demo):
    """Each question answered with nothing else running."""
    return {q: demo.chat(q, options=GREEDY, output="text").text
            for q in ("what is two plus three", "what colour is the sky", "what is four times two")}


def test_an_open_stream_blocks_no_other_turn(demo, alone):
    held = demo.stream(audio=QUESTION, options=GREEDY)
    next(held)  # started and left open, as `it = chat.stream(q); next(it)` does
    done = threading.Event()
    answers = {}

    def other():
        answers["x"] = demo.chat("what is two plus three", options=GREEDY, output="text").text
        done.set()

    t = threading.Thread(target=other)
    t.start()
    assert done.wait(120), "a second turn waited on an open stream"
    assert answers["x"] == alone["what is two plus three"]
    rest = [e for e in held if isinstance(e, Completed)]
    assert rest and rest[0].response.text.strip() == "twelve"


def test_interleaved_streams_in_one_thread(demo, alone):
    qa, qb = "what colour is the sky", "what is four times two"
    a = demo.stream(qa, options=GREEDY, output="text")
    b = demo.stream(qb, options=GREEDY, output="text")
    finals = {}
    for ea, eb in zip(a, b):  # deadlocked while a lock was held across every yield
        for q, e in ((qa, ea), (qb, eb)):
            if isinstance(e, Completed):
                finals[q] = e.response.text
    for q, it in ((qa, a), (qb, b)):
        for e in it:
            if isinstance(e, Completed):
                finals[q] = e.response.text
    assert finals == {qa: alone[qa], qb: alone[qb]}


def test_an_abandoned_spoken_stream_frees_the_engine(demo, alone):
    it = demo.stream(audio=QUESTION, options=GREEDY)
    for e in it:
        if isinstance(e, AudioChunk):
            break  # mid-answer
    it.close()  # closing the generator cancels its generation
    assert demo.chat("what is two plus three", options=GREEDY, output="text").text == \
        alone["what is two plus three"]


def test_eight_concurrent_turns_each_get_their_own_answer(demo, alone):
    questions = list(alone) * 3
    results: dict[int, str] = {}

    def run(i, q):
        results[i] = demo.chat(q, options=GREEDY, output="text").text

    threads = [threading.Thread(target=run, args=(i, q)) for i, q in enumerate(questions[:8])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert results == {i: alone[q] for i, q in enumerate(questions[:8])}


def test_asyncio_turns_run_together(demo, alone):
    async def one(q):
        text = []
        async for e in demo.astream(q, options=GREEDY, output="text"):
            if isinstance(e, TextDelta):
                text.append(e.text)
            if isinstance(e, Completed):
                return e.response.text

    async def main():
        return await asyncio.gather(*(one(q) for q in alone))

    assert asyncio.run(main()) == list(alone.values())


def test_langchain_streams_do_not_block_each_other(alone):
    from speechgpt_agent import SpeechGPTChat

    chat = SpeechGPTChat(model=DEMO_NAME, quantization=None, temperature=0, modalities=["text"],
                         min_new_tokens=0)
    calc = chat.bind(stop=None)  # a bound copy shares the runtime (the same weights)
    a = chat.stream("what colour is the sky")
    first = next(a)  # left open
    b = calc.invoke("what is two plus three")
    assert b.text.strip() == alone["what is two plus three"].strip()
    rest = "".join(c.text for c in [first, *a])
    assert rest.strip() == alone["what colour is the sky"].strip()
    # two streams zipped in one thread
    pairs = list(zip(chat.stream("what is four times two"), chat.stream("what colour is the sky")))
    assert pairs



def test_parts_load_when_first_needed():
    from speechgpt_agent.pipeline import SpeechGPT

    sg = SpeechGPT.from_pretrained(DEMO_NAME, quantization=None, progress=False)
    assert sg.loaded_parts() == {"speech_tokenizer": False, "vocoder": False}
    assert sg.chat("what is two plus three", options=GREEDY, output="text").text.strip() == "five"
    assert sg.loaded_parts() == {"speech_tokenizer": False, "vocoder": False}  # text in, text out
    spoken = sg.chat(audio=QUESTION, options=GREEDY)
    assert spoken.audio is not None and sg.loaded_parts() == {"speech_tokenizer": True, "vocoder": True}


def test_interpreter_exit_with_a_turn_in_flight_is_clean(tmp_path):
    """A daemon worker still inside a torch op at interpreter teardown aborts the process
    ("terminate called without an active exception"); the engine stops it at exit."""
    import subprocess
    import sys

    script = tmp_path / "exit_mid_turn.py"
    script.write_text(
        "from speechgpt_agent.pipeline import SpeechGPT\n"
        "from speechgpt_agent.model import GenerationOptions\n"
        "sg = SpeechGPT.from_pretrained('demo', quantization=None, progress=False)\n"
        "it = sg.stream('what colour is the sky', output='text',\n"
        "               options=GenerationOptions(max_new_tokens=400, min_new_tokens=400))\n"
        "next(it)\n"
        "print('exiting', flush=True)\n")
    for _ in range(3):
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "exiting" in done.stdout, done.stderr[-2000:]
