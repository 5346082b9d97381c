"""The demo recipe's parts that need no trained model: the closed world, the data, the calculator."""

from __future__ import annotations

import re
import shutil

import pytest

from speechgpt_agent.integrations.langchain.calculator import calculator, evaluate_expression
from speechgpt_agent.training.recipes.demo import world as world_module
from speechgpt_agent.training.recipes.demo.corpus import (
    ANSWER_VOICE,
    HELD_OUT_LANGUAGES,
    HELD_OUT_VARIANTS,
    HELD_OUT_VOICE,
    HELD_OUT_VOICES,
    SHORT_CLIP_MS,
    TRAIN_LANGUAGES,
    TRAIN_VARIANTS,
    is_held_out_voice,
    plan_clips,
    plan_nonspeech,
    write_nonspeech,
)
from speechgpt_agent.training.recipes.demo.llm_data import (
    calculator_system_prompt,
    chain_knowledge_examples,
    dialogues,
    knowledge_examples,
    knowledge_text,
    no_tool_examples,
    tokenizer_corpus,
    tool_text,
    tool_text_examples,
    tool_use_examples,
)
from speechgpt_agent.training.recipes.demo.world import (
    IDK_ANSWER,
    NUMBER_WORDS,
    closed_world,
    no_tool_questions,
    out_of_world,
    spoken_answers,
    tool_questions,
    varied_out_of_world,
)


def test_closed_world_answers_are_right_and_held_out_share_is_fixed():
    world = closed_world(0)
    value = {w: i for i, w in enumerate(NUMBER_WORDS)}
    arithmetic = [qa for qa in world if qa.kind == "arithmetic"]
    assert len(arithmetic) == 121 + 66
    for qa in arithmetic:
        _, _, a, op, b = qa.question.split()
        assert value[qa.answer] == (value[a] + value[b] if op == "plus" else value[a] - value[b])
    held = [qa for qa in arithmetic if qa.held_out]
    assert len(held) == round(0.2 * len(arithmetic))
    assert closed_world(0) == world and closed_world(1) != world
    assert not any(qa.held_out for qa in world if qa.kind == "fact")


def test_held_out_questions_are_never_heard(tmp_path):
    world = closed_world(0)
    held = {qa.question for qa in world if qa.held_out}
    train_texts = [qa.question for qa in world if not qa.held_out] + ["twelve", "seven"]
    clips = plan_clips(train_texts, [qa.question for qa in world], seed=0)
    assert not any(is_held_out_voice(c.voice) for c in clips if c.split == "train")
    assert {c.voice for c in clips if c.split != "train"} == {HELD_OUT_VOICE}
    assert not held & {c.text for c in clips if c.split == "train"}
    # dialogues of held-out questions carry no question audio
    ids: dict[str, list[str]] = {}
    units = {}
    for c in clips:
        if c.split == "train":
            ids.setdefault(c.text, []).append(c.id)
            units[c.id] = {"voice": c.voice}
    small = [qa for qa in world if qa.answer in ("twelve", "seven")]
    lines = dialogues(small, units, ids, seed=0)
    for line in lines:
        assert ("question_audio" in line) == (line["question"] not in held)
        if "question_audio" in line:  # the answer in the question's voice when it was recorded in it
            voice = units[line["question_audio"]]["voice"]
            if any(units[i]["voice"] == voice for i in ids[line["answer"]]):
                assert units[line["answer_audio"]]["voice"] == voice


def _prompts_sent(chat, run) -> list[str]:
    """The prompts ``chat``'s runtime builds while ``run()`` runs, in order."""
    runtime = chat.runtime
    prompts: list[str] = []
    real_prepare = runtime._prepare

    def spy(*args, **kwargs):
        turn = real_prepare(*args, **kwargs)
        prompts.append(turn.prompt)
        return turn

    runtime._prepare = spy
    try:
        run()
    finally:
        del runtime._prepare
    return prompts


def test_tool_examples_match_what_speechgptchat_sends(tiny_model_set, one_thread):
    """The training prompts are the runtime's prompts, character for character."""
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    from speechgpt_agent.integrations.langchain import SpeechGPTChat

    q = tool_questions(1, seed=5)[0]
    first, second = tool_use_examples([q])
    chat = SpeechGPTChat(model=str(tiny_model_set.model), adapter=str(tiny_model_set.adapter),
                         speech_tokenizer=str(tiny_model_set.speech_tokenizer), vocoder="",
                         quantization=None, modalities=["text"], max_tokens=3, seed=0)
    bound = chat.bind_tools([calculator])
    call = {"name": "calculator", "args": {"expression": q.expression}, "id": "call_0"}
    prompts = _prompts_sent(chat, lambda: (
        bound.invoke([HumanMessage(q.question)]),
        bound.invoke([HumanMessage(q.question), AIMessage("", tool_calls=[call]),
                      ToolMessage(q.result, tool_call_id="call_0", name="calculator")])))
    assert prompts[0] == first["prefix"] + first["plain_text"].rsplit("[SpeechGPT]: ", 1)[0] + "[SpeechGPT]: "
    assert prompts[1] == second["prefix"] + second["plain_text"].rsplit("[SpeechGPT]: ", 1)[0] + "[SpeechGPT]: "
    assert first["prefix"] == calculator_system_prompt()
    assert first["plain_text"].endswith(f'[ta] {{"tool": "calculator", "arguments": {{"expression": "{q.expression}"}}}}<eoa>.')
    assert second["plain_text"].endswith(f"[ta] {q.result}<eoa>.")


