"""Training data of the demo LLM, in the SpeechInstruct formats that ``speechgpt-agent train`` reads.

* stage ``ma``: the unit sequences of the training clips (``data build ma``), plus the
  closed world's answers as plain text (:func:`knowledge_text`: what LLaMA knows from text
  before SpeechGPT's stage 1) and calculator conversations (:func:`tool_text`);
* stage ``cm``: ASR and TTS instructions over the training clips (``data build cm``), plus
  ASR of the extra recordings, TTS of every answer in the model's own voice, every question
  answered in a text turn (:func:`knowledge_examples`) and in the chain's text form
  (:func:`chain_knowledge_examples`);
* stage ``com``: chain-of-modality dialogues of the closed world (``data build com``): spoken
  answers, in the model's own voice, to spoken questions heard in training (``s2s``) and text
  answers to text questions (``t2t``, held-out ones included); the chain's text form again;
  the chat-template ASR/TTS samples (:func:`task_examples`); and calculator tool-use
  conversations written exactly as
  :class:`~speechgpt_agent.integrations.langchain.SpeechGPTChat` renders them.

Second edition ("it knows what it does not know"): the out-of-world questions of
:func:`.world.out_of_world` (training half) enter every stage as the closed world's do,
with the answer :data:`.world.IDK_ANSWER` (text in stage 1; text turns, the chain's text
form and ASR of their recordings in stage 2; spoken and written dialogues in stage 3);
non-speech clips (silence, noise, too-short clips) get an empty transcript in stage 2's ASR
(:func:`nonspeech_asr_examples`) and the spoken "i do not know" in stage 3
(:func:`nonspeech_dialogue_examples`); digits questions with no tool bound get text turns
(:func:`no_tool_examples`), the number word or the IDK sentence, never a call.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from speechgpt_agent.prompt import (
    EOA,
    EOH,
    HUMAN,
    META_INSTRUCTION,
    SPEECHGPT,
    TA,
    UA,
    asr_question,
    build_prompt,
    chain_of_modality_answer,
    escape_user_text,
    format_units,
)

from .world import IDK_ANSWER, QA, NoToolQuestion, ToolQuestion

__all__ = [
    "calculator_system_prompt", "chain_knowledge_examples", "dialogues", "knowledge_examples", "knowledge_text",
    "no_tool_examples", "nonspeech_asr_examples", "nonspeech_dialogue_examples", "task_examples",
    "tokenizer_corpus", "tool_text", "tool_text_examples", "tool_use_examples",
]

CALCULATOR_DESCRIPTION = "Evaluate an arithmetic expression on numbers, such as 1234 * 5678."


def calculator_system_prompt() -> str:
    """The system text SpeechGPTChat builds when the demo's calculator tool is bound (``auto``)."""
    from speechgpt_agent.integrations.langchain.calculator import calculator
    from speechgpt_agent.integrations.langchain.tool_calling import tool_prompt, tool_specs

    return META_INSTRUCTION.rstrip("\n") + "\n" + tool_prompt(tool_specs([calculator]), "auto")


def _split_prompt(prompt: str, system: str) -> tuple[str, str]:
    if not prompt.startswith(system):
        raise AssertionError("the prompt does not start with its system text")
    return system, prompt[len(system):]


ToolPart = Literal["both", "call", "answer"]
_TURNS: dict[str, tuple[bool, bool]] = {"both": (True, True), "call": (True, False), "answer": (False, True)}


