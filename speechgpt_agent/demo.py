"""The embedded demo model: a small SpeechGPT that ships inside the package.

``SpeechGPT.from_pretrained("demo")``, ``SpeechGPTChat(model="demo")`` and
``speechgpt-agent demo`` load it from ``speechgpt_agent/assets/demo`` with no download:

* ``llm/``: a small LLaMA in the ``fnlp/SpeechGPT-7B-cm`` layout (sentencepiece tokenizer with
  the 1000 unit tokens and SpeechGPT's added tokens);
* ``adapter/``: its chain-of-modality LoRA adapter (peft), as ``fnlp/SpeechGPT-7B-com``;
* ``speech_tokenizer/``: MFCC + k-means units at 50 Hz (:mod:`speechgpt_agent.mel_units`);
* ``vocoder/``: a small unit HiFi-GAN with a duration predictor;
* ``card.json``: how it was trained (the recipe, its seed) and its measured quality.

All of it is trained by ``python -m speechgpt_agent.training.recipes.demo`` from speech
synthesized with espeak-ng. It knows a closed world: spoken arithmetic on numbers up to
twenty, a few facts, ASR and TTS of those words, and calling the calculator tool
(:data:`speechgpt_agent.integrations.langchain.calculator`) for numbers beyond that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelNotFoundError

__all__ = [
    "DEMO_DIR", "DEMO_NAME", "DEMO_QUESTION", "DemoParts", "DemoResult", "demo_parts", "run_demo",
]

DEMO_NAME = "demo"
"""The name that selects the embedded model wherever a model id or path is taken."""

DEMO_DIR = Path(__file__).resolve().parent / "assets" / "demo"


@dataclass(frozen=True)
class DemoParts:
    """Folders of the embedded model set."""

    model: Path
    adapter: Path
    speech_tokenizer: Path
    vocoder: Path


def demo_parts(folder: str | Path | None = None) -> DemoParts:
    """The folders of the embedded demo model (or of an export of the recipe in ``folder``).

    Raises:
        ModelNotFoundError: a part is missing (a source checkout without the exported
            artifacts: run the recipe, see the module docstring).
    """
    root = Path(folder) if folder is not None else DEMO_DIR
    parts = DemoParts(root / "llm", root / "adapter", root / "speech_tokenizer", root / "vocoder")
    missing = [p.name for p in (parts.model, parts.adapter, parts.speech_tokenizer, parts.vocoder)
               if not p.is_dir()]
    if missing:
        raise ModelNotFoundError(
            f"the demo model is incomplete in {root} (missing {', '.join(missing)}). Reinstall "
            "speechgpt-agent, or rebuild it with `python -m speechgpt_agent.training.recipes.demo "
            "--output-dir runs/demo --export`.")
    return parts


DEMO_QUESTION = DEMO_DIR / "question.wav"
"""A spoken question bundled with the demo, in a voice and wording never heard in training."""

DEMO_TOOL_QUESTION = "what is 4725 times 1609"
"""The tool-calling turn's question. Neither number occurs anywhere in the calculator's
description (whose example is ``1234 * 5678``) or in any training stage's data, not even as
digits inside another number (tests/test_demo_recipe.py checks it): the call cannot be copied."""


@dataclass
class DemoResult:
    """What :func:`run_demo` did, with timings in seconds."""

    transcript: str
    answer: str
    wav: Path | None
    answer_seconds: float
    tool_question: str | None = None
    tool_call: dict | None = None
    tool_result: str | None = None
    tool_answer: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


def run_demo(
    audio: str | Path | None = None,
    *,
    output: str | Path | None = "demo_answer.wav",
    tool_question: str | None = DEMO_TOOL_QUESTION,
    quantization: str | None = None,
    seed: int = 0,
    echo: Callable[[str], None] | None = print,
) -> DemoResult:
    """One spoken turn and one LangChain tool-calling turn with the embedded demo model.

    1. ``audio`` (default: the bundled question) -> units -> the demo SpeechGPT answers
       through the chain of modality (transcript, text answer, spoken answer);
    2. the spoken answer is written to ``output`` (16 kHz wav; ``None``: not written);
    3. ``tool_question`` goes to ``SpeechGPTChat(model="demo")`` bound to the calculator
       tool; the call is run and its result sent back, as an agent loop does.

    Decoding is greedy (``seed`` only matters for sampling options). ``echo`` receives one
    line per step (``None``: silent).

    Raises:
        ModelNotFoundError: the demo model is missing. AudioError: unusable ``audio``.
    """
    import time

    from .audio import write_wav
    from .model import GenerationOptions
    from .pipeline import SpeechGPT

    say = echo or (lambda line: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    sg = SpeechGPT.from_pretrained(DEMO_NAME, quantization=quantization, progress=False)  # type: ignore[arg-type]
    timings["load"] = time.perf_counter() - t0
    question = Path(audio) if audio is not None else DEMO_QUESTION
    options = GenerationOptions(do_sample=False, max_new_tokens=400, min_new_tokens=0)
    t1 = time.perf_counter()
    response = sg.chat(audio=str(question), output="both", options=options, seed=seed)
    timings["spoken_turn"] = time.perf_counter() - t1
    say(f"question: {question}")
    say(f"transcript: {response.transcript}")
    say(f"answer: {response.text}")
    wav = None
    seconds = 0.0
    if response.audio is not None and output is not None:
        wav = write_wav(output, response.audio, response.sample_rate)
        seconds = len(response.audio) / response.sample_rate
        say(f"spoken answer: {wav} ({seconds:.2f} s)")
    elif response.audio is None:
        say("spoken answer: none (the model gave no speech units)")
    result = DemoResult(response.transcript, response.text, wav, seconds, timings=timings)
    if tool_question:
        from langchain_core.messages import HumanMessage, ToolMessage

        from .integrations.langchain import SpeechGPTChat, calculator

        t2 = time.perf_counter()
        chat = SpeechGPTChat(model=DEMO_NAME, quantization=quantization, modalities=["text"],  # type: ignore[arg-type]
                             temperature=0.0, min_new_tokens=0, max_tokens=400, seed=seed)
        agent = chat.bind_tools([calculator])
        messages: list = [HumanMessage(tool_question)]
        say(f"agent question: {tool_question}")
        reply = agent.invoke(messages)
        result.tool_question = tool_question
        for call in reply.tool_calls[:1]:
            result.tool_call = {"name": call["name"], "args": call["args"]}
            say(f"tool call: {call['name']}({call['args']})")
            try:
                output_text = calculator.invoke(call["args"])
                status = "success"
            except Exception as exc:  # noqa: BLE001 - the error goes back to the model, as agents do
                output_text, status = f"error: {exc}", "error"
            result.tool_result = output_text
            say(f"tool result: {output_text}")
            reply = agent.invoke([*messages, reply, ToolMessage(output_text, tool_call_id=call["id"],
                                                                 name=call["name"], status=status)])
        result.tool_answer = reply.text
        say(f"agent answer: {reply.text}")
        timings["agent_turn"] = time.perf_counter() - t2
    timings["total"] = time.perf_counter() - t0
    return result