def test_tool_bound_text_examples_are_speechgptchats_prompt_answered_in_text(tiny_model_set, one_thread):
    """With the calculator bound, a question that is no calculator's: the prompt SpeechGPTChat
    sends, character for character, answered in text (no call); stage 3 holds them by kind."""
    from langchain_core.messages import HumanMessage

    from speechgpt_agent.integrations.langchain import SpeechGPTChat
    from speechgpt_agent.training.recipes.demo import __main__ as recipe
    from speechgpt_agent.training.recipes.demo.llm_data import tool_bound_text_examples

    qa = next(q for q in closed_world(0) if q.kind == "fact")
    (example,) = tool_bound_text_examples([qa])
    assert tool_bound_text_examples([qa], repeats=3) == [example] * 3
    chat = SpeechGPTChat(model=str(tiny_model_set.model), adapter=str(tiny_model_set.adapter),
                         speech_tokenizer=str(tiny_model_set.speech_tokenizer), vocoder="",
                         quantization=None, modalities=["text"], max_tokens=3, seed=0)
    prompts = _prompts_sent(chat, lambda: chat.bind_tools([calculator]).invoke([HumanMessage(qa.question)]))
    assert prompts == [example["prefix"] + example["plain_text"].rsplit("[SpeechGPT]: ", 1)[0] + "[SpeechGPT]: "]
    assert example["prefix"] == calculator_system_prompt()
    assert example["plain_text"].endswith(f"[ta] {qa.answer}<eoa>.") and '"tool"' not in example["plain_text"]
    assert set(recipe.TOOL_BOUND_TEXT_REPEATS) == {"fact", "arithmetic", "idk"}


def test_knowledge_examples_are_the_runtimes_text_turns(tiny_model_set, one_thread):
    """Every question of the closed world, held-out ones included, as the text turn the runtime sends."""
    from speechgpt_agent.model import GenerationOptions
    from speechgpt_agent.pipeline import SpeechGPT

    world = closed_world(0)
    examples = knowledge_examples(world, repeats=3)
    assert len(examples) == 3 * len(world)
    by_prompt = {e["plain_text"].rsplit("[SpeechGPT]: ", 1)[0]: e for e in examples}
    assert len(by_prompt) == len(world)
    runtime = SpeechGPT.from_pretrained(tiny_model_set.model, tiny_model_set.adapter,
                                        speech_tokenizer=tiny_model_set.speech_tokenizer,
                                        vocoder=tiny_model_set.vocoder, progress=False)
    held = next(qa for qa in world if qa.held_out)
    turn = runtime._prepare(held.question, None, None, None, (), None, GenerationOptions())
    assert turn.prompt + f"[ta] {held.answer}<eoa>." in {e["prefix"] + e["plain_text"] for e in examples}


def test_knowledge_text_states_each_answer_in_the_forms_the_model_meets_it():
    from speechgpt_agent.prompt import META_INSTRUCTION, build_prompt, chain_of_modality_answer

    world = closed_world(0)
    lines = knowledge_text(world, repeats=2, seed=0)
    assert len(lines) == 2 * 3 * len(world) and lines == knowledge_text(world, repeats=2, seed=0)
    qa = next(qa for qa in world if qa.held_out)
    spoken_answer = chain_of_modality_answer(transcript=qa.question, text=qa.answer, units=[1, 2])
    chain = next(line for line in lines if line.startswith(qa.question + ";"))
    assert spoken_answer.startswith(chain)  # the text part of a spoken answer, up to its units
    turn = build_prompt(qa.question)[len(META_INSTRUCTION):] + chain_of_modality_answer(text=qa.answer)
    assert turn + "." in lines


def test_tool_text_is_the_conversation_without_the_tool_schema():
    questions = tool_questions(4, seed=3)
    lines = tool_text(questions)
    samples = tool_use_examples(questions)
    assert len(lines) == 2 * len(questions)
    for line, sample in zip(lines, samples):
        assert sample["prefix"] + line == sample["prefix"] + sample["plain_text"]
        assert "JSON schemas" not in line and line.startswith("[Human]: ")
    assert f'"expression": "{questions[0].expression}"' in lines[0]
    assert lines[1].endswith(f"[ta] {questions[0].result}<eoa>.")
    # the parts alone: the calls are the even lines, the answers from the result the odd ones
    assert tool_text(questions, part="call") == lines[0::2]
    assert tool_text(questions, part="answer") == lines[1::2]
    with pytest.raises(ValueError, match="part must be one of"):
        tool_text(questions, part="result")


