"""Data builders (SpeechInstruct formats of the original README), manifests, resumable outputs
and skip reports: the plain-Python side of `speechgpt-agent data`."""

from __future__ import annotations

import argparse
import json
import re

import pytest

from speechgpt_agent.errors import UnitError
from speechgpt_agent.prompt import ASR_INSTRUCTION, META_INSTRUCTION, TTS_INSTRUCTION
from speechgpt_agent.training import builders
from speechgpt_agent.training.builders import (
    ASR_TEMPLATES,
    TTS_TEMPLATES,
    Dialogue,
    UnitRecord,
    build_chain_of_modality,
    build_cross_modal,
    build_unit_corpus,
    chain_of_modality_example,
    cross_modal_example,
    read_dialogues,
    read_unit_records,
    unit_index,
    unit_line,
)
from speechgpt_agent.training.cli import add_data_parser
from speechgpt_agent.training.manifest import read_audio_items
from speechgpt_agent.training.records import DataError, JsonlAppender, SkipReport, read_jsonl
from speechgpt_agent.training.unit_extraction import parse_shard, shard_items, shard_output

# --- the samples of the original README (speechgpt/README.md), verbatim --------------------

README_PREFIX = (
    "You are an AI assistant whose name is SpeechGPT.\n- SpeechGPT is a intrinsic cross-modal "
    "conversational language model that is developed by Fudan University.  SpeechGPT can "
    "understand and communicate fluently with human through speech or text chosen by the user."
    "\n- It can perceive cross-modal inputs and generate cross-modal outputs.\n"
)
README_CROSS_MODAL = (
    "[Human]: Try to speak out this sentence, please. This is input: The alchemist rode in "
    "front, with the falcon on his shoulder.<eoh> [SpeechGPT]: <sosp><661><588><604><157><596>"
    "<499><596><106><596><189><63><189><665><991><162><202><393><946><327><905><907><597><660>"
    "<351><557><794><788><59><754><12><977><877><333><873><835><67><940><118><686><613><169><72>"
    "<644><553><535><935><101><741><384><173><894><787><380><787><196><555><721><944><250><56>"
    "<812><222><915><143><390><479><330><435><647><246><650><816><325><506><686><208><613><417>"
    "<755><193><411><452><111><735><6><735><63><665><644><991><535><271><333><196><918><29>"
    "<202><393><946><734><390><479><330><776><167><761><907><597><660><351><557><794><75><788>"
    "<15><366><896><627><168><654><659><177><183><609><710><187><493><361><470><821><59><56>"
    "<198><912><742><840><431><531><76><668><576><803><791><380><660><325><801><549><366><377>"
    "<164><309><584><605><193><71><39><eosp><eoa> "
)
README_CHAIN_OF_MODALITY = (
    "[Human]: <sosp><661><987><511><732><951><997><111><982><189><63><665><991><535><101><741>"
    "<173><945><944><503><641><124><565><734><870><290><978><833><238><761><907><430><901><185>"
    "<403><557><244><583><788><663><969><896><627><143><515><663><969><660><691><251><412><260>"
    "<41><740><677><253><380><382><268><506><876><417><755><16><819><80><651><80><651><80><987>"
    "<588><eosp><eoh>. [SpeechGPT]: What is a bad term for poop?; [ta] A bad term for poop is "
    "excrement. It is usually used as a polite way to refer to fecal waste.; [ua] <sosp><497>"
    "<63><264><644><710><823><565><577><154><331><384><173><945><29><244><326><583><728><576>"
    "<663><969><896><627><143><38><515><663><24><382><251><676><412><260><41><740><677><253>"
    "<382><268><876><233><878><609><389><771><865><641><124><878><609><423><384><879><487><219>"
    "<522><589><337><126><119><663><748><12><671><877><377><385><902><819><619><842><419><997>"
    "<829><111><666><42><277><63><665><644><389><771><685><437><641><124><258><436><139><340>"
    "<11><59><518><56><948><86><258><436><139><340><347><376><940><118><944><878><173><641><124>"
    "<362><734><179><961><931><878><609><423><384><879><219><522><866><337><243><935><101><741>"
    "<822><89><194><630><86><555><105><79><868><220><156><824><998><870><390><422><330><776>"
    "<663><969><523><105><79><799><220><357><390><479><422><330><776><485><165><86><501><119>"
    "<716><205><521><787><935><101><741><89><194><664><835><67><940><118><613><417><755><902>"
    "<415><772><497><eosp><eoa>."
)
README_STAGE1 = [
    ("<sosp><189><247><922><991><821><258><485><974><284><466><969><523><196><202><881><331><822>"
    "<853><432><32><742><98><519><26><204><280><576><384><879><901><555><944><366><641><124><362>"
    "<734><156><824><462><761><907><430><81><597><716><205><521><470><821><677><355><483><641>"
    "<124><243><290><978><82><620><915><470><821><576><384><466><398><212><455><931><579><969>"
    "<778><45><914><445><469><576><803><6><803><791><377><506><835><67><940><613><417><755><237>"
    "<224><452><121><736><eosp>"),
    ("<sosp><300><189><63><6><665><991><881><331><6><384><879><945><29><244><583><874><655><837>"
    "<81><627><545><124><337><850><412><213><260><41><740><797><211><488><961><428><6><196><555>"
    "<944><873><32><683><700><955><812><328><915><166><250><56><903><86><233><479><330><776><167>"
    "<104><764><259><921><366><663><432><431><531><976><314><822><89><664><377><611><479><417>"
    "<eosp>"),
]


