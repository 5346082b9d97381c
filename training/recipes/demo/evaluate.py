"""Quality of a demo model on questions and a voice it never heard.

Figures (greedy decoding, so they are reproducible):

* ``asr_exact``: SpeechGPT's own ASR (task ``asr``) of the held-out voice's questions,
  exact match after normalisation (lower case, no punctuation); also split into questions
  heard in training (in other voices) and never heard at all;
* ``arithmetic_correct``: spoken arithmetic questions never heard in training, in the
  held-out voice, answered through the chain of modality; the text answer must be the
  number word;
* ``facts_correct``: spoken fact questions in the held-out voice;
* ``spoken_answer_consistent``: the spoken answer of those turns, vocoded, re-tokenized and
  transcribed by the same model, equals its text answer;
* ``tool_call_correct`` / ``tool_answer_correct``: calculator questions (fresh numbers,
  :func:`benchmark_tool_questions`) through :class:`SpeechGPTChat` with the calculator bound:
  the call's expression, then the final answer from the result of that call (a wrong call's
  result, or its error, goes back as an agent loop would send it, so a right answer needs a
  right call).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from speechgpt_agent.model import GenerationOptions

from .world import QA, ToolQuestion, closed_world, tool_questions

__all__ = [
    "GREEDY", "TOOL_SEED_OFFSET", "EvalItem", "benchmark_tool_questions", "evaluate", "evaluate_run",
    "evaluate_tools", "heldout_items", "load_run", "normalize", "run_chat",
]

GREEDY = GenerationOptions(do_sample=False, max_new_tokens=400, min_new_tokens=0)

TOOL_SEED_OFFSET = 1000
"""The benchmark's calculator questions are drawn from the recipe's seed + this; training
draws from seed + 0 to 4 (tests/test_demo_recipe.py checks that no pair of numbers is shared)."""


def benchmark_tool_questions(n: int, seed: int = 0) -> list[ToolQuestion]:
    """The ``n`` fresh calculator questions of the tool figures, for the recipe's ``seed``."""
    return tool_questions(n, seed + TOOL_SEED_OFFSET)


def normalize(text: str) -> str:
    """Lower case, letters/digits/spaces only, single spaces."""
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split())


@dataclass(frozen=True)
class EvalItem:
    """One held-out-voice recording of a question."""

    audio: str
    qa: QA


def heldout_items(units_file: str | Path, seed: int = 0) -> list[EvalItem]:
    """The held-out voice's recordings of the closed world's questions."""
    by_question = {qa.question: qa for qa in closed_world(seed)}
    items = []
    for line in Path(units_file).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row.get("split") == "heldout_voice" and row["text"] in by_question:
            items.append(EvalItem(row["audio"], by_question[row["text"]]))
    return items


def load_run(out: str | Path) -> Any:
    """The :class:`~speechgpt_agent.pipeline.SpeechGPT` of a recipe run folder (unquantized)."""
    from speechgpt_agent.pipeline import SpeechGPT

    out = Path(out)
    return SpeechGPT.from_pretrained(out / "cm" / "model", out / "com" / "adapter",
                                     speech_tokenizer=out / "speech_tokenizer", vocoder=out / "vocoder",
                                     quantization=None, progress=False)


def _share(hits: Sequence[bool]) -> float | None:
    return round(sum(hits) / len(hits), 4) if hits else None


