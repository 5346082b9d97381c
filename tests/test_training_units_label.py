"""`speechgpt-agent data units` and `data label` on the espeak-ng clips: a tiny mHuBERT for the
units, tiny CTranslate2 Whisper models (faster-whisper format) for the transcripts."""

from __future__ import annotations

import argparse
import json

import pytest

from speechgpt_agent.testing.whisper import make_tiny_whisper
from speechgpt_agent.training.cli import add_data_parser
from speechgpt_agent.training.label import WhisperOptions, label_items, load_whisper
from speechgpt_agent.training.manifest import AudioItem, read_audio_items
from speechgpt_agent.training.records import read_jsonl
from speechgpt_agent.training.unit_extraction import extract_units, shard_items
from speechgpt_agent.units import SpeechTokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_model_set):
    return SpeechTokenizer.from_pretrained(tiny_model_set.speech_tokenizer, device="cpu")


@pytest.fixture
def corpus(tmp_path, clips):
    """A manifest of the five clips plus a missing file, an undecodable one and a 10 ms one."""
    folder = tmp_path / "audio"
    folder.mkdir()
    (folder / "garbage.wav").write_bytes(b"RIFF....WAVEfmt not really")
    import numpy as np
    import soundfile as sf

    sf.write(folder / "blip.wav", np.zeros(160, np.float32), 16000)
    lines = [{"audio": str(info["path"]), "text": info["text"], "id": name} for name, info in clips.items()]
    lines += [{"audio": "audio/missing.wav", "id": "missing"}, {"audio": "audio/garbage.wav", "id": "garbage"},
              {"audio": "audio/blip.wav", "id": "blip"}]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="speechgpt-agent")
    add_data_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_units_of_a_manifest_with_bad_clips(tokenizer, corpus, clips, tmp_path, one_thread):
    items = read_audio_items(corpus)
    out = tmp_path / "units.jsonl"
    report = extract_units(items, tokenizer, out, batch_size=3, progress=False)
    records = list(read_jsonl(out))
    assert [r["id"] for r in records] == list(clips)
    for record in records:
        expected = tokenizer.encode(clips[record["id"]]["path"])
        assert record["units"] == list(expected.units)
        assert record["durations"] == list(expected.durations)
        assert record["text"] == clips[record["id"]]["text"]
    assert report.counts == {"missing audio": 1, "unreadable audio": 1, "unusable audio": 1}
    assert {r.id: r.reason for r in report.records}["blip"] == "unusable audio"

    # a rerun (after a kill) encodes only what is missing
    out.write_text("".join(json.dumps(r) + "\n" for r in records[:2]) + '{"id": "trunc')
    again = extract_units(items, tokenizer, out, progress=False)
    assert [r["id"] for r in read_jsonl(out)] == list(clips)
    assert len(again) == 3


def test_units_command_shards(tokenizer, tiny_model_set, corpus, tmp_path, clips, capsys, one_thread):
    out = tmp_path / "units.jsonl"
    for i in range(2):
        args = _parser().parse_args([
            "data", "units", str(corpus), "-o", str(out), "--model", str(tiny_model_set.speech_tokenizer),
            "--device", "cpu", "--shard", f"{i}/2", "--no-progress"])
        assert args.func(args) == 0
    ids = [[r["id"] for r in read_jsonl(tmp_path / f"units.{i}-of-2.jsonl")] for i in range(2)]
    names = [item.id for item in read_audio_items(corpus)]
    assert ids[0] == [n for n in shard_items(names, 0, 2) if n in clips]
    assert sorted(ids[0] + ids[1]) == sorted(clips)
    skipped = [json.loads(x) for x in (tmp_path / "units.1-of-2.skipped.jsonl").read_text().splitlines()]
    assert {s["id"] for s in skipped} == {"missing", "blip"}  # shard 1: items 1, 3, 5, 7
    assert "skipped 2 record(s)" in capsys.readouterr().err


@pytest.fixture(scope="module")
def whisper_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("whisper")
    return {
        "silent": make_tiny_whisper(root / "silent", always_predict="<|endoftext|>"),
        "talker": make_tiny_whisper(root / "talker", always_predict="a"),
    }


def test_tiny_whisper_is_a_multilingual_faster_whisper_model(whisper_dirs):
    model = load_whisper(WhisperOptions(model=str(whisper_dirs["talker"]), compute_type="int8",
                                        device="cpu", cpu_threads=1))
    assert model.model.is_multilingual and model.model.compute_type.startswith("int8")
    for name in ("model.bin", "config.json", "vocabulary.json", "tokenizer.json",
                 "preprocessor_config.json"):
        assert (whisper_dirs["talker"] / name).is_file()


def test_label_fills_missing_transcripts(whisper_dirs, clips, tmp_path):
    items = [AudioItem(name, info["path"], info["text"] if name.startswith("hello") else None)
             for name, info in clips.items()]
    items.append(AudioItem("missing", tmp_path / "missing.wav"))
    talker = load_whisper(WhisperOptions(model=str(whisper_dirs["talker"]), device="cpu", cpu_threads=1))
    out = tmp_path / "labelled.jsonl"
    report = label_items(items[:3] + items[-1:], out, talker, language="de", beam_size=1,
                         progress=False, temperature=0.0)
    records = {r["id"]: r for r in read_jsonl(out)}
    assert records["hello_16k_mono.wav"] == {"id": "hello_16k_mono.wav", "text": "Hello, how are you today?",
                                             "audio": str(clips["hello_16k_mono.wav"]["path"])}
    for name in list(clips)[1:3]:
        assert records[name]["language"] == "de"  # the option reached Whisper
        assert set(records[name]["text"]) == {"a"}  # what this model always says
    assert report.counts == {"missing audio": 1}

    silent = load_whisper(WhisperOptions(model=str(whisper_dirs["silent"]), device="cpu", cpu_threads=1))
    report = label_items(items, out, silent, progress=False)  # resumes: only the last two clips
    assert report.counts == {"missing audio": 1, "empty transcript": 2}
    assert sorted(r.id for r in report.records if r.reason == "empty transcript") == sorted(list(clips)[3:])
    assert len(list(read_jsonl(out))) == 3


def test_label_command(whisper_dirs, corpus, tmp_path, capsys):
    manifest = tmp_path / "partial.jsonl"
    lines = [json.loads(x) for x in corpus.read_text().splitlines()]
    lines[1].pop("text")
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines[:2]))
    out = tmp_path / "labelled.jsonl"
    args = _parser().parse_args([
        "data", "label", str(manifest), "-o", str(out), "--whisper-model", str(whisper_dirs["silent"]),
        "--language", "en", "--compute-type", "int8", "--device", "cpu", "--cpu-threads", "1",
        "--beam-size", "1", "--no-progress"])
    assert args.func(args) == 0
    assert [r["id"] for r in read_jsonl(out)] == [lines[0]["id"]]
    skipped = [json.loads(x) for x in (tmp_path / "labelled.skipped.jsonl").read_text().splitlines()]
    assert skipped == [{"id": lines[1]["id"], "reason": "empty transcript",
                        "detail": "Whisper heard no speech (language en)"}]
    assert "empty transcript 1" in capsys.readouterr().err
