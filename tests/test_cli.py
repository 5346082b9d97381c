"""The ``speechgpt-agent`` command on the tiny model set and the committed clips."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechgpt_agent.cli import main
from speechgpt_agent.demo import DEMO_DIR

DEMO_CLIPS = Path(__file__).parent / "data" / "demo"
DEMO_ARGS = ["--model", "demo", "--quantization", "none", "--top-k", "1", "--max-new-tokens", "300"]
"""The embedded demo model, greedy (top-k 1): a model that can hear, answer and speak."""
needs_demo = pytest.mark.skipif(not (DEMO_DIR / "llm").is_dir(), reason="the demo model is not exported")


def assert_speech(path: Path, *, seconds: float) -> None:
    """``path`` is a 16 kHz mono wav of ``seconds`` (to the printed 0.01 s) of non-silent audio."""
    audio, sr = sf.read(path)
    assert sr == 16000 and audio.ndim == 1 and audio.size > 0 and np.isfinite(audio).all()
    assert abs(audio.size / sr - seconds) <= 0.006 and np.abs(audio).max() > 1e-3


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def model_args(s) -> list[str]:
    return ["--model", str(s.model), "--adapter", str(s.adapter), "--hubert", str(s.speech_tokenizer),
            "--vocoder", str(s.vocoder), "--seed", "0", "--max-new-tokens", "30"]


def test_units_then_vocode(tiny_model_set, clips, tmp_path, capsys):
    paths = [str(clips[n]["path"]) for n in ("hello_16k_mono.wav", "question_22k_stereo.flac")]
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    out = tmp_path / "units.jsonl"
    code, _, err = run(capsys, "units", *paths, str(bad), "--model", str(tiny_model_set.speech_tokenizer),
                       "-o", str(out))
    assert code == 1 and "1 of 3 file(s) failed" in err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in records] == [*paths, str(bad)]
    assert "error" in records[2] and "units" not in records[2]
    for r in records[:2]:
        assert r["text"] == "<sosp>" + "".join(f"<{u}>" for u in r["units"]) + "<eosp>"
        assert sum(r["durations"]) == r["frames"]

    wav_dir = tmp_path / "wavs"
    code, _, _ = run(capsys, "vocode", "--input", str(out), "-o", str(wav_dir), "--use-durations",
                     "--vocoder", str(tiny_model_set.vocoder))
    assert code == 0
    for r in records[:2]:
        audio, sr = sf.read(wav_dir / (r["path"].rsplit("/", 1)[1].rsplit(".", 1)[0] + ".wav"))
        assert sr == 16000 and audio.shape == (320 * r["frames"],)

    code, _, _ = run(capsys, "vocode", "<sosp><1><2><3><eosp>", "-o", str(tmp_path / "x.wav"),
                          "--vocoder", str(tiny_model_set.vocoder), "--no-duration-prediction")
    assert code == 0 and sf.info(str(tmp_path / "x.wav")).frames == 3 * 320


def test_vocode_out_of_range_unit_is_a_clean_error(tiny_model_set, tmp_path, capsys):
    code, _, err = run(capsys, "vocode", "<1><1000>", "-o", str(tmp_path / "x.wav"), "--vocoder", str(tiny_model_set.vocoder))
    assert code == 2 and "error" in err and not (tmp_path / "x.wav").exists()


@needs_demo
def test_chat_one_spoken_turn(tmp_path, capsys, one_thread):
    out = tmp_path / "answer.wav"
    code, stdout, err = run(capsys, "chat", "--audio", str(DEMO_CLIPS / "what_is_ten_plus_seven.wav"),
                            "-o", str(out), *DEMO_ARGS)
    assert code == 0
    assert "Transcript: " in stdout and "\nAnswer: " in stdout
    assert "prompt +" in err and "answer tokens" in err
    spoken = re.search(rf"Speech answer: {re.escape(str(out))} \(([\d.]+) s, (\d+) units\)", stdout)
    assert spoken, stdout  # the spoken part of the turn is required, not optional
    assert_speech(out, seconds=float(spoken.group(1)))
    assert int(spoken.group(2)) > 0


def test_chat_interactive_session(tiny_model_set, monkeypatch, tmp_path, capsys, one_thread):
    lines = iter(["What is two plus two?", "", "/no/such/file.wav is text then", "quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    code, stdout, err = run(capsys, "chat", "--text-only", "-o", str(tmp_path / "a.wav"), *model_args(tiny_model_set))
    assert code == 0 and "Talk with SpeechGPT" in stdout
    # two questions answered (the empty line skipped; a non-existent path is just text)
    assert err.count("answer tokens]") == 2


def test_typed_lines_are_read_as_the_original_cli_read_them(tmp_path):
    from speechgpt_agent.commands.conversation import typed_turn

    clip = tmp_path / "q.wav"
    sf.write(clip, np.zeros(1600, dtype=np.float32), 16000)
    asr = "Can you transcribe the speech into a written format?"
    assert typed_turn(str(clip)) == {"text": None, "audio": str(clip), "task": "chat"}
    assert typed_turn(f"{asr} This is input: {clip}") == {
        "text": None, "audio": str(clip), "task": "asr", "instruction": asr}
    assert typed_turn(f"{asr} This is input: /no/such.flac")["task"] == "asr"  # reported missing
    assert typed_turn("Try to speak out this sentence, please. This is input: good morning") == {
        "text": "good morning", "audio": None, "task": "tts",
        "instruction": "Try to speak out this sentence, please."}
    for line in ("what is two plus three", "This is input:", "/no/such/file.wav is text then"):
        assert typed_turn(line) == {"text": line, "audio": None, "task": "chat"}


@needs_demo
def test_chat_takes_the_original_clis_typed_asr_and_tts_requests(monkeypatch, tmp_path, capsys, one_thread):
    """``... This is input: q.wav`` is transcribed (as the ``transcribe`` command does it) and
    ``... This is input: seven`` spoken into a wav; a missing clip is an error and the session
    goes on."""
    clip = str(DEMO_CLIPS / "what_is_eight_plus_five.wav")
    code, heard, _ = run(capsys, "transcribe", clip, *DEMO_ARGS)
    assert code == 0
    lines = iter([f"Can you transcribe the speech into a written format? This is input: {clip}",
                  "Try to speak out this sentence, please. This is input: seven",
                  "Can you transcribe the speech into a written format? This is input: /no/such.wav", "quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    code, stdout, err = run(capsys, "chat", "-o", str(tmp_path / "a.wav"), *DEMO_ARGS)
    assert code == 0
    assert f"Answer: {heard.split(chr(9), 1)[1].strip()}\n" in stdout
    spoken = re.search(rf"Speech answer: {re.escape(str(tmp_path / 'a_2.wav'))} \(([\d.]+) s, (\d+) units\)", stdout)
    assert spoken, stdout
    assert_speech(tmp_path / "a_2.wav", seconds=float(spoken.group(1)))
    assert "error: audio file not found: '/no/such.wav'" in err, err


@needs_demo
def test_transcribe_and_speak(tmp_path, capsys, one_thread):
    # the held-out voice asking questions never heard in training (tests/data/demo/clips.json)
    names = ["what_is_eight_plus_five.wav", "what_is_ten_plus_seven.wav", "what_is_nine_minus_three.wav"]
    code, stdout, _ = run(capsys, "transcribe", *(str(DEMO_CLIPS / n) for n in names), *DEMO_ARGS)
    assert code == 0
    heard = dict(line.split("\t", 1) for line in stdout.splitlines())
    assert list(heard) == [str(DEMO_CLIPS / n) for n in names]
    right = [heard[str(DEMO_CLIPS / n)] == n.removesuffix(".wav").replace("_", " ") for n in names]
    assert sum(right) >= 2, heard  # all 3 with the shipped model; one below, as in test_demo.py

    wav = tmp_path / "s.wav"
    code, stdout, err = run(capsys, "speak", "seven", "-o", str(wav), *DEMO_ARGS)
    assert code == 0, err  # "the model gave no speech units" is a failure here
    spoken = re.fullmatch(rf"wrote {re.escape(str(wav))} \(([\d.]+) s\)\n", stdout)
    assert spoken, stdout
    assert_speech(wav, seconds=float(spoken.group(1)))


def test_info(tiny_model_set, capsys, one_thread):
    code, stdout, _ = run(capsys, "info", "--model", str(tiny_model_set.model), "--adapter", str(tiny_model_set.adapter))
    info = json.loads(stdout)
    assert code == 0 and info["quantization"] == "nf4"


def test_missing_model_names_hub_id_and_local_path(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(capsys, "info", "--model", "fnlp/SpeechGPT-7B-cm")
    assert code == 2
    assert "fnlp/SpeechGPT-7B-cm" in err and "path" in err
    code, _, err = run(capsys, "units", "x.wav", "--model", str(tmp_path / "nope"))
    assert code == 2 and "nope" in err


def test_convert_commands(tmp_path, capsys):
    from speechgpt_agent.kmeans import load_centroids
    from speechgpt_agent.testing.hubert import make_fairseq_hubert_checkpoint, make_kmeans_joblib
    from speechgpt_agent.testing.vocoder import make_fairseq_codehifigan

    ckpt = make_fairseq_hubert_checkpoint(tmp_path / "h.pt")
    assert run(capsys, "convert", "hubert", str(ckpt), str(tmp_path / "hub"))[0] == 0
    assert (tmp_path / "hub" / "model.safetensors").is_file()
    km = make_kmeans_joblib(tmp_path / "km.bin", n_clusters=8, dim=32)
    assert run(capsys, "convert", "kmeans", str(km), str(tmp_path / "hub"))[0] == 0
    assert load_centroids(tmp_path / "hub").shape == (8, 32)  # no pickle needed any more
    voc = make_fairseq_codehifigan(tmp_path / "voc")
    assert run(capsys, "convert", "vocoder", str(voc), str(tmp_path / "voc2"))[0] == 0
    assert (tmp_path / "voc2" / "model.safetensors").is_file()


def test_selfcheck(tmp_path, capsys, one_thread):
    out = tmp_path / "a.wav"
    code, stdout, err = run(capsys, "selfcheck", "--dir", str(tmp_path / "set"), "-o", str(out))
    assert code == 0, err
    # printed only when the answer's units came back from the parser, reached the streaming
    # vocoder while the answer streamed, and the turn's audio is finite
    spoken = re.search(r"spoken answer: (\d+) units -> streaming vocoder -> first audio at ([\d.]+) s, "
                       rf"([\d.]+) s of audio in {re.escape(str(out))}\n", stdout)
    assert spoken, stdout
    assert int(spoken.group(1)) == 50 and 0 < float(spoken.group(2))
    assert "selfcheck OK" in stdout
    assert_speech(out, seconds=float(spoken.group(3)))


@pytest.mark.parametrize("argv", [["--version"], ["chat", "--help"], ["units", "--help"]])
def test_help_and_version(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
