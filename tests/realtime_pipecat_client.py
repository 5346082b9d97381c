"""A pipecat pipeline whose OpenAI realtime service talks to our server (run by tests/test_realtime.py).

``source (a wav, as 20 ms InputAudioRawFrames in real time) -> OpenAIRealtimeLLMService -> sink``;
the server's VAD ends the turn and answers. The sink writes what arrived as JSON: answer audio
frames, their length, the user's transcript (pushed upstream by the service) and the bot's.

Usage: python realtime_pipecat_client.py --url ws://127.0.0.1:8000/v1/realtime --key KEY --wav q.wav --out r.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import numpy as np
import soundfile as sf
from pipecat.frames.frames import (
    EndFrame,
    InputAudioRawFrame,
    LLMFullResponseEndFrame,
    StartFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import PipelineRunner
from pipecat.pipeline.task import PipelineParams, PipelineTask
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService

RATE = 24000


class WavSource(FrameProcessor):
    """Pushes the wav as 20 ms audio frames once the pipeline starts; records upstream transcripts."""

    def __init__(self, samples: np.ndarray) -> None:
        super().__init__()
        self.samples = samples
        self.heard: list[str] = []

    async def process_frame(self, frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TranscriptionFrame):
            self.heard.append(frame.text)
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self.create_task(self._feed())

    async def _feed(self) -> None:
        await asyncio.sleep(1.0)  # let the service connect and configure its session
        step = RATE // 50
        pcm = np.clip(np.round(self.samples * 32767), -32768, 32767).astype("<i2")
        for i in range(0, len(pcm), step):
            await self.push_frame(InputAudioRawFrame(audio=pcm[i:i + step].tobytes(), sample_rate=RATE,
                                                     num_channels=1))
            await asyncio.sleep(0.02)


class Sink(FrameProcessor):
    def __init__(self) -> None:
        super().__init__()
        self.audio: list[bytes] = []
        self.rates: set[int] = set()
        self.text: list[str] = []
        self.done = asyncio.Event()

    async def process_frame(self, frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            self.audio.append(frame.audio)
            self.rates.add(frame.sample_rate)
        elif isinstance(frame, TTSTextFrame):  # the service pushes each piece as an LLMTextFrame too
            self.text.append(frame.text)
        elif isinstance(frame, LLMFullResponseEndFrame) and self.audio:
            self.done.set()
        await self.push_frame(frame, direction)


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--wav", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    samples, rate = sf.read(args.wav, dtype="float32")
    assert rate == RATE
    source, sink = WavSource(samples), Sink()
    llm = OpenAIRealtimeLLMService(api_key=args.key, base_url=args.url,
                                   settings=OpenAIRealtimeLLMService.Settings(model="demo"))
    task = PipelineTask(Pipeline([source, llm, sink]),
                        params=PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=RATE))
    runner = PipelineRunner(handle_sigint=False)
    run = asyncio.create_task(runner.run(task))
    try:
        await asyncio.wait_for(sink.done.wait(), timeout=120)
        await asyncio.sleep(0.5)  # the last text frames
    finally:
        await task.queue_frame(EndFrame())
        await asyncio.wait_for(run, timeout=30)
    pcm = np.frombuffer(b"".join(sink.audio), dtype="<i2")
    text = "".join(sink.text)
    result = {"audio_frames": len(sink.audio), "audio_seconds": pcm.size / RATE,
              "sample_rate": min(sink.rates) if sink.rates else None,
              "peak": int(np.abs(pcm).max()) if pcm.size else 0,
              "user_transcript": " ".join(source.heard).strip(), "bot_transcript": text.strip()}
    Path(args.out).write_text(json.dumps(result))

if __name__ == "__main__":
    asyncio.run(main())