def test_tool_text_examples_train_only_the_call_and_the_answer():
    """Stage 2's calculator samples: no prefix, and the loss on what follows ``[SpeechGPT]:``
    alone (the call, or the answer from the result), not on the question or the result."""
    from transformers import AutoTokenizer

    from speechgpt_agent.demo import DEMO_DIR
    from speechgpt_agent.training.data import instruction_examples
    from speechgpt_agent.training.records import SkipReport

    questions = tool_questions(2, seed=5)
    samples = tool_text_examples(questions)
    assert [s["plain_text"] for s in samples] == tool_text(questions)
    assert {s["prefix"] for s in samples} == {""}
    tokenizer = AutoTokenizer.from_pretrained(DEMO_DIR / "llm")
    report = SkipReport("test")
    examples = instruction_examples([(s["prefix"], s["plain_text"]) for s in samples], tokenizer,
                                    max_length=512, loss_on="response", report=report)
    assert len(examples) == 4 and not len(report)
    trained = [tokenizer.decode([t for t in ex["labels"] if t != -100]) for ex in examples]
    assert f'"expression": "{questions[0].expression}"' in trained[0] and "what is" not in trained[0]
    assert questions[0].result in trained[1] and "returned" not in trained[1]


NUMBER_PAIR = re.compile(r"(\d+) [-+*] (\d+)")
"""Two numbers of a calculator expression, as every tool line writes its call (and the
calculator's description its example, ``1234 * 5678``)."""


def number_pairs(texts) -> list[tuple[int, int]]:
    """The (smaller, larger) operands of every expression in ``texts``, in order."""
    return [tuple(sorted((int(a), int(b)))) for text in texts for a, b in NUMBER_PAIR.findall(text)]


def training_texts(seed: int = 0) -> dict[str, list[str]]:
    """Every text of the recipe's LLM stages that can hold numbers in digits, as
    ``build_llm_data`` draws them (seed + 0 to 4), with the texts of the tokenizer's training
    and the system prompt; the rest of the data writes numbers as words or units."""
    from speechgpt_agent.training.recipes.demo import __main__ as recipe

    world = closed_world(seed)
    stage3 = tool_questions(recipe.TOOL_QUESTIONS, seed)
    no_tool = {stage: no_tool_examples(no_tool_questions(n, seed + recipe.NO_TOOL_SEED_OFFSETS[stage]))
               for stage, n in recipe.NO_TOOL_QUESTIONS.items()}
    return {
        "ma": recipe.stage1_text(world, seed),
        "cm": [s["prefix"] + s["plain_text"] for s in
               tool_text_examples(tool_questions(recipe.CM_TOOL_TEXT_QUESTIONS, seed + 4))
               + knowledge_examples(world, repeats=1) + chain_knowledge_examples(world, repeats=1) + no_tool["cm"]],
        "com": [s["prefix"] + s["plain_text"] for s in
                tool_use_examples(stage3 + recipe.stage3_length_tool_questions(seed)) + no_tool["com"]],
        "tokenizer": tokenizer_corpus(world, stage3),
    }


def test_stage1_text_holds_calls_and_answers_on_their_own_numbers():
    """Stage 1's calls and answers use numbers of their own (seeds + 1, + 2, + 3), none of stage 3's."""
    from speechgpt_agent.training.recipes.demo import __main__ as recipe

    world = closed_world(0)
    lines = recipe.stage1_text(world, seed=0)
    outside = [q for q in out_of_world(0) if not q.held_out]
    expected = (len(knowledge_text(world, repeats=recipe.TEXT_REPEATS, seed=0))
                + len(knowledge_text(outside, repeats=recipe.IDK_REPEATS["ma"], seed=0))
                + 2 * recipe.TOOL_TEXT_QUESTIONS + recipe.TOOL_CALL_TEXT_QUESTIONS
                + recipe.TOOL_RESULT_TEXT_QUESTIONS)
    assert len(lines) == expected
    calls = [line for line in lines if '"expression"' in line and "returned:" not in line]
    answers = [line for line in lines if "returned:" in line]
    assert len(calls) == recipe.TOOL_TEXT_QUESTIONS + recipe.TOOL_CALL_TEXT_QUESTIONS
    assert len(answers) == recipe.TOOL_TEXT_QUESTIONS + recipe.TOOL_RESULT_TEXT_QUESTIONS
    # every call and every answer line, each with exactly its one expression
    stage1 = number_pairs(calls + answers)
    assert len(stage1) == len(calls) + len(answers)
    stage3 = set(number_pairs(q.expression for q in tool_questions(recipe.TOOL_QUESTIONS, 0)))
    assert len(stage3) == recipe.TOOL_QUESTIONS
    shared = stage3 & set(stage1)
    assert not shared, f"{len(shared)} pairs of stage 3's numbers in stage 1, e.g. {sorted(shared)[:3]}"


def test_benchmark_calculator_numbers_occur_in_no_training_stage():
    """The tool figures' fresh questions (benchmarks/demo_quality.py, evaluate.py): no pair of
    their numbers, in either order and under any operator, is in any stage's data."""
    from speechgpt_agent.training.recipes.demo.evaluate import benchmark_tool_questions

    texts = training_texts(0)
    trained = {pair for part in texts.values() for pair in number_pairs(part)}
    assert len(trained) > 13_000  # 480 + 1000 + 5000 + 5000 + 2000 conversations, and the description's
    fresh = benchmark_tool_questions(200, seed=0)  # the figures use the first 20 (--tools)
    assert len({q.expression for q in fresh}) == 200
    for q in fresh:
        assert number_pairs([q.expression])[0] not in trained, q
    everything = "\n".join(t for part in texts.values() for t in part)
    for q in fresh:  # nor the question or its expression as written (no digit either side)
        for written in (q.question, q.expression):
            assert not re.search(rf"(?<!\d){re.escape(written)}(?!\d)", everything), written


