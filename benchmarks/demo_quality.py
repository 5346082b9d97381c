"""Quality of the embedded demo model on held-out questions, voices and inputs outside its world.

Usage::

    .venv/bin/python benchmarks/demo_quality.py                  # the packaged demo model
    .venv/bin/python benchmarks/demo_quality.py --run runs/demo  # a recipe run folder
    .venv/bin/python benchmarks/demo_quality.py --quick          # 3 voices x 40 questions, fewer IDK inputs
    .venv/bin/python benchmarks/demo_quality.py --voices en-us+f4,en-us-nyc+m2

Every question of the closed world is spoken in each of the recipe's held-out voices
(``HELD_OUT_VOICES`` in ``training/recipes/demo/corpus.py``: held-out espeak-ng languages and
variants that the recipe never uses); the clips are synthesized here (espeak-ng is needed)
into ``--cache``. Figures (see ``speechgpt_agent.training.recipes.demo.evaluate``), with
issue 20's targets (``evaluate.TARGETS``):

* ASR exact match >= 0.90 (all questions, all held-out voices; also split into questions
  heard in training, in other voices, and never heard at all);
* arithmetic answers correct >= 0.90 (spoken questions never heard in training);
* the spoken answer, re-tokenized and transcribed by the same model, matches its text
  answer >= 0.80;
* per voice: none of those three below 0.75 (``min_per_voice``; each voice's figures are in
  the table and the JSON's ``per_voice``);
* "i do not know" >= 0.90 (``idk_correct``): held-out out-of-world questions (the recipe's
  held-out half of ``world.OUT_OF_WORLD_QUESTIONS``), spoken in the held-out voices and
  written; silence; white and pink noise; 30-200 ms clips (cuts of the held-out voices'
  speech, and noise), all generated from the seed; also by kind; ``in_world_idk`` is the
  share of in-world spoken questions answered so (should stay near 0);
* no tool bound: digits questions answered in text, not with a call's text
  (``no_tool_text``, target 1.0), and rightly (``no_tool_correct``: the number word or its
  digits on the world's numbers, "i do not know" beyond);
* calculator tool calls, and answers from the result of the model's own call (fresh numbers,
  which no training stage holds: ``benchmark_tool_questions``).

The first edition's model (packaged until the second edition is trained) was never taught
"i do not know" nor no-tool answers: those figures are ~0 for it.

Greedy decoding, so a rerun gives the same figures. Prints a table and writes
``benchmarks/results/demo_quality.json`` (``demo_quality_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time
from pathlib import Path

import torch
from _common import environment, print_table, write_json

from speechgpt_agent.training.recipes.demo.corpus import (
    HELD_OUT_VOICES,
    is_held_out_voice,
    plan_clips,
    plan_nonspeech,
    synthesize_corpus,
    write_nonspeech,
)
from speechgpt_agent.training.recipes.demo.evaluate import (
    PER_VOICE_FIGURES,
    TARGETS,
    EvalItem,
    IdkItem,
    benchmark_no_tool_questions,
    evaluate,
    evaluate_idk,
    evaluate_no_tools,
    load_run,
    run_chat,
    strip_hits,
)
from speechgpt_agent.training.recipes.demo.world import closed_world, out_of_world, spoken_answers

NONSPEECH_SEED_OFFSET = 40
"""The benchmark's non-speech clips are drawn from seed + this (the recipe's from seed + 20, + 21)."""


def voice_items(cache: Path, seed: int, voice: str) -> list[EvalItem]:
    """``voice``'s recordings of every question (synthesized once into ``cache/<voice>``).

    Raises:
        ValueError: ``voice`` has neither a held-out language nor a held-out variant.
    """
    if not is_held_out_voice(voice):
        raise ValueError(f"{voice!r} is made of a training language and variant; pick one with a held-out "
                         f"part, e.g. one of {', '.join(HELD_OUT_VOICES)}.")
    world = closed_world(seed)
    questions = [qa.question for qa in world]
    clips = [dataclasses.replace(c, voice=voice)
             for c in plan_clips([], questions + spoken_answers(world), seed) if c.split == "heldout_voice"]
    folder = cache / voice.replace("+", "_")
    synthesize_corpus(clips, folder, progress=False)
    by_text = {qa.question: qa for qa in world}
    return [EvalItem(str(folder / "wavs" / f"{c.id}.wav"), by_text[c.text], voice) for c in clips if c.text in by_text]


def idk_items(cache: Path, seed: int, voices: list[str], nonspeech: int,
              speech_sources: list[str]) -> list[IdkItem]:
    """The held-out inputs outside the world: each held-out out-of-world question written, and
    spoken in every one of ``voices``; ``nonspeech`` clips of silence, noise and short clips."""
    held = [qa.question for qa in out_of_world(seed) if qa.held_out]
    items = [IdkItem("oow_written", text=q) for q in held]
    for voice in voices:
        clips = [dataclasses.replace(c, voice=voice, id=f"ho_{c.id}")
                 for c in plan_clips([], [], seed, idk_eval_texts=held)]
        folder = cache / voice.replace("+", "_")
        synthesize_corpus(clips, folder / "idk", progress=False)
        items += [IdkItem("oow_spoken", audio=str(folder / "idk" / "wavs" / f"{c.id}.wav")) for c in clips]
    plan = plan_nonspeech(nonspeech, seed + NONSPEECH_SEED_OFFSET, "heldout_noise")
    rows = write_nonspeech(plan, cache / "nonspeech", seed, speech_audio=speech_sources)
    items += [IdkItem(str(r["kind"]), audio=str(r["audio"])) for r in rows]
    return items


def _row(figure: str, value: float | None, target: float | None) -> dict[str, str | float | None]:
    met = "" if target is None or value is None else ("yes" if value >= target else "NO")
    return {"figure": figure, "value": value, "target": f">= {target:.2f}" if target is not None else "", "met": met}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a recipe run folder (default: the packaged demo model)")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "speechgpt-agent" / "demo_heldout2"))
    parser.add_argument("--voices", "--voice", default=",".join(HELD_OUT_VOICES),
                        help="comma-separated espeak-ng voices, each with a held-out language or variant "
                             "(default: the recipe's HELD_OUT_VOICES)")
    parser.add_argument("--per-voice", type=int, help="questions per voice (a fixed draw; default: all)")
    parser.add_argument("--nonspeech", type=int, default=60, help="silence/noise/short clips (default: %(default)s)")
    parser.add_argument("--no-tools", type=int, default=40, help="digits questions with no tool bound")
    parser.add_argument("--tools", type=int, default=20, help="calculator questions")
    parser.add_argument("--quick", action="store_true",
                        help="a subset: the first 3 voices, 40 questions each, 20 non-speech clips, 20 no-tool")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="the recipe's seed (decides the held-out questions)")
    parser.add_argument("--out", help="JSON results (default: benchmarks/results/demo_quality[_quick].json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    voices = [v.strip() for v in args.voices.split(",") if v.strip()]
    if args.quick:
        voices, args.per_voice = voices[:3], args.per_voice or 40
        args.nonspeech, args.no_tools = min(args.nonspeech, 20), min(args.no_tools, 20)
    out = args.out or str(Path(__file__).resolve().parent / "results"
                          / f"demo_quality{'_quick' if args.quick else ''}.json")

    cache = Path(args.cache)
    items: list[EvalItem] = []
    for voice in voices:
        try:
            mine = voice_items(cache, args.seed, voice)
        except ValueError as exc:
            parser.error(str(exc))
        if args.per_voice:
            mine = random.Random(args.seed).sample(mine, min(args.per_voice, len(mine)))
        items += mine
    idk = idk_items(cache, args.seed, voices, args.nonspeech, [i.audio for i in items[:200]])
    t0 = time.perf_counter()
    if args.run:
        sg, chat = load_run(args.run), run_chat(args.run)
    else:
        from speechgpt_agent.pipeline import SpeechGPT

        sg, chat = SpeechGPT.from_pretrained("demo", quantization=None, progress=False), run_chat("demo")
    figures = strip_hits(evaluate(sg, items, chat=chat, tools=args.tools, seed=args.seed))
    figures.update(evaluate_idk(sg, idk))
    figures.update(evaluate_no_tools(sg, benchmark_no_tool_questions(args.no_tools, args.seed)))
    seconds = time.perf_counter() - t0
    if "per_voice" not in figures:  # one voice
        figures["per_voice"] = {voices[0]: {k: figures[k] for k in (*PER_VOICE_FIGURES, "facts_correct")}}
        figures["min_per_voice"] = min((figures[k] for k in PER_VOICE_FIGURES if figures[k] is not None), default=None)
    rows = [_row(name, figures.get(name), TARGETS.get(name))
            for name in ("asr_exact", "asr_exact_heard_questions", "asr_exact_unheard_questions", "arithmetic_correct",
                         "facts_correct", "spoken_answer_consistent", "min_per_voice", "in_world_idk",
                         "idk_correct", "no_tool_text", "no_tool_correct", "tool_call_correct", "tool_answer_correct")]
    rows += [_row(f"idk {kind}", value, None) for kind, value in figures["idk_by_kind"].items()]
    for voice, per in figures["per_voice"].items():
        rows += [_row(f"{voice} {name}", per[name], TARGETS["min_per_voice"]) for name in PER_VOICE_FIGURES]
    print_table(rows, ["figure", "value", "target", "met"])
    print(f"counts: {figures['counts']}, idk {figures['counts_idk']}, no tool {figures['counts_no_tool']}; "
          f"{seconds:.0f} s")
    path = write_json(out, {"benchmark": "demo_quality", "edition": 2, "environment": environment(),
                            "model": args.run or "demo", "held_out_voices": voices, "quick": args.quick,
                            "seconds": round(seconds, 1), "figures": figures, "targets": TARGETS})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
