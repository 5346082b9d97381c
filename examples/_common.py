"""Command-line options shared by the examples: where the SpeechGPT model set lives.

Every part defaults to its hub id; pass local folders to run offline, e.g.::

    --model /models/SpeechGPT-7B-cm --adapter /models/SpeechGPT-7B-com \
    --speech-tokenizer /models/mhubert-base --vocoder /models/unit_hifigan
"""

from __future__ import annotations

import argparse
from pathlib import Path

from langchain_core.messages import HumanMessage

from speechgpt_agent.integrations.langchain import SpeechGPTChat, message_audio


def model_set_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the model-set options (and --max-tokens, --seed)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default="fnlp/SpeechGPT-7B-cm", help="LLM folder or hub id")
    p.add_argument("--adapter", default="fnlp/SpeechGPT-7B-com", help="LoRA adapter folder or hub id ('' for none)")
    p.add_argument("--speech-tokenizer", default="voidful/mhubert-base", help="mHuBERT folder or hub id")
    p.add_argument("--vocoder", default=None, help="unit HiFi-GAN folder or hub id (default: the released one)")
    p.add_argument("--quantization", default="nf4", choices=["nf4", "int8", "none"])
    p.add_argument("--max-tokens", type=int, default=512, help="most tokens per answer")
    p.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    return p


def chat_from_args(args: argparse.Namespace, **overrides) -> SpeechGPTChat:
    """A :class:`SpeechGPTChat` for the model set named on the command line."""
    return SpeechGPTChat(
        model=args.model,
        adapter=args.adapter or None,
        speech_tokenizer=args.speech_tokenizer,
        vocoder=args.vocoder,
        quantization=None if args.quantization == "none" else args.quantization,
        max_tokens=args.max_tokens,
        seed=args.seed,
        **overrides,
    )


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
    parser.add_argument("--audio", default=None, help="the question as a recording")
    parser.add_argument("--out", default="answer.wav", help="where to write the spoken answer")


def question(text: str | None, audio: str | None) -> HumanMessage:
    """A human message with the question's text and/or recording (as a file URL audio block)."""
    blocks: list[dict] = []
    if text:
        blocks.append({"type": "text", "text": text})
    if audio:
        blocks.append({"type": "audio", "url": Path(audio).resolve().as_uri(), "mime_type": "audio/wav"})
    if not blocks:
        raise SystemExit("give --text or --audio")
    return HumanMessage(blocks)