def test_stage3_calculator_numbers_have_every_length_and_stay_off_the_tests_cases():
    """Stage 3 copies numbers of 2, 3 and 4 digits alike (``by_length``; the default draw gives
    4 digits nine times in ten), and tests/test_demo.py's fresh-number cases stay unseen."""
    from collections import Counter

    from speechgpt_agent.training.recipes.demo import __main__ as recipe

    default = Counter(len(n) for q in tool_questions(recipe.TOOL_QUESTIONS, 0) for n in re.findall(r"\d+", q.expression))
    assert default[4] > 0.8 * sum(default.values())
    length = recipe.stage3_length_tool_questions(0)
    assert len(length) == recipe.TOOL_LENGTH_QUESTIONS
    lengths = Counter(len(n) for q in length for n in re.findall(r"\d+", q.expression))
    assert set(lengths) == {2, 3, 4} and min(lengths.values()) > 0.25 * sum(lengths.values()), lengths
    for q in length:
        assert str(evaluate_expression(q.expression)) == q.result and q.expression.split()[0] in q.question
    trained = {pair for part in training_texts(0).values() for pair in number_pairs(part)}
    cases = ["57 + 9041", "808 - 6123", "7210 * 35", "4096 + 3333", "912 * 468", "4321 * 1234"]
    assert not set(number_pairs(cases)) & trained


def test_showcase_numbers_appear_nowhere_in_the_prompt_or_training_data():
    """The demo's tool question: neither number is in the calculator's description (the
    system prompt) or in any stage's data, even as digits inside another number; nor its result."""
    from speechgpt_agent.demo import DEMO_TOOL_QUESTION

    a, b = (int(n) for n in re.fullmatch(r"what is (\d+) times (\d+)", DEMO_TOOL_QUESTION).groups())
    texts = [t for part in training_texts(0).values() for t in part]
    texts += [calculator_system_prompt(), calculator.description]
    assert "1234 * 5678" in calculator.description  # the example a copied call would take
    numbers = {n for t in texts for n in re.findall(r"\d+", t)}
    assert len(numbers) > 10_000
    assert not [n for n in numbers if str(a) in n or str(b) in n]
    assert str(a * b) not in numbers


def test_tool_answer_figure_needs_the_models_own_call_to_be_right(tiny_model_set, one_thread):
    """evaluate_tools runs the calculator on the model's call: a wrong call's result goes back,
    so a model that answers from the result it reads scores 0 answers, not 1."""
    from speechgpt_agent.integrations.langchain import SpeechGPTChat
    from speechgpt_agent.testing.steer import ForceAnswer, answer_ids
    from speechgpt_agent.training.recipes.demo.evaluate import (
        benchmark_tool_questions,
        evaluate_tools,
    )

    questions = benchmark_tool_questions(2, seed=0)
    chat = SpeechGPTChat(model=str(tiny_model_set.model), adapter=str(tiny_model_set.adapter),
                         speech_tokenizer=str(tiny_model_set.speech_tokenizer), vocoder="",
                         quantization=None, modalities=["text"], max_tokens=200, seed=0)
    lm = chat.runtime.model

    def steered(wrong: bool) -> SpeechGPTChat:
        def factory():
            state: dict = {}

            def process(input_ids, scores):
                if "forced" not in state:
                    last = lm.decode(input_ids[0].tolist()).rsplit("[Human]", 1)[-1]
                    returned = re.search(r"returned:\s*(.*?)\s*<eoh>", last)
                    if returned:  # answer with what the tool sent back
                        answer = f"[ta] {returned.group(1)}<eoa>"
                    else:
                        (q,) = [q for q in questions if q.question in last]
                        expression = q.expression + (" + 1" if wrong else "")
                        answer = f'[ta] {{"tool": "calculator", "arguments": {{"expression": "{expression}"}}}}<eoa>'
                    state["forced"] = ForceAnswer(answer_ids(lm, answer), lm.eos_id)
                return state["forced"](input_ids, scores)

            return process

        return chat.model_copy(update={"logits_processors": [factory]})

    right = evaluate_tools(steered(wrong=False), 2, seed=0)
    assert (right["tool_call_correct"], right["tool_answer_correct"]) == (1.0, 1.0)
    wrong = evaluate_tools(steered(wrong=True), 2, seed=0)
    assert (wrong["tool_call_correct"], wrong["tool_answer_correct"]) == (0.0, 0.0)


def test_extra_recordings_add_clips_without_changing_the_others():
    """Answer words joined the extra recordings; every clip planned before keeps its voice, speed and pitch."""
    world = closed_world(0)
    questions = [qa.question for qa in world if not qa.held_out]
    before = plan_clips(questions, questions[:3], seed=0, extra_texts=questions, extra_per_text=2)
    after = plan_clips(questions, questions[:3], seed=0, extra_texts=questions + ["twelve"], extra_per_text=2)
    assert after[:len(before)] == before
    added = after[len(before):]
    assert [c.text for c in added] == ["twelve", "twelve"] and {c.split for c in added} == {"train_extra"}
    assert not any(is_held_out_voice(c.voice) for c in added)


