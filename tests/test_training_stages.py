"""The three training stages on tiny models: vocabulary expansion, loss masks, configs, a few
steps of each stage (full, LoRA, QLoRA) whose loss falls, and outputs that the runtime loads."""

from __future__ import annotations

import argparse
import json
import re

import pytest
import torch

from speechgpt_agent.errors import CheckpointError
from speechgpt_agent.model import SpeechGPTModel, load_speech_tokenizer
from speechgpt_agent.prompt import ADDED_TOKENS, META_INSTRUCTION
from speechgpt_agent.testing.llm import make_tiny_speechgpt
from speechgpt_agent.training.builders import chain_of_modality_example, cross_modal_example
from speechgpt_agent.training.checkpointing import atomic_directory
from speechgpt_agent.training.cli import add_train_parser
from speechgpt_agent.training.config import default_config_path, load_config
from speechgpt_agent.training.data import (
    IGNORE_INDEX,
    instruction_examples,
    lm_blocks,
    split_validation,
)
from speechgpt_agent.training.records import DataError, SkipReport
from speechgpt_agent.training.trainer import TrainingError, train
from speechgpt_agent.training.vocab import expand_vocabulary

UNITS = [661, 588, 604, 157, 596, 499, 106, 189, 63, 665, 991, 162, 202, 393, 946, 327]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def speechgpt(tmp_path_factory):
    return make_tiny_speechgpt(tmp_path_factory.mktemp("cm"), dtype=torch.float32)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return make_tiny_speechgpt(tmp_path_factory.mktemp("llama"), with_speech_tokens=False, seed=1)


@pytest.fixture(scope="module")
def tokenizer(speechgpt):
    return load_speech_tokenizer(speechgpt)[0]