def tool_use_examples(questions: Sequence[ToolQuestion], *, part: ToolPart = "both") -> list[dict[str, str]]:
    """Two samples per question: the call, and the answer from the tool's result.

    ``part`` keeps only the calls (``"call"``: each conversation's first turn) or only the
    answers from the result (``"answer"``); ``"both"`` keeps the two, in that order.

    The prompts are those SpeechGPTChat sends (the system text with the tool section, the
    call written back with ``render_tool_calls`` and the result as ``Tool "calculator"
    returned: ...``); the answers are what its parser turns into a tool call and a text.
    """
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    from speechgpt_agent.integrations.langchain.tool_calling import render_tool_calls

    if part not in _TURNS:
        raise ValueError(f"part must be one of {sorted(_TURNS)}, not {part!r}")
    keep_call, keep_answer = _TURNS[part]
    out = []
    for i, q in enumerate(questions):
        call = {"name": "calculator", "args": {"expression": q.expression}, "id": f"call_{i}"}
        first = [HumanMessage(q.question)]
        second = [*first, AIMessage("", tool_calls=[call]),
                  ToolMessage(q.result, tool_call_id=call["id"], name="calculator")]
        turns = [(first, render_tool_calls([call]))] * keep_call + [(second, q.result)] * keep_answer
        out += [_calculator_bound_sample(messages, answer) for messages, answer in turns]
    return out


@functools.cache
def _calculator_prompt_parts() -> tuple[str, str]:
    """The system text with the calculator bound, and the prompt's part before ``[Human]``."""
    system = calculator_system_prompt()
    return system, build_prompt("x", system=system).split("[Human]")[0]


def _calculator_bound_sample(messages: Sequence[Any], answer: str) -> dict[str, str]:
    """One chat sample of a turn with the calculator bound: SpeechGPTChat's prompt for
    ``messages`` (LangChain messages), answered with the text ``answer``."""
    from speechgpt_agent.integrations.langchain.messages import to_turn_input

    system, system_part = _calculator_prompt_parts()
    turn = to_turn_input(list(messages))
    prefix, rest = _split_prompt(build_prompt(turn.text, history=turn.history, system=system), system_part)
    return {"prefix": prefix, "plain_text": rest + chain_of_modality_answer(text=answer) + "."}


def tool_bound_text_examples(questions: Sequence[QA], *, repeats: int = 1) -> list[dict[str, str]]:
    """Questions asked with the calculator bound that are no calculator's: answered in text.

    Without them every stage-3 turn with the tool section in its system text is a calculator
    question, and the model learns "tool bound -> call": session 11's first stage-3 run called
    the calculator on "how many legs does a spider have". Same prompts as
    :func:`tool_use_examples` (SpeechGPTChat's, calculator bound, ``auto``), ``repeats`` times each.
    """
    from langchain_core.messages import HumanMessage

    return [e for qa in questions for e in [_calculator_bound_sample([HumanMessage(qa.question)], qa.answer)] * repeats]


def knowledge_text(world: Sequence[QA], *, repeats: int, seed: int) -> list[str]:
    """Lines of plain text stating the closed world's answers, for stage ``ma``'s language model.

    The stand-in for what LLaMA learned from text before SpeechGPT's stage 1, in three forms:
    a sentence (``what is seven plus five? twelve.``), the text turn without the meta
    instruction, and the text part of a chain-of-modality answer
    (``what is seven plus five; [ta] twelve;``), the form in which the model meets a question
    after transcribing it. Packed into blocks, a line costs ~15 tokens instead of the ~100 of
    a chat sample, so the knowledge can be repeated often enough to be memorized.
    """
    lines = []
    for qa in world:
        q, a = escape_user_text(qa.question), escape_user_text(qa.answer)
        lines += [f"{q}? {a}.", _text_turn(qa), f"{q}; {TA} {a};"]
    out = lines * repeats
    random.Random(seed).shuffle(out)
    return out


def tool_text(questions: Sequence[ToolQuestion], *, part: ToolPart = "both") -> list[str]:
    """The calculator conversations of :func:`tool_use_examples` as plain text, without the system text.

    For stage ``ma``: packed into blocks, a conversation costs ~60 tokens instead of the
    ~400 of a chat sample with the tool schema, so the model can practise copying numbers
    into the call and out of the result on many more of them. ``part`` as in
    :func:`tool_use_examples`.
    """
    return [sample["plain_text"] for sample in tool_use_examples(questions, part=part)]


