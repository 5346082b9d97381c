"""fairseq HuBERT -> transformers conversion, checked against fairseq's own arithmetic.

The oracle below re-implements fairseq's ``HubertModel.extract_features(output_layer=L)``
in plain torch on the fairseq state dict (conv stack, weight-normalised positional conv,
padding of the frame axis to a multiple of 2 with a key-padding mask, post-/pre-LN layers,
early stop at layer L). The converted transformers model must give the same features.
"""

from __future__ import annotations

import argparse
import json
import math
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from speechgpt_agent.checkpoints import load_torch_checkpoint
from speechgpt_agent.errors import CheckpointError, ModelNotFoundError, UnsafeCheckpointError
from speechgpt_agent.hubert import (
    UPSTREAM_CHECKPOINT,
    HubertConfigWarning,
    convert_fairseq_hubert,
    hubert_config_from_fairseq,
    load_hubert,
    parse_conv_feature_layers,
)
from speechgpt_agent.testing.hubert import make_fairseq_hubert_checkpoint
from speechgpt_agent.units import SpeechTokenizer

STRIDES = [5, 2, 2, 2, 2, 2, 2]


def fairseq_features(sd: dict, cfg: dict, wav: torch.Tensor, output_layer: int) -> torch.Tensor:
    """fairseq ``extract_features(source=wav[None], mask=False, output_layer=...)[0][0]``."""
    x = wav[None, None].double()
    sd = {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}
    for i, stride in enumerate(STRIDES):
        p = f"feature_extractor.conv_layers.{i}."
        x = F.conv1d(x, sd[p + "0.weight"], sd.get(p + "0.bias"), stride=stride)
        if cfg["extractor_mode"] == "layer_norm":
            x = F.layer_norm(x.transpose(1, 2), x.shape[1:2], sd[p + "2.1.weight"],
                             sd[p + "2.1.bias"], 1e-5).transpose(1, 2)
        elif i == 0:
            x = F.group_norm(x, x.shape[1], sd[p + "2.weight"], sd[p + "2.bias"], 1e-5)
        x = F.gelu(x)
    x = x.transpose(1, 2)
    x = F.layer_norm(x, x.shape[-1:], sd["layer_norm.weight"], sd["layer_norm.bias"], 1e-5)
    if "post_extract_proj.weight" in sd:
        x = F.linear(x, sd["post_extract_proj.weight"], sd["post_extract_proj.bias"])
    dim, kernel = x.shape[-1], cfg["conv_pos"]
    y = x.transpose(1, 2)
    if cfg.get("conv_pos_batch_norm"):
        y = F.batch_norm(y, sd["encoder.pos_conv.0.running_mean"], sd["encoder.pos_conv.0.running_var"],
                         sd["encoder.pos_conv.0.weight"], sd["encoder.pos_conv.0.bias"], False, 0.0, 1e-5)
        weight, bias = sd["encoder.pos_conv.1.weight"], sd["encoder.pos_conv.1.bias"]
    else:  # nn.utils.weight_norm(dim=2): w = g * v / ||v||, the norm over all dims but 2
        v, g = sd["encoder.pos_conv.0.weight_v"], sd["encoder.pos_conv.0.weight_g"]
        weight = g * v / v.norm(dim=(0, 1), keepdim=True)
        bias = sd["encoder.pos_conv.0.bias"]
    y = F.conv1d(y, weight, bias, padding=kernel // 2, groups=cfg["conv_pos_groups"])
    if kernel % 2 == 0:
        y = y[:, :, :-1]
    x = x + F.gelu(y).transpose(1, 2)

    def ln(t: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(t, (dim,), sd[name + ".weight"], sd[name + ".bias"], 1e-5)

    pre_ln = cfg["layer_norm_first"]
    if not pre_ln:
        x = ln(x, "encoder.layer_norm")
    frames = x.shape[1]
    pad = -frames % 2  # required_seq_len_multiple = 2
    x = F.pad(x, (0, 0, 0, pad))
    key_pad = torch.zeros(x.shape[1], dtype=torch.bool)
    key_pad[frames:] = True
    heads = cfg["encoder_attention_heads"]

    def attention(t: torch.Tensor, p: str) -> torch.Tensor:
        def proj(name: str) -> torch.Tensor:
            out = F.linear(t, sd[f"{p}self_attn.{name}.weight"], sd[f"{p}self_attn.{name}.bias"])
            return out.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)

        q, k, v = proj("q_proj"), proj("k_proj"), proj("v_proj")
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
        scores = scores.masked_fill(key_pad, float("-inf"))
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(t.shape)
        return F.linear(out, sd[f"{p}self_attn.out_proj.weight"], sd[f"{p}self_attn.out_proj.bias"])

    def ffn(t: torch.Tensor, p: str) -> torch.Tensor:
        return F.linear(F.gelu(F.linear(t, sd[p + "fc1.weight"], sd[p + "fc1.bias"])),
                        sd[p + "fc2.weight"], sd[p + "fc2.bias"])

    for i in range(output_layer):
        p = f"encoder.layers.{i}."
        if pre_ln:
            x = x + attention(ln(x, p + "self_attn_layer_norm"), p)
            x = x + ffn(ln(x, p + "final_layer_norm"), p)
        else:
            x = ln(x + attention(x, p), p + "self_attn_layer_norm")
            x = ln(x + ffn(x, p), p + "final_layer_norm")
    return x[0, :frames].float()


VARIANTS = {
    # mHuBERT's shape: GroupNorm extractor, post-LN, conv width != model width (projection)
    "mhubert": {},
    "pre_ln": {"extractor_mode": "layer_norm", "layer_norm_first": True, "conv_bias": True},
    "batch_norm_pos_conv_legacy_args": {"conv_pos_batch_norm": True, "legacy_args": True},
    "no_projection_odd_kernel": {"conv_dim": 32, "conv_pos": 7, "layer_norm_first": True},
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def converted(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    options = VARIANTS[request.param]
    pt = make_fairseq_hubert_checkpoint(root / "hubert.pt", seed=3, **options)
    out = convert_fairseq_hubert(pt, root / "hf", trust_pickle=True)
    ckpt = load_torch_checkpoint(pt, trust_pickle=True)
    cfg = {
        "extractor_mode": options.get("extractor_mode", "default"),
        "layer_norm_first": options.get("layer_norm_first", False),
        "conv_pos": options.get("conv_pos", 8),
        "conv_pos_groups": 4,
        "conv_pos_batch_norm": options.get("conv_pos_batch_norm", False),
        "encoder_attention_heads": 4,
    }
    return pt, out, ckpt["model"], cfg


def test_converted_model_matches_fairseq_extract_features(converted):
    _, out, sd, cfg = converted
    model, feature_extractor = load_hubert(out, device="cpu")
    generator = torch.Generator().manual_seed(0)
    for layer in (1, 2):  # 2 = the last layer: no final encoder LayerNorm even when pre-LN
        tokenizer = SpeechTokenizer(model, feature_extractor, np.zeros((1, 32), np.float32),
                                    layer=layer)
        for n in (400, 3_700):  # 1 and 11 frames (odd: fairseq pads the frame axis to even)
            wav = torch.randn(n, generator=generator) * 0.1
            expected = fairseq_features(sd, cfg, wav, output_layer=layer)
            got = tokenizer.features(wav.numpy())
            assert got.shape == (math.floor((n - 400) / 320) + 1, 32)
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_every_inference_weight_is_mapped_and_pretraining_weights_are_dropped(converted):
    from transformers import HubertModel

    _, out, sd, _ = converted
    weights = load_file(out / "model.safetensors")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "hubert"
    reference_keys = set(HubertModel(_config(out)).state_dict())
    # transformers may save weight-norm parameters under their legacy names
    legacy = {k.replace("parametrizations.weight.original0", "weight_g")
               .replace("parametrizations.weight.original1", "weight_v") for k in reference_keys}
    assert set(weights) in (reference_keys, legacy)
    assert not any("final_proj" in k or "label_embs" in k for k in weights)
    torch.testing.assert_close(weights["encoder.layers.1.attention.q_proj.weight"],
                               sd["encoder.layers.1.self_attn.q_proj.weight"], rtol=0, atol=0)
    torch.testing.assert_close(weights["masked_spec_embed"], sd["mask_emb"], rtol=0, atol=0)


def _config(folder):
    from transformers import HubertConfig

    return HubertConfig.from_pretrained(folder)


def test_weight_norm_is_carried_as_g_and_v(converted):
    _, out, sd, cfg = converted
    if cfg["conv_pos_batch_norm"]:
        pytest.skip("this variant has no weight norm")
    model, _ = load_hubert(out, device="cpu")
    v, g = sd["encoder.pos_conv.0.weight_v"], sd["encoder.pos_conv.0.weight_g"]
    expected = g * v / v.norm(dim=(0, 1), keepdim=True)
    torch.testing.assert_close(model.encoder.pos_conv_embed.conv.weight, expected)


@pytest.mark.parametrize("normalize", [False, True])
def test_preprocessor_config_carries_task_normalize(tmp_path, normalize):
    pt = make_fairseq_hubert_checkpoint(tmp_path / "h.pt", normalize=normalize)
    out = convert_fairseq_hubert(pt, tmp_path / "hf", trust_pickle=True)
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert pre["do_normalize"] is normalize
    assert pre["sampling_rate"] == 16000
    _, feature_extractor = load_hubert(out, device="cpu")
    assert feature_extractor.do_normalize is normalize


def _set_preprocessor(folder, **values):
    path = folder / "preprocessor_config.json"
    pre = json.loads(path.read_text())
    pre.update(values)
    path.write_text(json.dumps(pre))


@pytest.mark.parametrize("normalize", [False, True])
def test_do_normalize_is_checked_against_the_checkpoint_task(tmp_path, normalize, recwarn):
    """The fairseq task decides the waveform layer norm; a folder that says otherwise warns."""
    pt = make_fairseq_hubert_checkpoint(tmp_path / "h.pt", normalize=normalize)
    out = convert_fairseq_hubert(pt, tmp_path / "hf", trust_pickle=True)
    config = json.loads((out / "config.json").read_text())
    assert config["fairseq_task"] == {"normalize": normalize, "sample_rate": 16000, "checkpoint": "h.pt"}
    load_hubert(out, device="cpu")
    assert not [w for w in recwarn if issubclass(w.category, HubertConfigWarning)]  # they agree

    _set_preprocessor(out, do_normalize=not normalize)  # e.g. transformers' default True
    with pytest.warns(HubertConfigWarning, match=f"do_normalize={str(not normalize).lower()} but the "
                                                 f"task has normalize={str(normalize).lower()}"):
        _, fe = load_hubert(out, device="cpu")
    assert fe.do_normalize is normalize  # the task wins
    # the speech tokenizer follows it too: its features are those of the task's input
    tok = SpeechTokenizer(*load_hubert_quiet(out), np.zeros((1, 32), np.float32), layer=2)
    assert tok.feature_extractor.do_normalize is normalize

    (out / "preprocessor_config.json").unlink()  # no folder flag: the task's settings
    _, fe = load_hubert(out, device="cpu")
    assert fe.do_normalize is normalize and fe.sampling_rate == 16000


def _converted_without_task_record(tmp_path):
    """Like voidful/mhubert-base: a conversion of a normalize=False checkpoint whose config.json
    records no task and whose preprocessor_config.json says do_normalize=true."""
    pt = make_fairseq_hubert_checkpoint(tmp_path / UPSTREAM_CHECKPOINT, normalize=False)
    out = convert_fairseq_hubert(pt, tmp_path / "hf", trust_pickle=True)
    config = json.loads((out / "config.json").read_text())
    del config["fairseq_task"]
    (out / "config.json").write_text(json.dumps(config))
    _set_preprocessor(out, do_normalize=True)
    return pt, out


def test_the_default_hub_repo_is_fed_as_its_fairseq_task_was(tmp_path, monkeypatch):
    """voidful/mhubert-base records no task: its known one (no waveform normalisation, as the
    original speech2unit.py ran mhubert_base_vp_en_es_fr_it3.pt) wins over a
    preprocessor_config.json that says otherwise; the same files under a local path are
    taken as they are."""
    import shutil
    import warnings

    import huggingface_hub.constants as hub_constants

    from speechgpt_agent.hubert import DEFAULT_HUBERT

    _, out = _converted_without_task_record(tmp_path)
    repo = tmp_path / "cache" / f"models--{DEFAULT_HUBERT.replace('/', '--')}"
    commit = "0" * 40
    shutil.copytree(out, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", HubertConfigWarning)  # the user cannot fix the repo's file
        _, fe = load_hubert(DEFAULT_HUBERT, device="cpu")
    assert fe.do_normalize is False
    _, fe = load_hubert(out, device="cpu")
    assert fe.do_normalize is True


def load_hubert_quiet(folder):
    with pytest.warns(HubertConfigWarning):
        return load_hubert(folder, device="cpu")


def test_a_folder_without_the_record_is_checked_against_its_fairseq_checkpoint(tmp_path, recwarn):
    """Like voidful/mhubert-base: transformers files only; the upstream .pt beside them has the task."""
    pt, out = _converted_without_task_record(tmp_path)
    _, fe = load_hubert(out, device="cpu")  # nothing to compare with
    assert fe.do_normalize is True
    assert not [w for w in recwarn if issubclass(w.category, HubertConfigWarning)]

    (out / UPSTREAM_CHECKPOINT).write_bytes(pt.read_bytes())
    _, fe = load_hubert(out, device="cpu")  # the .pt is a pickle: read only with consent
    assert fe.do_normalize is True
    with pytest.warns(HubertConfigWarning, match=f"task of .*{UPSTREAM_CHECKPOINT}"):
        _, fe = load_hubert(out, device="cpu", trust_pickle=True)
    assert fe.do_normalize is False


def test_fairseq_pickle_needs_consent(tmp_path):
    pt = make_fairseq_hubert_checkpoint(tmp_path / "enum.pt")
    with zipfile.ZipFile(pt) as archive:  # cfg holds a fairseq enum member, as old checkpoints do
        pickled = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    assert b"fairseq.dataclass.constants\nChoices\n" in pickled
    for legacy in (False, True):
        pt = make_fairseq_hubert_checkpoint(tmp_path / f"h{legacy}.pt", legacy_args=legacy)
        with pytest.raises(UnsafeCheckpointError, match="trust_pickle=True"):
            convert_fairseq_hubert(pt, tmp_path / "hf")
        assert not (tmp_path / "hf").exists()


def test_corrupt_and_foreign_files_raise_checkpoint_error(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x80\x02not really a pickle" * 10)
    with pytest.raises(CheckpointError):
        convert_fairseq_hubert(garbage, tmp_path / "out", trust_pickle=True)

    good = make_fairseq_hubert_checkpoint(tmp_path / "h.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError):
        convert_fairseq_hubert(truncated, tmp_path / "out", trust_pickle=True)

    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(CheckpointError, match="not a fairseq checkpoint"):
        convert_fairseq_hubert(foreign, tmp_path / "out", trust_pickle=True)


def _edited_checkpoint(tmp_path, edit):
    pt = make_fairseq_hubert_checkpoint(tmp_path / "h.pt", legacy_args=True)
    ckpt = torch.load(pt, weights_only=False)  # plain Namespace: stdlib only
    edit(ckpt)
    torch.save(ckpt, tmp_path / "edited.pt")
    return tmp_path / "edited.pt"


def test_unmapped_missing_and_misshapen_weights_are_listed(tmp_path):
    def add_unknown(ckpt):
        ckpt["model"]["encoder.adapter.weight"] = torch.zeros(3)

    def drop_fc1(ckpt):
        del ckpt["model"]["encoder.layers.1.fc1.weight"]

    def reshape(ckpt):
        ckpt["model"]["encoder.layers.0.fc2.bias"] = torch.zeros(5)

    cases = [(add_unknown, "encoder.adapter.weight"),
             (drop_fc1, "encoder.layers.1.feed_forward.intermediate_dense.weight"),
             (reshape, "encoder.layers.0.fc2.bias")]
    for edit, named in cases:
        with pytest.raises(CheckpointError, match=named.replace(".", r"\.")):
            convert_fairseq_hubert(_edited_checkpoint(tmp_path, edit), tmp_path / "o", trust_pickle=True)


def test_unsupported_architectures_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="conformer"):
        hubert_config_from_fairseq({"layer_type": "conformer"})
    with pytest.raises(CheckpointError, match="activation_fn"):
        hubert_config_from_fairseq({"activation_fn": "mish"})

    def wav2vec(ckpt):
        ckpt["args"] = argparse.Namespace(**{**vars(ckpt["args"]), "arch": "wav2vec2"})

    with pytest.raises(CheckpointError, match="wav2vec2"):
        convert_fairseq_hubert(_edited_checkpoint(tmp_path, wav2vec), tmp_path / "o", trust_pickle=True)


def test_conv_feature_layers_are_parsed_without_eval():
    assert parse_conv_feature_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2") == (
        [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    )
    for bad in ("__import__('os').system('true')", "[(512, 10)]", "[]", "[(512, 10, -5)]", "[(1,2,3)] * x"):
        with pytest.raises(CheckpointError, match="conv_feature_layers"):
            parse_conv_feature_layers(bad)


def test_missing_inputs_raise_model_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError):
        convert_fairseq_hubert(tmp_path / "absent.pt", tmp_path / "out", trust_pickle=True)
    with pytest.raises(ModelNotFoundError):
        load_hubert(tmp_path / "absent")
    only_fairseq = tmp_path / "speech2unit"
    make_fairseq_hubert_checkpoint(only_fairseq / "mhubert_base_vp_en_es_fr_it3.pt")
    with pytest.raises(ModelNotFoundError, match="speechgpt-agent convert hubert"):
        load_hubert(only_fairseq)


def test_folder_with_incomplete_weights_is_refused(converted, tmp_path):
    import shutil

    _, out, _, _ = converted
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    weights = load_file(broken / "model.safetensors")
    weights.pop(next(k for k in weights if k.startswith("encoder.layers.0.final_layer_norm")))
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="final_layer_norm"):
        load_hubert(broken, device="cpu")
