"""The demo model's closed world: what it is asked, what it must answer, and the splits.

Everything the demo model knows is listed here, so that its quality can be checked:

* arithmetic on spoken numbers, ``"what is seven plus five"`` -> ``"twelve"`` (operands zero
  to ten, plus and minus, results zero to twenty);
* short facts, ``"what color is the sky"`` -> ``"blue"``;
* tool use: questions on numbers written in digits (``"what is 1234 times 5678"``) are beyond
  what it learned, so with a calculator bound it calls it in SpeechGPTChat's JSON form and
  answers from the result.

Second edition: it knows what it does not know. Questions outside this world
(:data:`OUT_OF_WORLD_QUESTIONS`: jokes, other capitals, numbers past ten, times...), and with
them silence, noise and clips too short to hold a question (:mod:`.corpus`), are answered
with one fixed sentence, :data:`IDK_ANSWER`; half of the out-of-world questions
(:func:`out_of_world`) are held out for the benchmark. Digits questions asked with no tool
bound (:func:`no_tool_questions`) get a text answer: the number word when the numbers are
the world's, :data:`IDK_ANSWER` otherwise; never the text of a calculator call.

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
    "IDK_ANSWER",
    "NUMBER_WORDS",
    "OUT_OF_WORLD_QUESTIONS",
    "QA",
    "NoToolQuestion",
    "ToolQuestion",
    "closed_world",
    "no_tool_questions",
    "number_word",
    "out_of_world",
    "spoken_answers",
    "tool_questions",
    "varied_out_of_world",
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

IDK_ANSWER = "i do not know"
"""The one answer to whatever is outside the closed world, silence and noise included."""

OUT_OF_WORLD_QUESTIONS: dict[str, tuple[str, ...]] = {
    # open questions no closed world answers
    "open": (
        "tell me a joke", "who won the world cup in nineteen ninety eight", "what time is it",
        "what is the weather like today", "who is the president", "what is the meaning of life",
        "can you sing a song", "where do you live", "how old are you", "what is my name",
        "who wrote hamlet", "what is the best movie", "how do i bake bread", "where is my phone",
        "what should i eat for dinner", "who is the tallest person in the world",
        "how far away is the moon", "what is love", "play some music", "what year is it",
    ),
    # the world's question forms on things it was never told
    "near": (
        "what is the capital of spain", "what is the capital of germany", "what is the capital of china",
        "what color is a banana", "what color is the sun", "what animal says quack",
        "what animal says oink", "how many legs does a bird have", "how many legs does a fish have",
        "what day comes after sunday", "what day comes after wednesday", "what is the opposite of left",
        "what is the opposite of big", "what do cows make", "which planet is the biggest",
        "how many hours are in a day",
    ),
    # arithmetic beyond the world: operands past ten, operations it never learned
    "numbers": (
        "what is twelve plus nine", "what is fifteen minus three", "what is eleven plus eleven",
        "what is twenty minus four", "what is three times four", "what is eight divided by two",
        "what is six times seven", "what is nine squared", "what is one hundred plus one",
        "what is seventeen plus two", "what is ten times ten", "what is two minus five",
    ),
}
"""Questions outside the closed world, by kind; each is answered :data:`IDK_ANSWER`.
``numbers`` includes ``two minus five`` (a negative result: the world's minus questions
never go below zero). None of them is a question of the world (tests check it)."""

OUT_OF_WORLD_HELD_OUT_SHARE = 0.5
"""Share of each kind of :data:`OUT_OF_WORLD_QUESTIONS` never seen in training (the benchmark's)."""

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


def tool_questions(n: int, seed: int, *, by_length: bool = False) -> list[ToolQuestion]:
    """``n`` calculator questions on 2- to 4-digit numbers, drawn from ``seed``.

    By default each number is uniform in 12..9999, so nine in ten have 4 digits; with
    ``by_length`` its count of digits is uniform over 2, 3 and 4 first (numbers 12..99,
    100..999, 1000..9999), and draws holding a :data:`SHOWCASE_NUMBERS` number are skipped.
    A model that copies digits has to have copied numbers of every length: trained on the
    default draws only, session 10's run copied ``57`` as ``577`` and ``912`` as ``9912``.
    """
    rng = random.Random(seed)
    out: list[ToolQuestion] = []
    while len(out) < n:
        question, expression, fn = rng.choice(_TOOL_FORMS)
        if by_length:
            a, b = (rng.randint(max(12, 10 ** (k - 1)), 10 ** k - 1) for k in (rng.randint(2, 4), rng.randint(2, 4)))
        else:
            a, b = rng.randint(12, 9999), rng.randint(12, 9999)
        q = ToolQuestion(question.format(a=a, b=b), expression.format(a=a, b=b), str(fn(a, b)))
        if by_length and any(s in f"{q.expression} {q.result}" for s in SHOWCASE_NUMBERS):
            continue
        out.append(q)
    return out


def out_of_world(seed: int = 0) -> list[QA]:
    """:data:`OUT_OF_WORLD_QUESTIONS` answered :data:`IDK_ANSWER` (kind ``"idk"``); ``held_out``
    marks :data:`OUT_OF_WORLD_HELD_OUT_SHARE` of each kind, drawn from ``seed``."""
    rng = random.Random(seed + 7)
    out = []
    for kind in sorted(OUT_OF_WORLD_QUESTIONS):
        questions = list(OUT_OF_WORLD_QUESTIONS[kind])
        held = set(rng.sample(questions, round(OUT_OF_WORLD_HELD_OUT_SHARE * len(questions))))
        out += [QA(q, IDK_ANSWER, "idk", q in held) for q in questions]
    return out


_VARIED_FORMS: dict[str, tuple[str, ...]] = {
    "what is the capital of {}": (
        "spain", "germany", "china", "india", "brazil", "canada", "mexico", "egypt", "russia", "greece",
        "peru", "kenya", "norway", "sweden", "poland", "chile", "cuba", "ireland", "portugal", "turkey",
        "austria", "belgium", "denmark", "finland", "iceland", "nepal", "vietnam", "ghana", "wales", "scotland"),
    "what color is {}": (
        "a banana", "the sun", "a lemon", "an orange", "a crow", "coal", "a tomato", "milk", "blood",
        "the sea", "a frog", "a carrot", "chocolate", "a plum", "a cherry", "the moon", "a pumpkin", "gold"),
    "what animal says {}": (
        "quack", "oink", "baa", "neigh", "hiss", "tweet", "roar", "ribbit", "cluck", "buzz", "howl",
        "squeak", "hoot", "bleat", "chirp", "growl"),
    "how many legs does {} have": (
        "a bird", "a fish", "a snake", "a cat", "a horse", "an ant", "a crab", "a chicken", "a duck",
        "a frog", "a worm", "a bee", "a cow", "a person", "a table", "a chair"),
    "what day comes after {}": ("sunday", "tuesday", "wednesday", "thursday", "saturday"),
    "what is the opposite of {}": (
        "left", "big", "fast", "old", "happy", "wet", "open", "light", "loud", "soft", "early", "near",
        "full", "rich", "strong", "tall", "in", "on", "yes", "good"),
    "what do {} make": ("cows", "chickens", "spiders", "birds", "bakers", "trees", "sheep", "clouds"),
    "who is {}": (
        "the president", "the king", "your friend", "my teacher", "the best singer", "the queen",
        "the fastest runner", "your mother", "the mayor", "that man"),
    "tell me {}": (
        "a joke", "a story", "a secret", "the news", "a poem", "a riddle", "something funny",
        "about the war", "about cats", "the time"),
    "how do i {}": (
        "bake bread", "tie a knot", "cook rice", "fix a car", "learn french", "get home", "swim",
        "ride a bike", "make tea", "find a job"),
    "where is {}": (
        "my phone", "the station", "the bank", "my car", "london bridge", "the key", "the moon", "paris",
        "the park", "my dog"),
    "what is {}": (
        "love", "the weather", "the time", "a black hole", "gravity", "music", "a computer", "your job",
        "the news", "the date", "my name", "a banana"),
}
"""Question forms and fillers of :func:`varied_out_of_world`: the world's own forms on things
it was never told, and open ones."""


def varied_out_of_world(n: int, seed: int) -> list[QA]:
    """``n`` distinct out-of-world training questions (kind ``"idk"``, answered :data:`IDK_ANSWER`)
    from :data:`_VARIED_FORMS` and arithmetic beyond the world (operands past ten, times,
    divided by, squared, negative results), drawn from ``seed``.

    A handful of fixed out-of-world questions teaches a small model those questions, not the
    boundary of its world; many varied ones on the world's own forms teach the boundary.
    Never a question of the world or of :func:`out_of_world`, and never a filler word of a
    held-out out-of-world question (``spain`` when ``what is the capital of spain`` is held
    out), so the benchmark's held-out half stays unseen in any form.
    """
    world = {qa.question for qa in closed_world(seed)}
    outside = out_of_world(seed)
    known = world | {q.question for q in outside}
    held_words = {w for q in outside if q.held_out for w in q.question.split()}
    rng = random.Random(seed + 11)
    pool: list[str] = []
    for form, fillers in _VARIED_FORMS.items():
        form_words = set(form.replace("{}", "").split())
        for filler in fillers:
            if not (set(filler.split()) - form_words - {"a", "an", "the", "my", "your"}) & held_words:
                pool.append(form.format(filler))
    for a in range(21):
        for b in range(21):
            if a > 10 or b > 10:
                pool += [f"what is {number_word(a)} plus {number_word(b)}"]
                pool += [f"what is {number_word(a)} minus {number_word(b)}"] if a >= b else []
            pool += [f"what is {number_word(a)} times {number_word(b)}"]
            if a < b <= 10:
                pool += [f"what is {number_word(a)} minus {number_word(b)}"]
            if b and a % b == 0:
                pool += [f"what is {number_word(a)} divided by {number_word(b)}"]
        pool += [f"what is {number_word(a)} squared"]
    pool = sorted(set(pool) - known)
    rng.shuffle(pool)
    # half on the world's words, half arithmetic, as far as the pool allows
    words = [q for q in pool if not q.startswith("what is ") or q.split()[2] not in NUMBER_WORDS]
    numbers = [q for q in pool if q.startswith("what is ") and q.split()[2] in NUMBER_WORDS]
    chosen = words[:n // 2] + numbers[:n - min(len(words), n // 2)]
    if len(chosen) < n:
        raise ValueError(f"only {len(chosen)} varied out-of-world questions exist, asked for {n}")
    return [QA(q, IDK_ANSWER, "idk") for q in chosen]


@dataclass(frozen=True)
class NoToolQuestion:
    """A question on numbers written in digits, asked with no tool bound: answered in text."""

    question: str
    answer: str
    """the number word (operands of the world) or :data:`IDK_ANSWER` (numbers beyond it)"""
    in_world: bool


SHOWCASE_NUMBERS = ("4725", "1609")
"""The numbers of ``speechgpt_agent.demo.DEMO_TOOL_QUESTION``: no training text may hold them,
even inside another number (tests/test_demo_recipe.py checks it), so draws that do are skipped."""


def no_tool_questions(n: int, seed: int) -> list[NoToolQuestion]:
    """``n`` digits questions for turns with no tool bound, half on the world's numbers
    (``"what is 7 plus 5"`` -> ``"twelve"``), half on 2- to 4-digit ones (-> :data:`IDK_ANSWER`),
    alternating, drawn from ``seed``. The question forms are the calculator's (:func:`tool_questions`)."""
    rng = random.Random(seed)
    out: list[NoToolQuestion] = []
    while len(out) < n:
        if len(out) % 2 == 0:
            op = rng.choice(("plus", "minus"))
            a = rng.randint(0, 10)
            b = rng.randint(0, 10) if op == "plus" else rng.randint(0, a)
            out.append(NoToolQuestion(f"what is {a} {op} {b}", number_word(a + b if op == "plus" else a - b), True))
            continue
        question, _, fn = rng.choice(_TOOL_FORMS)
        a, b = rng.randint(12, 9999), rng.randint(12, 9999)
        text = question.format(a=a, b=b) + f" {fn(a, b)}"
        if any(s in text for s in SHOWCASE_NUMBERS):
            continue
        out.append(NoToolQuestion(question.format(a=a, b=b), IDK_ANSWER, False))
    return out
