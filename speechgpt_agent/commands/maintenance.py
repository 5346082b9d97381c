"""The maintenance subcommands: ``info`` (load the LLM, print what was loaded), ``selfcheck``
(one spoken turn end to end on tiny random models in the released formats) and ``demo`` (the
small model embedded in the package, offline on CPU)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .options import add_llm_args, is_demo, llm_quantization


def add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info", help="load the LLM and show what is loaded: dtype, quantization, memory",
        description="Load the LLM (and its adapter) as chat would and print, as JSON, what was "
        "loaded: the folders, dtype, quantization, device map, parameter count and memory "
        "footprint. --model demo describes the small model embedded in the package (offline).")
    add_llm_args(p.add_argument_group("model"), quantization_help="default: nf4; none for --model demo")
    p.set_defaults(func=_cmd_info)


def _cmd_info(args: argparse.Namespace) -> int:
    from ..errors import ModelNotFoundError
    from ..model import DEFAULT_ADAPTER, SpeechGPTModel
    from ..pipeline import quiet_bitsandbytes_cpu_notice

    quiet_bitsandbytes_cpu_notice()

    model, adapter = args.model, None if args.no_adapter else args.adapter
    quantization = llm_quantization(args)
    if is_demo(args):
        from ..demo import demo_parts

        parts = demo_parts()
        model = parts.model
        adapter = parts.adapter if adapter == DEFAULT_ADAPTER else adapter
    try:
        lm = SpeechGPTModel.from_pretrained(model, adapter, quantization=quantization)
    except ModelNotFoundError as exc:
        if is_demo(args):
            raise
        raise ModelNotFoundError(f"{exc} (No weights at hand? `--model demo` describes the small model "
                                 "embedded in the package.)") from None
    print(json.dumps(lm.describe(), indent=2, default=str))
    return 0


def add_selfcheck(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "selfcheck",
        help="run one spoken turn end to end on tiny random models (offline, seconds)",
        description="Builds a tiny model set with random weights in the released formats "
        "(SpeechGPT LLM + LoRA, fairseq mHuBERT + joblib k-means converted, fairseq CodeHiFiGAN), "
        "loads it through the real loaders (LLM in NF4), and runs one spoken turn: audio -> units "
        "-> LLM -> streamed answer -> streaming vocoder. Random weights choose no answer, so the "
        "answer's tokens are steered to a fixed spoken one; the check fails (exit status 1) unless "
        "its units come back from the parser, reach the streaming vocoder and come out as audio.",
    )
    p.add_argument("--dir", default=None, help="where to build the tiny models (default: a cache folder)")
    p.add_argument("--audio", default=None, help="the spoken question (default: a bundled clip)")
    p.add_argument("-o", "--output", default="selfcheck_answer.wav", help="default: %(default)s")
    p.set_defaults(func=_cmd_selfcheck)


def _cmd_selfcheck(args: argparse.Namespace) -> int:
    import os
    import time

    import numpy as np
    import torch

    from ..audio import write_wav
    from ..model import GenerationOptions
    from ..pipeline import SpeechGPT, time_turn
    from ..testing.model_set import make_tiny_model_set
    from ..testing.steer import ForceAnswer, answer_ids

    torch.set_num_threads(1)  # bitsandbytes' CPU NF4 kernels scale badly with threads on small models
    folder = args.dir or os.path.join(os.path.expanduser("~"), ".cache", "speechgpt-agent", "selfcheck")
    audio = args.audio or str(Path(__file__).parent.parent / "assets" / "question.wav")
    t0 = time.perf_counter()
    models = make_tiny_model_set(folder)
    t1 = time.perf_counter()
    runtime = SpeechGPT.from_pretrained(models.model, models.adapter, speech_tokenizer=models.speech_tokenizer,
                                        vocoder=models.vocoder, progress=False)
    t2 = time.perf_counter()
    # Random weights would rarely write a well-formed spoken answer, so the answer's tokens
    # are steered (a logits processor, as an application's constraint would be): the LLM
    # still runs every step, and its tokens go through the parser, the streaming vocoder
    # and into the wav as any answer's do.
    units = list(range(7, 1000, 20))  # 50 units across the codebook
    answer = "a check; [ta] a check.; [ua] <sosp>" + "".join(f"<{u}>" for u in units) + "<eosp><eoa>"
    forced = answer_ids(runtime.model, answer)
    timing = time_turn(lambda: runtime.stream(
        audio=audio, seed=0, options=GenerationOptions(max_new_tokens=len(forced) + 8),
        logits_processors=[ForceAnswer(forced, runtime.model.eos_id)]))
    response, first_text, first_audio, total = (timing.response, timing.first_text_s, timing.first_audio_s,
                                                timing.total_s)
    lm = runtime.model.describe()
    print(f"model set built in {folder} ({t1 - t0:.1f} s); loaded in {t2 - t1:.1f} s "
          f"(LLM {lm.get('quantization')}, {lm.get('memory_footprint', '?')} bytes)")
    print(f"question: {audio} -> {len(response.input_units)} units")
    print(f"answer: {response.usage.completion_tokens} tokens in {total:.2f} s, finish={response.finish_reason}; "
          f"first text at {first_text if first_text is None else round(first_text, 3)} s, "
          f"first audio at {first_audio if first_audio is None else round(first_audio, 3)} s; "
          f"{len(response.units)} answer units")
    problems = []
    if not response.input_units:
        problems.append("the question gave no speech units")
    if list(response.units) != units:
        problems.append(f"the answer's {len(units)} units came back as {len(response.units)} "
                        f"({list(response.units)[:8]}...)")
    if first_audio is None:
        problems.append("no audio chunk came out of the streaming vocoder while the answer streamed")
    if response.audio is None or not response.audio.size or not np.isfinite(response.audio).all():
        problems.append("the turn's spoken answer has no (finite) audio")
    if problems:
        print("selfcheck FAILED: " + "; ".join(problems), file=sys.stderr)
        return 1
    path = write_wav(args.output, response.audio, response.sample_rate)
    print(f"spoken answer: {len(response.units)} units -> streaming vocoder -> first audio at "
          f"{first_audio:.3f} s, {len(response.audio) / response.sample_rate:.2f} s of audio in {path}")
    print("selfcheck OK: every stage loaded from the released formats and ran (random weights: the words mean nothing)")
    return 0


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="talk to the small model embedded in the package (offline, CPU, seconds)",
        description="Ask the embedded demo model a spoken question (the bundled one, or --audio): "
        "prints the transcript and the text answer and writes the spoken answer; then runs one "
        "LangChain tool-calling turn (SpeechGPTChat(model='demo') with a calculator tool). The demo "
        "model knows a closed world: arithmetic up to twenty, a few facts, and the calculator.",
    )
    p.add_argument("--audio", help="your own question (wav/flac/ogg/...; e.g. 'what is seven plus five')")
    p.add_argument("-o", "--output", default="demo_answer.wav", help="answer wav (default: %(default)s)")
    p.add_argument("--tool-question", default=None,
                   help="question for the tool-calling turn (default: 'what is 4725 times 1609')")
    p.add_argument("--no-agent", action="store_true", help="skip the LangChain tool-calling turn")
    p.add_argument("--quantization", choices=["none", "nf4"], default="none",
                   help="weights of the demo LLM (default: %(default)s; nf4 runs bitsandbytes' 4-bit path)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    import psutil
    import torch

    from ..demo import DEMO_TOOL_QUESTION
    from ..demo_run import run_demo

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result = run_demo(args.audio, output=args.output,
                      tool_question=None if args.no_agent else (args.tool_question or DEMO_TOOL_QUESTION),
                      quantization=None if args.quantization == "none" else args.quantization)
    t = result.timings
    # what the user waits: wall time since the process started (interpreter, imports, model
    # loads and the turns), not since the clock above
    wall = time.time() - psutil.Process().create_time()
    print(f"demo done in {wall:.1f} s wall since the process started (start-up and imports "
          f"{wall - (time.perf_counter() - t0):.1f} s, load {t['load']:.1f} s, spoken turn "
          f"{t['spoken_turn']:.1f} s" + (f", agent turn {t['agent_turn']:.1f} s" if "agent_turn" in t else "") + ")")
    return 0

