"""The ``speechgpt-agent`` command on the tiny model set and the committed clips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from speechgpt_agent.cli import main


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


def test_chat_one_spoken_turn(tiny_model_set, clips, tmp_path, capsys, one_thread):
    out = tmp_path / "answer.wav"
    code, stdout, err = run(capsys, "chat", "--audio", str(clips["hello_16k_mono.wav"]["path"]),
                            "-o", str(out), *model_args(tiny_model_set))
    assert code == 0
    assert "prompt +" in err and "answer tokens" in err
    if "Speech answer:" in stdout:
        assert sf.info(str(out)).samplerate == 16000


def test_chat_interactive_session(tiny_model_set, monkeypatch, tmp_path, capsys, one_thread):
    lines = iter(["What is two plus two?", "", "/no/such/file.wav is text then", "quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    code, stdout, err = run(capsys, "chat", "--text-only", "-o", str(tmp_path / "a.wav"), *model_args(tiny_model_set))
    assert code == 0 and "Talk with SpeechGPT" in stdout
    # two questions answered (the empty line skipped; a non-existent path is just text)
    assert err.count("answer tokens]") == 2


def test_transcribe_and_speak(tiny_model_set, clips, tmp_path, capsys, one_thread):
    code, stdout, _ = run(capsys, "transcribe", str(clips["hello_16k_mono.wav"]["path"]), *model_args(tiny_model_set))
    assert code == 0 and stdout.startswith(str(clips["hello_16k_mono.wav"]["path"]) + "\t")
    code, stdout, err = run(capsys, "speak", "Hello there.", "-o", str(tmp_path / "s.wav"), *model_args(tiny_model_set))
    # a random model may or may not emit units; either outcome is reported, never a traceback
    assert (code == 0 and (tmp_path / "s.wav").exists()) or (code == 1 and "no speech units" in err)


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
    code, stdout, _ = run(capsys, "selfcheck", "--dir", str(tmp_path / "set"), "-o", str(tmp_path / "a.wav"))
    assert code == 0 and "selfcheck OK" in stdout
    audio, sr = sf.read(tmp_path / "a.wav")
    assert sr == 16000 and audio.size > 0 and np.isfinite(audio).all()


@pytest.mark.parametrize("argv", [["--version"], ["chat", "--help"], ["units", "--help"]])
def test_help_and_version(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
