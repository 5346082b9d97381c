"""A pickled adapter or HuBERT that torch's weights_only refuses is a typed error with the fix,
in Python and on the command line (one line, no traceback)."""

from __future__ import annotations

import argparse
import shutil

import pytest
import torch
from safetensors.torch import load_file

from speechgpt_agent.cli import main
from speechgpt_agent.errors import UnsafeCheckpointError
from speechgpt_agent.model import SpeechGPTModel
from speechgpt_agent.units import SpeechTokenizer


@pytest.fixture
def pickled_adapter(tiny_model_set, tmp_path):
    folder = tmp_path / "adapter"
    shutil.copytree(tiny_model_set.adapter, folder)
    weights = torch.load(folder / "adapter_model.bin", weights_only=True)
    torch.save({**weights, "meta": argparse.Namespace(epoch=3)}, folder / "adapter_model.bin")
    return folder


@pytest.fixture
def pickled_hubert(tiny_model_set, tmp_path):
    folder = tmp_path / "hubert"
    shutil.copytree(tiny_model_set.speech_tokenizer, folder)
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save({**weights, "meta": argparse.Namespace(epoch=3)}, folder / "pytorch_model.bin")
    return folder


def test_a_refused_pickled_adapter_is_a_typed_error_with_the_fix(tiny_model_set, pickled_adapter):
    with pytest.raises(UnsafeCheckpointError, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1.*safetensors"):
        SpeechGPTModel.from_pretrained(tiny_model_set.model, pickled_adapter, quantization=None, progress=False)


def test_a_refused_pickled_hubert_is_a_typed_error_with_the_fix(pickled_hubert):
    with pytest.raises(UnsafeCheckpointError, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1.*save_pretrained"):
        SpeechTokenizer.from_pretrained(pickled_hubert, device="cpu")


def test_the_cli_reports_a_refused_pickle_in_one_line(tiny_model_set, pickled_adapter, capsys, one_thread):
    s = tiny_model_set
    code = main(["chat", "--model", str(s.model), "--adapter", str(pickled_adapter), "--hubert",
                 str(s.speech_tokenizer), "--vocoder", str(s.vocoder), "--quantization", "none",
                 "--text", "hi"])
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]  # after the loading progress lines
    assert code == 2 and "Traceback" not in err
    assert last.startswith("speechgpt-agent chat: error:") and "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" in last
