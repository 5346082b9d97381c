"""The shared pieces of the subcommands: argument types, the model-set flags and the runtime.

Argument types (:func:`positive_int`, :func:`non_negative`, :func:`probability`,
:func:`engine_arg`) raise :class:`argparse.ArgumentTypeError`, so a bad value is argparse's
usage error. :func:`add_model_set_args` adds the model-set and generation flags that chat,
transcribe and speak share; :func:`generation_options`, :func:`llm_quantization` and
:func:`load_runtime` turn them into what the library takes. :func:`check_audio_inputs` and
:func:`check_output` refuse bad paths before any model loads. Imports of the library happen
inside the functions, so building the parser stays instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import SpeechGPTError

DEFAULT_HUBERT = "voidful/mhubert-base"
"""The speech tokenizer's default (the same as :data:`speechgpt_agent.hubert.DEFAULT_HUBERT`,
repeated here so the parser imports no torch)."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative(kind: type) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
        return value

    return parse


def probability(text: str) -> float:
    value = non_negative(float)(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


MODEL_HELP = ("stage-2 LLM: hub id, local folder, or 'demo' for the small model embedded in the package "
              "(offline, CPU, seconds; it brings its own adapter, speech tokenizer and vocoder) "
              "(default: %(default)s)")


def engine_arg(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` of ``--engine-arg`` (see :func:`speechgpt_agent.engines.parse_engine_arg`)."""
    from ..engines import parse_engine_arg

    try:
        return parse_engine_arg(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_llm_args(g: argparse._ArgumentGroup, *, quantization_help: str) -> None:
    """``--model``, ``--adapter``, ``--no-adapter`` and ``--quantization``: the LLM and how its
    weights load (read back by :func:`is_demo` and :func:`llm_quantization`)."""
    g.add_argument("--model", default="fnlp/SpeechGPT-7B-cm", help=MODEL_HELP)
    g.add_argument("--adapter", default="fnlp/SpeechGPT-7B-com", help="LoRA adapter (default: %(default)s)")
    g.add_argument("--no-adapter", action="store_true", help="load no adapter")
    g.add_argument("--quantization", choices=["nf4", "int8", "none"], default=None, help=quantization_help)


def add_model_set_args(p: argparse.ArgumentParser, *, speech: bool = True) -> None:
    """The model-set flags (the LLM, the engine and, with ``speech``, the speech tokenizer and
    vocoder) and the generation flags of chat, transcribe and speak."""
    g = p.add_argument_group("model set (hub ids or local folders; --model demo needs none of them)")
    add_llm_args(g, quantization_help="LLM weights (default: nf4; none for --model demo)")
    g.add_argument("--device", default=None, help="device of the speech tokenizer and vocoder")
    g.add_argument("--engine", choices=["transformers", "vllm"], default="transformers",
                   help="where generation runs: the embedded transformers engine, or vLLM (continuous "
                        "batching, multi-GPU; pip install vllm) (default: %(default)s)")
    g.add_argument("--engine-arg", action="append", default=[], type=engine_arg, metavar="KEY=VALUE",
                   help="an engine argument, repeatable, e.g. --engine-arg tensor_parallel_size=2 "
                        "--engine-arg distributed_executor_backend=ray (values parsed as JSON when they can be)")
    if speech:
        g.add_argument("--hubert", default=DEFAULT_HUBERT, help="speech tokenizer (default: %(default)s)")
        g.add_argument("--kmeans", default=None, help="k-means file (default: the one beside --hubert)")
        g.add_argument("--vocoder", default=None, help="unit HiFi-GAN (default: the released one)")
        g.add_argument("--trust-pickle", action="store_true", help="allow the upstream pickled k-means")
    s = p.add_argument_group(
        "generation",
        "Default: sampling with the original SpeechGPT CLI's settings (temperature 0.7, top-p 0.8, "
        "top-k 50) from --seed 0, so a command repeats its answer; greedy for --model demo (as it "
        "was measured). --greedy or --temperature 0: greedy decoding.")
    s.add_argument("--seed", type=int, default=0, help="seed of the sampling: same seed, same answer "
                   "(default: %(default)s)")
    s.add_argument("--greedy", action="store_true", help="greedy decoding: the most likely token at each step")
    s.add_argument("--temperature", type=non_negative(float), default=None, help="sampling temperature; 0 = greedy")
    s.add_argument("--top-p", type=probability, default=None, help="nucleus sampling mass, in (0, 1]")
    s.add_argument("--top-k", type=non_negative(int), default=None, help="sample among the k likeliest (0: all)")
    s.add_argument("--reference", action="store_true",
                   help="reproduce the original cli_infer.py exactly (for comparing with published "
                        "numbers): no token healing, min_new_tokens not enforced, its ASR prompt")
    s.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help="most tokens in the answer (default: 2048; 400 for --model demo)")


def is_demo(args: argparse.Namespace) -> bool:
    from ..demo import DEMO_NAME

    return str(args.model) == DEMO_NAME


def llm_quantization(args: argparse.Namespace) -> str | None:
    """``--quantization`` as ``from_pretrained`` takes it (default nf4; none for the demo)."""
    chosen = args.quantization or ("none" if is_demo(args) else "nf4")
    return None if chosen == "none" else chosen


def generation_options(args: argparse.Namespace):
    """The :class:`GenerationOptions` of the command line (flags already validated by argparse)."""
    import dataclasses

    from ..model import GenerationOptions

    greedy = args.greedy or args.temperature == 0
    sampling_asked = not greedy and any(v is not None for v in (args.temperature, args.top_p, args.top_k))
    if is_demo(args):  # as run_demo and benchmarks/demo_quality.py run it
        base = GenerationOptions(do_sample=sampling_asked, max_new_tokens=400, min_new_tokens=0)
    else:
        base = GenerationOptions()
    changes: dict = {k: v for k, v in {
        "temperature": None if greedy else args.temperature, "top_p": args.top_p, "top_k": args.top_k,
        "max_new_tokens": args.max_new_tokens,
    }.items() if v is not None}
    if greedy:
        changes["do_sample"] = False
    max_new = changes.get("max_new_tokens", base.max_new_tokens)
    changes["min_new_tokens"] = min(base.min_new_tokens, max_new)
    return dataclasses.replace(base, **changes)


def check_audio_inputs(paths: Sequence[str], flag: str) -> None:
    """Decode every input clip before any model loads: a missing, empty or unreadable file is
    reported in seconds, not after minutes of loading (raises AudioError)."""
    from ..audio import load_audio
    from ..errors import AudioError

    for path in paths:
        if not Path(path).is_file():
            raise AudioError(f"{flag} {path}: no such file.")
        if Path(path).stat().st_size == 0:
            raise AudioError(f"{flag} {path}: the file is empty.")
        try:
            load_audio(path)
        except AudioError as exc:
            raise AudioError(f"{flag} {path}: {exc}") from None


def check_output(path: str | None, flag: str = "-o") -> None:
    """An output wav path that can be written (checked before any model loads)."""
    if path and Path(path).is_dir():
        raise SpeechGPTError(f"{flag} {path} is a folder; give the path of a .wav file.")


def load_runtime(args: argparse.Namespace, *, speech_in: bool = True, speech_out: bool = True,
                  preload: Sequence[str] = ()):
    """The SpeechGPT of the command line. Parts in ``preload`` load before the LLM (they are
    small and may refuse, e.g. a pickled k-means, before minutes of LLM loading); the others
    load when first needed (a text question needs no speech tokenizer)."""
    from ..errors import ModelNotFoundError, UnsafeCheckpointError
    from ..hub import check_available
    from ..pipeline import SpeechGPT

    print(f"loading {args.model} ...", file=sys.stderr)
    demo = is_demo(args)
    try:
        if not demo:  # the part a user lacks first is named first, before smaller parts load
            check_available(args.model, what="SpeechGPT language model")
            if not args.no_adapter:
                check_available(args.adapter, what="SpeechGPT adapter")
        runtime = SpeechGPT.from_pretrained(
            args.model,
            None if args.no_adapter else args.adapter,
            speech_tokenizer=args.hubert if speech_in else None,
            kmeans=args.kmeans,
            vocoder=args.vocoder if speech_out else "",
            quantization=llm_quantization(args),
            device=args.device,
            trust_pickle=args.trust_pickle,
            preload=preload,
            progress=not demo,
            engine=getattr(args, "engine", "transformers"),
            engine_args=dict(getattr(args, "engine_arg", [])),
        )
        runtime.reference = bool(getattr(args, "reference", False))
        return runtime
    except UnsafeCheckpointError as exc:
        raise UnsafeCheckpointError(f"{exc} (On the command line: --trust-pickle.)") from None
    except ModelNotFoundError as exc:
        if demo:
            raise
        raise ModelNotFoundError(f"{exc} (No weights at hand? `--model demo` runs the small model "
                                 "embedded in the package.)") from None