def evaluate(sg: Any, items: Sequence[EvalItem], *, chat: Any = None, tools: int = 20, seed: int = 0,
             options: GenerationOptions = GREEDY, progress: bool = True) -> dict[str, Any]:
    """The figures of the module docstring, with their counts and a few failures.

    Args:
        sg: the :class:`~speechgpt_agent.pipeline.SpeechGPT` under test.
        items: held-out-voice recordings (:func:`heldout_items`).
        chat: a SpeechGPTChat on the same weights for the tool figures (:func:`run_chat`);
            ``None`` skips them.
        tools: number of calculator questions.
    """
    from tqdm.auto import tqdm

    asr_seen: list[bool] = []
    asr_new: list[bool] = []
    arithmetic: list[bool] = []
    facts: list[bool] = []
    consistent: list[bool] = []
    failures: list[dict[str, str]] = []
    for item in tqdm(items, desc="held-out voice", disable=not progress):
        heard = normalize(sg.transcribe(item.audio, options=options))
        ok = heard == normalize(item.qa.question)
        (asr_new if item.qa.held_out else asr_seen).append(ok)
        if not ok and len(failures) < 10:
            failures.append({"task": "asr", "expected": item.qa.question, "got": heard})
        if item.qa.kind == "arithmetic" and not item.qa.held_out:
            continue
        response = sg.chat(audio=item.audio, output="both", options=options)
        right = normalize(response.text) == normalize(item.qa.answer)
        (arithmetic if item.qa.kind == "arithmetic" else facts).append(right)
        if not right and len(failures) < 20:
            failures.append({"task": "answer", "question": item.qa.question, "expected": item.qa.answer,
                             "transcript": response.transcript, "got": response.text})
        if response.audio is not None and len(response.audio) >= 400:
            echo = normalize(sg.transcribe(response.audio, sample_rate=response.sample_rate, options=options))
            consistent.append(echo == normalize(response.text))
        else:
            consistent.append(False)
    result: dict[str, Any] = {
        "asr_exact": _share(asr_seen + asr_new),
        "asr_exact_heard_questions": _share(asr_seen),
        "asr_exact_unheard_questions": _share(asr_new),
        "arithmetic_correct": _share(arithmetic),
        "facts_correct": _share(facts),
        "spoken_answer_consistent": _share(consistent),
        "counts": {"asr": len(asr_seen) + len(asr_new), "asr_unheard": len(asr_new),
                   "arithmetic": len(arithmetic), "facts": len(facts), "spoken": len(consistent)},
    }
    if chat is not None and tools:
        result.update(evaluate_tools(chat, tools, seed=seed))
    result["failures"] = failures
    return result


def evaluate_tools(chat: Any, n: int, *, seed: int) -> dict[str, Any]:
    """:func:`benchmark_tool_questions` through ``chat`` (a SpeechGPTChat) bound to the calculator.

    The tool runs on the model's own call and its result (or error) goes back: the answer is
    right only when it is the result of the question's expression.
    """
    from langchain_core.messages import HumanMessage, ToolMessage

    from speechgpt_agent.integrations.langchain import calculator

    bound = chat.bind_tools([calculator])
    calls: list[bool] = []
    answers: list[bool] = []
    for q in benchmark_tool_questions(n, seed):
        messages: list[Any] = [HumanMessage(q.question)]
        ai = bound.invoke(messages)
        call = ai.tool_calls[0] if ai.tool_calls else None
        calls.append(call is not None and call["name"] == "calculator"
                     and str(call["args"].get("expression", "")).replace(" ", "") == q.expression.replace(" ", ""))
        if call is None:
            answers.append(False)
            continue
        try:
            result, status = calculator.invoke(call["args"]), "success"
        except Exception as exc:  # noqa: BLE001 - a bad call's error goes back, as an agent loop sends it
            result, status = f"error: {exc}", "error"
        final = bound.invoke([*messages, ai, ToolMessage(result, tool_call_id=call["id"], name="calculator",
                                                         status=status)])
        answers.append(normalize(final.text) == normalize(q.result))
    return {"tool_call_correct": _share(calls), "tool_answer_correct": _share(answers),
            "counts_tools": len(calls)}


def run_chat(out: str | Path) -> Any:
    """A text-only, greedy :class:`SpeechGPTChat` on the weights of a run folder (or ``"demo"``)."""
    from speechgpt_agent.integrations.langchain import SpeechGPTChat

    common = {"quantization": None, "modalities": ["text"], "temperature": 0.0,
              "max_tokens": GREEDY.max_new_tokens, "min_new_tokens": 0}
    if str(out) == "demo":
        return SpeechGPTChat(model="demo", **common)
    out = Path(out)
    return SpeechGPTChat(model=str(out / "cm" / "model"), adapter=str(out / "com" / "adapter"),
                         speech_tokenizer=str(out / "speech_tokenizer"), vocoder=str(out / "vocoder"),
                         **common)


def evaluate_run(out: str | Path, *, seed: int = 0, limit: int | None = None) -> dict[str, Any]:
    """Evaluate a recipe run folder (see :func:`evaluate`)."""
    out = Path(out)
    items = heldout_items(out / "units.jsonl", seed)
    if limit:
        items = items[:limit]
    return evaluate(load_run(out), items, chat=run_chat(out), seed=seed)
