"""Quality of the embedded demo model on held-out questions and a held-out voice.

Usage::

    .venv/bin/python benchmarks/demo_quality.py                  # the packaged demo model
    .venv/bin/python benchmarks/demo_quality.py --run runs/demo  # a recipe run folder
    .venv/bin/python benchmarks/demo_quality.py --voice en-us+m2 # another voice never heard

The held-out voice (espeak-ng ``en-us+f4``, never heard in training) speaks every question of
the closed world; the clips are synthesized here (espeak-ng is needed) into ``--cache``.
Figures (see ``speechgpt_agent.training.recipes.demo.evaluate``), with the issue's targets:

* ASR exact match >= 80% (all questions, held-out voice; also split into questions heard in
  training in other voices and never heard at all);
* arithmetic answers correct >= 80% (spoken questions never heard in training);
* the spoken answer, re-tokenized and transcribed by the same model, matches its text
  answer >= 60%;
* calculator tool calls, and answers from the result of the model's own call (fresh numbers,
  which no training stage holds: ``benchmark_tool_questions``).

``--voice`` asks the questions in another espeak-ng voice that training never used: a check
that the figures are not those of one lucky voice (the recipe's variants were chosen on
``en-us+f4``, so other voices are the honest second look).

Greedy decoding, so a rerun gives the same figures. Prints a table and writes
``benchmarks/results/demo_quality.json`` (``demo_quality_<voice>.json`` for another voice).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import time
from pathlib import Path

import torch
from _common import environment, print_table, write_json

from speechgpt_agent.training.recipes.demo.corpus import (
    HELD_OUT_VOICE,
    TRAIN_VOICES,
    plan_clips,
    synthesize_corpus,
)
from speechgpt_agent.training.recipes.demo.evaluate import EvalItem, evaluate, load_run, run_chat
from speechgpt_agent.training.recipes.demo.world import closed_world, spoken_answers

TARGETS = {"asr_exact": 0.80, "arithmetic_correct": 0.80, "spoken_answer_consistent": 0.60}


def heldout_voice_items(cache: Path, seed: int, voice: str = HELD_OUT_VOICE) -> list[EvalItem]:
    """``voice``'s recordings of every question (synthesized once into ``cache``).

    Raises:
        ValueError: ``voice`` is one that training heard.
    """
    if voice in TRAIN_VOICES:  # the answer voice is one of them
        raise ValueError(f"{voice!r} is a training voice; pick one training never used (not one of "
                         f"{', '.join(TRAIN_VOICES)}), e.g. {HELD_OUT_VOICE} or en-us+m2.")
    world = closed_world(seed)
    questions = [qa.question for qa in world]
    clips = [dataclasses.replace(c, voice=voice)
             for c in plan_clips([], questions + spoken_answers(world), seed) if c.split == "heldout_voice"]
    synthesize_corpus(clips, cache, progress=False)
    by_text = {qa.question: qa for qa in world}
    return [EvalItem(str(cache / "wavs" / f"{c.id}.wav"), by_text[c.text]) for c in clips if c.text in by_text]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a recipe run folder (default: the packaged demo model)")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "speechgpt-agent" / "demo_heldout"))
    parser.add_argument("--tools", type=int, default=20, help="calculator questions")
    parser.add_argument("--limit", type=int, help="evaluate only the first N questions")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="the recipe's seed (decides the held-out questions)")
    parser.add_argument("--voice", default=HELD_OUT_VOICE,
                        help="espeak-ng voice of the questions, one training never used (default: %(default)s)")
    parser.add_argument("--out", help="JSON results (default: benchmarks/results/demo_quality[_VOICE].json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tag = "" if args.voice == HELD_OUT_VOICE else "_" + re.sub(r"[^A-Za-z0-9]+", "_", args.voice)
    out = args.out or str(Path(__file__).resolve().parent / "results" / f"demo_quality{tag}.json")

    try:
        items = heldout_voice_items(Path(args.cache + tag), args.seed, args.voice)
    except ValueError as exc:
        parser.error(str(exc))
    if args.limit:
        items = items[:args.limit]
    t0 = time.perf_counter()
    if args.run:
        sg, chat = load_run(args.run), run_chat(args.run)
    else:
        from speechgpt_agent.pipeline import SpeechGPT

        sg, chat = SpeechGPT.from_pretrained("demo", quantization=None, progress=False), run_chat("demo")
    figures = evaluate(sg, items, chat=chat, tools=args.tools, seed=args.seed)
    seconds = time.perf_counter() - t0
    rows = []
    for name in ("asr_exact", "asr_exact_heard_questions", "asr_exact_unheard_questions", "arithmetic_correct",
                 "facts_correct", "spoken_answer_consistent", "tool_call_correct", "tool_answer_correct"):
        target = TARGETS.get(name)
        value = figures.get(name)
        rows.append({"figure": name, "value": value, "target": f">= {target:.2f}" if target else "",
                     "met": "" if target is None or value is None else ("yes" if value >= target else "NO")})
    print_table(rows, ["figure", "value", "target", "met"])
    print(f"counts: {figures['counts']}; {seconds:.0f} s")
    path = write_json(out, {"benchmark": "demo_quality", "environment": environment(),
                            "model": args.run or "demo", "held_out_voice": args.voice,
                            "seconds": round(seconds, 1), "figures": figures, "targets": TARGETS})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
