"""``GET /v1/realtime`` latency: end of the user's speech -> first answer audio byte, 1 and 8 sessions.

One server (``speechgpt-agent serve --model demo``, a subprocess on 127.0.0.1). Each session
streams the demo question (24 kHz pcm16, 0.6 s of silence before, 1.5 s after) in 100 ms
appends at real time with server VAD on (threshold 0.5, silence 500 ms, padding 300 ms), and
greedy decoding. Per turn:

* ``speech_end -> first audio``: from the moment the append holding the last speech sample
  (the clip's energy edge) was sent to the first ``response.output_audio.delta``. It includes
  the VAD's ``silence_duration_ms`` (the protocol waits that long before it decides the turn
  ended) and the append pacing (up to 100 ms);
* ``stopped -> first audio``: from ``input_audio_buffer.speech_stopped`` to that delta: the
  server's own answer latency (commit, prompt, generation, vocoder, resampling).

N sessions start together (the engine serves their turns concurrently). Clients are raw
``websockets`` readers, so the figures are the server's.

    .venv/bin/python benchmarks/realtime.py            # table + benchmarks/results/realtime.json
    .venv/bin/python benchmarks/realtime.py --turns 10 --sessions 1,4,8
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
import soxr
import torch
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, print_table, write_json

from speechgpt_agent.demo import DEMO_QUESTION

RESULTS = Path(__file__).resolve().parent / "results" / "realtime.json"
RATE = 24000
PIECE = RATE // 10
VAD = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def _clip() -> tuple[bytes, int]:
    """The framed question as pcm16 bytes, and the byte offset just past its last speech sample."""
    x, sr = sf.read(DEMO_QUESTION, dtype="float32")
    x = soxr.resample(x, sr, RATE).astype(np.float32)
    lead = int(0.6 * RATE)
    audio = np.concatenate([np.zeros(lead, np.float32), x, np.zeros(int(1.5 * RATE), np.float32)])
    hop = RATE // 100
    rms = np.sqrt((audio[: len(audio) // hop * hop].reshape(-1, hop) ** 2).mean(axis=1))
    end = (int(np.flatnonzero(rms > 0.05 * rms.max())[-1]) + 1) * hop
    pcm = np.clip(np.round(audio * 32767), -32768, 32767).astype("<i2").tobytes()
    return pcm, end * 2


async def _turn(url: str, key: str, pcm: bytes, speech_end: int) -> dict[str, float]:
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {key}"},
                                  max_size=None) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "temperature": 0, "audio": {"input": {"turn_detection": VAD}}}}))
        marks: dict[str, float] = {}

        async def feed() -> None:
            step = PIECE * 2
            t0 = time.perf_counter()
            for k, i in enumerate(range(0, len(pcm), step)):
                await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                          "audio": base64.b64encode(pcm[i:i + step]).decode()}))
                if i <= speech_end - 1 < i + step:
                    marks["speech_end"] = time.perf_counter()
                await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.1 - time.perf_counter()))

        feeder = asyncio.create_task(feed())
        while True:
            event = json.loads(await ws.recv())
            kind = event["type"]
            if kind == "input_audio_buffer.speech_stopped":
                marks.setdefault("stopped", time.perf_counter())
            elif kind == "response.output_audio.delta":
                marks.setdefault("first_audio", time.perf_counter())
            elif kind == "response.done":
                marks["done"] = time.perf_counter()
                break
            elif kind == "error":
                raise RuntimeError(event["error"]["message"])
        feeder.cancel()
    return {"speech_end_to_audio_s": marks["first_audio"] - marks["speech_end"],
            "stopped_to_audio_s": marks["first_audio"] - marks["stopped"]}


async def _round(url: str, key: str, pcm: bytes, speech_end: int, n: int) -> list[dict[str, float]]:
    """``n`` sessions, one turn each, all at once."""
    return list(await asyncio.gather(*(_turn(url, key, pcm, speech_end) for _ in range(n))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sessions", default="1,8", help="concurrent sessions per level (default: %(default)s)")
    p.add_argument("--turns", type=int, default=8, help="turns measured per level (default: %(default)s)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="the server's torch threads")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()
    levels = [int(n) for n in args.sessions.split(",")]
    key, port = "sk-bench", _free_port()
    script = Path(sys.executable).with_name("speechgpt-agent")
    cmd = [str(script), "serve", "--model", "demo", "--port", str(port), "--api-key", key,
           "--threads", str(args.threads), "--log-level", "warning"]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.5)
        url = f"ws://127.0.0.1:{port}/v1/realtime?model=demo"
        pcm, speech_end = _clip()
        asyncio.run(_turn(url, key, pcm, speech_end))  # warm-up
        rows = []
        for n in levels:
            samples: list[dict[str, float]] = []
            while len(samples) < args.turns:
                samples.extend(asyncio.run(_round(url, key, pcm, speech_end, n)))
            a = [s["speech_end_to_audio_s"] for s in samples]
            b = [s["stopped_to_audio_s"] for s in samples]
            rows.append({"sessions": n, "turns": len(samples),
                         "speech_end_to_audio_median_s": statistics.median(a), "speech_end_to_audio_p95_s": _p95(a),
                         "stopped_to_audio_median_s": statistics.median(b), "stopped_to_audio_p95_s": _p95(b)})
    finally:
        if server.poll() is None:
            os.kill(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    print_table(rows, ["sessions", "turns", "speech_end_to_audio_median_s", "speech_end_to_audio_p95_s",
                       "stopped_to_audio_median_s", "stopped_to_audio_p95_s"])
    path = write_json(args.out, {"benchmark": "realtime", "environment": environment(),
                                 "vad": VAD, "server_threads": args.threads, "results": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
