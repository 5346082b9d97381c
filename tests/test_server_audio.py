"""The server decodes input audio with the loaded speech tokenizer's resampler, so a request's
units are those the Python API would give (torchaudio's algorithm for the released tokenizer)."""

from __future__ import annotations

import base64
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("fastapi")

from speechgpt_agent.audio import load_audio
from speechgpt_agent.server.audio_codec import decode_input_audio, speech_resampler


def _pcm16_24k() -> tuple[np.ndarray, str]:
    rng = np.random.default_rng(0)
    t = np.arange(24_000) / 24_000
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
    pcm = np.round(np.clip(x, -1, 1) * 32767).astype("<i2")
    return pcm, base64.b64encode(pcm.tobytes()).decode()


def test_the_tokenizer_resampler_is_used():
    pcm, b64 = _pcm16_24k()
    via_server = decode_input_audio(b64, "pcm16", max_seconds=10, param="x", resampler="torchaudio")
    direct = load_audio(pcm, 24_000, resampler="torchaudio")
    soxr = decode_input_audio(b64, "pcm16", max_seconds=10, param="x")
    assert np.array_equal(via_server, direct)
    assert not np.allclose(via_server, soxr, atol=1e-4)  # the two algorithms differ on purpose


def test_speech_resampler_reads_the_runtime():
    assert speech_resampler(SimpleNamespace(speech_tokenizer=SimpleNamespace(resampler="torchaudio"))) == "torchaudio"
    assert speech_resampler(SimpleNamespace(speech_tokenizer=None)) == "soxr"


def test_langchain_messages_use_the_given_resampler():
    from langchain_core.messages import HumanMessage

    from speechgpt_agent.audio import encode_wav
    from speechgpt_agent.integrations.langchain.messages import to_turn_input

    pcm, _ = _pcm16_24k()
    wav = base64.b64encode(encode_wav(pcm.astype(np.float32) / 32768, 24_000)).decode()
    msg = [HumanMessage(content=[{"type": "audio", "base64": wav, "mime_type": "audio/wav"}])]
    asked = []
    ta = to_turn_input(msg, resampler=lambda: asked.append(1) or "torchaudio").audio
    so = to_turn_input(msg).audio
    assert asked == [1] and ta.shape == so.shape and not np.allclose(ta, so, atol=1e-4)
    assert np.array_equal(ta, load_audio(base64.b64decode(wav), resampler="torchaudio"))
    assert to_turn_input([HumanMessage(content="hi")], resampler=lambda: asked.append(2) or "soxr").audio is None
    assert asked == [1]  # no audio: the resampler is never asked for (nothing loads)
