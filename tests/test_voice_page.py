"""The voice page of `speechgpt-agent serve` (``GET /``) in a real headless Chromium.

The browser is Debian's ``chromium`` (``/usr/bin/chromium``, installed by ``.ci/run``),
driven by Playwright from pip with no browser download; its microphone is Chromium's fake
capture device playing the demo's spoken question ("what is seven plus five") followed by
silence, so that a hold of the talk button records the question once. The server is the
console script with the demo model on 127.0.0.1 and an API key, stopped by its pid.
Decoding is greedy (the page's temperature setting, 0 by default) wherever an answer is
checked. A screenshot of the page after a turn is written to ``build/test-artifacts/``
(``$SPEECHGPT_TEST_ARTIFACTS`` to put it elsewhere).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi")
playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")

from speechgpt_agent.demo import DEMO_QUESTION
from speechgpt_agent.testing.serve import ServerProcess, start_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium installed here (apt-get install chromium); .ci/run installs it")

KEY = "sk-test-voice-page"
HOLD_S = 4.0  # 1 s of silence, the 2.0 s question, then 4 s of silence before the fake device loops
# (silence on both sides: on a loaded machine recording starts late and a hold runs on)
ARTIFACTS = Path(os.environ.get("SPEECHGPT_TEST_ARTIFACTS", Path(__file__).parents[1] / "build" / "test-artifacts"))
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage"]
DONE = "(n) => voicePage.turns.length > n && ['done', 'error', 'interrupted'].includes(voicePage.turns[n].status)"


def _start_server(log: Path, *extra: str, env: dict | None = None) -> ServerProcess:
    return start_server(log, "--model", "demo", "--threads", "1", "--log-level", "warning", *extra, env=env)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Base URL of a demo server that needs ``KEY``."""
    srv = _start_server(tmp_path_factory.mktemp("voice") / "server.log", "--api-key", KEY)
    try:
        yield srv.url
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def question_wav(tmp_path_factory) -> Path:
    """1 s of silence, the demo question, 4 s of silence; 16-bit PCM (what Chromium's fake device reads)."""
    samples, rate = sf.read(str(DEMO_QUESTION), dtype="int16")
    path = tmp_path_factory.mktemp("mic") / "question_then_silence.wav"
    sf.write(str(path), np.concatenate([np.zeros(rate, np.int16), samples, np.zeros(int(4.0 * rate), np.int16)]), rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def playwright():
    with playwright_api.sync_playwright() as p:
        yield p


def _launch(playwright, *args: str):
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[*BROWSER_ARGS, *args])