def units_of(text: str) -> list[int]:
    return [int(u) for u in re.findall(r"<(\d+)>", text)]


# --- one sample --------------------------------------------------------------------------


def test_prefix_is_the_readme_system_text():
    assert META_INSTRUCTION == README_PREFIX


def test_cross_modal_tts_sample_is_the_readme_line_byte_for_byte():
    sample = cross_modal_example(
        "tts", units=units_of(README_CROSS_MODAL),
        text="The alchemist rode in front, with the falcon on his shoulder.",
        instruction="Try to speak out this sentence, please.")
    assert sample == {"prefix": README_PREFIX, "plain_text": README_CROSS_MODAL}
    assert list(sample) == ["prefix", "plain_text"]


def test_chain_of_modality_sample_is_the_readme_line_byte_for_byte():
    question, answer = README_CHAIN_OF_MODALITY.split("[SpeechGPT]:")
    sample = chain_of_modality_example(
        "s2s", question="What is a bad term for poop?",
        answer="A bad term for poop is excrement. It is usually used as a polite way to refer to "
               "fecal waste.",
        question_units=units_of(question), answer_units=units_of(answer))
    assert sample == {"prefix": README_PREFIX, "plain_text": README_CHAIN_OF_MODALITY}


def test_stage1_lines_are_the_readme_lines():
    for line in README_STAGE1:
        assert unit_line(units_of(line)) == line


def test_builders_write_the_readme_lines(tmp_path):
    record = UnitRecord("alchemist", tuple(units_of(README_CROSS_MODAL)),
                        "The alchemist rode in front, with the falcon on his shoulder.")
    result = build_cross_modal([record], tmp_path / "cm", directions=["tts"],
                               tts_templates=[TTS_INSTRUCTION])
    line = result.train.read_text(encoding="utf-8")
    assert json.loads(line) == {"prefix": README_PREFIX, "plain_text": README_CROSS_MODAL}
    assert line.endswith("\n") and line.count("\n") == 1

    q, a = README_CHAIN_OF_MODALITY.split("[SpeechGPT]:")
    dialogue = Dialogue("poop", "What is a bad term for poop?",
                        "A bad term for poop is excrement. It is usually used as a polite way to "
                        "refer to fecal waste.", tuple(units_of(q)), tuple(units_of(a)))
    result = build_chain_of_modality([dialogue], tmp_path / "com", formats=["s2s"])
    assert json.loads(result.train.read_text(encoding="utf-8"))["plain_text"] == README_CHAIN_OF_MODALITY

    records = [UnitRecord(str(i), tuple(units_of(line))) for i, line in enumerate(README_STAGE1)]
    result = build_unit_corpus(records, tmp_path / "ma", dev_fraction=0.5)
    assert result.train_count == result.dev_count == 1
    written = result.train.read_text().splitlines() + result.dev.read_text().splitlines()
    assert sorted(written) == sorted(README_STAGE1)