def knowledge_examples(world: Sequence[QA], *, repeats: int) -> list[dict[str, str]]:
    """Every question of the closed world answered in text (``t2t``), ``repeats`` times each.

    The released SpeechGPT answers from what LLaMA learned from text; a model trained from
    scratch knows nothing, so the recipe teaches the closed world's answers in text during the
    full fine-tuning of stage ``cm`` (LoRA alone in stage ``com`` did not memorize them: in
    recipe run 1, 1 of 20 text questions right). Held-out questions are included: their
    answers are known in text, only their speech is never heard. The samples are exactly the
    runtime's text turns (:func:`~speechgpt_agent.prompt.build_prompt` and
    :func:`~speechgpt_agent.prompt.chain_of_modality_answer`).
    """
    out = []
    for qa in world:
        out += [{"prefix": META_INSTRUCTION, "plain_text": _text_turn(qa)}] * repeats
    return out


def tool_text_examples(questions: Sequence[ToolQuestion]) -> list[dict[str, str]]:
    """:func:`tool_text` as chat samples with an empty prefix: the call and the answer from the
    result, each with its loss on what follows the last ``[SpeechGPT]:``."""
    return [{"prefix": "", "plain_text": line} for line in tool_text(questions)]


def chain_knowledge_examples(world: Sequence[QA], *, repeats: int) -> list[dict[str, str]]:
    """Every question's answer in the text part of a chain-of-modality answer, ``repeats`` times each.

    ``[SpeechGPT]: what is seven plus five; [ta] twelve; [ua]`` with the loss on what follows
    ``[SpeechGPT]:``: the form in which a spoken turn meets the question, after its own
    transcript. Stage 3 learns that chain only on questions heard in training; without this
    form in stages 2 and 3, the answer after a right transcript of a question never heard was
    right for 29 of 37 held-out arithmetic questions while the same questions' text turns were
    36/37 (session 5's note). The turn has no ``[Human]`` part, so it competes with no runtime
    prompt.
    """
    out = []
    for qa in world:
        text = f"{SPEECHGPT}: {escape_user_text(qa.question)}; {TA} {escape_user_text(qa.answer)}; {UA}"
        out += [{"prefix": META_INSTRUCTION, "plain_text": text}] * repeats
    return out


def _text_turn(qa: QA) -> str:
    """The text turn of ``qa`` after the meta instruction: ``[Human]: ... [SpeechGPT]: [ta] ...<eoa>.``"""
    return build_prompt(qa.question)[len(META_INSTRUCTION):] + chain_of_modality_answer(text=qa.answer) + "."


def task_examples(records: Sequence[dict[str, Any]], *, per_text: int, seed: int,
                  tts: bool = True) -> list[dict[str, str]]:
    """ASR and TTS samples in the runtime's chat template (``<eoh>. [SpeechGPT]: ``).

    Stage 2's files keep the original README's spacing (``<eoh> [SpeechGPT]:``), but
    ``SpeechGPT.transcribe``/``speak`` send the chat template, as the original CLI did; the
    released model learned that form from its larger data. The demo model sees it here, in
    stage 3: ``per_text`` recordings of each text, with the default instructions (ASR, and
    TTS unless ``tts`` is False).
    """
    from speechgpt_agent.prompt import EOA, build_prompt, escape_user_text, format_units

    rng = random.Random(seed)
    by_text: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_text.setdefault(r["text"], []).append(r)
    out = []
    for text in sorted(by_text):
        for r in rng.sample(by_text[text], min(per_text, len(by_text[text]))):
            asr = build_prompt(units=r["units"], task="asr")
            out.append({"prefix": META_INSTRUCTION,
                        "plain_text": asr[len(META_INSTRUCTION):] + escape_user_text(text) + EOA + "."})
            if not tts:
                continue
            spoken = build_prompt(text, task="tts")
            out.append({"prefix": META_INSTRUCTION,
                        "plain_text": spoken[len(META_INSTRUCTION):] + format_units(r["units"]) + EOA + "."})
    return out


