"""Offline unit vocoder: fairseq CodeHiFiGAN formats, weight-norm folding, fidelity, errors."""

from __future__ import annotations

import copy
import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from speechgpt_agent.errors import CheckpointError, ModelNotFoundError, UnitError
from speechgpt_agent.testing.vocoder import (
    build_fairseq_codehifigan,
    make_fairseq_codehifigan,
    tiny_codehifigan_config,
)
from speechgpt_agent.vocoder import (
    CodeHiFiGANConfig,
    UnitVocoder,
    convert_vocoder,
    durations_from_log,
    fold_weight_norm,
)

HOP = 320


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_fairseq_codehifigan(tmp_path_factory.mktemp("vocoder"), seed=0)


@pytest.fixture(scope="module")
def vocoder(tiny_dir):
    return UnitVocoder.from_pretrained(tiny_dir, device="cpu")


def _units(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1000, n)


# ----------------------------------------------------------------- fairseq's own computation


def _fairseq_forward(
    gen: torch.nn.Module, cfg: dict, code: torch.Tensor, dur_prediction: bool
) -> torch.Tensor:
    """fairseq ``CodeGenerator.forward`` (hifigan.py / codehifigan.py) on the weight-norm modules."""
    x = gen.dict(code).transpose(1, 2)
    if dur_prediction:
        dp = gen.dur_predictor
        h = dp.ln1(dp.conv1(x).transpose(1, 2))
        h = dp.ln2(dp.conv2(h.transpose(1, 2)).transpose(1, 2))
        log_dur = dp.proj(h).squeeze(2)
        dur = torch.clamp(torch.round(torch.exp(log_dur) - 1).long(), min=1)
        x = torch.repeat_interleave(x, dur.view(-1), dim=2)
    x = gen.conv_pre(x)
    kernels = len(cfg["resblock_kernel_sizes"])
    for i, up in enumerate(gen.ups):
        x = up(F.leaky_relu(x, 0.1))
        xs = None
        for j in range(kernels):
            h = x
            block = gen.resblocks[i * kernels + j]
            for c1, c2 in zip(block.convs1, block.convs2):
                h = c2(F.leaky_relu(c1(F.leaky_relu(h, 0.1)), 0.1)) + h
            xs = h if xs is None else xs + h
        x = xs / kernels
    return torch.tanh(gen.conv_post(F.leaky_relu(x))).squeeze()


@pytest.mark.parametrize("dur_prediction", [True, False])
def test_matches_fairseq_forward_on_weight_norm_modules(vocoder, dur_prediction):
    cfg = tiny_codehifigan_config()
    reference = build_fairseq_codehifigan(cfg, seed=0)
    units = _units(23, seed=1)
    with torch.no_grad():
        expected = _fairseq_forward(
            reference, cfg, torch.as_tensor(units)[None], dur_prediction
        ).numpy()
    ours = vocoder.synthesize(units, None if dur_prediction else np.ones(23, dtype=int))
    assert ours.dtype == np.float32 and ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, atol=2e-5)
    assert np.abs(ours).max() > 0.05  # real signal, not silence


# ----------------------------------------------------------------- weight norm


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
@pytest.mark.parametrize("transposed", [True, False])
def test_fold_equals_torch_weight_norm(transposed):
    torch.manual_seed(0)
    conv = (
        torch.nn.ConvTranspose1d(6, 3, 8, 4, padding=2)
        if transposed
        else torch.nn.Conv1d(6, 3, 5, padding=2)
    )
    legacy = torch.nn.utils.weight_norm(copy.deepcopy(conv))
    with torch.no_grad():
        legacy.weight_g.mul_(torch.rand(legacy.weight_g.shape) + 0.5)  # g != |v|
    state = legacy.state_dict()
    # ConvTranspose1d weight is [in, out, k]: dim-0 norm is one magnitude per INPUT channel
    assert state["weight_g"].shape == ((6, 1, 1) if transposed else (3, 1, 1))
    folded = fold_weight_norm(state)
    assert set(folded) == {"weight", "bias"}
    plain = copy.deepcopy(conv)
    plain.load_state_dict(folded)
    x = torch.randn(2, 6, 11)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), legacy(x), rtol=1e-6, atol=1e-6)

    modern = torch.nn.utils.parametrizations.weight_norm(copy.deepcopy(conv))
    modern.load_state_dict(
        {
            "bias": state["bias"],
            "parametrizations.weight.original0": state["weight_g"],
            "parametrizations.weight.original1": state["weight_v"],
        }
    )
    torch.testing.assert_close(
        fold_weight_norm(modern.state_dict())["weight"],
        modern.weight.detach(),
        rtol=1e-6,
        atol=1e-7,
    )


