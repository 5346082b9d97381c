"""Command-line options shared by the examples: which SpeechGPT model set they run.

With no model option, an example runs the full model set when it is on this machine (a
local folder or the local Hugging Face cache) and otherwise the small ``demo`` model
embedded in the package, offline, saying so. ``--model fnlp/SpeechGPT-7B-cm`` asks for the
full set (downloaded on first use); local folders run it offline, e.g.::

    --model /models/SpeechGPT-7B-cm --adapter /models/SpeechGPT-7B-com \
    --speech-tokenizer /models/mhubert-base --vocoder /models/unit_hifigan --trust-pickle

Errors (a missing part, a missing file) end the example with one line, not a traceback.
"""

from __future__ import annotations

import argparse
import base64
import mimetypes
import sys
from collections.abc import Callable
from pathlib import Path

from langchain_core.messages import HumanMessage

from speechgpt_agent.demo import DEMO_NAME, DEMO_QUESTION
from speechgpt_agent.errors import AudioError, SpeechGPTError
from speechgpt_agent.integrations.langchain import SpeechGPTChat, message_audio

FULL_MODEL = "fnlp/SpeechGPT-7B-cm"
FULL_ADAPTER = "fnlp/SpeechGPT-7B-com"


def model_set_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the model-set options (and --max-tokens, --seed)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default=None,
                   help=f"LLM folder, hub id, or 'demo' (default: {FULL_MODEL} when it is on this machine, "
                   "else the small demo model embedded in the package)")
    p.add_argument("--adapter", default=FULL_ADAPTER, help="LoRA adapter folder or hub id ('' for none)")
    p.add_argument("--speech-tokenizer", default="voidful/mhubert-base", help="mHuBERT folder or hub id")
    p.add_argument("--vocoder", default=None, help="unit HiFi-GAN folder or hub id (default: the released one)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow the upstream pickled k-means of the mHuBERT speech tokenizer")
    p.add_argument("--quantization", default="nf4", choices=["nf4", "int8", "none"],
                   help="LLM weights (default: %(default)s; the demo model runs unquantized)")
    p.add_argument("--max-tokens", type=int, default=None, help="most tokens per answer (default: 512; demo 400)")
    p.add_argument("--seed", type=int, default=0, help="makes sampling reproducible (default: %(default)s)")
    return p


def resolve_model(args: argparse.Namespace) -> str:
    """``args.model``, or when none was given the full LLM if it is local, else the demo."""
    if args.model is None:
        from speechgpt_agent.hub import is_local

        full = is_local(FULL_MODEL) and (not args.adapter or is_local(args.adapter))
        args.model = FULL_MODEL if full else DEMO_NAME
        if not full:
            print(f"note: {FULL_MODEL} is not on this machine; running the small demo model embedded in "
                  "the package (offline). Pass --model for another model set.", file=sys.stderr)
    return args.model


def chat_from_args(args: argparse.Namespace, **overrides) -> SpeechGPTChat:
    """A :class:`SpeechGPTChat` for the model set named on the command line."""
    model = resolve_model(args)
    settings: dict = {
        "model": model,
        "adapter": args.adapter or None,
        "speech_tokenizer": args.speech_tokenizer,
        "vocoder": args.vocoder,
        "quantization": None if args.quantization == "none" else args.quantization,
        "trust_pickle": args.trust_pickle,
        "max_tokens": args.max_tokens or 512,
        "seed": args.seed,
    }
    if model == DEMO_NAME:  # greedy and unquantized, as the demo model was measured
        settings.update(quantization=None, temperature=0.0, min_new_tokens=0, max_tokens=args.max_tokens or 400)
    settings.update(overrides)
    return SpeechGPTChat(**settings)


def save_spoken_answer(message, path: str | None) -> None:
    """Write the audio of ``message`` (if any) to ``path`` as a wav file and say so."""
    audio = message_audio(message)
    if audio is None or path is None:
        return
    from speechgpt_agent.audio import write_wav

    samples, rate = audio
    print(f"spoken answer: {write_wav(Path(path), samples, rate)} ({samples.size / rate:.1f} s)")


def add_question_args(parser: argparse.ArgumentParser) -> None:
    """``--text`` / ``--audio`` (the question) and ``--out`` (the spoken answer's wav)."""
    parser.add_argument("--text", default=None, help="the question as text")
    parser.add_argument("--audio", default=None,
                        help="the question as a recording (default without --text: the demo's bundled question)")
    parser.add_argument("--out", default="answer.wav", help="where to write the spoken answer")


def check_audio(path: str, flag: str = "--audio") -> str:
    """Decode ``path`` now (before any model loads); raises AudioError naming the flag."""
    from speechgpt_agent.audio import load_audio

    if not Path(path).is_file():
        raise AudioError(f"{flag} {path}: no such file.")
    try:
        load_audio(path)
    except AudioError as exc:
        raise AudioError(f"{flag} {path}: {exc}") from None
    return path


def on_demo(args: argparse.Namespace) -> bool:
    """Whether the example runs the embedded demo model (after :func:`resolve_model`)."""
    return resolve_model(args) == DEMO_NAME


def demo_tools(args: argparse.Namespace) -> list:
    """The demo model's own tool (the calculator it was trained to call) when it runs, else none."""
    if not on_demo(args):
        return []
    from speechgpt_agent.integrations.langchain import calculator

    return [calculator]


def question(text: str | None, audio: str | None, *, default_text: str | None = None) -> HumanMessage:
    """A human message with the question's text and/or recording (a base64 audio block).

    With neither: ``default_text``, or else the demo's bundled spoken question ("what is
    seven plus five").
    """
    if not text and not audio:
        text, audio = (default_text, None) if default_text else (None, str(DEMO_QUESTION))
    blocks: list[dict] = []
    if text:
        blocks.append({"type": "text", "text": text})
    if audio:
        check_audio(audio)
        mime = mimetypes.guess_type(audio)[0] or "audio/wav"
        data = base64.b64encode(Path(audio).read_bytes()).decode("ascii")
        blocks.append({"type": "audio", "base64": data, "mime_type": mime})
    return HumanMessage(blocks)


def run(main: Callable[[], None]) -> None:
    """Run an example's ``main``: a SpeechGPT error ends it with one line and exit code 2."""
    try:
        main()
    except SpeechGPTError as exc:
        sys.exit(f"{Path(sys.argv[0]).name}: error: {exc}")
    except KeyboardInterrupt:
        sys.exit(130)
