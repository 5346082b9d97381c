"""The ``speechgpt-agent`` command.

Subcommands are thin: each parses its flags, calls the library, prints results. Heavy
imports (torch, transformers) happen inside the subcommand so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .errors import SpeechGPTError

DEFAULT_HUBERT = "voidful/mhubert-base"


def _add_units(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "units",
        help="audio files -> speech units (JSON lines)",
        description="Encode audio files into mHuBERT k-means units, one JSON object per line: "
        '{"path", "units", "durations", "text", "frames"} (or {"path", "error"}).',
    )
    p.add_argument("audio", nargs="+", help="audio files (wav/flac/ogg/...; any rate, any channels)")
    p.add_argument("--model", default=DEFAULT_HUBERT, help="HuBERT folder or hub id (default: %(default)s)")
    p.add_argument("--kmeans", default=None, help="k-means file or folder (.safetensors/.npy, or the upstream .bin with --trust-pickle)")
    p.add_argument("--trust-pickle", action="store_true", help="allow loading the upstream joblib k-means pickle")
    p.add_argument("--layer", type=int, default=11, help="HuBERT layer (default: %(default)s)")
    p.add_argument("--unmerged", action="store_true", help="also write the unmerged frame ids")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("-o", "--output", default="-", help="output .jsonl (default: stdout)")
    p.set_defaults(func=_cmd_units)


def _cmd_units(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .units import SpeechTokenizer

    tokenizer = SpeechTokenizer.from_pretrained(
        args.model, kmeans=args.kmeans, layer=args.layer, device=args.device, trust_pickle=args.trust_pickle
    )
    out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    failures = 0
    try:
        for path in tqdm(args.audio, desc="units", unit="file", disable=len(args.audio) < 2, file=sys.stderr):
            try:
                seq = tokenizer.encode(path)
            except SpeechGPTError as exc:
                failures += 1
                record = {"path": path, "error": str(exc)}
            else:
                record = {
                    "path": path,
                    "units": list(seq.units),
                    "durations": list(seq.durations),
                    "text": seq.text(),
                    "frames": len(seq.frames),
                }
                if args.unmerged:
                    record["unmerged"] = list(seq.frames)
            out.write(json.dumps(record) + "\n")
            out.flush()
    finally:
        if out is not sys.stdout:
            out.close()
    if failures:
        print(f"speechgpt-agent units: {failures} of {len(args.audio)} file(s) failed (see their 'error').", file=sys.stderr)
    return 1 if failures else 0


def parse_unit_text(text: str) -> list[int]:
    """Units from ``<sosp><1><2><eosp>``, ``1 2 3`` or ``1,2,3`` (spaces ignored)."""
    import re

    text = text.strip()
    if "<" in text:
        ids = re.findall(r"<\s*(-?\d+)\s*>", text)
    else:
        ids = re.split(r"[\s,]+", text) if text else []
    try:
        return [int(x) for x in ids if x != ""]
    except ValueError as exc:
        raise SpeechGPTError(f"cannot read units from {text[:60]!r}: expected '<sosp><12><7><eosp>' or '12 7'.") from exc


def _add_vocode(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "vocode",
        help="speech units -> wav",
        description="Synthesize speech from units with the unit HiFi-GAN vocoder. Units come as an "
        "argument ('<sosp><12><7><eosp>' or '12 7 9') or as the JSON lines written by `units`.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("units", nargs="?", help="unit string")
    src.add_argument("--input", help="JSON lines from `speechgpt-agent units` (one wav per line)")
    p.add_argument("-o", "--output", required=True, help="output wav (or folder with --input)")
    p.add_argument("--vocoder", default=None, help="vocoder folder, checkpoint or hub id (default: the released mHuBERT LJ vocoder)")
    p.add_argument("--no-duration-prediction", action="store_true", help="one frame per unit instead of predicted durations")
    p.add_argument("--use-durations", action="store_true", help="with --input: use the recorded durations instead of predicting them")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_cmd_vocode)


def _cmd_vocode(args: argparse.Namespace) -> int:
    from .audio import write_wav
    from .vocoder import DEFAULT_VOCODER, UnitVocoder

    vocoder = UnitVocoder.from_pretrained(args.vocoder or DEFAULT_VOCODER, device=args.device)

    def synth(units: list[int], durations: list[int] | None) -> object:
        if durations is None and args.no_duration_prediction:
            durations = [1] * len(units)
        return vocoder.synthesize(units, durations)

    if args.units is not None:
        wav = synth(parse_unit_text(args.units), None)
        path = write_wav(args.output, wav, vocoder.sample_rate)
        print(f"wrote {path} ({len(wav) / vocoder.sample_rate:.2f} s)")  # type: ignore[arg-type]
        return 0
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(args.input, encoding="utf-8") as f:
        for n, line in enumerate(f):
            if not line.strip():
                continue
            record = json.loads(line)
            if "units" not in record:
                continue
            name = Path(record.get("path", f"utt{n}")).stem + ".wav"
            wav = synth(record["units"], record.get("durations") if args.use_durations else None)
            path = write_wav(out_dir / name, wav, vocoder.sample_rate)
            print(f"wrote {path}")
    return 0


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="upstream pickled checkpoints -> safe local formats",
        description="Convert an upstream pickled checkpoint once into safetensors/json, so later "
        "loads need no pickle. Running this command is your consent to unpickle SRC: only "
        "convert files from a source you trust.",
    )
    p.add_argument("kind", choices=["hubert", "kmeans", "vocoder"], help="what SRC is")
    p.add_argument("src", help="hubert: fairseq .pt; kmeans: joblib .bin; vocoder: folder or checkpoint + config.json")
    p.add_argument("out", help="output folder (kmeans: folder or .safetensors file)")
    p.set_defaults(func=_cmd_convert)


def _cmd_convert(args: argparse.Namespace) -> int:
    if args.kind == "hubert":
        from .hubert import convert_fairseq_hubert

        out = convert_fairseq_hubert(args.src, args.out, trust_pickle=True)
    elif args.kind == "kmeans":
        from .kmeans import convert_kmeans

        out = convert_kmeans(args.src, args.out, trust_pickle=True)
    else:
        from .vocoder import convert_vocoder

        out = convert_vocoder(args.src, args.out, trust_pickle=True)
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------- the runtime commands


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(kind: type) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
        return value

    return parse


def _probability(text: str) -> float:
    value = _non_negative(float)(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


MODEL_HELP = ("stage-2 LLM: hub id, local folder, or 'demo' for the small model embedded in the package "
              "(offline, CPU, seconds; it brings its own adapter, speech tokenizer and vocoder) "
              "(default: %(default)s)")


def _engine_arg(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` of ``--engine-arg`` (see :func:`speechgpt_agent.engines.parse_engine_arg`)."""
    from .engines import parse_engine_arg

    try:
        return parse_engine_arg(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _model_set_args(p: argparse.ArgumentParser, *, speech: bool = True) -> None:
    g = p.add_argument_group("model set (hub ids or local folders; --model demo needs none of them)")
    g.add_argument("--model", default="fnlp/SpeechGPT-7B-cm", help=MODEL_HELP)
    g.add_argument("--adapter", default="fnlp/SpeechGPT-7B-com", help="LoRA adapter (default: %(default)s)")
    g.add_argument("--no-adapter", action="store_true", help="load no adapter")
    g.add_argument("--quantization", choices=["nf4", "int8", "none"], default=None,
                   help="LLM weights (default: nf4; none for --model demo)")
    g.add_argument("--device", default=None, help="device of the speech tokenizer and vocoder")
    g.add_argument("--engine", choices=["transformers", "vllm"], default="transformers",
                   help="where generation runs: the embedded transformers engine, or vLLM (continuous "
                        "batching, multi-GPU; pip install vllm) (default: %(default)s)")
    g.add_argument("--engine-arg", action="append", default=[], type=_engine_arg, metavar="KEY=VALUE",
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
    s.add_argument("--temperature", type=_non_negative(float), default=None, help="sampling temperature; 0 = greedy")
    s.add_argument("--top-p", type=_probability, default=None, help="nucleus sampling mass, in (0, 1]")
    s.add_argument("--top-k", type=_non_negative(int), default=None, help="sample among the k likeliest (0: all)")
    s.add_argument("--reference", action="store_true",
                   help="reproduce the original cli_infer.py exactly (for comparing with published "
                        "numbers): no token healing, min_new_tokens not enforced, its ASR prompt")
    s.add_argument("--max-new-tokens", type=_positive_int, default=None,
                   help="most tokens in the answer (default: 2048; 400 for --model demo)")


def _is_demo(args: argparse.Namespace) -> bool:
    from .demo import DEMO_NAME

    return str(args.model) == DEMO_NAME


def _quantization(args: argparse.Namespace) -> str | None:
    """``--quantization`` as ``from_pretrained`` takes it (default nf4; none for the demo)."""
    chosen = args.quantization or ("none" if _is_demo(args) else "nf4")
    return None if chosen == "none" else chosen


def _options(args: argparse.Namespace):
    """The :class:`GenerationOptions` of the command line (flags already validated by argparse)."""
    import dataclasses

    from .model import GenerationOptions

    greedy = args.greedy or args.temperature == 0
    sampling_asked = not greedy and any(v is not None for v in (args.temperature, args.top_p, args.top_k))
    if _is_demo(args):  # as run_demo and benchmarks/demo_quality.py run it
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


def _check_audio_inputs(paths: Sequence[str], flag: str) -> None:
    """Decode every input clip before any model loads: a missing, empty or unreadable file is
    reported in seconds, not after minutes of loading (raises AudioError)."""
    from .audio import load_audio
    from .errors import AudioError

    for path in paths:
        if not Path(path).is_file():
            raise AudioError(f"{flag} {path}: no such file.")
        if Path(path).stat().st_size == 0:
            raise AudioError(f"{flag} {path}: the file is empty.")
        try:
            load_audio(path)
        except AudioError as exc:
            raise AudioError(f"{flag} {path}: {exc}") from None


def _check_output(path: str | None, flag: str = "-o") -> None:
    """An output wav path that can be written (checked before any model loads)."""
    if path and Path(path).is_dir():
        raise SpeechGPTError(f"{flag} {path} is a folder; give the path of a .wav file.")


def _load_runtime(args: argparse.Namespace, *, speech_in: bool = True, speech_out: bool = True,
                  preload: Sequence[str] = ()):
    """The SpeechGPT of the command line. Parts in ``preload`` load before the LLM (they are
    small and may refuse, e.g. a pickled k-means, before minutes of LLM loading); the others
    load when first needed (a text question needs no speech tokenizer)."""
    from .errors import ModelNotFoundError, UnsafeCheckpointError
    from .hub import check_available
    from .pipeline import SpeechGPT

    print(f"loading {args.model} ...", file=sys.stderr)
    demo = _is_demo(args)
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
            quantization=_quantization(args),
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


def _print_turn(runtime, out_wav: str | None, *, speak_text: bool = False, **kwargs):
    """Stream one turn to the terminal; write the spoken answer to ``out_wav``.

    ``speak_text``: an answer without speech of its own is spoken by a TTS turn.
    Returns the :class:`~speechgpt_agent.pipeline.Response`.
    """
    from .audio import write_wav
    from .parse import TextDelta, TranscriptDelta
    from .pipeline import Completed

    section = None
    response = None
    for event in runtime.stream(**kwargs):
        if isinstance(event, TranscriptDelta):
            if section != "transcript":
                print("Transcript: ", end="", flush=True)
                section = "transcript"
            print(event.text, end="", flush=True)
        elif isinstance(event, TextDelta):
            if section != "text":
                print(("\n" if section else "") + "Answer: ", end="", flush=True)
                section = "text"
            print(event.text, end="", flush=True)
        elif isinstance(event, Completed):
            response = event.response
    print()
    assert response is not None
    print(f"[{response.finish_reason}; {response.usage.prompt_tokens} prompt + "
          f"{response.usage.completion_tokens} answer tokens]", file=sys.stderr)
    audio, rate, how = response.audio, response.sample_rate, f"{len(response.units)} units"
    if audio is None and speak_text and response.text.strip() and out_wav:
        spoken = runtime.speak(response.text, options=kwargs.get("options"), seed=kwargs.get("seed"))
        audio, rate, how = spoken.audio, spoken.sample_rate, "the text answer read by SpeechGPT's TTS"
    if audio is not None and out_wav:
        path = write_wav(out_wav, audio, rate)
        print(f"Speech answer: {path} ({len(audio) / rate:.2f} s, {how})")
    elif out_wav and kwargs.get("output", "both") != "text":
        print("Speech answer: none (the answer has no speech units; no wav written)")
    return response


def _add_chat(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "chat",
        help="talk with SpeechGPT (interactive, or one turn with --audio/--text)",
        description="Talk with SpeechGPT. With --audio/--text: one turn. Without: an interactive "
        "session where each line is a question or the path of an audio file; earlier turns are "
        "kept as the conversation's history. A spoken question gets a spoken answer (written to "
        "-o); a text question gets a text answer, also spoken with --speak. "
        "No weights at hand? --model demo runs the small model embedded in the package, offline.",
    )
    p.add_argument("--audio", help="a spoken question (any format/rate soundfile reads)")
    p.add_argument("--text", help="a text question")
    p.add_argument("-o", "--output", default="answer.wav",
                   help="wav of the spoken answer (default: %(default)s; interactive: answer_1.wav, "
                   "answer_2.wav, ...); written when the answer is spoken")
    speech = p.add_mutually_exclusive_group()
    speech.add_argument("--speak", action="store_true",
                        help="speak text answers too (SpeechGPT's TTS reads them) and write them to -o")
    speech.add_argument("--text-only", action="store_true", help="never synthesize speech (loads no vocoder)")
    _model_set_args(p)
    p.set_defaults(func=_cmd_chat)


def _cmd_chat(args: argparse.Namespace) -> int:
    import os

    from .prompt import Turn

    if args.audio is not None:
        _check_audio_inputs([args.audio], "--audio")
    if args.text is not None and not args.text.strip():
        raise SpeechGPTError("--text is empty: give the question's text.")
    _check_output(args.output)
    opts = _options(args)
    one_turn = args.audio is not None or args.text is not None
    preload = []
    if args.audio is not None:
        preload.append("speech_tokenizer")
    if not args.text_only and (args.audio is not None or args.speak):
        preload.append("vocoder")
    runtime = _load_runtime(args, speech_out=not args.text_only, preload=preload if one_turn else ())

    def output_for(spoken_question: bool) -> str:
        # a text question is answered in text: no vocoder work (and none loaded) unless --speak
        return "both" if not args.text_only and (spoken_question or args.speak) else "text"

    if one_turn:
        _print_turn(runtime, args.output, speak_text=args.speak, text=args.text, audio=args.audio,
                    output=output_for(args.audio is not None), options=opts, seed=args.seed)
        return 0
    history: list[Turn] = []
    n = 0
    stem, ext = os.path.splitext(args.output)
    print("Talk with SpeechGPT (a question, or the path of an audio file; 'quit' to end).")
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            return 0
        if line in {"quit", "exit"}:
            return 0
        if not line:
            continue
        is_audio = os.path.isfile(line)
        n += 1
        try:
            response = _print_turn(
                runtime, f"{stem}_{n}{ext or '.wav'}", speak_text=args.speak,
                text=None if is_audio else line, audio=line if is_audio else None,
                output=output_for(is_audio), options=opts, seed=args.seed, history=history)
        except SpeechGPTError as exc:  # keep the session alive
            print(f"error: {exc}", file=sys.stderr)
            continue
        user = response.transcript if is_audio else line
        if user.strip() and response.text.strip():
            history.append(Turn(user=user, assistant=response.text))


def _add_transcribe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "transcribe", help="speech -> text with SpeechGPT's own ASR",
        description="Transcribe audio files with SpeechGPT's own ASR (its speech-to-text "
        "instruction); prints 'path<TAB>transcript' per file. Loads no vocoder. "
        "--model demo uses the small model embedded in the package (offline).")
    p.add_argument("audio", nargs="+", help="audio files (wav/flac/ogg/...; any rate, any channels)")
    p.add_argument("--instruction", default=None,
                   help="the ASR instruction before 'This is input:' (default: SpeechInstruct's "
                        "'Can you transcribe the speech into a written format?')")
    _model_set_args(p)
    p.set_defaults(func=_cmd_transcribe)


def _cmd_transcribe(args: argparse.Namespace) -> int:
    _check_audio_inputs(args.audio, "audio")
    opts = _options(args)
    runtime = _load_runtime(args, speech_out=False, preload=["speech_tokenizer"])
    for path in args.audio:
        print(f"{path}\t{runtime.transcribe(path, options=opts, seed=args.seed, instruction=args.instruction)}")
    return 0


def _add_speak(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "speak", help="text -> speech with SpeechGPT's own TTS",
        description="Speak a sentence with SpeechGPT's own TTS (its text-to-speech instruction: "
        "the LLM writes speech units, the unit vocoder turns them into a 16 kHz wav). Loads no "
        "speech tokenizer. --model demo uses the small model embedded in the package (offline).")
    p.add_argument("text", help="the sentence to speak")
    p.add_argument("-o", "--output", default="speech.wav", help="output wav (default: %(default)s)")
    p.add_argument("--instruction", default=None,
                   help="the TTS instruction before 'This is input:' (default: SpeechInstruct's "
                        "'Try to speak out this sentence, please.')")
    _model_set_args(p)
    p.set_defaults(func=_cmd_speak)


def _cmd_speak(args: argparse.Namespace) -> int:
    from .audio import write_wav

    if not args.text.strip():
        raise SpeechGPTError("the text to speak is empty.")
    _check_output(args.output)
    opts = _options(args)
    runtime = _load_runtime(args, speech_in=False, preload=["vocoder"])
    response = runtime.speak(args.text, options=opts, seed=args.seed, instruction=args.instruction)
    if response.audio is None:
        print("the model gave no speech units (finish reason: " + response.finish_reason + ")", file=sys.stderr)
        return 1
    print(f"wrote {write_wav(args.output, response.audio, response.sample_rate)} ({response.duration:.2f} s)")
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info", help="load the LLM and show what is loaded: dtype, quantization, memory",
        description="Load the LLM (and its adapter) as chat would and print, as JSON, what was "
        "loaded: the folders, dtype, quantization, device map, parameter count and memory "
        "footprint. --model demo describes the small model embedded in the package (offline).")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="fnlp/SpeechGPT-7B-cm", help=MODEL_HELP)
    g.add_argument("--adapter", default="fnlp/SpeechGPT-7B-com", help="LoRA adapter (default: %(default)s)")
    g.add_argument("--no-adapter", action="store_true", help="load no adapter")
    g.add_argument("--quantization", choices=["nf4", "int8", "none"], default=None,
                   help="default: nf4; none for --model demo")
    p.set_defaults(func=_cmd_info)