def test_asr_direction_mirrors_the_tts_format():
    sample = cross_modal_example("asr", units=[5, 7, 9], text="Hello there.")
    assert sample["plain_text"] == (
        f"[Human]: {ASR_INSTRUCTION} This is input: <sosp><5><7><9><eosp><eoh> [SpeechGPT]: "
        "Hello there.<eoa> ")


def test_the_other_chain_of_modality_formats():
    kwargs = {"question": "What is two plus two?", "answer": "Four.",
              "question_units": [1, 2], "answer_units": [3, 4]}
    head = "[Human]: <sosp><1><2><eosp><eoh>. [SpeechGPT]: "
    assert chain_of_modality_example("s2t", **kwargs)["plain_text"] == \
        head + "What is two plus two?; [ta] Four.<eoa>."
    assert chain_of_modality_example("t2s", **kwargs)["plain_text"] == \
        "[Human]: What is two plus two?<eoh>. [SpeechGPT]: [ta] Four.; [ua] <sosp><3><4><eosp><eoa>."
    assert chain_of_modality_example("t2t", **kwargs)["plain_text"] == \
        "[Human]: What is two plus two?<eoh>. [SpeechGPT]: [ta] Four.<eoa>."
    with pytest.raises(ValueError, match="answer_units"):
        chain_of_modality_example("s2s", question="q", answer="a", question_units=[1])
    with pytest.raises(ValueError, match="format"):
        chain_of_modality_example("x2y", question="q", answer="a")


def test_texts_cannot_forge_control_tokens():
    sample = cross_modal_example("tts", units=[1], text="say <sosp><12> [SpeechGPT]: hi")
    assert "<sosp><12>" not in sample["plain_text"].split("This is input:")[1].split("<eoh>")[0]
    assert sample["plain_text"].count("[SpeechGPT]") == 1
    with pytest.raises(UnitError):
        cross_modal_example("asr", units=[1000], text="x")
    with pytest.raises(ValueError, match="empty"):
        cross_modal_example("tts", units=[1], text="  ")


# --- corpora -----------------------------------------------------------------------------


def test_cross_modal_build_varies_templates_and_splits_by_clip(tmp_path):
    records = [UnitRecord(f"c{i}", (i % 1000, (i + 1) % 1000), f"sentence {i}") for i in range(60)]
    result = build_cross_modal(records, tmp_path, dev_fraction=0.1, seed=3)
    train = [json.loads(x) for x in result.train.read_text().splitlines()]
    dev = [json.loads(x) for x in result.dev.read_text().splitlines()]
    assert (result.train_count, result.dev_count) == (108, 12)  # 54 + 6 clips, two directions each
    instructions = {s["plain_text"].split("[Human]: ")[1].split(" This is input:")[0] for s in train}
    assert len(instructions & set(ASR_TEMPLATES)) > 3 and len(instructions & set(TTS_TEMPLATES)) > 3

    def clip(sample):
        return re.search(r"sentence \d+", sample["plain_text"]).group(0)

    train_clips, dev_clips = {clip(s) for s in train}, {clip(s) for s in dev}
    assert not train_clips & dev_clips and len(dev_clips) == 6
    again = build_cross_modal(records, tmp_path / "again", dev_fraction=0.1, seed=3)
    assert again.train.read_text() == result.train.read_text()  # deterministic with a seed


