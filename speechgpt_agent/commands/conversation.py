"""The conversation subcommands: ``chat`` (one turn, or an interactive session with history),
``transcribe`` (SpeechGPT's own ASR) and ``speak`` (SpeechGPT's own TTS); each loads the
runtime through :func:`.options.load_runtime` with only the speech parts it needs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import SpeechGPTError
from .options import (
    add_model_set_args,
    check_audio_inputs,
    check_output,
    generation_options,
    load_runtime,
)


def _print_turn(runtime, out_wav: str | None, *, speak_text: bool = False, **kwargs):
    """Stream one turn to the terminal; write the spoken answer to ``out_wav``.

    ``speak_text``: an answer without speech of its own is spoken by a TTS turn.
    Returns the :class:`~speechgpt_agent.pipeline.Response`.
    """
    from ..audio import write_wav
    from ..parse import TextDelta, TranscriptDelta
    from ..pipeline import Completed

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


_AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".mp4", ".m4a", ".aiff")


def _names_audio(text: str) -> bool:
    """``text`` reads as the path of an audio file (one word with an audio extension)."""
    return not any(c.isspace() for c in text) and text.lower().endswith(_AUDIO_SUFFIXES)


def typed_turn(line: str) -> dict[str, Any]:
    """The ``SpeechGPT.stream`` arguments of a typed line, as the original ``cli_infer.py`` read it.

    * the path of an audio file: a spoken question (``audio``);
    * ``"{instruction} This is input: {path of an audio file}"``: SpeechInstruct's ASR
      (``task="asr"``: the prompt holds the clip's units after the marker; a path with an
      audio extension that does not exist is still taken as one, to be reported missing);
    * ``"{instruction} This is input: {text}"``: SpeechInstruct's TTS (``task="tts"``);
    * anything else: a text question.

    The original swapped a typed path after ``is input:`` for its units and sent the rest
    verbatim; these tasks give the same prompts, and tell the parser what the answer is.
    """
    import os

    from ..prompt import INPUT_MARKER

    line = line.strip()
    if os.path.isfile(line):
        return {"text": None, "audio": line, "task": "chat"}
    if INPUT_MARKER in line:
        instruction, payload = (part.strip() for part in line.rsplit(INPUT_MARKER, 1))
        if instruction and payload:
            if os.path.isfile(payload) or _names_audio(payload):  # a missing clip is reported, not spoken
                return {"text": None, "audio": payload, "task": "asr", "instruction": instruction}
            return {"text": payload, "audio": None, "task": "tts", "instruction": instruction}
    return {"text": line, "audio": None, "task": "chat"}


def _output_for(turn: dict[str, Any], args: argparse.Namespace) -> str:
    """Spoken questions and TTS requests are answered in speech; text questions in text (no
    vocoder work, and none loaded) unless ``--speak``; never with ``--text-only``."""
    if args.text_only or turn["task"] == "asr":
        return "text"
    return "both" if (turn["audio"] is not None or turn["task"] == "tts" or args.speak) else "text"


def add_chat(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "chat",
        help="talk with SpeechGPT (interactive, or one turn with --audio/--text)",
        description="Talk with SpeechGPT. With --audio/--text: one turn. Without: an interactive "
        "session where each line is a question or the path of an audio file; earlier turns are "
        "kept as the conversation's history. A spoken question gets a spoken answer (written to "
        "-o); a text question gets a text answer, also spoken with --speak. As in the original "
        "CLI, '<instruction> This is input: <audio file>' asks for its transcript and "
        "'<instruction> This is input: <text>' for its speech (written to -o). "
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
    add_model_set_args(p)
    p.set_defaults(func=_cmd_chat)


def _cmd_chat(args: argparse.Namespace) -> int:
    import os

    from ..prompt import Turn

    if args.text is not None and not args.text.strip():
        raise SpeechGPTError("--text is empty: give the question's text.")
    one_turn = args.audio is not None or args.text is not None
    turn = None
    if one_turn:
        turn = (typed_turn(args.text) if args.text is not None and args.audio is None
                else {"text": args.text, "audio": args.audio, "task": "chat"})
        if turn["audio"] is not None:
            check_audio_inputs([turn["audio"]], "--audio" if args.audio is not None else "--text")
    check_output(args.output)
    opts = generation_options(args)
    preload = []
    if turn is not None and turn["audio"] is not None:
        preload.append("speech_tokenizer")
    if turn is not None and _output_for(turn, args) != "text":
        preload.append("vocoder")
    runtime = load_runtime(args, speech_out=not args.text_only, preload=preload)

    if turn is not None:
        _print_turn(runtime, args.output, speak_text=args.speak, output=_output_for(turn, args),
                    options=opts, seed=args.seed, **turn)
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
        turn = typed_turn(line)
        n += 1
        try:
            response = _print_turn(
                runtime, f"{stem}_{n}{ext or '.wav'}", speak_text=args.speak and turn["task"] == "chat",
                output=_output_for(turn, args), options=opts, seed=args.seed,
                history=history if turn["task"] == "chat" else (), **turn)
        except SpeechGPTError as exc:  # keep the session alive
            print(f"error: {exc}", file=sys.stderr)
            continue
        if turn["task"] != "chat":
            continue  # an ASR / TTS request is no part of the conversation
        user = response.transcript if turn["audio"] is not None else line
        if user.strip() and response.text.strip():
            history.append(Turn(user=user, assistant=response.text))


def add_transcribe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "transcribe", help="speech -> text with SpeechGPT's own ASR",
        description="Transcribe audio files with SpeechGPT's own ASR (its speech-to-text "
        "instruction); prints 'path<TAB>transcript' per file. Loads no vocoder. "
        "--model demo uses the small model embedded in the package (offline).")
    p.add_argument("audio", nargs="+", help="audio files (wav/flac/ogg/...; any rate, any channels)")
    p.add_argument("--instruction", default=None,
                   help="the ASR instruction before 'This is input:' (default: SpeechInstruct's "
                        "'Can you transcribe the speech into a written format?')")
    add_model_set_args(p)
    p.set_defaults(func=_cmd_transcribe)


def _cmd_transcribe(args: argparse.Namespace) -> int:
    check_audio_inputs(args.audio, "audio")
    opts = generation_options(args)
    runtime = load_runtime(args, speech_out=False, preload=["speech_tokenizer"])
    for path in args.audio:
        print(f"{path}\t{runtime.transcribe(path, options=opts, seed=args.seed, instruction=args.instruction)}")
    return 0


def add_speak(sub: argparse._SubParsersAction) -> None:
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
    add_model_set_args(p)
    p.set_defaults(func=_cmd_speak)


def _cmd_speak(args: argparse.Namespace) -> int:
    from ..audio import write_wav

    if not args.text.strip():
        raise SpeechGPTError("the text to speak is empty.")
    check_output(args.output)
    opts = generation_options(args)
    runtime = load_runtime(args, speech_in=False, preload=["vocoder"])
    response = runtime.speak(args.text, options=opts, seed=args.seed, instruction=args.instruction)
    if response.audio is None:
        print("the model gave no speech units (finish reason: " + response.finish_reason + ")", file=sys.stderr)
        return 1
    print(f"wrote {write_wav(args.output, response.audio, response.sample_rate)} ({response.duration:.2f} s)")
    return 0