def test_loaded_weights_equal_torch_removed_weight_norm(vocoder):
    reference = build_fairseq_codehifigan(tiny_codehifigan_config(), seed=0)
    for module in reference.modules():
        if hasattr(module, "weight_g"):
            torch.nn.utils.remove_weight_norm(module)
    expected = reference.state_dict()
    ours = vocoder.model.state_dict()
    assert set(ours) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(ours[key], value, rtol=1e-6, atol=1e-7, msg=key)


def test_fold_rejects_half_a_pair():
    with pytest.raises(CheckpointError, match="lacks its direction"):
        fold_weight_norm({"conv_pre.weight_g": torch.ones(2, 1, 1)})


# ----------------------------------------------------------------- config


def test_config_reads_released_json_and_ignores_training_keys():
    released = tiny_codehifigan_config(upsample_initial_channel=512, embedding_dim=128)
    config = CodeHiFiGANConfig.from_dict(released)
    assert config == CodeHiFiGANConfig()  # the defaults are the released vocoder
    assert config.hop_length == HOP and config.sampling_rate == 16000
    assert CodeHiFiGANConfig.from_dict(config.to_dict()) == config


def test_config_uses_fairseq_defaults_for_absent_keys():
    raw = tiny_codehifigan_config(dur_predictor_params=None, model_in_dim=80, embedding_dim=80)
    for key in ("sampling_rate", "code_hop_size", "model_in_dim"):
        raw.pop(key)
    config = CodeHiFiGANConfig.from_dict(raw)
    assert (
        config.model_in_dim == 80 and config.dur_predictor is None and config.sampling_rate == 16000
    )


@pytest.mark.parametrize(
    "change,message",
    [
        ({"f0": True}, "f0"),
        ({"resblock": "2"}, "resblock"),
        ({"model_in_dim": 17}, "model_in_dim"),
        ({"code_hop_size": 256}, "code_hop_size"),
        ({"upsample_kernel_sizes": [11, 8, 8, 4]}, "one length"),
        ({"upsample_rates": "fast"}, "malformed"),
        ({"upsample_kernel_sizes": [10, 8, 8, 4, 4]}, "parity"),
        (
            {
                "dur_predictor_params": {
                    "encoder_embed_dim": 16,
                    "var_pred_hidden_dim": 16,
                    "var_pred_kernel_size": 5,
                }
            },
            "kernel_size",
        ),
    ],
)
def test_config_rejects_unsupported_or_inconsistent(change, message):
    raw = tiny_codehifigan_config()
    raw.update(change)
    with pytest.raises(CheckpointError, match=message):
        CodeHiFiGANConfig.from_dict(raw)


def test_config_names_missing_keys():
    raw = tiny_codehifigan_config()
    del raw["num_embeddings"]
    with pytest.raises(CheckpointError, match="num_embeddings"):
        CodeHiFiGANConfig.from_dict(raw)


# ----------------------------------------------------------------- loading


def test_folder_file_and_converted_safetensors_give_identical_audio(tiny_dir, vocoder, tmp_path):
    units = _units(17, seed=2)
    expected = vocoder.synthesize(units)
    from_file = UnitVocoder.from_pretrained(tiny_dir / "g_00000100", device="cpu")
    np.testing.assert_array_equal(from_file.synthesize(units), expected)

    out = convert_vocoder(tiny_dir, tmp_path / "converted")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    converted = UnitVocoder.from_pretrained(out, device="cpu")
    assert converted.config == vocoder.config
    np.testing.assert_array_equal(converted.synthesize(units), expected)
    # a folder holding both prefers the converted weights
    shutil.copy(out / "model.safetensors", tmp_path / "model.safetensors")
    shutil.copytree(tiny_dir, tmp_path / "both")
    shutil.copy(out / "model.safetensors", tmp_path / "both" / "model.safetensors")
    torch.save({"generator": {}}, tmp_path / "both" / "model.pt")  # would fail if chosen
    np.testing.assert_array_equal(
        UnitVocoder.from_pretrained(tmp_path / "both", device="cpu").synthesize(units), expected
    )


@pytest.mark.parametrize("name", ["model.pt", "vocoder.pt"])
def test_upstream_checkpoint_names(tmp_path, vocoder, name):
    folder = make_fairseq_codehifigan(tmp_path, checkpoint_name=name)
    loaded = UnitVocoder.from_pretrained(folder, device="cpu")
    np.testing.assert_array_equal(loaded.synthesize([1, 2, 3]), vocoder.synthesize([1, 2, 3]))


