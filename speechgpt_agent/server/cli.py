"""The ``serve`` subcommand: ``speechgpt-agent serve --model demo --port 8000``."""

from __future__ import annotations

import argparse
import threading
import time
import urllib.request
import webbrowser

__all__ = ["add_serve_parser", "cmd_serve", "open_when_up"]


def _engine_arg(text: str) -> tuple[str, object]:
    from ..engines import parse_engine_arg

    try:
        return parse_engine_arg(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve SpeechGPT over OpenAI's HTTP API (chat with audio, transcriptions, speech)",
        description="Serve SpeechGPT behind OpenAI's protocols: /v1/chat/completions (input_audio "
        "parts, modalities text+audio, streamed pcm16 audio, tools), /v1/audio/transcriptions, "
        "/v1/audio/speech, /v1/models, /health. Point any OpenAI client's base_url at "
        "http://HOST:PORT/v1.",
    )
    p.add_argument("--model", default="demo", help="'demo' (embedded, CPU) or a SpeechGPT folder / hub id (default: %(default)s)")
    p.add_argument("--adapter", default=None, help="LoRA adapter (default: the model set's)")
    p.add_argument("--speech-tokenizer", default=None, help="speech tokenizer folder or hub id (default: the model set's)")
    p.add_argument("--vocoder", default=None, help="vocoder folder or hub id (default: the model set's)")
    p.add_argument("--quantization", choices=["auto", "none", "nf4", "int8"], default="auto",
                   help="LLM weights (default: none for the demo, nf4 otherwise)")
    p.add_argument("--engine", choices=["transformers", "vllm"], default="transformers",
                   help="where generation runs: the embedded engine, or vLLM (continuous batching, "
                        "multi-GPU) (default: %(default)s)")
    p.add_argument("--engine-arg", action="append", default=[], type=_engine_arg, metavar="KEY=VALUE",
                   help="an engine argument, repeatable, e.g. --engine-arg tensor_parallel_size=2")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="LLM weights' dtype (default: bfloat16 unquantized; vLLM: the model's)")
    p.add_argument("--device", default=None, help="device of the speech tokenizer and vocoder")
    p.add_argument("--served-name", default=None, help="model id clients send (default: --model)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument("--open", action="store_true",
                   help="open the voice page (http://HOST:PORT/) in the default browser once it answers")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: $SPEECHGPT_API_KEY, else no key)")
    p.add_argument("--asr", choices=["speechgpt", "whisper"], default="speechgpt",
                   help="engine of /v1/audio/transcriptions (default: %(default)s)")
    p.add_argument("--whisper-model", default="small", help="faster-whisper size, hub id or folder (--asr whisper)")
    p.add_argument("--max-request-mb", type=float, default=25.0, help="largest request body (default: %(default)s MiB)")
    p.add_argument("--max-audio-seconds", type=float, default=60.0, help="longest input audio (default: %(default)s s)")
    p.add_argument("--max-messages", type=int, default=256, help="most messages per request (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import torch

    from .app import create_app, load_runtime, run
    from .config import ServerConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    config = ServerConfig(
        model_name=args.served_name or args.model,
        api_key=ServerConfig.key_from_env(args.api_key),
        asr=args.asr,
        whisper_model=args.whisper_model,
        max_request_bytes=int(args.max_request_mb * 1024 * 1024),
        max_audio_seconds=args.max_audio_seconds,
        max_messages=args.max_messages,
    )
    runtime = load_runtime(args.model, quantization=None if args.quantization == "none" else args.quantization,
                           engine=args.engine, adapter=args.adapter, speech_tokenizer=args.speech_tokenizer,
                           vocoder=args.vocoder, device=args.device, engine_args=dict(args.engine_arg),
                           dtype=args.dtype)
    whisper = None
    if args.asr == "whisper":
        from faster_whisper import WhisperModel

        whisper = WhisperModel(args.whisper_model, device="auto", compute_type="default")
    if args.open:
        open_when_up(args.host, args.port)
    run(create_app(runtime, config, whisper=whisper, engine_name=args.engine or "transformers"),
        host=args.host, port=args.port, log_level=args.log_level)
    return 0


def open_when_up(host: str, port: int, *, timeout_s: float = 120.0) -> threading.Thread:
    """Open ``http://HOST:PORT/`` (the voice page) in the default browser (:mod:`webbrowser`)
    as soon as ``/health`` answers, from a daemon thread (the server starts after this)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    url = f"http://{f'[{shown}]' if ':' in shown else shown}:{port}/"

    def wait_then_open() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url + "health", timeout=2):
                    break
            except OSError:
                time.sleep(0.3)
        if not webbrowser.open(url):
            print(f"speechgpt-agent serve: no browser to open; the voice page is at {url}", flush=True)

    thread = threading.Thread(target=wait_then_open, name="open-voice-page", daemon=True)
    thread.start()
    return thread
