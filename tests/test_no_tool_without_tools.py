"""Without a tool bound, no answer's text opens with a tool call (issue 20).

``SpeechGPT.stream`` decodes every chat turn that has no grammar of its own with
``no_tool_call_grammar``; ``SpeechGPTChat`` and the server lift it only when tools are bound
(or a JSON answer is asked for). Checked on the grammar alone (against a reference rule, on
random texts), on the tiny random model set (steered), on the demo model (greedy, unsteered:
guarded, it answers digits questions in text; with a system text that describes the calculator but no
tool bound, unguarded it calls, guarded it does not), and on the CLI.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from speechgpt_agent.demo import DEMO_DIR
from speechgpt_agent.grammar_guard import no_tool_call_grammar
from speechgpt_agent.integrations.langchain.tool_calling import parse_tool_calls
from speechgpt_agent.model import GenerationOptions
from speechgpt_agent.testing.steer import ForceAnswer, answer_ids

GREEDY = GenerationOptions(do_sample=False, max_new_tokens=80, min_new_tokens=0)
CALL = '{"tool": "calculator", "arguments": {"expression": "2 + 3"}}'
DIGITS = ("what is 2 plus 3", "what is 4321 times 1234", "what is 57 plus 9041")
HAVE_DEMO = (DEMO_DIR / "llm").is_dir()
needs_demo = pytest.mark.skipif(not HAVE_DEMO, reason="the demo model is not exported")

# The rule, written independently of the grammar's automaton: a text part (the answer's
# start, or after [ta] / [tq] / [SpeechGPT], spaces ; : skipped) opening a JSON object with
# a key, alone or in a list, bare or in a code fence.
_OPENS_CALL = re.compile(r'(?:^|\[ta\]|\[tq\]|\[SpeechGPT\])[ \t\r\n;:]*(?:```[A-Za-z]*[ \t\r\n]*)?'
                         r'(?:\[[ \t\r\n]*)?\{[ \t\r\n]*"')


def opens_call(text: str) -> bool:
    return _OPENS_CALL.search(text) is not None


def call_shaped(text: str) -> bool:
    """The answer's text opens a call, or parses as one."""
    parsed = parse_tool_calls(text)
    return bool(parsed.tool_calls or parsed.invalid_tool_calls) or opens_call(text.strip())


# --- the grammar alone ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_set):
    from speechgpt_agent.model import SpeechGPTModel

    return SpeechGPTModel.from_pretrained(tiny_model_set.model, None, quantization=None, progress=False,
                                         weights=False)


def _accepts(compiled, text: str) -> bool:
    import xgrammar as xgr

    return bool(xgr.GrammarMatcher(compiled).accept_string(text))


@pytest.mark.parametrize("text", [
    "[ta] five<eoa>",
    "what is two plus three; [ta] five; [ua] <sosp><12><7><eosp><eoa>",
    '[ta] the set {"a"} has one element<eoa>',  # braces later: free
    "[ta] {} is empty<eoa>",
    "[ta] [1, 2, 3]<eoa>",
    "[ta] {x} and [ {y} ]<eoa>",
    '{ tool: "calculator" }<eoa>',
    "[ta] ```python\nprint(1)\n```<eoa>",
    '[ta] note: "tool" is a word<eoa>',
    "",
])
def test_the_grammar_keeps_every_other_answer(tiny_lm, text):
    assert not opens_call(text)
    assert _accepts(no_tool_call_grammar().compile(tiny_lm), text)


@pytest.mark.parametrize("text", [
    f"[ta] {CALL}<eoa>",
    f"[ta]{CALL}",
    f"  {CALL}",  # a text question answered without [ta]
    f"what is two plus three; [ta] {CALL}<eoa>",  # after the transcript of a spoken question
    f"[ta] [{CALL}, {CALL}]<eoa>",
    f"[ta] [ \n{CALL}]",
    f"[ta] ```json\n{CALL}\n```<eoa>",
    f"[SpeechGPT]: {CALL}",
    '[ta] { "tool": "calculator"',
    '[ta] {"answer": 5}',  # any object with a key: the opening of every call
])
def test_the_grammar_refuses_a_call_at_the_start_of_a_text_part(tiny_lm, text):
    assert opens_call(text)
    assert not _accepts(no_tool_call_grammar().compile(tiny_lm), text)


def test_the_grammar_agrees_with_the_rule_on_random_texts(tiny_lm):
    """Near-calls (an anchor, separators, a fence, a list, an object with a key) with one part
    changed or not, amid free text: the grammar refuses exactly what the rule does."""
    compiled = no_tool_call_grammar().compile(tiny_lm)
    free = ["[ta]", "[tq]", "[SpeechGPT]", "[ua]", "[", "]", "{", "}", '"', "tool", " ", "\n",
            ";", ":", "`", "```", "json", "t", "a", "S", "x", "<eoa>", "<12>", "é"]
    rng = random.Random(20)
    seen = {True: 0, False: 0}
    for _ in range(800):
        parts = [rng.choice(free) for _ in range(rng.randint(0, 3))]
        parts += [rng.choice(["", "[ta]", "[tq]", "[SpeechGPT]", "[ua]", "[t", "ta]"]),
                  rng.choice(["", " ", ";", " ; ", ":", "\n", "x"]),
                  rng.choice(["", "```", "```json", "```json\n", "``", "```7"]),
                  rng.choice(["", "[", "[ ", "{ ["]), "{", rng.choice(["", " ", "\n"]), '"']
        if rng.random() < 0.5:
            parts[rng.randrange(len(parts))] = rng.choice(free)
        text = "".join(parts + [rng.choice(free) for _ in range(rng.randint(0, 3))])
        bad = opens_call(text)
        seen[bad] += 1
        assert _accepts(compiled, text) is not bad, repr(text)
    assert min(seen.values()) > 100, seen  # both kinds were drawn


