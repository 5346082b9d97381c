"""SpeechGPTModel on tiny checkpoints in the released layouts: 4-bit loading, adapter, tokenizer
fidelity, refusal of other checkpoints, and token streaming."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speechgpt_agent.errors import CheckpointError, ModelNotFoundError
from speechgpt_agent.model import GenerationOptions, SpeechGPTModel
from speechgpt_agent.prompt import ADDED_TOKENS, build_prompt, format_units
from speechgpt_agent.testing.llm import make_tiny_lora_adapter, make_tiny_speechgpt

FREE = GenerationOptions(max_new_tokens=24, min_new_tokens=0)
GREEDY = GenerationOptions(max_new_tokens=24, min_new_tokens=0, do_sample=False)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def cm(tmp_path_factory):
    return make_tiny_speechgpt(tmp_path_factory.mktemp("SpeechGPT-7B-cm"))


@pytest.fixture(scope="module")
def com(cm, tmp_path_factory):
    return make_tiny_lora_adapter(cm, tmp_path_factory.mktemp("SpeechGPT-7B-com"))


@pytest.fixture(scope="module")
def model(cm, com):
    return SpeechGPTModel.from_pretrained(cm, com, progress=False)


@pytest.fixture(scope="module")
def base(cm):
    return SpeechGPTModel.from_pretrained(cm, None, progress=False)


@pytest.fixture()
def copy_of(cm, tmp_path):
    def make(edit):
        folder = shutil.copytree(cm, tmp_path / "copy")
        edit(folder)
        return folder
    return make


def logits(m, ids):
    with torch.inference_mode():
        return m.model(input_ids=torch.tensor([ids])).logits.float()


def prompt_ids(m):
    return m.encode(build_prompt(units=[661, 987, 511]))


# --- loading -------------------------------------------------------------------------------------


def test_loads_in_nf4_with_double_quantization_on_cpu(model, cm, com):
    import bitsandbytes as bnb

    linears = [m for m in model.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linears) == 2 * 7  # q k v o gate up down per layer; lm_head stays unquantized
    for layer in linears:
        assert isinstance(layer.weight, bnb.nn.Params4bit)
        assert layer.weight.quant_type == "nf4" and layer.weight.compress_statistics
        assert layer.compute_dtype == torch.bfloat16
    info = model.describe()
    assert info["quantization"] == "nf4" and info["dtype"] == "bfloat16"
    assert info["device"] == "cpu" and info["adapter"] == str(com)
    assert info["model"] == str(cm) and not info["adapter_merged"]
    assert info["vocab_size"] == 400 + 1006 and info["context_length"] == 2048
    full = SpeechGPTModel.from_pretrained(cm, None, quantization=None, progress=False)
    ids = prompt_ids(full)
    exact, nf4 = logits(full, ids), logits(SpeechGPTModel.from_pretrained(cm, None, progress=False), ids)
    assert (nf4 - exact).abs().mean() < 0.15 * exact.abs().mean()  # 4-bit error, not garbage
    lora = 2 * 2 * 8 * (64 + 64)  # layers x (q, v) x r x (in + out)
    assert info["parameters"] == full.num_parameters() + lora
    assert model.memory_footprint() < full.memory_footprint()


def test_int8(cm):
    import bitsandbytes as bnb

    m = SpeechGPTModel.from_pretrained(cm, None, quantization="int8", progress=False)
    assert any(isinstance(x, bnb.nn.Linear8bitLt) for x in m.model.modules())
    assert m.describe()["dtype"] == "float16"


def test_adapter_is_a_lora_on_q_and_v_and_changes_logits(model, base):
    lora = {n.split(".")[-1] for n, mod in model.model.named_modules() if hasattr(mod, "lora_A")}
    assert lora == {"q_proj", "v_proj"}
    ids = prompt_ids(model)
    assert (logits(model, ids) - logits(base, ids)).abs().max() > 1.0


def test_unquantized_adapter_is_merged_into_the_weights(cm, com):
    kw = {"quantization": None, "dtype": torch.float32, "progress": False}
    merged = SpeechGPTModel.from_pretrained(cm, com, **kw)
    separate = SpeechGPTModel.from_pretrained(cm, com, merge_adapter=False, **kw)
    assert merged.describe()["adapter_merged"] and not separate.describe()["adapter_merged"]
    assert not any(hasattr(m, "lora_A") for m in merged.model.modules())
    ids = prompt_ids(merged)
    torch.testing.assert_close(logits(merged, ids), logits(separate, ids), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="re-quantizes"):
        SpeechGPTModel.from_pretrained(cm, com, merge_adapter=True, progress=False)


def test_safetensors_layouts_load_the_same_weights(cm, com, tmp_path):
    cm_st = make_tiny_speechgpt(tmp_path / "cm", safetensors=True)  # same seed as `cm`
    com_st = make_tiny_lora_adapter(cm_st, tmp_path / "com", safetensors=True)
    kw = {"quantization": None, "dtype": torch.float32, "progress": False}
    a = SpeechGPTModel.from_pretrained(cm_st, com_st, **kw)
    b = SpeechGPTModel.from_pretrained(cm, com, **kw)
    ids = prompt_ids(a)
    torch.testing.assert_close(logits(a, ids), logits(b, ids))


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_plain_llama_is_refused(tmp_path):
    llama = make_tiny_speechgpt(tmp_path / "llama", with_speech_tokens=False)
    with pytest.raises(CheckpointError, match="is not a SpeechGPT checkpoint.*no speech-unit"):
        SpeechGPTModel.from_pretrained(llama, None, progress=False)


@pytest.mark.parametrize("edit, match", [
    (lambda f: _edit_json(f / "added_tokens.json", **{"<5>": 406, "<6>": 405}), "contiguous"),
    (lambda f: _edit_json(f / "added_tokens.json", **{"<sosp>": 3000}) or (f / "added_tokens.json")
     .write_text(json.dumps({k: v for k, v in json.loads((f / "added_tokens.json").read_text())
                             .items() if k != "<eosp>"})), "no <eosp> token"),
    (lambda f: _edit_json(f / "config.json", vocab_size=410), "vocab_size 410, too small"),
    (lambda f: _edit_json(f / "config.json", model_type="gpt2"), "not 'llama'"),
    (lambda f: (f / "tokenizer.model").unlink(), "no tokenizer.model"),
    (lambda f: (f / "config.json").unlink(), "no config.json"),
    (lambda f: (f / "pytorch_model.bin").write_bytes(b"not a checkpoint"), "cannot load the weights"),
])
def test_broken_checkpoints_are_refused(copy_of, edit, match):
    with pytest.raises(CheckpointError, match=match):
        SpeechGPTModel.from_pretrained(copy_of(edit), None, progress=False)


def test_bad_adapters_are_refused(cm, tmp_path):
    with pytest.raises(CheckpointError, match="no adapter_config.json"):
        SpeechGPTModel.from_pretrained(cm, tmp_path, progress=False)
    other = make_tiny_speechgpt(tmp_path / "wider", hidden_size=32, heads=2)
    with pytest.raises(CheckpointError, match="cannot apply the adapter"):
        SpeechGPTModel.from_pretrained(cm, make_tiny_lora_adapter(other, tmp_path / "a"),
                                       progress=False)


def test_missing_models_name_the_hub_id(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="fnlp/SpeechGPT-7B-cm.*local"):
        SpeechGPTModel.from_pretrained(progress=False)
    with pytest.raises(ModelNotFoundError):
        SpeechGPTModel.from_pretrained(tmp_path / "nowhere", None, progress=False)


def test_bad_quantization_option(cm):
    with pytest.raises(ValueError, match="quantization"):
        SpeechGPTModel.from_pretrained(cm, None, quantization="fp4", progress=False)


# --- tokenizer ---------------------------------------------------------------------------------------


def test_speech_tokens(model):
    off = model.unit_token_offset
    assert off == 400 and model.unit_id(0) == off and model.unit_id(999) == off + 999
    assert (model.sosp_id, model.eosp_id, model.eos_id) == (1400, 1401, 2)
    assert model.token_to_unit(off + 7) == 7
    assert model.token_to_unit(model.sosp_id) is None and model.token_to_unit(5) is None
    with pytest.raises(ValueError):
        model.unit_id(1000)
    assert model.encode(format_units([5, 999])) == [1, 1400, off + 5, off + 999, 1401]
    assert model.tokenizer.pad_token_id == 0 and model.tokenizer.padding_side == "left"


def reference_encode(sp, added, text):
    """transformers 4.33's slow LlamaTokenizer (legacy), which SpeechGPT was trained with:
    split on added and special tokens, strip whitespace beside added tokens, sentencepiece
    each remaining piece on its own, prepend <s>."""
    specials = {"<unk>": 0, "<s>": 1, "</s>": 2}
    names = sorted([*added, *specials], key=len, reverse=True)
    parts = re.split("(" + "|".join(map(re.escape, names)) + ")", text)
    for i, part in enumerate(parts):
        if part in added:
            if i + 1 < len(parts):
                parts[i + 1] = parts[i + 1].lstrip()
            if i > 0:
                parts[i - 1] = parts[i - 1].rstrip()
    ids = [1]
    for part in parts:
        if part in added:
            ids.append(added[part])
        elif part in specials:
            ids.append(specials[part])
        elif part:
            ids.extend(sp.encode(part))
    return ids


# (\x1c-\x1f are whitespace to Python's strip() but not to tokenizers': left out)
_TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",),
                                       exclude_characters="\x1c\x1d\x1e\x1f"), max_size=20)
_PROMPT = st.lists(st.one_of(
    _TEXT, st.sampled_from(ADDED_TOKENS[-8:] + ADDED_TOKENS[:3] + ("<s>", "</s>")),
    st.sampled_from([" ", "  ", "\n", ": ", ". ", " <eoh>. "]),
), max_size=16).map("".join)


@settings(max_examples=150, deadline=None)
@given(_PROMPT)
def test_tokenizer_matches_the_training_time_tokenizer(model, cm, text):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(cm / "tokenizer.model"))
    added = json.loads((cm / "added_tokens.json").read_text())
    assert model.encode(text) == reference_encode(sp, added, text)


def test_encode_rejects_lone_surrogates(model):
    with pytest.raises(ValueError, match="surrogates"):
        model.encode("a\ud800b")


def test_prompt_tokenization_example(model):
    toks = model.tokenizer.convert_ids_to_tokens(model.encode("[Human]: hi <eoh>. [SpeechGPT]: "))
    assert toks[:3] == ["<s>", "[Human]", "▁"] and "<eoh>" in toks  # "▁:" pieces, no spaces
    assert toks[toks.index("<eoh>") + 1] == "▁" and toks[-1] == "▁"