def test_newest_training_checkpoint_is_used(tmp_path):
    make_fairseq_codehifigan(tmp_path, seed=1, checkpoint_name="g_00000900")
    make_fairseq_codehifigan(tmp_path, seed=2, checkpoint_name="g_00001000")
    loaded = UnitVocoder.from_pretrained(tmp_path, device="cpu")
    newest = UnitVocoder.from_pretrained(tmp_path / "g_00001000", device="cpu")
    np.testing.assert_array_equal(loaded.synthesize([4, 5, 6]), newest.synthesize([4, 5, 6]))


def test_missing_files_raise_model_not_found(tmp_path, tiny_dir):
    with pytest.raises(ModelNotFoundError, match="neither an existing local folder"):
        UnitVocoder.from_pretrained(tmp_path / "nowhere")
    shutil.copy(tiny_dir / "g_00000100", tmp_path / "g_00000100")
    with pytest.raises(ModelNotFoundError, match="config.json"):
        UnitVocoder.from_pretrained(tmp_path)
    with pytest.raises(ModelNotFoundError, match="config.json"):
        UnitVocoder.from_pretrained(tmp_path / "g_00000100")
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(tiny_dir / "config.json", empty / "config.json")
    with pytest.raises(ModelNotFoundError, match="no checkpoint"):
        UnitVocoder.from_pretrained(empty)


def test_corrupt_or_foreign_files_raise_checkpoint_error(tmp_path, tiny_dir):
    shutil.copy(tiny_dir / "config.json", tmp_path / "config.json")
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="model.pt"):
        UnitVocoder.from_pretrained(tmp_path, device="cpu")
    torch.save({"model": {"x": torch.zeros(1)}}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="no CodeHiFiGAN generator"):
        UnitVocoder.from_pretrained(tmp_path, device="cpu")
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="safetensors"):
        UnitVocoder.from_pretrained(tmp_path, device="cpu")
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        UnitVocoder.from_pretrained(tmp_path, device="cpu")


def test_weights_that_do_not_fit_the_config(tmp_path, tiny_dir):
    shutil.copy(tiny_dir / "g_00000100", tmp_path / "g_00000100")
    config = json.loads((tiny_dir / "config.json").read_text())
    config["upsample_initial_channel"] = 64
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="do not match its config.json.*conv_pre"):
        UnitVocoder.from_pretrained(tmp_path, device="cpu")


def test_save_pretrained_is_clean_and_round_trips(vocoder, tmp_path):
    vocoder.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert (
        CodeHiFiGANConfig.from_dict(json.loads((tmp_path / "config.json").read_text()))
        == vocoder.config
    )


# ----------------------------------------------------------------- synthesis semantics


def test_length_is_hop_times_total_duration(vocoder):
    units = _units(9, seed=3)
    durations = np.array([1, 0, 3, 2, 1, 5, 1, 1, 2])
    assert vocoder.hop_length == HOP and vocoder.sample_rate == 16000
    assert vocoder.synthesize(units, durations).shape == (HOP * durations.sum(),)
    predicted = vocoder.predict_durations(units)
    assert predicted.min() >= 1 and len(set(predicted.tolist())) > 1
    assert vocoder.synthesize(units).shape == (HOP * predicted.sum(),)
    np.testing.assert_array_equal(vocoder.synthesize(units), vocoder.synthesize(units, predicted))


def test_durations_from_log_rounds_then_clamps_to_one():
    log_d = torch.log(torch.tensor([1.4, 1.0, 0.5, 3.7, 5.2, 1.6]))
    # exp(log_d) - 1 = 0.4, 0.0, -0.5, 2.7, 4.2, 0.6
    assert durations_from_log(log_d).tolist() == [1, 1, 1, 3, 4, 1]


@pytest.mark.parametrize("exp_minus_one,frames", [(0.4, 1), (-0.3, 1), (2.7, 3), (1.2, 1)])
def test_predicted_duration_below_half_frame_becomes_one(tmp_path, exp_minus_one, frames):
    folder = make_fairseq_codehifigan(tmp_path)
    checkpoint = torch.load(folder / "g_00000100")
    checkpoint["generator"]["dur_predictor.proj.weight"].zero_()
    checkpoint["generator"]["dur_predictor.proj.bias"].fill_(math.log(1 + exp_minus_one))
    torch.save(checkpoint, folder / "g_00000100")
    vocoder = UnitVocoder.from_pretrained(folder, device="cpu")
    assert vocoder.predict_durations([5, 6, 7]).tolist() == [frames] * 3
    assert vocoder.synthesize([5, 6, 7]).shape == (3 * frames * HOP,)