# --- the tiny model set, steered ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sg(tiny_model_set, one_thread):
    from speechgpt_agent.pipeline import SpeechGPT

    s = tiny_model_set
    return SpeechGPT.from_pretrained(s.model, s.adapter, speech_tokenizer=s.speech_tokenizer,
                                     vocoder=s.vocoder, quantization=None, progress=False)


def _force(sg, answer: str) -> ForceAnswer:
    return ForceAnswer(answer_ids(sg.model, answer), sg.model.eos_id)


def test_a_steered_call_without_tools_is_no_call(tiny_sg):
    for answer in (f"[ta] {CALL}<eoa>", f"[ta] [{CALL}]<eoa>"):
        r = tiny_sg.chat("what is 2 plus 3", output="text", options=GREEDY,
                         logits_processors=[_force(tiny_sg, answer)])
        assert not call_shaped(r.text), r.text
        # the opt-out gives back exactly the steered call
        r = tiny_sg.chat("what is 2 plus 3", output="text", options=GREEDY, allow_tool_calls=True,
                         logits_processors=[_force(tiny_sg, answer)])
        assert r.text == answer.removeprefix("[ta] ").removesuffix("<eoa>")


def test_a_steered_text_answer_is_unchanged(tiny_sg):
    answer = '[ta] twelve {"a": 1} [1]; [ua] <sosp><5><17><999><eosp><eoa>'
    guarded = tiny_sg.chat("what is 7 plus 5", options=GREEDY, logits_processors=[_force(tiny_sg, answer)])
    free = tiny_sg.chat("what is 7 plus 5", options=GREEDY, allow_tool_calls=True,
                        logits_processors=[_force(tiny_sg, answer)])
    assert guarded.text == free.text == 'twelve {"a": 1} [1]'
    assert guarded.units == free.units == (5, 17, 999)
    assert guarded.audio is not None and (guarded.audio == free.audio).all()


def test_unsteered_sampled_answers_are_unchanged(tiny_sg):
    """Same seed, same answer, wherever it is valid UTF-8: the mask refuses no other token
    the random model draws (a byte token out of sequence is refused, as by every grammar)."""
    opts = GenerationOptions(max_new_tokens=24, min_new_tokens=0)  # the defaults: top-k 50, top-p 0.8
    same = 0
    for seed in range(8):
        free = tiny_sg.chat("hello there", output="text", options=opts, seed=seed, allow_tool_calls=True)
        if "\ufffd" in free.text or opens_call(free.text):
            continue
        guarded = tiny_sg.chat("hello there", output="text", options=opts, seed=seed)
        assert (guarded.text, guarded.usage) == (free.text, free.usage)
        same += 1
    assert same >= 2


def test_a_grammar_of_the_callers_is_kept(tiny_sg):
    """A caller's own tool-call grammar (as a grammar or as its logits processor) still calls."""
    from speechgpt_agent.grammar import tool_call_grammar
    from speechgpt_agent.integrations.langchain.calculator import calculator
    from speechgpt_agent.integrations.langchain.tool_calling import tool_specs

    grammar = tool_call_grammar(tool_specs([calculator]), "any")
    for kwargs in ({"grammar": grammar}, {"logits_processors": [grammar.logits_processor(tiny_sg.model)]}):
        r = tiny_sg.chat("what is 2 plus 3", output="text", options=GREEDY, **kwargs)
        # (the random model's expression runs on to max_new_tokens: the call is begun, not ended)
        assert r.text.startswith('{"tool": "calculator", "arguments": {'), r.text


def test_langchain_without_tools_gets_no_call_and_with_tools_gets_it(tiny_model_set):
    from langchain_core.tools import tool

    from speechgpt_agent.integrations.langchain import SpeechGPTChat

    @tool
    def calculator(expression: str) -> str:
        """Evaluate an arithmetic expression."""
        return "5"

    s = tiny_model_set
    base = SpeechGPTChat(model=s.model, adapter=s.adapter, speech_tokenizer=s.speech_tokenizer,
                         vocoder=s.vocoder, max_tokens=80, seed=0, modalities=["text"], temperature=0.0)
    lm = base.runtime.model
    steer = base.model_copy(update={"logits_processors": [
        lambda: ForceAnswer(answer_ids(lm, f"[ta] {CALL}<eoa>"), lm.eos_id)]})
    for chat in (steer, steer.bind_tools([calculator], tool_choice="none")):
        ai = chat.invoke("what is 2 plus 3")
        assert not ai.tool_calls and not call_shaped(ai.text), ai
    ai = steer.bind_tools([calculator]).invoke("what is 2 plus 3")
    assert [c["name"] for c in ai.tool_calls] == ["calculator"], ai
    assert ai.tool_calls[0]["args"] == {"expression": "2 + 3"}