def dialogues(world: Sequence[QA], units: dict[str, dict[str, Any]], texts_to_ids: dict[str, list[str]],
              *, seed: int, answer_voice: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """``data build com`` dialogue lines (``{"id", "question", "answer", "question_audio"?, "answer_audio"?}``).

    A question heard in training gets one dialogue per training recording of it; a held-out
    question gets text-only dialogues (one per training recording of its answer), never its
    own speech. The spoken answer is ``answer_voice[answer]`` (a clip id: the model's own
    voice, :data:`.corpus.ANSWER_VOICE`) when given, else a recording of the answer in the
    question's voice.
    """
    rng = random.Random(seed)
    lines = []
    for n, qa in enumerate(world):
        answer_ids = texts_to_ids[qa.answer]
        own = answer_voice.get(qa.answer) if answer_voice else None
        if answer_voice is not None and own is None:
            raise KeyError(f"no recording of the answer {qa.answer!r} in the answer voice")
        if qa.held_out:
            for k, answer_id in enumerate(answer_ids):
                lines.append({"id": f"q{n}_t{k}", "question": qa.question, "answer": qa.answer,
                              "answer_audio": own or answer_id})
            continue
        for k, question_id in enumerate(texts_to_ids[qa.question]):
            voice = units[question_id]["voice"]
            same_voice = [a for a in answer_ids if units[a]["voice"] == voice] or answer_ids
            drawn = rng.choice(same_voice)  # drawn either way: the other lines stay as they were
            lines.append({"id": f"q{n}_s{k}", "question": qa.question, "answer": qa.answer,
                          "question_audio": question_id, "answer_audio": own or drawn})
    return lines


def no_tool_examples(questions: Sequence[NoToolQuestion]) -> list[dict[str, str]]:
    """Digits questions as the runtime's plain text turns (no tool section in the system
    text), answered in text: the number word, or :data:`.world.IDK_ANSWER` for numbers
    beyond the world. With the calculator bound the same forms get a call
    (:func:`tool_use_examples`); without it, the first edition answered with the raw text of
    a call."""
    return [{"prefix": META_INSTRUCTION, "plain_text": _text_turn(QA(q.question, q.answer, "fact"))}
            for q in questions]


def nonspeech_dialogue_examples(records: Sequence[dict[str, Any]], answer_units: Sequence[int]) -> list[dict[str, str]]:
    """Stage-3 speech-in, speech-out samples of non-speech clips (silence, noise, too short):
    an empty transcript, then :data:`.world.IDK_ANSWER` in text and in ``answer_units`` (its
    recording in the model's own voice).

    The form of :func:`speechgpt_agent.training.builders.chain_of_modality_example`'s
    ``s2s`` (which refuses an empty transcript): ``[Human]: <sosp>..<eosp><eoh>.
    [SpeechGPT]: ; [ta] i do not know; [ua] <sosp>..<eosp><eoa>.``
    """
    answer = chain_of_modality_answer(transcript="", text=IDK_ANSWER, units=answer_units)
    return [{"prefix": META_INSTRUCTION,
             "plain_text": f"{HUMAN}: {format_units(r['units'])}{EOH}. {SPEECHGPT}: {answer}."} for r in records]


def nonspeech_asr_examples(records: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """Stage-2 ASR samples of non-speech clips, in the form of ``build_cross_modal``'s: the
    transcript is empty (``[SpeechGPT]: <eoa>``), nothing was said."""
    return [{"prefix": META_INSTRUCTION,
             "plain_text": f"{HUMAN}: {asr_question(r['units'])}{EOH} {SPEECHGPT}: {EOA} "} for r in records]


def tokenizer_corpus(world: Sequence[QA], tools: Sequence[ToolQuestion]) -> list[str]:
    """Texts the demo's sentencepiece model is trained on: everything the model reads or writes."""
    from speechgpt_agent.training.builders import ASR_TEMPLATES, TTS_TEMPLATES

    texts = [META_INSTRUCTION, calculator_system_prompt(), SPEECHGPT, "This is input:",
             "[ta] ; [ua] <eoa>.", 'Tool "calculator" returned:']
    texts += list(ASR_TEMPLATES) + list(TTS_TEMPLATES)
    texts += [qa.question for qa in world] + [qa.answer for qa in world]
    texts += [t.question for t in tools]
    return texts * 3


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