def _jsonl(path, samples):
    path.write_text("".join(json.dumps(s) + "\n" for s in samples), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def com_file(tmp_path_factory):
    sample = chain_of_modality_example("s2s", question="What is a bad term for poop?",
                                       answer="Excrement.", question_units=UNITS[:8],
                                       answer_units=UNITS[8:])
    return _jsonl(tmp_path_factory.mktemp("com") / "train.jsonl", [sample] * 4)


@pytest.fixture(scope="module")
def cm_file(tmp_path_factory):
    samples = [cross_modal_example("tts", units=UNITS, text="The alchemist rode in front."),
               cross_modal_example("asr", units=UNITS, text="The alchemist rode in front.")]
    return _jsonl(tmp_path_factory.mktemp("cm_data") / "train.jsonl", samples * 2)


def _losses(out):
    state = max((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    history = json.loads((state / "trainer_state.json").read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h]


def _run(stage, model, train_file, out, **overrides):
    settings = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "max_steps": 8,
                "save_steps": 4, "bf16": False, "val_set_size": 0, "warmup_ratio": 0.0,
                "lr_scheduler_type": "constant", "sample_max_new_tokens": 8}
    settings.update(overrides)
    cfg = load_config(stage, model=str(model), train_file=str(train_file), output_dir=str(out), **settings)
    return train(cfg, progress=False)


def _logits(model, ids):
    with torch.inference_mode():
        return model.model(input_ids=torch.tensor([ids])).logits.float()


# --- vocabulary expansion ----------------------------------------------------------------


def test_expansion_adds_the_tokens_with_mean_rows(llama, tmp_path):
    from safetensors.torch import load_file

    before = torch.load(llama / "pytorch_model.bin")
    base = before["model.embed_tokens.weight"].shape[0]
    out = expand_vocabulary(llama, tmp_path / "expanded")
    added = json.loads((out / "added_tokens.json").read_text())
    assert list(added) == list(ADDED_TOKENS)
    assert list(added.values()) == list(range(base, base + 1006))
    assert json.loads((out / "config.json").read_text())["vocab_size"] == base + 1006
    after = load_file(out / "model.safetensors")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        old, new = before[name].float(), after[name].float()
        assert new.shape == (base + 1006, old.shape[1])
        torch.testing.assert_close(new[:base], old)
        torch.testing.assert_close(new[base:], old.mean(0).expand(1006, -1), atol=1e-3, rtol=1e-3)
    assert not (out / "tokenizer.json").exists() and (out / "tokenizer.model").is_file()
    model = SpeechGPTModel.from_pretrained(out, None, quantization=None, progress=False)
    assert model.unit_token_offset == base and model.vocab.control_ids["<eoh>"] == base + 1004
    with pytest.raises(CheckpointError, match="already has the SpeechGPT tokens"):
        expand_vocabulary(out, tmp_path / "again")


# --- examples and their loss masks --------------------------------------------------------


def test_plain_text_mask_is_the_originals(tokenizer):
    sample = cross_modal_example("tts", units=UNITS, text="Hello there.")
    report = SkipReport("t")
    (ex,) = instruction_examples([(sample["prefix"], sample["plain_text"])], tokenizer,
                                 max_length=512, report=report)
    n = len(tokenizer.encode(META_INSTRUCTION))  # the original's user_prompt_len
    assert ex["labels"][:n] == [IGNORE_INDEX] * n and IGNORE_INDEX not in ex["labels"][n:]
    assert ex["input_ids"] == tokenizer.encode(sample["prefix"] + sample["plain_text"]) + [tokenizer.eos_token_id]
    # the prefix's trailing newline is stripped before [Human], so [Human] is masked too
    assert ex["input_ids"][n - 1] == tokenizer.convert_tokens_to_ids("[Human]")
    assert ex["labels"][n:] == ex["input_ids"][n:] and not report


def test_response_mask_ends_after_speechgpt_colon(tokenizer):
    sample = cross_modal_example("tts", units=UNITS, text="Hello there.")
    report = SkipReport("t")
    (ex,) = instruction_examples([(sample["prefix"], sample["plain_text"])], tokenizer,
                                 max_length=512, loss_on="response", report=report)
    n = ex["labels"].count(IGNORE_INDEX)
    assert ex["labels"][:n] == [IGNORE_INDEX] * n
    masked = tokenizer.decode(ex["input_ids"][:n])
    assert re.sub(r"\s", "", masked).endswith("[SpeechGPT]:")
    trained = tokenizer.decode(ex["input_ids"][n:], skip_special_tokens=True)
    assert trained.lstrip().startswith("<sosp> <661>") or trained.lstrip().startswith("<sosp><661>")


def test_long_or_answerless_samples_are_skipped(tokenizer):
    good = cross_modal_example("tts", units=UNITS, text="Hi.")
    long = cross_modal_example("tts", units=UNITS * 20, text="Hi.")
    report = SkipReport("t")
    examples = instruction_examples(
        [(good["prefix"], good["plain_text"]), (long["prefix"], long["plain_text"]),
         (META_INSTRUCTION, "[Human]: no answer marker")],
        tokenizer, max_length=300, loss_on="response", report=report, ids=["good", "long", "none"])
    assert len(examples) == 1
    assert [(r.id, r.reason) for r in report.records] == [("long", "too long"), ("none", "no response")]


def test_unit_lines_are_packed_into_blocks(tokenizer):
    lines = ["<sosp><1><2><3><eosp>", "<sosp><4><5><eosp>", "<sosp><6><eosp>"]
    ids = [t for line in lines for t in tokenizer.encode(line)]
    assert len(ids) == 6 + 5 + 4  # <s> on every line, no </s>
    blocks = lm_blocks(lines, tokenizer, block_size=4)
    assert [b["input_ids"] for b in blocks] == [ids[0:4], ids[4:8], ids[8:12]]  # remainder dropped
    assert all(b["labels"] == b["input_ids"] for b in blocks)
    assert [b["input_ids"] for b in lm_blocks(lines[:1], tokenizer, block_size=64)] == [ids[:6]]


def test_validation_split():
    train_items, held = split_validation(list(range(20)), 0.25, seed=42)
    assert len(held) == 5 and sorted(train_items + held) == list(range(20))
    assert split_validation(list(range(20)), 0.25, seed=42) == (train_items, held)
    assert split_validation([1, 2], 0) == ([1, 2], [])
    with pytest.raises(DataError, match="val-set-size"):
        split_validation([1, 2], 2000)


# --- configs -----------------------------------------------------------------------------


def test_defaults_are_the_original_hyper_parameters(tmp_path):
    com = load_config("com")
    assert (com.method, com.lora_r, com.lora_alpha, com.lora_dropout, com.lora_target_modules) == \
        ("lora", 8, 16, 0.05, ("q_proj", "v_proj"))
    assert (com.learning_rate, com.num_train_epochs, com.per_device_train_batch_size,
            com.gradient_accumulation_steps, com.model_max_length, com.val_set_size) == \
        (2e-5, 300, 12, 4, 1024, 10)
    cm = load_config("cm")
    assert (cm.method, cm.learning_rate, cm.num_train_epochs, cm.per_device_train_batch_size,
            cm.gradient_accumulation_steps, cm.model_max_length, cm.warmup_ratio,
            cm.lr_scheduler_type) == ("full", 2e-5, 3, 6, 12, 512, 0.03, "cosine")
    ma = load_config("ma")
    assert (ma.block_size, ma.per_device_train_batch_size, ma.gradient_accumulation_steps,
            ma.num_train_epochs, ma.learning_rate, ma.bf16) == (1024, 3, 8, 3, 5e-5, True)
    assert default_config_path("ma").is_file()

    user = tmp_path / "mine.json"
    user.write_text(json.dumps({"_note": "comment", "learning_rate": 1e-4, "lora_r": 16}))
    cfg = load_config("com", user, lora_r=32, quantization="nf4")
    assert (cfg.learning_rate, cfg.lora_r, cfg.quantization, cfg.lora_alpha) == (1e-4, 32, "nf4", 16)
    with pytest.raises(ValueError, match="unknown key"):
        load_config("com", lora_rank=4)
    with pytest.raises(ValueError, match="needs method 'lora'"):
        load_config("cm", quantization="nf4")
    with pytest.raises(ValueError, match="positive integer"):
        load_config("ma", block_size=0)


# --- the stages ----------------------------------------------------------------------------


def test_ma_from_plain_llama_full(llama, tmp_path):
    corpus = tmp_path / "train.txt"
    corpus.write_text("".join(f"<sosp>{''.join(f'<{u}>' for u in UNITS)}<eosp>\n" for _ in range(6)))
    out = tmp_path / "run"
    outcome = _run("ma", llama, corpus, out, block_size=32, learning_rate=1e-2, val_set_size=0.2)
    losses = _losses(out)
    assert len(losses) == 8 and losses[-1] < 0.6 * losses[0]
    assert outcome.kind == "model" and outcome.output == out / "model" and outcome.base_model == out / "base"
    assert "eval_loss" in outcome.metrics and (out / "samples.jsonl").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-4", "checkpoint-8"]
    for folder in (outcome.output, out / "checkpoints" / "checkpoint-4"):  # checkpoints load too
        model = SpeechGPTModel.from_pretrained(folder, None, quantization=None, progress=False)
        assert model.vocab_size == len(model.tokenizer) and len(model.vocab.control_ids) == 4
    assert not list(out.rglob(".*staging*")) and not list(out.rglob("*.tmp"))


def test_cm_full_with_loss_on_the_response(speechgpt, cm_file, tmp_path):
    out = tmp_path / "run"
    outcome = _run("cm", speechgpt, cm_file, out, learning_rate=3e-3, loss_on="response")
    losses = _losses(out)
    assert losses[-1] < 0.5 * losses[0]
    tuned = SpeechGPTModel.from_pretrained(outcome.output, None, quantization=None, dtype=torch.float32,
                                           progress=False)
    base = SpeechGPTModel.from_pretrained(speechgpt, None, quantization=None, dtype=torch.float32,
                                          progress=False)
    sample = json.loads(cm_file.read_text().splitlines()[0])
    ids = tuned.encode(sample["prefix"] + sample["plain_text"])
    assert not torch.allclose(_logits(tuned, ids), _logits(base, ids))
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["loss_on"] == "response" and saved["stage"] == "cm"


def test_com_lora_adapter_loads_in_the_runtime_and_changes_its_output(speechgpt, com_file, tmp_path):
    out = tmp_path / "run"
    outcome = _run("com", speechgpt, com_file, out, learning_rate=1e-2)
    losses = _losses(out)
    assert losses[-1] < 0.7 * losses[0]
    assert outcome.kind == "adapter" and outcome.base_model == speechgpt
    files = sorted(p.name for p in outcome.output.iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((outcome.output / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], sorted(config["target_modules"])) == (8, 16, ["q_proj", "v_proj"])
    plain = SpeechGPTModel.from_pretrained(speechgpt, None, quantization=None, dtype=torch.float32, progress=False)
    tuned = SpeechGPTModel.from_pretrained(speechgpt, outcome.output, quantization=None,
                                           dtype=torch.float32, progress=False)
    ids = plain.encode(json.loads(com_file.read_text().splitlines()[0])["plain_text"])
    assert not torch.allclose(_logits(tuned, ids), _logits(plain, ids), atol=1e-3)


def test_com_qlora_on_the_nf4_model(speechgpt, com_file, tmp_path):
    out = tmp_path / "run"
    outcome = _run("com", speechgpt, com_file, out, quantization="nf4", learning_rate=1e-2,
                   gradient_checkpointing=True, max_steps=6, save_steps=6)
    losses = _losses(out)
    assert losses[-1] < 0.8 * losses[0]
    plain = SpeechGPTModel.from_pretrained(speechgpt, None, progress=False)  # nf4, as served
    tuned = SpeechGPTModel.from_pretrained(speechgpt, outcome.output, progress=False)
    ids = plain.encode(META_INSTRUCTION + "[Human]: hi <eoh>. [SpeechGPT]: ")
    assert not torch.allclose(_logits(tuned, ids), _logits(plain, ids), atol=1e-3)


def test_lora_trains_the_new_token_rows(llama, com_file, tmp_path):
    corpus = tmp_path / "train.txt"
    corpus.write_text("".join(f"<sosp>{''.join(f'<{u}>' for u in UNITS)}<eosp>\n" for _ in range(6)))
    out = tmp_path / "run"
    outcome = _run("ma", llama, corpus, out, method="lora", block_size=32, learning_rate=1e-2, max_steps=4)
    assert outcome.kind == "adapter" and outcome.base_model == out / "base"
    base = SpeechGPTModel.from_pretrained(outcome.base_model, None, quantization=None,
                                          dtype=torch.float32, progress=False)
    merged = SpeechGPTModel.from_pretrained(outcome.base_model, outcome.output, quantization=None,
                                            dtype=torch.float32, progress=False)
    unit = merged.unit_id(UNITS[0])
    before, after = base.model.get_input_embeddings().weight, merged.model.get_input_embeddings().weight
    assert not torch.allclose(before[unit], after[unit])  # a speech token row was trained
    torch.testing.assert_close(before[:merged.unit_token_offset], after[:merged.unit_token_offset])


# --- bookkeeping ---------------------------------------------------------------------------


def test_atomic_directory_keeps_the_old_folder_on_failure(tmp_path):
    target = tmp_path / "adapter"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "first"
    with atomic_directory(target) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert [p.name for p in target.iterdir()] == ["b.txt"]


def test_errors_are_actionable(speechgpt, com_file, tmp_path):
    with pytest.raises(TrainingError, match="--model"):
        train(load_config("ma", train_file=str(com_file), output_dir=str(tmp_path)))
    with pytest.raises(TrainingError, match="--train-file"):
        train(load_config("com", model=str(speechgpt), output_dir=str(tmp_path)))
    empty = _jsonl(tmp_path / "bad.jsonl", [{"prefix": "x"}])
    with pytest.raises(TrainingError, match="no usable training sample"):
        train(load_config("com", model=str(speechgpt), train_file=str(empty), output_dir=str(tmp_path),
                          val_set_size=0, bf16=False))


def test_train_command(speechgpt, com_file, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="speechgpt-agent")
    add_train_parser(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "run"
    args = parser.parse_args([
        "train", "--stage", "com", "--model", str(speechgpt), "--train-file", str(com_file),
        "--output-dir", str(out), "--max-steps", "2", "--no-bf16", "--val-set-size", "1",
        "--per-device-train-batch-size", "2", "--lora-r", "4", "--lora-target-modules", "q_proj,k_proj",
        "--trainer-arg", "logging_steps=2", "--sample-max-new-tokens", "0", "--no-progress"])
    assert args.func(args) == 0
    assert f"adapter={str(out / 'adapter')!r}" in capsys.readouterr().out
    saved = json.loads((out / "train_config.json").read_text())
    assert (saved["lora_r"], saved["lora_target_modules"], saved["max_steps"], saved["val_set_size"]) == \
        (4, ["q_proj", "k_proj"], 2, 1)
    assert saved["trainer_args"] == {"logging_steps": 2} and saved["learning_rate"] == 2e-5
    assert not (out / "samples.jsonl").exists()


def test_expand_command(llama, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="speechgpt-agent")
    add_train_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", "--stage", "expand", "--model", str(llama), "--output-dir", str(tmp_path)])
    assert args.func(args) == 0
    assert f"--stage ma --model {tmp_path / 'base'}" in capsys.readouterr().out
    assert json.loads((tmp_path / "base" / "added_tokens.json").read_text())["<eos>"] > 1000