# --- the demo model, unsteered ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(one_thread):
    if not HAVE_DEMO:
        pytest.skip("the demo model is not exported")
    from speechgpt_agent.pipeline import SpeechGPT

    return SpeechGPT.from_pretrained("demo", quantization=None, progress=False)


@needs_demo
def test_the_demo_answers_digits_questions_in_text(demo):
    for q in DIGITS:
        r = demo.chat(q, output="text", options=GREEDY)
        assert r.text.strip() and not call_shaped(r.text), (q, r.text)


@needs_demo
def test_the_guard_keeps_the_demo_in_text_when_its_prompt_asks_for_calls(demo):
    """A caller's own system text describing the calculator (a prompt that asks for calls),
    with no tool bound to the turn: unguarded the demo calls, guarded it answers in text."""
    from speechgpt_agent.training.recipes.demo.llm_data import calculator_system_prompt

    system = calculator_system_prompt()  # SpeechGPTChat's system text with the calculator bound
    called = 0
    for q in DIGITS[1:]:  # numbers beyond the world: the calculator's questions
        free = demo.chat(q, system=system, output="text", options=GREEDY, allow_tool_calls=True)
        called += bool(parse_tool_calls(free.text).tool_calls)
        r = demo.chat(q, system=system, output="text", options=GREEDY)
        assert not call_shaped(r.text), (q, r.text)  # (a model taught to call here may then say nothing)
    assert called == len(DIGITS) - 1  # unguarded it called each time: the guard did something


@needs_demo
def test_the_demo_answers_a_spoken_digits_question_in_text(demo):
    clip = Path(__file__).parent / "data" / "demo" / "what_is_eight_plus_five.wav"
    r = demo.chat(audio=clip, output="text", options=GREEDY)
    assert r.transcript.strip() and r.text.strip() and not call_shaped(r.text), r


@needs_demo
def test_the_demos_other_answers_are_unchanged(demo):
    for q in ("what is two plus three", "what is the capital of england", "hello"):
        guarded = demo.chat(q, output="text", options=GREEDY)
        free = demo.chat(q, output="text", options=GREEDY, allow_tool_calls=True)
        assert (guarded.text, guarded.usage) == (free.text, free.usage) and not call_shaped(guarded.text)
    opts = GenerationOptions(max_new_tokens=60)  # sampled, the original CLI's settings
    for seed in range(2):
        guarded = demo.chat("what is the capital of england", output="text", options=opts, seed=seed)
        free = demo.chat("what is the capital of england", output="text", options=opts, seed=seed,
                         allow_tool_calls=True)
        assert guarded.text == free.text


@needs_demo
def test_the_demo_with_a_bound_tool_still_calls(demo):
    from speechgpt_agent.integrations.langchain import SpeechGPTChat, calculator

    chat = SpeechGPTChat(model="demo", quantization=None, modalities=["text"], temperature=0.0,
                         min_new_tokens=0, max_tokens=80)
    ai = chat.bind_tools([calculator]).invoke("what is 4321 times 1234")
    assert ai.tool_calls == [{"name": "calculator", "args": {"expression": "4321 * 1234"},
                              "id": ai.tool_calls[0]["id"], "type": "tool_call"}], ai
    ai = chat.invoke("what is 4321 times 1234")
    assert not ai.tool_calls and ai.text.strip() and not call_shaped(ai.text), ai


@needs_demo
def test_the_server_without_tools_answers_in_text(demo):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from speechgpt_agent.server.app import create_app
    from speechgpt_agent.server.config import ServerConfig

    config = ServerConfig()
    with TestClient(create_app(demo, config)) as client:
        for q in DIGITS[:2]:
            body = {"model": config.model_name, "temperature": 0, "max_tokens": 80,
                    "messages": [{"role": "user", "content": q}]}
            reply = client.post("/v1/chat/completions", json=body)
            assert reply.status_code == 200, reply.text
            message = reply.json()["choices"][0]["message"]
            assert not message.get("tool_calls") and message["content"].strip()
            assert not call_shaped(message["content"]), message


@needs_demo
def test_the_cli_answers_in_text_without_the_kernels_notice():
    cli = Path(sys.executable).with_name("speechgpt-agent")
    command = [str(cli)] if cli.exists() else [sys.executable, "-m", "speechgpt_agent.cli"]
    done = subprocess.run([*command, "chat", "--model", "demo", "--text", "what is 2 plus 3", "--greedy"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "kernels" not in done.stderr and "gemm_4bit" not in done.stderr, done.stderr
    answer = done.stdout.split("Answer:", 1)[1].strip()
    assert answer and not call_shaped(answer), done.stdout