@pytest.fixture(scope="module")
def browser(playwright, question_wav):
    """Chromium whose microphone (allowed) plays ``question_wav``; each launch has a fresh profile."""
    b = _launch(playwright, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={question_wav}")
    try:
        yield b
    finally:
        b.close()


class Page:
    """One page of the voice UI, with the requests it sent to /v1/chat/completions."""

    def __init__(self, context, url: str) -> None:
        self.context = context
        self.page = context.new_page()
        self.sent: list[dict] = []
        self.errors: list[str] = []
        self.page.on("request", self._request)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(url + "/")
        self.page.wait_for_function("document.getElementById('server').dataset.online === 'yes'", timeout=20_000)

    def _request(self, request) -> None:
        if request.url.endswith("/v1/chat/completions"):
            self.sent.append(json.loads(request.post_data))

    def hold(self, how: str = "space", seconds: float = HOLD_S) -> None:
        """Hold the talk button (mouse) or the space bar for ``seconds``: a real user's gesture."""
        if how == "space":
            self.page.keyboard.down("Space")
            time.sleep(seconds)
            self.page.keyboard.up("Space")
        else:
            box = self.page.locator("#talk").bounding_box()
            self.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            self.page.mouse.down()
            time.sleep(seconds)
            self.page.mouse.up()

    def wait_turn(self, n: int, timeout_s: float = 60) -> dict:
        self.page.wait_for_function(DONE, arg=n, timeout=timeout_s * 1000)
        return self.turn(n)

    def turn(self, n: int) -> dict:
        return self.page.evaluate("(n) => voicePage.turns[n]", n)

    def wait_played(self, timeout_s: float = 30) -> dict:
        """Stats once everything scheduled has played."""
        self.page.wait_for_function(
            "voicePage.stats.scheduledSamples > 0 && voicePage.stats.playedSamples >= voicePage.stats.scheduledSamples",
            timeout=timeout_s * 1000)
        return self.stats()

    def stats(self) -> dict:
        return self.page.evaluate("({...voicePage.stats})")

    def notice(self) -> tuple[str | None, str]:
        self.page.wait_for_selector("#notice:not([hidden])", timeout=20_000)
        return self.page.get_attribute("#notice", "data-kind"), self.page.inner_text("#notice-text")

    def text_of(self, n: int, part: str) -> str:
        return self.page.inner_text(f'.turn[data-turn="{n}"] .{part}')


@pytest.fixture
def keyed_context(browser):
    """A browser context whose page already holds the API key (as after entering it once)."""
    context = browser.new_context(viewport={"width": 960, "height": 760})
    context.add_init_script(f"localStorage.setItem('speechgpt-agent.apiKey', {json.dumps(KEY)})")
    try:
        yield context
    finally:
        context.close()


def _ask_typed(page: Page, text: str) -> None:
    page.page.fill("#ask-text", text)
    page.page.press("#ask-text", "Enter")


# --- answers -------------------------------------------------------------------------------------


def test_spoken_question_is_answered_aloud_as_it_streams(server, keyed_context):
    page = Page(keyed_context, server)
    page.hold("space")
    turn = page.wait_turn(0)
    assert turn["status"] == "done", turn
    assert turn["transcript"] == "what is seven plus five"
    assert turn["answer"] == "twelve"
    assert page.text_of(0, "transcript") == "what is seven plus five"
    assert page.text_of(0, "answer") == "twelve"
    stats = page.wait_played()
    turn = page.turn(0)
    # every received 24 kHz sample played, in real time (not dropped, not skipped)
    assert stats["playedSamples"] == stats["receivedSamples"] == turn["receivedSamples"] > 0.3 * 24000
    assert int(page.page.get_attribute("body", "data-played-samples")) == stats["playedSamples"]
    speech_ms = turn["receivedSamples"] / 24000 * 1000
    assert turn["playbackEndMs"] - turn["playbackStartMs"] >= 0.9 * speech_ms
    # the audio streamed: it started before the answer had ended
    assert 0 < turn["firstAudioMs"] < turn["playbackEndMs"] and turn["totalMs"] > 0
    timing = page.text_of(0, "timing")
    assert "first audio" in timing and "total" in timing
    # what went over the wire, as OpenAI's audio chat streaming
    (body,) = page.sent
    assert body["stream"] is True and body["modalities"] == ["text", "audio"]
    assert body["audio"]["format"] == "pcm16"
    part = body["messages"][-1]["content"][0]
    assert part["type"] == "input_audio" and part["input_audio"]["format"] == "wav"
    recorded, rate = sf.read(__import__("io").BytesIO(base64.b64decode(part["input_audio"]["data"])))
    assert 0.8 * HOLD_S < recorded.size / rate < 1.05 * HOLD_S and np.abs(recorded).max() > 0.1
    assert stats["inputPeakLevel"] > 0.2  # the level meter saw the voice
    assert not page.errors
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.page.screenshot(path=str(ARTIFACTS / "voice_page_after_a_turn.png"))


def test_second_turn_sends_the_history(server, keyed_context):
    page = Page(keyed_context, server)
    page.hold("button")
    first = page.wait_turn(0)
    assert first["status"] == "done" and first["answer"] == "twelve"
    page.wait_played()
    _ask_typed(page, "what is the capital of france")
    second = page.wait_turn(1)
    # the server resolved the earlier answer's audio id (an unknown one is a 400, shown as an error)
    assert second["status"] == "done" and second["answer"] == "paris", second
    assert page.text_of(1, "answer") == "paris"
    messages = page.sent[1]["messages"]
    # the earlier spoken question as what the model heard, the answer by its audio id
    assert messages == [{"role": "user", "content": "what is seven plus five"},
                        {"role": "assistant", "audio": {"id": first["audioId"]}},
                        {"role": "user", "content": "what is the capital of france"}]
    assert first["audioId"].startswith("audio_")
    history = page.page.evaluate("voicePage.history")
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    # an answer the server no longer holds (it restarted, or the id expired): sent again as text
    page.page.evaluate("voicePage.history[1].audio.id = 'audio_' + '0'.repeat(32)")
    _ask_typed(page, "what is the capital of france")
    third = page.wait_turn(2)
    assert third["status"] == "done" and third["answer"] == "paris", third
    assert page.sent[2]["messages"][1] == {"role": "assistant", "audio": {"id": "audio_" + "0" * 32}}
    assert page.sent[3]["messages"][1] == {"role": "assistant", "content": "twelve"}
    assert page.page.is_hidden("#notice")


def test_a_new_question_interrupts_the_answer_and_cancels_its_generation(server, keyed_context):
    page = Page(keyed_context, server)
    page.hold("button")
    # as soon as the first answer's text shows, while its audio is still being generated:
    page.page.wait_for_function("voicePage.turns.length && voicePage.turns[0].answer.length > 0", timeout=60_000)
    page.hold("space")
    second = page.wait_turn(1)
    first = page.turn(0)
    assert first["status"] == "interrupted" and first["aborted"] is True, first
    assert first["streamComplete"] is False
    assert "cancelled" in page.text_of(0, "status")
    assert second["status"] == "done" and second["answer"] == "twelve"
    page.wait_played()
    first = page.turn(0)
    assert first["playedSamples"] <= first["receivedSamples"]
    # the server dropped the cancelled turn: nothing generates once the second answer is done
    deadline = time.monotonic() + 20
    while httpx.get(f"{server}/health", timeout=5).json()["active_turns"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert httpx.get(f"{server}/health", timeout=5).json()["active_turns"] == 0
    # the interrupted exchange is not history: the second request held one question only
    assert len(page.sent) == 2 and len(page.sent[1]["messages"]) == 1
    assert [m["role"] for m in page.page.evaluate("voicePage.history")] == ["user", "assistant"]


def test_a_dropped_file_is_asked(server, keyed_context):
    page = Page(keyed_context, server)
    data = base64.b64encode(DEMO_QUESTION.read_bytes()).decode()
    page.page.evaluate("""(b64) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "question.wav", {type: "audio/wav"}));
        window.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
    }""", data)
    turn = page.wait_turn(0)
    assert turn["status"] == "done" and turn["transcript"] == "what is seven plus five"
    assert turn["answer"] == "twelve"
    assert page.sent[0]["messages"][0]["content"][0]["input_audio"]["data"] == data  # sent as is
    assert "question.wav" in page.page.inner_text('.turn[data-turn="0"] .user')


def test_a_tool_call_and_its_result_are_shown(server, keyed_context):
    page = Page(keyed_context, server)
    page.page.click("#settings-button")
    page.page.check("#tool-calculator")
    page.page.click("#settings-save")
    _ask_typed(page, "what is 1234 times 5678")
    turn = page.wait_turn(0)
    assert turn["status"] == "done", turn
    assert turn["toolCalls"] == [{"name": "calculator", "arguments": '{"expression": "1234 * 5678"}',
                                  "result": "7006652"}]
    assert turn["answer"] == "7006652" and turn["requests"] == 2
    tool = page.page.inner_text('.turn[data-turn="0"] .tool')
    assert "calculator" in tool and "1234 * 5678" in tool and "7006652" in tool
    follow = page.sent[1]["messages"]
    assert follow[1]["tool_calls"][0]["function"]["name"] == "calculator"
    assert follow[2] == {"role": "tool", "tool_call_id": follow[1]["tool_calls"][0]["id"], "content": "7006652"}
    assert page.page.evaluate("voicePage.evaluateExpression('2 ** 10 - 7 // 2 + (3 % 2)')") == 1022


# --- messages ------------------------------------------------------------------------------------


def test_api_key_is_asked_once_and_a_wrong_one_is_refused(server, browser):
    context = browser.new_context()
    try:
        page = Page(context, server)
        kind, text = page.notice()  # the server needs a key: the page says so and asks for it
        assert kind == "auth" and "needs an API key" in text
        assert page.page.is_visible("#settings")
        page.page.fill("#api-key", "sk-wrong")
        page.page.click("#settings-save")
        page.page.wait_for_function("document.getElementById('notice-text').textContent.includes('refused')")
        kind, text = page.notice()
        assert kind == "auth" and "Incorrect API key" in text
        page.page.fill("#api-key", KEY)
        page.page.click("#settings-save")
        page.page.wait_for_selector("#notice", state="hidden")
        page.page.reload()  # kept by the page: not asked again
        page.page.wait_for_function("document.getElementById('server').dataset.online === 'yes'")
        time.sleep(1)
        assert page.page.is_hidden("#notice") and not page.page.is_visible("#settings")
        _ask_typed(page, "what is two plus three")
        assert page.wait_turn(0)["answer"] == "five"
    finally:
        context.close()


def test_refused_microphone_is_explained(server, playwright, question_wav):
    b = _launch(playwright, "--use-fake-device-for-media-stream",  # no fake UI: the prompt is refused
                f"--use-file-for-fake-audio-capture={question_wav}")
    try:
        context = b.new_context()
        context.add_init_script(f"localStorage.setItem('speechgpt-agent.apiKey', {json.dumps(KEY)})")
        page = Page(context, server)
        page.hold("space", 0.5)
        kind, text = page.notice()
        assert kind == "mic-refused" and "Microphone access was refused" in text
        assert page.page.evaluate("voicePage.turns.length") == 0 and page.sent == []
    finally:
        b.close()


def test_unsupported_browser_is_explained(server, browser):
    context = browser.new_context()
    context.add_init_script("delete window.AudioContext; delete window.webkitAudioContext;")
    try:
        page = context.new_page()
        page.goto(server + "/")
        page.wait_for_selector("#notice:not([hidden])")
        assert page.get_attribute("#notice", "data-kind") == "unsupported"
        assert "This browser lacks Web Audio" in page.inner_text("#notice-text")
        assert page.is_disabled("#talk")
    finally:
        context.close()


def test_serve_open_and_a_stopped_server(browser, tmp_path):
    """``serve --open`` opens the page in $BROWSER; once the server stops, the page says so."""
    opened = tmp_path / "opened.txt"
    fake_browser = tmp_path / "record-url"
    fake_browser.write_text(f"#!/bin/sh\necho \"$1\" >> {opened}\n")
    fake_browser.chmod(fake_browser.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "BROWSER": str(fake_browser)}
    srv = _start_server(tmp_path / "server.log", "--open", env=env)
    url = srv.url
    try:
        deadline = time.monotonic() + 20
        while not opened.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert opened.read_text().split() == [url + "/"]
        context = browser.new_context()
        page = Page(context, url)
        assert page.page.is_hidden("#notice")  # no key needed on this server
        srv.stop()
        _ask_typed(page, "what is two plus three")
        kind, text = page.notice()
        assert kind == "offline" and "Cannot reach the server" in text
        assert page.turn(0)["status"] == "error"
        page.page.wait_for_function("document.getElementById('server').dataset.online === 'no'", timeout=15_000)
        context.close()
    finally:
        srv.stop()
