"""Grammar-constrained decoding: tokens/s constrained vs unconstrained, and grammar compile time.

On the embedded demo model (CPU), one run: the same prompt (a calculator question with the
calculator tool described in the system text) is generated greedily without a grammar, with
the ``tool_choice="any"`` grammar and with the ``"auto"`` grammar. The per-token cost counts
from the first generated token to the last (prefill excluded), median over ``--repeats``
generations. Compile time is measured cold (a fresh xgrammar compiler) and cached, per tool
set. Target: constrained per-token cost <= 1.25x unconstrained.

The no-call guard (``no_tool_call_grammar``, on every chat turn without tools or a grammar of
its own) is measured the same way, guarded against ``allow_tool_calls=True``, on a spoken
question (transcript, text and about a hundred speech units, all under the guard) and a
text one; and alone: the guard's logits processor replayed over the spoken answer's
tokens, in microseconds per token. Target: guard <= 1.05x.

    python benchmarks/constrained.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from _common import environment, print_table, write_json

RESULTS = Path(__file__).parent / "results" / "constrained.json"


def _tool_sets():
    from langchain_core.tools import tool

    from speechgpt_agent.integrations.langchain import calculator
    from speechgpt_agent.integrations.langchain.tool_calling import tool_specs

    @tool
    def get_weather(city: str, unit: str = "celsius", days: int = 1) -> str:
        """The weather in a city."""
        return "sunny"

    @tool
    def book_flight(origin: str, destination: str, passengers: int, cabin: str = "economy") -> str:
        """Book a flight."""
        return "booked"

    many = [calculator, get_weather, book_flight]
    for i in range(7):
        many.append({"name": f"tool_{i}", "description": f"Tool {i}.", "parameters": {
            "type": "object", "properties": {"x": {"type": "integer"}, "tags": {"type": "array",
                                                                                 "items": {"type": "string"}}},
            "required": ["x"]}})
    return {"calculator": tool_specs([calculator]), "3 tools": tool_specs(many[:3]),
            "10 tools": tool_specs(many)}


def _per_token(runtime, system: str | None, question: str | None, processors, repeats: int,
               **stream_kwargs) -> tuple[float, int]:
    from speechgpt_agent.model import GenerationOptions
    from speechgpt_agent.parse import TextDelta

    opts = GenerationOptions(do_sample=False, max_new_tokens=64, min_new_tokens=0)
    costs, count = [], 0
    for _ in range(repeats + 1):  # the first run warms up
        procs = [make() for make in processors]
        first = last = None
        tokens = 0
        text = ""
        for event in runtime.stream(question, system=system, output="text", options=opts,
                                    logits_processors=procs, **stream_kwargs):
            if isinstance(event, TextDelta):
                text += event.text
            now = time.perf_counter()
            first = now if first is None else first
            last = now
        response = event.response
        tokens = response.usage.completion_tokens
        if tokens > 1:
            costs.append((last - first) / (tokens - 1))
            count = tokens
    return statistics.median(costs[1:] or costs), count


def _guard(runtime, repeats: int) -> tuple[list[dict], float]:
    """The no-call guard: per-token cost on and off, and its processor alone (us per token)."""
    from speechgpt_agent.demo import DEMO_DIR
    from speechgpt_agent.grammar_guard import no_tool_call_grammar
    from speechgpt_agent.model import GenerationOptions
    from speechgpt_agent.prompt import build_prompt

    rows = []
    for label, question, audio in (("spoken: what is seven plus five", None, DEMO_DIR / "question.wav"),
                                   ("text: what is 4321 times 1234", "what is 4321 times 1234", None)):
        # on and off alternate, so that the load of a shared machine falls on both alike
        offs, ons = [], []
        for _ in range(repeats):
            off, n = _per_token(runtime, None, question, [], 1, audio=audio, allow_tool_calls=True)
            on, m = _per_token(runtime, None, question, [], 1, audio=audio)
            offs.append(off)
            ons.append(on)
        off, on = statistics.median(offs), statistics.median(ons)
        rows.append({"question": label, "guard": "off", "tokens": n, "ms_per_token": off * 1e3, "cost_ratio": 1.0})
        rows.append({"question": label, "guard": "on", "tokens": m, "ms_per_token": on * 1e3, "cost_ratio": on / off})
    # the processor alone, replayed over the spoken answer's tokens (what it sees in a turn)
    lm = runtime.model
    opts = GenerationOptions(do_sample=False, max_new_tokens=300, min_new_tokens=0)
    units = runtime.speech_tokenizer.encode(DEMO_DIR / "question.wav").units
    prompt = lm.encode_prompt(build_prompt(units=units))
    answer = list(runtime.engine.generate(prompt, opts))
    steps = [torch.tensor([prompt + answer[:i]]) for i in range(len(answer) + 1)]
    scores = torch.zeros(1, lm.vocab_size)
    best = float("inf")
    for _ in range(repeats):
        proc = no_tool_call_grammar().logits_processor(lm)
        proc(steps[0], scores)  # records the prompt length
        t0 = time.perf_counter()
        for seq in steps[1:]:
            proc(seq, scores)
        best = min(best, (time.perf_counter() - t0) / len(answer))
        assert not proc.failed
    return rows, best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from speechgpt_agent.grammar import _Compiler, tool_call_grammar
    from speechgpt_agent.integrations.langchain.tool_calling import tool_prompt
    from speechgpt_agent.pipeline import SpeechGPT
    from speechgpt_agent.prompt import META_INSTRUCTION

    runtime = SpeechGPT.from_pretrained("demo", quantization=None, progress=False)
    lm = runtime.model
    sets = _tool_sets()

    compile_rows = []
    for name, specs in sets.items():
        for choice in ("any", "auto"):
            grammar = tool_call_grammar(specs, choice)
            t0 = time.perf_counter()
            fresh = _Compiler(lm.tokenizer, lm.vocab_size, [lm.eos_id])
            setup = time.perf_counter() - t0
            t0 = time.perf_counter()
            fresh.compile(grammar)
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            grammar.compile(lm)
            grammar.compile(lm)
            t1 = time.perf_counter()
            grammar.compile(lm)
            cached = time.perf_counter() - t1
            compile_rows.append({"tool_set": name, "choice": choice, "tokenizer_info_s": setup,
                                 "compile_cold_s": cold, "compile_cached_s": cached})

    specs = sets["calculator"]
    system = META_INSTRUCTION + tool_prompt(specs, "any")
    question = "what is 4321 times 1234"
    any_g, auto_g = tool_call_grammar(specs, "any"), tool_call_grammar(specs, "auto")
    rows = []
    base, n = _per_token(runtime, system, question, [], args.repeats, allow_tool_calls=True)
    rows.append({"decoding": "unconstrained", "tokens": n, "ms_per_token": base * 1e3,
                 "tokens_per_s": 1 / base, "cost_ratio": 1.0})
    for label, g in (("grammar any", any_g), ("grammar auto", auto_g)):
        cost, n = _per_token(runtime, system, question, [lambda g=g: g.logits_processor(lm)], args.repeats)
        rows.append({"decoding": label, "tokens": n, "ms_per_token": cost * 1e3,
                     "tokens_per_s": 1 / cost, "cost_ratio": cost / base})

    print_table(rows, ["decoding", "tokens", "ms_per_token", "tokens_per_s", "cost_ratio"])
    print()
    guard_rows, guard_us = _guard(runtime, args.repeats)
    print_table(guard_rows, ["question", "guard", "tokens", "ms_per_token", "cost_ratio"])
    print(f"the guard's logits processor alone: {guard_us:.1f} us per token")
    print()
    print_table(compile_rows, ["tool_set", "choice", "tokenizer_info_s", "compile_cold_s", "compile_cached_s"])
    worst = max(r["cost_ratio"] for r in rows)
    print(f"\nworst constrained/unconstrained per-token cost: {worst:.3f}x (target <= 1.25x)")
    path = write_json(RESULTS, {
        "environment": environment(), "model": "demo", "question": question,
        "decoding": rows, "compile": compile_rows, "worst_cost_ratio": worst, "target": 1.25,
        "no_call_guard": {"rows": guard_rows, "processor_us_per_token": guard_us,
                          "worst_cost_ratio": max(r["cost_ratio"] for r in guard_rows), "target": 1.05},
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