def test_more_varied_recordings_leave_the_first_ones_as_they_were():
    questions = [qa.question for qa in closed_world(0) if not qa.held_out][:5]
    varied = [q.question for q in varied_out_of_world(20, 0)]
    once = plan_clips(questions, questions[:2], seed=0, varied_idk_texts=varied)
    thrice = plan_clips(questions, questions[:2], seed=0, varied_idk_texts=varied, varied_idk_per_text=3)
    assert thrice[:len(once)] == once
    added = thrice[len(once):]
    assert [c.text for c in added] == [t for t in varied for _ in range(2)]
    assert {c.split for c in added} == {"idk_varied"} and len({c.id for c in thrice}) == len(thrice)
    assert not any(is_held_out_voice(c.voice) for c in added)


def test_answer_voice_speaks_each_answer_once_and_changes_no_other_clip():
    world = closed_world(0)
    questions = [qa.question for qa in world if not qa.held_out]
    answers = spoken_answers(world)
    before = plan_clips(questions, questions[:3], seed=0, extra_texts=answers, extra_per_text=2)
    after = plan_clips(questions, questions[:3], seed=0, extra_texts=answers, extra_per_text=2,
                       answer_texts=answers)
    assert after[:len(before)] == before
    own = after[len(before):]
    assert [c.text for c in own] == answers
    assert {(c.voice, c.speed, c.pitch, c.split) for c in own} == {(*ANSWER_VOICE, "answer_voice")}
    assert ANSWER_VOICE[0] in TRAIN_LANGUAGES and len({c.id for c in after}) == len(after)


def test_dialogues_answer_in_the_models_own_voice():
    """With ``answer_voice`` every spoken answer is that voice's clip; nothing else in the lines changes."""
    world = [qa for qa in closed_world(0) if qa.answer in ("twelve", "seven")]
    ids = {"twelve": ["a1", "a2"], "seven": ["a3"]}
    units = {"a1": {"voice": "v1"}, "a2": {"voice": "v2"}, "a3": {"voice": "v1"}}
    for k, qa in enumerate(world):
        ids[qa.question] = [f"q{k}"]
        units[f"q{k}"] = {"voice": "v2"}
    own = {"twelve": "o12", "seven": "o7"}
    plain = dialogues(world, units, ids, seed=0)
    voiced = dialogues(world, units, ids, seed=0, answer_voice=own)
    assert [{**d, "answer_audio": None} for d in plain] == [{**d, "answer_audio": None} for d in voiced]
    assert all(d["answer_audio"] == own[d["answer"]] for d in voiced)
    with pytest.raises(KeyError, match="answer voice"):
        dialogues(world, units, ids, seed=0, answer_voice={"twelve": "o12"})


def test_chain_knowledge_is_the_text_part_of_a_spoken_turn():
    """The sample's response is exactly how a speech-in, speech-out answer begins at runtime."""
    from speechgpt_agent.prompt import META_INSTRUCTION, SPEECHGPT, chain_of_modality_answer

    world = closed_world(0)
    samples = chain_knowledge_examples(world, repeats=2)
    assert len(samples) == 2 * len(world)
    for qa, sample in zip(world, samples[::2]):
        assert sample["prefix"] == META_INSTRUCTION and "[Human]" not in sample["plain_text"]
        spoken = f"{SPEECHGPT}: " + chain_of_modality_answer(text=qa.answer, transcript=qa.question, units=[1, 2])
        assert spoken.startswith(sample["plain_text"] + " <sosp>")


def test_calculator_is_exact_and_refuses_code():
    assert evaluate_expression("1234 * 5678") == 7006652
    assert evaluate_expression("(2 + 3) ** 2 - 10 / 4") == 22.5
    assert calculator.invoke({"expression": "8 / 2"}) == "4"
    for bad in ("__import__('os')", "x + 1", "2 ** 100000", "1 / 0", "", "[1, 2]", "1 if 2 else 3"):
        with pytest.raises(ValueError):
            evaluate_expression(bad)
    assert tool_questions(3, 1) == tool_questions(3, 1)
    for q in tool_questions(20, 2):
        assert str(evaluate_expression(q.expression)) == q.result


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_corpus_synthesis_writes_16k_clips(tmp_path):
    import soundfile as sf

    from speechgpt_agent.training.recipes.demo.corpus import synthesize_corpus

    clips = plan_clips(["what is two plus two"], ["four"], seed=0)[:2]
    manifest = synthesize_corpus(clips, tmp_path, progress=False)
    rows = manifest.read_text().splitlines()
    assert len(rows) == 2
    for c in clips:
        info = sf.info(tmp_path / "wavs" / f"{c.id}.wav")
        assert info.samplerate == 16_000 and info.channels == 1 and 0.3 < info.duration < 5


