"""The embedded transformers engine (DESIGN.md section 10) on tiny checkpoints in the released
layout: seeded sampling, stop strings, eos and min_new_tokens, cancellation, the context window,
and concurrent, interleaved and abandoned streams on one worker thread."""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import threading
import time

import pytest
import torch

from speechgpt_agent.engines import TokenStream, default_engine, load_engine
from speechgpt_agent.errors import PromptTooLongError
from speechgpt_agent.model import GenerationOptions, SpeechGPTModel
from speechgpt_agent.parse import Done, parse_response
from speechgpt_agent.prompt import build_prompt
from speechgpt_agent.testing.llm import make_tiny_lora_adapter, make_tiny_speechgpt

FREE = GenerationOptions(max_new_tokens=24, min_new_tokens=0)
GREEDY = GenerationOptions(max_new_tokens=24, min_new_tokens=0, do_sample=False)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def cm(tmp_path_factory):
    return make_tiny_speechgpt(tmp_path_factory.mktemp("SpeechGPT-7B-cm"))


@pytest.fixture(scope="module")
def com(cm, tmp_path_factory):
    return make_tiny_lora_adapter(cm, tmp_path_factory.mktemp("SpeechGPT-7B-com"))


@pytest.fixture(scope="module")
def model(cm, com):
    return SpeechGPTModel.from_pretrained(cm, com, progress=False)


@pytest.fixture()
def copy_of(cm, tmp_path):
    def make(edit):
        folder = shutil.copytree(cm, tmp_path / "copy")
        edit(folder)
        return folder
    return make


def engine(m):
    return default_engine(m)


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# --- generation ----------------------------------------------------------------------------------


def test_generation_defaults_are_the_original_cli_ones():
    o = GenerationOptions()
    assert (o.temperature, o.top_p, o.top_k, o.do_sample) == (0.7, 0.8, 50, True)
    assert (o.max_new_tokens, o.min_new_tokens) == (2048, 10)
    for bad in ({"temperature": 0}, {"top_p": 0}, {"top_k": -1}, {"max_new_tokens": 0},
                {"min_new_tokens": -1}, {"repetition_penalty": 0}):
        with pytest.raises(ValueError):
            GenerationOptions(**bad)


