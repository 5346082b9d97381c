"""Demo vocoder training: a few steps on real speech clips, the saved folder, evaluation, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from speechgpt_agent.errors import AudioError, UnitError
from speechgpt_agent.mel_units import MelUnitTokenizer
from speechgpt_agent.training.recipes.demo.vocoder_training import (
    LogMelLoss,
    MultiResolutionSTFTLoss,
    demo_vocoder_config,
    evaluate_vocoder,
    train_vocoder,
)
from speechgpt_agent.vocoder import UnitVocoder

HOP = 320
NAMES = ("hello_16k_mono.wav", "weather_8k_mono.wav", "question_22k_stereo.flac")
# tiny widths, the release's upsampling (320 samples per frame) and duration predictor
TINY = {
    "upsample_initial_channel": 32,
    "embedding_dim": 16,
    "resblock_kernel_sizes": [3, 7],
    "resblock_dilation_sizes": [[1, 3], [1, 3]],
}
# a high learning rate: the tiny model starts near silence and must be heard within 30 steps
SETTINGS = {
    "config_overrides": TINY,
    "batch_size": 2,
    "segment_frames": 8,
    "lr": 3e-2,
    "progress": False,
}


@pytest.fixture(scope="module")
def tokenizer(clips):
    return MelUnitTokenizer.fit([clips[n]["path"] for n in NAMES], num_units=8, seed=0)


@pytest.fixture(scope="module")
def records(clips, tokenizer):
    out = []
    for name in NAMES:
        seq = tokenizer.encode(clips[name]["path"])
        out.append(
            {
                "id": name,
                "audio": str(clips[name]["path"]),
                "units": list(seq.units),
                "durations": list(seq.durations),
                "split": "train",
            }
        )
    return out


@pytest.fixture(scope="module")
def trained(records, tmp_path_factory, one_thread):
    history: list[dict[str, float]] = []
    out = train_vocoder(
        records,
        tmp_path_factory.mktemp("vocoder"),
        steps=30,
        seed=0,
        callback=lambda step, losses: history.append(losses),
        **SETTINGS,
    )
    return out, history


@pytest.fixture(scope="module")
def one_step(records, tmp_path_factory, one_thread):
    """A run stopped by its time budget after its first step: an almost untrained vocoder."""
    return train_vocoder(
        records, tmp_path_factory.mktemp("short"), steps=1000, max_minutes=1e-6, seed=0, **SETTINGS
    )


def test_training_lowers_the_loss(trained, one_step, tokenizer, records, one_thread):
    out, history = trained
    assert len(history) == 30
    first = np.mean([h["loss"] for h in history[:5]])
    last = np.mean([h["loss"] for h in history[-5:]])
    assert last < 0.8 * first
    assert np.mean([h["mel"] for h in history[-5:]]) < np.mean([h["mel"] for h in history[:5]])
    assert history[-1]["lr"] < 0.2 * history[0]["lr"]  # the cosine schedule decays to a tenth
    # the whole clips, not only the training segments, sound closer to the originals
    after = evaluate_vocoder(UnitVocoder.from_pretrained(out, device="cpu"), tokenizer, records)
    before = evaluate_vocoder(
        UnitVocoder.from_pretrained(one_step, device="cpu"), tokenizer, records
    )
    assert after["mel_l1"] < 0.8 * before["mel_l1"]


def test_saved_folder_loads_and_speaks_320_samples_per_frame(trained, records):
    out, _ = trained
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "training.json"}
    config = json.loads((out / "config.json").read_text())
    assert config["upsample_rates"] == [5, 4, 4, 2, 2] and config["num_embeddings"] == 1000
    assert "dur_predictor_params" in config
    assert json.loads((out / "training.json").read_text())["steps_done"] == 30

    vocoder = UnitVocoder.from_pretrained(out, device="cpu")
    assert vocoder.hop_length == HOP and vocoder.has_duration_predictor
    units, durations = records[0]["units"], records[0]["durations"]
    wav = vocoder.synthesize(units, durations)
    assert wav.shape == (HOP * sum(durations),) and np.isfinite(wav).all() and wav.std() > 1e-4
    predicted = vocoder.predict_durations(units)
    assert (predicted >= 1).all()
    assert vocoder.synthesize(units).shape == (HOP * int(predicted.sum()),)


def test_same_seed_same_weights_and_caller_rng_untouched(trained, records, tmp_path, one_thread):
    from safetensors.torch import load_file

    out, _ = trained
    torch.manual_seed(123)
    before = torch.get_rng_state()
    again = train_vocoder(records, tmp_path / "again", steps=30, seed=0, **SETTINGS)
    assert torch.equal(torch.get_rng_state(), before)
    a, b = load_file(out / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_max_minutes_stops_early_and_saves(one_step):
    assert json.loads((one_step / "training.json").read_text())["steps_done"] == 1
    UnitVocoder.from_pretrained(one_step, device="cpu")


def test_evaluate_vocoder(trained, tokenizer, records, one_thread):
    vocoder = UnitVocoder.from_pretrained(trained[0], device="cpu")
    result = evaluate_vocoder(vocoder, tokenizer, records, n=2)
    assert result["n"] == 2
    assert result["original_frame_agreement"] == 1.0  # units came from this tokenizer
    assert 0.0 <= result["frame_agreement"] <= 1.0
    assert result["mel_l1"] > 0 and result["duration_mae"] >= 0 and result["length_ratio"] > 0


def test_losses_are_zero_on_identical_audio_and_positive_otherwise():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 8000, generator=gen), torch.randn(2, 8000, generator=gen)
    sc, log_mag = MultiResolutionSTFTLoss()(x, x)
    assert float(sc) == 0 and float(log_mag) == 0 and float(LogMelLoss()(x, x)) == 0
    sc, log_mag = MultiResolutionSTFTLoss()(x, y)
    assert float(sc) > 0.5 and float(log_mag) > 0.1 and float(LogMelLoss()(x, y)) > 0.1


def test_demo_config_keeps_the_release_structure():
    config = demo_vocoder_config()
    assert config.hop_length == HOP and config.num_embeddings == 1000
    assert (
        config.dur_predictor is not None
        and config.dur_predictor.encoder_embed_dim == config.embedding_dim
    )
    assert demo_vocoder_config({"embedding_dim": 16}).dur_predictor.var_pred_hidden_dim == 16


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda r: r.pop("units"), UnitError, "no 'units'"),
        (lambda r: r.update(units=[]), UnitError, "non-empty"),
        (lambda r: r.update(durations=r["durations"][:-1]), UnitError, "durations"),
        (lambda r: r.update(durations=[d + 1 for d in r["durations"]]), UnitError, "frames"),
        (lambda r: r.update(units=[1000] * len(r["units"])), UnitError, "0..999"),
        (lambda r: r.update(units=[0.5] * len(r["units"])), UnitError, "integers"),
    ],
)
def test_bad_records_raise_typed_errors(records, tmp_path, change, error, message):
    bad = [dict(r) for r in records]
    change(bad[1])
    with pytest.raises(error, match=message) as info:
        train_vocoder(bad, tmp_path / "out", steps=1, **SETTINGS)
    assert "weather_8k_mono.wav" in str(info.value)  # the message names the record
    assert not (tmp_path / "out").exists()


def test_clip_shorter_than_a_segment_raises(records, tmp_path):
    shortest = min(sum(r["durations"]) for r in records)
    with pytest.raises(AudioError, match="segment_frames"):
        train_vocoder(
            records, tmp_path / "out", steps=1, **{**SETTINGS, "segment_frames": shortest + 1}
        )


@pytest.mark.parametrize(
    "settings",
    [{"steps": 0}, {"batch_size": 0}, {"segment_frames": 2.5}, {"lr": 0.0}, {"max_minutes": -1}],
)
def test_bad_settings_raise_value_error(records, tmp_path, settings):
    with pytest.raises(ValueError):
        train_vocoder(records, tmp_path / "out", **{**SETTINGS, "steps": 1, **settings})


def test_no_records_raise(tmp_path):
    with pytest.raises(ValueError, match="no records"):
        train_vocoder([], tmp_path / "out", steps=1, **SETTINGS)