def test_missing_demo_parts_say_how_to_rebuild(tmp_path):
    from speechgpt_agent.demo import demo_parts
    from speechgpt_agent.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="recipes.demo"):
        demo_parts(tmp_path)


def test_demo_name_without_the_model_gives_the_rebuild_command(tmp_path, monkeypatch):
    from speechgpt_agent import demo
    from speechgpt_agent.errors import ModelNotFoundError
    from speechgpt_agent.pipeline import SpeechGPT

    monkeypatch.setattr(demo, "DEMO_DIR", tmp_path)
    monkeypatch.setattr("speechgpt_agent.pipeline.demo_parts", lambda: demo.demo_parts(tmp_path))
    with pytest.raises(ModelNotFoundError, match="recipes.demo"):
        SpeechGPT.from_pretrained("demo", progress=False)


# --- second edition: voices, "i do not know", no-tool answers ------------------------------


def test_held_out_voices_and_variants_are_never_in_the_training_plan():
    from speechgpt_agent.training.recipes.demo import __main__ as recipe

    assert not set(TRAIN_LANGUAGES) & set(HELD_OUT_LANGUAGES)
    assert not set(TRAIN_VARIANTS) & set(HELD_OUT_VARIANTS)
    assert all(is_held_out_voice(v) for v in HELD_OUT_VOICES) and HELD_OUT_VOICE == HELD_OUT_VOICES[0]
    clips = recipe.plan_corpus(0)
    assert clips == recipe.plan_corpus(0)
    training = [c for c in clips if not c.split.startswith("heldout")]
    assert {c.split for c in training} == {"train", "train_extra", "answer_voice", "idk_train", "idk_varied"}
    for c in training:
        language, _, variant = c.voice.partition("+")
        assert language in TRAIN_LANGUAGES and variant in TRAIN_VARIANTS, c
    # many voices, not ten: every training language and most variants are heard
    voices = {c.voice for c in training}
    assert len(voices) > 300 and {v.partition("+")[0] for v in voices} == set(TRAIN_LANGUAGES)
    assert len({v.partition("+")[2] for v in voices}) > 0.9 * len(TRAIN_VARIANTS)
    # each text of the main split in distinct voices; speeds and pitches drawn per clip
    by_text: dict[str, list[str]] = {}
    for c in clips:
        if c.split == "train":
            by_text.setdefault(c.text, []).append(c.voice)
    assert all(len(set(v)) == len(v) == 6 for v in by_text.values())
    assert len({(c.speed, c.pitch) for c in training}) > 500
    # the benchmark's own clips are in held-out voices only
    assert {c.voice for c in clips if c.split.startswith("heldout")} <= set(HELD_OUT_VOICES)
    # as many speech clips as the first edition (1290 + 2580 + 41), plus the IDK recordings
    sizes = {split: sum(c.split == split for c in clips) for split in ("train", "train_extra", "idk_train")}
    assert sizes["train"] + sizes["train_extra"] <= 1.01 * (1290 + 2580)
    assert sizes["idk_train"] == recipe.IDK_RECORDINGS * sum(not q.held_out for q in out_of_world(0))
    varied = [c.text for c in clips if c.split == "idk_varied"]
    assert varied == [q.question for q in varied_out_of_world(recipe.VARIED_IDK_QUESTIONS, 0)][:recipe.VARIED_IDK_SPOKEN]


def test_varied_out_of_world_questions_keep_the_held_out_half_unseen():
    held = [q for q in out_of_world(0) if q.held_out]
    varied = varied_out_of_world(400, 0)
    assert varied == varied_out_of_world(400, 0) and varied != varied_out_of_world(400, 1)
    questions = [q.question for q in varied]
    assert len(set(questions)) == 400 and {q.answer for q in varied} == {IDK_ANSWER}
    assert not set(questions) & ({qa.question for qa in closed_world(0)} | {q.question for q in out_of_world(0)})
    # no filler of a held-out question in any form: "spain" is never asked when its capital is held out
    held_words = {w for q in held for w in q.question.split()}
    arithmetic = [q for q in questions if q.startswith("what is ") and q.split()[2] in NUMBER_WORDS]
    for q in set(questions) - set(arithmetic):
        form = next(f for f in world_module._VARIED_FORMS if re.fullmatch(f.replace("{}", "(.+)"), q))
        filler = re.fullmatch(form.replace("{}", "(.+)"), q).group(1)
        assert not (set(filler.split()) - {"a", "an", "the", "my", "your"}) & held_words, q
    # both halves: the world's word forms and arithmetic beyond it (past ten, times, negatives)
    assert 100 < len(arithmetic) < 300 and any("times" in q for q in arithmetic)
    assert any(q.startswith("what is the capital of") for q in questions)
    with pytest.raises(ValueError, match="varied out-of-world questions"):
        varied_out_of_world(100_000, 0)


def test_out_of_world_questions_are_outside_the_world_and_split_in_halves():
    world = {qa.question for qa in closed_world(0)}
    outside = out_of_world(0)
    assert outside == out_of_world(0) and {q.answer for q in outside} == {IDK_ANSWER}
    assert not world & {q.question for q in outside}
    held = [q for q in outside if q.held_out]
    assert 0.4 < len(held) / len(outside) < 0.6 and len({q.question for q in outside}) == len(outside)
    # the held-out half of every kind: no kind is all in training
    from speechgpt_agent.training.recipes.demo.world import OUT_OF_WORLD_QUESTIONS

    for questions in OUT_OF_WORLD_QUESTIONS.values():
        assert 0 < sum(q.held_out for q in outside if q.question in questions) < len(questions)


