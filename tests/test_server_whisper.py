"""`speechgpt-agent serve --asr whisper`: /v1/audio/transcriptions through faster-whisper.

The Whisper is a tiny random one in the CTranslate2 format (:mod:`speechgpt_agent.testing.whisper`)
that always predicts ``a``: the server must return exactly what faster-whisper itself
transcribes from the same clip, through the real ``openai`` client.
"""

from __future__ import annotations

import httpx
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from speechgpt_agent.audio import load_audio
from speechgpt_agent.demo import DEMO_QUESTION
from speechgpt_agent.testing.serve import running_server
from speechgpt_agent.testing.whisper import make_tiny_whisper


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    return make_tiny_whisper(tmp_path_factory.mktemp("whisper"), always_predict="a")


@pytest.fixture(scope="module")
def server(whisper_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with running_server(log, "--model", "demo", "--threads", "1", "--asr", "whisper",
                        "--whisper-model", str(whisper_dir), "--log-level", "warning") as srv:
        yield srv.url


@pytest.mark.slow  # builds and converts a Whisper, then a second server: about 100 s here
def test_transcriptions_come_from_faster_whisper(server, whisper_dir):
    from faster_whisper import WhisperModel

    model = WhisperModel(str(whisper_dir), device="auto", compute_type="default")
    segments, info = model.transcribe(load_audio(DEMO_QUESTION), temperature=0.0)
    expected = " ".join(s.text.strip() for s in segments if s.text.strip())
    assert "a" in expected  # the tiny model's one word: not SpeechGPT's "what is seven plus five"

    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)
    assert httpx.get(f"{server}/health").json()["asr"] == "whisper"
    assert client.audio.transcriptions.create(model="whisper-1", file=DEMO_QUESTION.open("rb")).text == expected
    verbose = client.audio.transcriptions.create(model="whisper-1", file=DEMO_QUESTION.open("rb"),
                                                 response_format="verbose_json")
    assert verbose.text == expected and verbose.language == info.language and verbose.segments