def test_seeded_streams_are_reproducible(model):
    ids = prompt_ids(model)
    runs = [list(engine(model).generate(ids, FREE, seed=s, stop_strings=())) for s in (1, 1, 2)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    stream = engine(model).generate(ids, FREE, seed=1, stop_strings=())
    assert list(stream) == runs[0] and len(runs[0]) == 24
    assert stream.finish_reason == "length" and stream.tokens == runs[0]


def test_concurrent_streams_match_sequential_ones(model):
    ids = prompt_ids(model)
    expected = {s: list(engine(model).generate(ids, FREE, seed=s)) for s in (3, 4)}
    got = {}

    def run(seed):
        got[seed] = list(engine(model).generate(ids, FREE, seed=seed))

    threads = [threading.Thread(target=run, args=(s,)) for s in (3, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected


def test_stop_strings_end_the_stream_after_their_last_token(model):
    ids = prompt_ids(model)
    tokens = list(engine(model).generate(ids, GREEDY, stop_strings=()))
    for k in range(2, len(tokens)):
        stop = model.tokenizer.decode(tokens[: k + 1])[-3:]
        if stop.strip() and stop not in model.tokenizer.decode(tokens[:k]):
            break
    else:
        pytest.fail("no usable stop string in the greedy output")
    stream = engine(model).generate(ids, GREEDY, stop_strings=(stop,))
    assert list(stream) == tokens[: k + 1] and stream.finish_reason == "stop"


def test_eos_and_min_new_tokens(copy_of, model, com):
    ids = prompt_ids(model)
    tokens = list(engine(model).generate(ids, GREEDY, stop_strings=()))
    k = next(i for i in range(1, len(tokens)) if tokens[i] not in tokens[:i])
    # a checkpoint whose generation_config names tokens[k] as a second eos
    folder = copy_of(lambda f: _edit_json(f / "generation_config.json", eos_token_id=[2, tokens[k]]))
    m = SpeechGPTModel.from_pretrained(folder, com, progress=False)
    stream = engine(m).generate(ids, GREEDY, stop_strings=())
    assert list(stream) == tokens[:k] and stream.finish_reason == "stop"
    longer = GenerationOptions(max_new_tokens=24, min_new_tokens=k + 1, do_sample=False)
    out = list(engine(m).generate(ids, longer, stop_strings=()))
    assert out[:k] == tokens[:k] and len(out) > k and out[k] != tokens[k]


def test_cancel_and_close(model):
    ids = prompt_ids(model)
    stream = engine(model).generate(ids, FREE, seed=0, stop_strings=())
    first = [next(stream) for _ in range(3)]
    stream.cancel()
    assert list(stream) == [] and stream.finish_reason == "cancelled" and stream.tokens == first
    stream = engine(model).generate(ids, FREE, seed=0, stop_strings=())
    next(stream)
    stream.close()
    assert list(stream) == [] and stream.finish_reason == "cancelled"


def test_context_window(tmp_path):
    folder = make_tiny_speechgpt(tmp_path / "short", max_position_embeddings=40)
    m = SpeechGPTModel.from_pretrained(folder, None, quantization=None, progress=False)
    with pytest.raises(PromptTooLongError, match="context window is 40"):
        engine(m).generate(list(range(3, 43)), FREE)
    stream = engine(m).generate(list(range(3, 37)), FREE, seed=0, stop_strings=())
    assert len(list(stream)) == 6 and stream.finish_reason == "length"


@pytest.mark.parametrize("bad", [[], [5, 99999], [-1], torch.ones(2, 3, dtype=torch.long)])
def test_generate_validates_its_input(model, bad):
    with pytest.raises(ValueError):
        engine(model).generate(bad)


def test_stream_parser_on_generated_tokens(model):
    ids = prompt_ids(model)
    stream = engine(model).generate(ids, FREE, seed=5)
    parser = model.stream_parser()
    events = [e for t in stream for e in parser.feed(t)] + parser.close(stream.finish_reason)
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == stream.finish_reason
    whole = parse_response(model.decode(stream.tokens))
    assert done.units == whole.units
    assert " ".join(done.text.split()) == " ".join(whole.text.split())


def prompt_ids(m):
    return m.encode(build_prompt(units=[661, 987, 511]))


# --- many turns on one worker ---------------------------------------------------------------


def test_interleaved_streams_in_one_thread_do_not_deadlock(model):
    ids = prompt_ids(model)
    expected = {s: list(engine(model).generate(ids, FREE, seed=s, stop_strings=())) for s in (5, 6)}
    a = engine(model).generate(ids, FREE, seed=5, stop_strings=())
    b = engine(model).generate(ids, FREE, seed=6, stop_strings=())
    pairs = list(zip(a, b))  # one thread, both streams read alternately
    assert [x for x, _ in pairs] == expected[5][: len(pairs)]
    assert [y for _, y in pairs] == expected[6][: len(pairs)]
    assert len(pairs) == min(len(expected[5]), len(expected[6]))


def test_an_open_stream_does_not_block_another(model):
    ids = prompt_ids(model)
    held = engine(model).generate(ids, FREE, seed=1, stop_strings=())
    first = next(held)  # started, then left unread
    other = list(engine(model).generate(ids, GREEDY, stop_strings=()))
    assert len(other) == 24
    assert [first, *held] == list(engine(model).generate(ids, FREE, seed=1, stop_strings=()))


def test_an_abandoned_stream_is_cancelled_and_freed(model):
    ids = prompt_ids(model)
    eng = engine(model)
    stream = eng.generate(ids, GREEDY, stop_strings=())
    next(stream)
    turn_cancel = stream._cancel_fn
    turn = turn_cancel.__self__
    del stream
    gc.collect()
    deadline = time.monotonic() + 10
    while turn.cache is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert turn.cancelled.is_set() and turn.cache is None  # KV cache released by the worker
    assert len(list(eng.generate(ids, GREEDY, stop_strings=()))) == 24


def test_a_consumer_that_stops_reading_pauses_its_turn(model):
    ids = prompt_ids(model)
    eng = load_engine("transformers", model, max_ahead=3)
    stream = eng.generate(ids, GenerationOptions(max_new_tokens=200, min_new_tokens=0, do_sample=False),
                          stop_strings=())
    time.sleep(0.5)
    assert stream.channel.backlog <= 3  # paused at max_ahead, not run to 200 tokens
    assert len(list(stream)) == min(200, model.context_length - len(ids))
    eng.shutdown()


def test_eight_concurrent_turns_are_all_correct(model):
    ids = prompt_ids(model)
    expected = {s: list(engine(model).generate(ids, FREE, seed=s)) for s in range(8)}
    got: dict[int, list[int]] = {}

    def run(seed):
        got[seed] = list(engine(model).generate(ids, FREE, seed=seed))

    threads = [threading.Thread(target=run, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert got == expected


def test_asyncio_streams(model):
    ids = prompt_ids(model)
    expected = {s: list(engine(model).generate(ids, FREE, seed=s, stop_strings=())) for s in (1, 2)}

    async def run(seed):
        stream = engine(model).generate(ids, FREE, seed=seed, stop_strings=())
        return [t async for t in stream], stream.finish_reason

    async def main():
        return await asyncio.gather(run(1), run(2))

    (one, r1), (two, r2) = asyncio.run(main())
    assert (one, two) == (expected[1], expected[2]) and r1 == r2 == "length"


def test_closing_mid_stream_cancels_at_the_next_token(model):
    ids = prompt_ids(model)
    stream = engine(model).generate(ids, GREEDY, stop_strings=())
    head = [next(stream), next(stream)]
    stream.close()
    assert list(stream) == [] and stream.finish_reason == "cancelled" and stream.tokens == head
    assert isinstance(stream, TokenStream)


def test_the_base_model_without_the_adapter(cm, model):
    ids = prompt_ids(model)
    base = SpeechGPTModel.from_pretrained(cm, None, progress=False)
    plain = list(engine(base).generate(ids, GREEDY, stop_strings=()))
    assert list(engine(model).generate(ids, GREEDY, stop_strings=(), adapter=False)) == plain
    assert list(engine(model).generate(ids, GREEDY, stop_strings=())) != plain


def test_errors_reach_the_consumer_and_the_engine_goes_on(model):
    ids = prompt_ids(model)

    def broken(input_ids, scores):
        raise RuntimeError("processor exploded")

    stream = engine(model).generate(ids, GREEDY, stop_strings=(), logits_processors=[broken])
    with pytest.raises(RuntimeError, match="processor exploded"):
        list(stream)
    assert len(list(engine(model).generate(ids, GREEDY, stop_strings=()))) == 24


def test_a_model_without_weights_has_its_vocabulary_but_no_embedded_engine(cm, com, model):
    from speechgpt_agent.engines import EngineError

    light = SpeechGPTModel.from_pretrained(cm, com, progress=False, weights=False)
    assert light.model is None and light.adapter_path == model.adapter_path
    assert (light.vocab_size, light.context_length) == (model.vocab_size, model.context_length)
    assert light.eos_ids == model.eos_ids
    assert light.encode("hello <sosp>") == model.encode("hello <sosp>")
    with pytest.raises(EngineError, match="weights"):
        load_engine("transformers", light)
    with pytest.raises(ValueError, match="unknown engine"):
        load_engine("tgi", model)