def test_nonspeech_clips_are_deterministic_from_the_seed(tmp_path):
    import numpy as np
    import soundfile as sf

    plan = plan_nonspeech(16, seed=3)
    assert plan == plan_nonspeech(16, seed=3) and plan != plan_nonspeech(16, seed=4)
    assert {c.kind for c in plan} == {"silence", "white", "pink", "short"}
    speech = tmp_path / "speech.wav"
    t = np.arange(16_000) / 16_000
    sf.write(speech, (0.3 * np.sin(2 * np.pi * 220 * t) * (t > 0.4)).astype(np.float32), 16_000, subtype="PCM_16")
    a = write_nonspeech(plan, tmp_path / "a", seed=0, speech_audio=[speech])
    b = write_nonspeech(plan, tmp_path / "b", seed=0, speech_audio=[speech])
    c = write_nonspeech(plan, tmp_path / "c", seed=1, speech_audio=[speech])
    noisy = [k for k, clip in enumerate(plan) if clip.kind in ("white", "pink")]
    for ra, rb, clip in zip(a, b, plan):
        xa, rate = sf.read(ra["audio"], dtype="float32")
        xb, _ = sf.read(rb["audio"], dtype="float32")
        assert rate == 16_000 and xa.ndim == 1 and np.array_equal(xa, xb)
        assert abs(len(xa) / 16_000 - clip.seconds) < 1e-3
        if clip.kind in ("white", "pink"):
            level = 20 * np.log10(np.sqrt(np.mean(xa.astype(np.float64) ** 2)))
            assert abs(level - clip.level_db) < 1.0, (clip, level)  # PCM_16 rounding at -60 dBFS
        if clip.kind == "silence" and clip.level_db is None:
            assert not xa.any()
    assert any(not np.array_equal(sf.read(a[k]["audio"])[0], sf.read(c[k]["audio"])[0]) for k in noisy)


def test_short_clips_are_shorter_than_the_threshold():
    plan = plan_nonspeech(200, seed=0)
    short = [c for c in plan if c.kind == "short"]
    assert len(short) == 50 and {c.source for c in short} == {"speech", "noise"}
    lo, hi = SHORT_CLIP_MS
    assert all(lo / 1000 <= c.seconds <= hi / 1000 for c in short)
    assert all(c.seconds >= 0.3 for c in plan if c.kind != "short")
    from speechgpt_agent.mel_units import MelFeatureConfig

    # the shortest still makes one frame of the demo's tokenizer (a 25 ms window)
    assert lo / 1000 * 16_000 >= MelFeatureConfig().win_length


def _fake_run(tmp_path, seed=0):
    """A run folder whose ``units.jsonl`` lists every planned clip with made-up units
    (about 30 units a second, as the demo's tokenizer gives): what build_llm_data reads."""
    import json
    import random as _random

    from speechgpt_agent.training.recipes.demo import __main__ as recipe

    rng = _random.Random(seed)
    rows = [{"id": c.id, "audio": f"{c.id}.wav", "text": c.text, "voice": c.voice, "split": c.split}
            for c in recipe.plan_corpus(seed)]
    rows += [{"id": c.id, "audio": f"{c.id}.wav", "text": "", "voice": c.kind, "split": c.split, "kind": c.kind}
             for c in recipe.plan_nonspeech_corpus(seed)]
    with open(tmp_path / "units.jsonl", "w") as f:
        for r in rows:
            n = max(1, round(30 * (0.3 + 0.31 * len(r["text"].split())) * rng.uniform(0.8, 1.25)))
            f.write(json.dumps({**r, "units": [rng.randrange(100) for _ in range(n)]}) + "\n")
    return recipe.build_llm_data(tmp_path, seed, init_model=False)


def _answer(plain_text: str) -> str:
    """The text answer of a stage-2/3 sample (after ``[ta]``), or ``""``."""
    last = plain_text.rsplit("[SpeechGPT]:", 1)[-1]
    if "[ta]" not in last:
        return ""
    return re.split(r";\s*\[ua\]|<eoa>", last.split("[ta]", 1)[1])[0].strip()