def _cmd_info(args: argparse.Namespace) -> int:
    from .errors import ModelNotFoundError
    from .model import DEFAULT_ADAPTER, SpeechGPTModel
    from .pipeline import quiet_bitsandbytes_cpu_notice

    quiet_bitsandbytes_cpu_notice()

    model, adapter = args.model, None if args.no_adapter else args.adapter
    quantization = _quantization(args)
    if _is_demo(args):
        from .demo import demo_parts

        parts = demo_parts()
        model = parts.model
        adapter = parts.adapter if adapter == DEFAULT_ADAPTER else adapter
    try:
        lm = SpeechGPTModel.from_pretrained(model, adapter, quantization=quantization)
    except ModelNotFoundError as exc:
        if _is_demo(args):
            raise
        raise ModelNotFoundError(f"{exc} (No weights at hand? `--model demo` describes the small model "
                                 "embedded in the package.)") from None
    print(json.dumps(lm.describe(), indent=2, default=str))
    return 0


def _add_selfcheck(sub: argparse._SubParsersAction) -> None:
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

    from .audio import write_wav
    from .model import GenerationOptions
    from .pipeline import SpeechGPT, time_turn
    from .testing.model_set import make_tiny_model_set
    from .testing.steer import ForceAnswer, answer_ids

    torch.set_num_threads(1)  # bitsandbytes' CPU NF4 kernels scale badly with threads on small models
    folder = args.dir or os.path.join(os.path.expanduser("~"), ".cache", "speechgpt-agent", "selfcheck")
    audio = args.audio or str(Path(__file__).parent / "assets" / "question.wav")
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

def _add_demo(sub: argparse._SubParsersAction) -> None:
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

    from .demo import DEMO_TOOL_QUESTION
    from .demo_run import run_demo

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


def _add_training(sub: argparse._SubParsersAction) -> None:
    from .training.cli import add_data_parser, add_train_parser

    add_train_parser(sub)
    add_data_parser(sub)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    from .server.cli import add_serve_parser

    add_serve_parser(sub)


_COMMANDS: Sequence[Callable[[argparse._SubParsersAction], None]] = (
    _add_demo, _add_chat, _add_transcribe, _add_speak, _add_units, _add_vocode, _add_convert, _add_info, _add_selfcheck,
    _add_training, _add_serve,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speechgpt-agent",
        description="SpeechGPT as a speech plugin for AI agents: speech units, vocoder, chat, training.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SpeechGPTError as exc:
        print(f"speechgpt-agent {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # anything else: one line, never a traceback
        import os

        if os.environ.get("SPEECHGPT_AGENT_TRACEBACK"):
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"speechgpt-agent {args.command}: error: {type(exc).__name__}: {first} "
              "(SPEECHGPT_AGENT_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