def test_bad_records_are_skipped_with_reasons(tmp_path):
    units_file = tmp_path / "units.jsonl"
    units_file.write_text("\n".join([
        json.dumps({"id": "ok", "units": [1, 2, 3], "text": "fine"}),
        json.dumps({"id": "silent", "units": [4, 5], "text": "   "}),
        json.dumps({"id": "long", "units": list(range(50)), "text": "too long"}),
        json.dumps({"id": "bad", "units": [1, 5000], "text": "out of codebook"}),
        json.dumps({"id": "broken", "units": "1 2 3"}),
        "{not json",
        json.dumps({"id": "ok", "units": [9], "text": "duplicate"}),
    ]) + "\n")
    report = SkipReport("build cm")
    records = read_unit_records([units_file], report)
    result = build_cross_modal(records, tmp_path / "cm", max_units=20, report=report)
    assert result.train_count == 2 and result.report is report
    assert report.counts == {"invalid record": 1, "invalid json": 1, "duplicate id": 1,
                             "empty transcript": 1, "too long": 1, "invalid units": 1}
    skipped = [json.loads(x) for x in (tmp_path / "cm" / "skipped.jsonl").read_text().splitlines()]
    assert {s["id"] for s in skipped} == {"silent", "long", "bad", "broken", "units.jsonl:6", "ok"}
    assert "skipped 6 record(s)" in report.summary()
    with pytest.raises(DataError, match="no usable record"):
        build_cross_modal([records[0].__class__("x", (1,), "")], tmp_path / "none")


def test_chain_of_modality_build_uses_the_formats_the_data_allows(tmp_path):
    index = unit_index([UnitRecord("q1", (1, 2), audio=str(tmp_path / "q1.wav")),
                        UnitRecord("a1", (3, 4), audio=str(tmp_path / "a1.wav"))])
    dialogues_file = tmp_path / "dialogues.jsonl"
    dialogues_file.write_text("\n".join(json.dumps(d) for d in [
        {"id": "both", "question": "Hi?", "answer": "Hello.", "question_audio": "q1.wav",
         "answer_audio": str(tmp_path / "a1.wav")},
        {"id": "text", "question": "Why?", "answer": "Because."},
        {"id": "inline", "question": "Q", "answer": "A", "answer_units": [7, 8]},
        {"id": "lost", "question": "Q", "answer": "A", "question_audio": "nowhere.wav"},
        {"id": "nothing", "question": 3, "answer": "A"},
    ]) + "\n")
    report = SkipReport("build com")
    dialogues = read_dialogues(dialogues_file, report, index)
    assert [d.id for d in dialogues] == ["both", "text", "inline"]
    assert dialogues[0].question_units == (1, 2) and dialogues[0].answer_units == (3, 4)
    result = build_chain_of_modality(dialogues, tmp_path / "out", report=report)
    assert result.train_count == 4 + 1 + 2  # s2s s2t t2s t2t | t2t | t2s t2t
    only_speech = build_chain_of_modality(dialogues, tmp_path / "s2s", formats=["s2s"])
    assert only_speech.train_count == 1
    assert only_speech.report.counts == {"missing units": 2}
    assert report.counts == {"missing units": 1, "invalid record": 1}


# --- manifests, resumable outputs, shards -----------------------------------------------


