"""reference=True reproduces the original cli_infer.py's turn: its ASR prompt, no token healing,
min_new_tokens not enforced; the default mode keeps the package's deliberate differences."""

from __future__ import annotations

import pytest

from speechgpt_agent.demo import DEMO_DIR, DEMO_NAME
from speechgpt_agent.engines import Engine
from speechgpt_agent.model import GenerationOptions
from speechgpt_agent.prompt import INPUT_MARKER, build_prompt

pytestmark = pytest.mark.skipif(not (DEMO_DIR / "llm").is_dir(), reason="the demo model is not exported")


def test_asr_prompt_as_the_original_built_it():
    # the original CLI replaced the path after 'is input:' by its units, space and all
    ref = build_prompt(units=[5, 7], task="asr", reference=True)
    assert f"{INPUT_MARKER}<sosp><5><7><eosp> <eoh>" in ref
    assert f"{INPUT_MARKER} <sosp><5><7><eosp>" in build_prompt(units=[5, 7], task="asr")
    custom = build_prompt(units=[5], task="asr", instruction="Transcribe this.", reference=True)
    assert f"Transcribe this. {INPUT_MARKER}<sosp><5><eosp>" in custom


def test_tts_instruction_is_replaceable():
    p = build_prompt("good morning", task="tts", instruction="Say it aloud.")
    assert f"Say it aloud. {INPUT_MARKER} good morning <eoh>" in p
    assert "Try to speak out this sentence, please." in build_prompt("good morning", task="tts")


class _Recording(Engine):
    """The real engine, recording what each turn asked of it."""

    name = "transformers"

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.calls: list[tuple[list[int], GenerationOptions]] = []
        self.grammars: list = []

    def generate(self, prompt_ids, options=None, **kwargs):
        self.calls.append((list(prompt_ids), options))
        self.grammars.append(kwargs.get("grammar"))
        return self.inner.generate(prompt_ids, options, **kwargs)


@pytest.fixture(scope="module")
def demo(one_thread):
    from speechgpt_agent.pipeline import SpeechGPT

    sg = SpeechGPT.from_pretrained(DEMO_NAME, quantization=None, progress=False)
    sg.engine = _Recording(sg.engine)
    return sg


def test_reference_turn_has_no_token_healing_and_no_min_new_tokens(demo):
    opts = GenerationOptions(do_sample=False, max_new_tokens=60, min_new_tokens=10)
    prompt = build_prompt("what is two plus three")
    healed = demo.chat("what is two plus three", options=opts, output="text")
    ids, sent = demo.engine.calls[-1]
    assert ids == demo.model.encode_prompt(prompt) and sent.min_new_tokens == 10
    raw = demo.chat("what is two plus three", options=opts, output="text", reference=True)
    ids, sent = demo.engine.calls[-1]
    assert ids == demo.model.encode(prompt) and len(ids) == len(demo.model.encode_prompt(prompt)) + 1
    assert demo.model.tokenizer.convert_ids_to_tokens(ids[-1]) == "\u2581"  # the lone space stays
    assert sent.min_new_tokens == 0
    assert raw.usage.prompt_tokens == healed.usage.prompt_tokens + 1
    # decoding is free as in the original: no no-tool guard (which the default turn has)
    assert demo.engine.grammars[-1] is None and demo.engine.grammars[-2] is not None


def test_the_instance_default_and_the_asr_path(demo):
    demo.reference = True
    try:
        demo.transcribe(DEMO_DIR / "question.wav", options=GenerationOptions(do_sample=False, max_new_tokens=40))
        ids, sent = demo.engine.calls[-1]
        units = demo.speech_tokenizer.encode(DEMO_DIR / "question.wav").units
        assert ids == demo.model.encode(build_prompt(units=units, task="asr", reference=True))
        # (the legacy tokenizer drops a space beside an added token, so the default's
        # "input: <sosp>" gives these same ids: the prompts differ as text only)
        assert sent.min_new_tokens == 0
    finally:
        demo.reference = False


def test_cli_reference_flag():
    from speechgpt_agent.cli import build_parser

    args = build_parser().parse_args(["transcribe", "x.wav", "--reference", "--instruction", "Transcribe."])
    assert args.reference and args.instruction == "Transcribe."
    assert not build_parser().parse_args(["chat", "--text", "hi"]).reference