def test_negative_ids_are_dropped_like_fairseq(vocoder):
    np.testing.assert_array_equal(
        vocoder.synthesize([-1, 5, -1, 7, -3]), vocoder.synthesize([5, 7])
    )
    np.testing.assert_array_equal(
        vocoder.synthesize([5, -1, 7], [2, 9, 1]), vocoder.synthesize([5, 7], [2, 1])
    )
    assert vocoder.predict_durations([5, -1, 7])[1] == 0


@pytest.mark.parametrize(
    "units", [[], np.zeros(0, dtype=np.int64), torch.zeros(0, dtype=torch.long), [-1, -2]]
)
def test_empty_input_gives_empty_audio(vocoder, units):
    wav = vocoder.synthesize(units)
    assert wav.dtype == np.float32 and wav.shape == (0,)


@pytest.mark.parametrize(
    "units,durations,message",
    [
        ([1, 1000], None, "outside this vocoder's codebook"),
        ([1.5, 2.0], None, "integers"),
        ([[1, 2], [3, 4]], None, "1-D"),
        ([1, 2], [1], "2 units but 1 durations"),
        ([1, 2], [1, -1], ">= 0"),
        ("12 7", None, "integers"),
    ],
)
def test_bad_input_raises_unit_error(vocoder, units, durations, message):
    with pytest.raises(UnitError, match=message):
        vocoder.synthesize(units, durations)


def test_single_voice_rejects_a_speaker(vocoder):
    with pytest.raises(UnitError, match="single voice"):
        vocoder.synthesize([1, 2], speaker=3)


def test_batched_forward_rows_are_independent(vocoder):
    a, b = _units(6, seed=4), _units(11, seed=5)
    batch = torch.full((2, 11), -1, dtype=torch.long)
    batch[0, :6], batch[1] = torch.as_tensor(a), torch.as_tensor(b)
    with torch.inference_mode():
        out = vocoder.model(batch)
    wav_a, wav_b = vocoder.synthesize(a), vocoder.synthesize(b)
    assert out.shape == (2, max(len(wav_a), len(wav_b)))
    longer, shorter = (0, 1) if len(wav_a) > len(wav_b) else (1, 0)
    rows = {0: wav_a, 1: wav_b}
    np.testing.assert_allclose(out[longer].numpy(), rows[longer], atol=1e-6)
    np.testing.assert_allclose(out[shorter, : len(rows[shorter])].numpy(), rows[shorter], atol=1e-6)
    assert not out[shorter, len(rows[shorter]) :].any()


def test_multispeaker_vocoder(tmp_path):
    folder = make_fairseq_codehifigan(tmp_path, multispkr=True, num_speakers=4)
    vocoder = UnitVocoder.from_pretrained(folder, device="cpu")
    units = [3, 99, 512, 7]
    with pytest.raises(UnitError, match="pass speaker"):
        vocoder.synthesize(units)
    with pytest.raises(UnitError, match="outside 0..3"):
        vocoder.synthesize(units, speaker=4)
    first, second = vocoder.synthesize(units, speaker=0), vocoder.synthesize(units, speaker=2)
    assert first.shape == second.shape and not np.allclose(first, second)
    # fairseq appends the speaker embedding to every frame after the unit embedding
    cfg = tiny_codehifigan_config(multispkr=True, num_speakers=4)
    reference = build_fairseq_codehifigan(cfg, seed=0)
    with torch.no_grad():
        code = torch.tensor([units])
        x = reference.dict(code).transpose(1, 2)
        dp = reference.dur_predictor
        h = dp.ln2(dp.conv2(dp.ln1(dp.conv1(x).transpose(1, 2)).transpose(1, 2)).transpose(1, 2))
        dur = torch.clamp(torch.round(torch.exp(dp.proj(h).squeeze(2)) - 1).long(), min=1)
    assert first.shape == (HOP * int(dur.sum()),)


def test_embedder_speaker_vector(tmp_path):
    folder = make_fairseq_codehifigan(
        tmp_path, multispkr=True, embedder_params={"type": "x"}, embedder_dim=8
    )
    vocoder = UnitVocoder.from_pretrained(folder, device="cpu")
    voice = np.linspace(-1, 1, 8, dtype=np.float32)
    assert vocoder.synthesize([1, 2, 3], speaker=voice).size > 0
    with pytest.raises(UnitError, match="vector of 8"):
        vocoder.synthesize([1, 2, 3], speaker=np.zeros(5))