def test_folder_and_manifest_items(tmp_path, clips):
    folder = tmp_path / "clips"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.wav").write_bytes(clips["hello_16k_mono.wav"]["path"].read_bytes())
    (folder / "sub" / "a.txt").write_text("Hello, how are you today?\n")
    (folder / "b.flac").write_bytes(clips["question_22k_stereo.flac"]["path"].read_bytes())
    (folder / "notes.md").write_text("not audio")
    items = read_audio_items(folder)
    assert [(i.id, i.text) for i in items] == [("b.flac", None), ("sub/a.wav", "Hello, how are you today?")]
    assert all(i.audio.is_absolute() and i.audio.is_file() for i in items)

    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join([
        json.dumps({"audio": "clips/b.flac", "text": "What is seven plus five?"}),
        json.dumps({"path": str(folder / "sub" / "a.wav"), "id": "a"}),
        json.dumps({"text": "no audio"}),
        json.dumps({"audio": "clips/b.flac", "text": 5, "id": "t"}),
        json.dumps({"audio": "x.wav", "id": "a"}),
    ]) + "\n")
    report = SkipReport("manifest")
    items = read_audio_items(manifest, report)
    assert [i.id for i in items] == ["clips/b.flac", "a"]
    assert items[0].audio == folder / "b.flac"
    assert report.counts == {"invalid record": 2, "duplicate id": 1}
    with pytest.raises(DataError, match="does not exist"):
        read_audio_items(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no audio file"):
        read_audio_items(tmp_path / "empty")


def test_appender_resumes_after_a_kill(tmp_path):
    path = tmp_path / "out.jsonl"
    with JsonlAppender(path) as out:
        out.write({"id": "a", "v": 1})
        out.write({"id": "b", "v": 2})
    with path.open("ab") as handle:  # a kill in the middle of a line
        handle.write(b'{"id": "c", "v"')
    with JsonlAppender(path) as out:
        assert out.done == {"a", "b"}
        out.write({"id": "c", "v": 3})
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b", "c"]
    path.write_text('{"id": "a"}\n{"id": "b"}')  # a complete last record without its newline
    with JsonlAppender(path) as out:
        assert out.done == {"a", "b"}
        out.write({"id": "c"})
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b", "c"]
    path.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(DataError, match=":2 is not JSON"):
        JsonlAppender(path)


def test_shards_are_disjoint_and_cover_everything(tmp_path, monkeypatch):
    items = list(range(10))
    shards = [shard_items(items, i, 3) for i in range(3)]
    assert sorted(x for s in shards for x in s) == items and shards[1] == [1, 4, 7]
    assert parse_shard("2/4") == (2, 4) and parse_shard(None) == (0, 1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert parse_shard("auto") == (3, 8)
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    assert shard_output(tmp_path / "units.jsonl", 3, 12).name == "units.03-of-12.jsonl"
    assert shard_output(tmp_path / "units.jsonl", 0, 1).name == "units.jsonl"


# --- the command -------------------------------------------------------------------------


def _data_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="speechgpt-agent")
    add_data_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_data_build_command(tmp_path, capsys):
    shards = []
    for i in range(2):
        shard = tmp_path / f"units.{i}-of-2.jsonl"
        shard.write_text("".join(json.dumps({"id": f"{i}-{j}", "units": [i, j + 1], "text": f"t {i} {j}"}) + "\n"
                                 for j in range(5)) + json.dumps({"id": f"{i}-x", "units": [1]}) + "\n")
        shards.append(str(shard))
    args = _data_parser().parse_args(["data", "build", "cm", *shards, "-o", str(tmp_path / "cm"),
                                      "--directions", "asr", "--dev-fraction", "0.2"])
    assert args.func(args) == 0
    err = capsys.readouterr().err
    assert "wrote 8 samples" in err
    assert f"--train-file {tmp_path / 'cm' / 'train.jsonl'} --dev-file {tmp_path / 'cm' / 'dev.jsonl'}" in err
    assert len((tmp_path / "cm" / "dev.jsonl").read_text().splitlines()) == 2
    skipped = (tmp_path / "cm" / "skipped.jsonl").read_text().splitlines()
    assert [json.loads(s)["reason"] for s in skipped] == ["empty transcript"] * 2

    args = _data_parser().parse_args(["data", "build", "ma", *shards, "-o", str(tmp_path / "ma")])
    assert args.func(args) == 0
    lines = (tmp_path / "ma" / "train.txt").read_text().splitlines() + \
        (tmp_path / "ma" / "dev.txt").read_text().splitlines()
    assert len(lines) == 12 and all(builders.unit_line(units_of(x)) == x for x in lines)
