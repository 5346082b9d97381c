"""The demo model's closed world: what it is asked, what it must answer, and the splits.

Everything the demo model knows is listed here, so that its quality can be checked:

* arithmetic on spoken numbers, ``"what is seven plus five"`` -> ``"twelve"`` (operands zero
  to ten, plus and minus, results zero to twenty);
* short facts, ``"what color is the sky"`` -> ``"blue"``;
* tool use: questions on numbers written in digits (``"what is 1234 times 5678"``) are beyond
  what it learned, so with a calculator bound it calls it in SpeechGPTChat's JSON form and
  answers from the result.

Held-out questions: a fixed share of the arithmetic questions is never *heard* in training
(no speech of them, no ASR/TTS of them). Their answers are taught in text only (text
question -> text answer, as a pretrained LLM knows arithmetic from text), so answering them
when spoken needs the chain of modality: transcribe first, then answer in text, then speak.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "FACTS",
    "NUMBER_WORDS",
    "QA",
    "ToolQuestion",
    "closed_world",
    "number_word",
    "spoken_answers",
    "tool_questions",
]

NUMBER_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty",
)

FACTS: tuple[tuple[str, str], ...] = (
    ("what color is the sky", "blue"),
    ("what color is grass", "green"),
    ("what color is snow", "white"),
    ("what is the capital of france", "paris"),
    ("what is the capital of japan", "tokyo"),
    ("what is the capital of italy", "rome"),
    ("what is the capital of england", "london"),
    ("what animal says moo", "a cow"),
    ("what animal says woof", "a dog"),
    ("what animal says meow", "a cat"),
    ("how many legs does a spider have", "eight"),
    ("how many legs does a dog have", "four"),
    ("how many days are in a week", "seven"),
    ("how many months are in a year", "twelve"),
    ("what is the opposite of hot", "cold"),
    ("what is the opposite of up", "down"),
    ("what is the opposite of day", "night"),
    ("what do bees make", "honey"),
    ("what is frozen water called", "ice"),
    ("which planet do we live on", "earth"),
    ("what day comes after monday", "tuesday"),
    ("what day comes after friday", "saturday"),
    ("what is your name", "speechgpt"),
    ("hello", "hello how can i help you"),
)

HELD_OUT_SHARE = 0.2
"""Share of the arithmetic questions never heard in training."""


def number_word(n: int) -> str:
    """``7`` -> ``"seven"`` (0..20)."""
    return NUMBER_WORDS[n]


@dataclass(frozen=True)
class QA:
    """One question of the closed world and its answer (lower case, no punctuation)."""

    question: str
    answer: str
    kind: Literal["arithmetic", "fact"]
    held_out: bool = False


def closed_world(seed: int = 0) -> list[QA]:
    """Every question with its answer; ``held_out`` marks the arithmetic never heard in training."""
    arithmetic = [
        QA(f"what is {number_word(a)} plus {number_word(b)}", number_word(a + b), "arithmetic")
        for a in range(11) for b in range(11)
    ] + [
        QA(f"what is {number_word(a)} minus {number_word(b)}", number_word(a - b), "arithmetic")
        for a in range(11) for b in range(a + 1)
    ]
    order = list(range(len(arithmetic)))
    random.Random(seed).shuffle(order)
    held = set(order[:round(HELD_OUT_SHARE * len(arithmetic))])
    arithmetic = [QA(q.question, q.answer, q.kind, i in held) for i, q in enumerate(arithmetic)]
    return arithmetic + [QA(q, a, "fact") for q, a in FACTS]


def spoken_answers(world: list[QA]) -> list[str]:
    """The distinct answers, in a fixed order: each is also spoken in the corpus."""
    return sorted({qa.answer for qa in world})


@dataclass(frozen=True)
class ToolQuestion:
    """A question on numbers beyond the closed world, answered through the calculator tool."""

    question: str
    expression: str
    result: str


_TOOL_FORMS = (
    ("what is {a} times {b}", "{a} * {b}", lambda a, b: a * b),
    ("what is {a} plus {b}", "{a} + {b}", lambda a, b: a + b),
    ("what is {a} minus {b}", "{a} - {b}", lambda a, b: a - b),
    ("multiply {a} by {b}", "{a} * {b}", lambda a, b: a * b),
    ("add {a} and {b}", "{a} + {b}", lambda a, b: a + b),
)


def tool_questions(n: int, seed: int) -> list[ToolQuestion]:
    """``n`` calculator questions on 2- to 4-digit numbers, drawn from ``seed``."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        question, expression, fn = rng.choice(_TOOL_FORMS)
        a, b = rng.randint(12, 9999), rng.randint(12, 9999)
        out.append(ToolQuestion(question.format(a=a, b=b), expression.format(a=a, b=b), str(fn(a, b))))
    return out
