"""``speechgpt-agent demo``: one spoken turn and one agent turn with the calculator on the
embedded demo model. It sits above the pipeline and the LangChain integration, which the
demo room (:mod:`speechgpt_agent.demo`, names and paths only) must not import."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .demo import DEMO_NAME, DEMO_QUESTION, DEMO_TOOL_QUESTION

__all__ = ["DemoResult", "run_demo"]


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