def test_idk_examples_enter_stages_two_and_three_without_swamping_them(tmp_path):
    import json

    data = _fake_run(tmp_path)
    from speechgpt_agent.training.recipes.demo import __main__ as recipe

    held = {q.question for q in out_of_world(0) if q.held_out}
    trained_outside = {q.question for q in out_of_world(0) if not q.held_out}
    varied = [q.question for q in varied_out_of_world(recipe.VARIED_IDK_QUESTIONS, 0)]
    stats = {}
    for stage in ("cm", "com"):
        samples = [json.loads(line) for line in (data / stage / "train.jsonl").read_text().splitlines() if line]
        idk = [s for s in samples if _answer(s["plain_text"]) == IDK_ANSWER]
        stats[stage] = len(idk) / len(samples)
        text = "\n".join(s["plain_text"] for s in samples)
        assert not [q for q in held if q in text], stage  # held-out questions: in no form
        answered = {s["plain_text"].split("[ta]")[0] for s in idk}
        assert all(any(q in a for a in answered) for q in varied), stage  # every varied question, answered IDK
        if stage == "com":
            spoken = [s for s in idk if s["plain_text"].startswith("[Human]: <sosp>")]
            empty = [s for s in spoken if "[SpeechGPT]: ; [ta] i do not know; [ua] <sosp>" in s["plain_text"]]
            assert len(empty) == 160  # every non-speech clip, an empty transcript
            heard = {s["plain_text"].split("[SpeechGPT]: ", 1)[1].split(";")[0] for s in spoken} - {""}
            # each out-of-world question spoken, transcribed first; the recorded varied ones too
            assert heard == trained_outside | set(varied[:recipe.VARIED_IDK_SPOKEN])
            written = [s for s in idk if s["plain_text"].startswith("[Human]: ") and "<sosp>" not in
                       s["plain_text"].split("[SpeechGPT]")[0]]
            assert len(written) >= len(trained_outside) * 6
        else:
            assert sum(_answer(s["plain_text"]) == "" and "<sosp>" in s["plain_text"]
                       and s["plain_text"].endswith("[SpeechGPT]: <eoa> ") for s in samples) == 160
    # present, and a small share next to the in-world data (about 7% and 8%: session 9's run,
    # at 3% and 5%, answered in-world questions "i do not know" 0.003 of the time)
    assert 0.04 < stats["cm"] < 0.10 and 0.05 < stats["com"] < 0.11, stats
    ma = (data / "ma" / "train.txt").read_text()
    assert not [q for q in held if q in ma]
    assert all(f"{q}? {IDK_ANSWER}." in ma for q in trained_outside)  # stage 1's text knows it too


def test_no_tool_digits_questions_are_answered_in_text(tmp_path):
    from speechgpt_agent.prompt import META_INSTRUCTION, build_prompt
    from speechgpt_agent.training.recipes.demo.evaluate import (
        benchmark_no_tool_questions,
        is_call_text,
    )

    questions = no_tool_questions(40, seed=5)
    assert questions == no_tool_questions(40, seed=5)
    assert sum(q.in_world for q in questions) == 20
    value = {w: i for i, w in enumerate(NUMBER_WORDS)}
    for q in questions:
        numbers = [int(n) for n in re.findall(r"\d+", q.question)]
        if q.in_world:
            a, b = numbers
            assert value[q.answer] == (a + b if "plus" in q.question else a - b) and max(a, b) <= 10
        else:
            assert q.answer == IDK_ANSWER and min(numbers) >= 12
    for q, sample in zip(questions, no_tool_examples(questions)):
        assert sample["prefix"] == META_INSTRUCTION and "JSON schemas" not in sample["plain_text"]
        assert sample["plain_text"] == build_prompt(q.question)[len(META_INSTRUCTION):] + f"[ta] {q.answer}<eoa>."
        assert not is_call_text(_answer(sample["plain_text"]))
    assert is_call_text('{"tool": "calculator", "arguments": {"expression": "2 + 3"}}')
    # the benchmark's questions are none of training's
    from speechgpt_agent.training.recipes.demo import __main__ as recipe

    trained = {q.question for stage, n in recipe.NO_TOOL_QUESTIONS.items()
               for q in no_tool_questions(n, recipe.NO_TOOL_SEED_OFFSETS[stage])}
    fresh = [q for q in benchmark_no_tool_questions(40) if not q.in_world]
    assert fresh and not {q.question for q in fresh} & trained


def test_card_edition_section_names_the_held_out_voices_and_the_idk_set():
    from speechgpt_agent.training.recipes.demo import __main__ as recipe

    card = recipe.edition_card(0)
    assert card["edition"] == 2
    assert card["voices"]["held_out_voices"] == list(HELD_OUT_VOICES)
    assert card["voices"]["held_out_variants"] == list(HELD_OUT_VARIANTS)
    assert sorted(card["idk"]["held_out_questions"]) == sorted(q.question for q in out_of_world(0) if q.held_out)
    assert sum(card["estimated_training_minutes"].values()) <= 120


def test_dtw_distance_prefers_the_same_sequence():
    import numpy as np

    from speechgpt_agent.training.recipes.demo.voices import dtw_distance

    rng = np.random.default_rng(0)
    a = rng.standard_normal((30, 4))
    stretched = np.repeat(a, 2, axis=0)  # the same sequence, twice as slow
    other = rng.standard_normal((40, 4))
    assert dtw_distance(a, a) == 0.0
    assert dtw_distance(a, stretched) < 0.5 * dtw_distance(a, other)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_voice_screen_keeps_a_variant_and_refuses_a_whisper():
    from speechgpt_agent.training.recipes.demo.voices import screen

    kept, whisper = screen(["en-us+m3", "en-us+whisper"])
    assert kept.usable and kept.recognised == 6
    assert not whisper.usable and whisper.voiced < 0.25
    assert "whisper" not in TRAIN_VARIANTS and "m3" in TRAIN_VARIANTS
