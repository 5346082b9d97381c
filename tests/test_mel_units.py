"""MelUnitTokenizer: MFCC + k-means units behind the SpeechTokenizer interface (the demo's)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from speechgpt_agent.errors import AudioError, CheckpointError, ModelNotFoundError
from speechgpt_agent.mel_units import (
    CONFIG_NAME,
    MelFeatureConfig,
    MelUnitTokenizer,
    features_from_power,
    mfcc_features,
    power_spectrum,
)
from speechgpt_agent.units import UnitSequence, UnitTokenizer


@pytest.fixture(scope="module")
def fitted(clips):
    paths = [c["path"] for c in clips.values()]
    return MelUnitTokenizer.fit(paths, 24, seed=0), paths


def test_frames_match_hubert_count_and_rate(fitted):
    tok, _ = fitted
    for n in (400, 719, 720, 16_000, 16_321):
        feats = tok.features(np.random.default_rng(n).standard_normal(n).astype(np.float32))
        assert feats.shape == ((n - 400) // 320 + 1, MelFeatureConfig().dim)
    assert tok.frame_rate == 50.0 and tok.sampling_rate == 16_000
    assert isinstance(tok, UnitTokenizer)


def test_features_are_normalised_per_utterance(clips):
    x = np.asarray(__import__("soundfile").read(clips["hello_16k_mono.wav"]["path"], dtype="float32")[0])
    feats = mfcc_features(x, MelFeatureConfig())
    assert torch.allclose(feats.mean(0), torch.zeros(feats.shape[1]), atol=1e-4)
    assert torch.allclose(feats.std(0, correction=0), torch.ones(feats.shape[1]), atol=1e-3)
    # a gain is a constant c0 offset, which the normalisation removes: loudness does not
    # change the features (given a noise floor above the log floor of 1e-6, as recordings have)
    noisy = x + 0.01 * np.abs(x).max() * np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    loud = mfcc_features(noisy, MelFeatureConfig())
    diff = (mfcc_features(0.5 * noisy, MelFeatureConfig()) - loud).abs()
    assert diff.max() < 0.1 and diff.mean() < 0.01


def test_encode_merges_repeats_and_roundtrips_through_files(fitted, tmp_path):
    tok, paths = fitted
    seq = tok.encode(paths[0])
    assert isinstance(seq, UnitSequence)
    assert all(a != b for a, b in zip(seq.units, seq.units[1:]))
    assert max(seq.units) < tok.num_units == 24
    # nearest centroid, computed independently
    samples = __import__("speechgpt_agent.audio", fromlist=["load_audio"]).load_audio(paths[0])
    feats = tok.features(samples)
    assert list(seq.frames) == torch.cdist(feats, tok.centroids).argmin(1).tolist()
    tok.save_pretrained(tmp_path)
    again = MelUnitTokenizer.from_pretrained(tmp_path)
    assert again.encode(paths[0]) == seq
    assert again.encode_batch(paths[:2]) == [tok.encode(p) for p in paths[:2]]


def test_fit_is_reproducible(clips):
    paths = [c["path"] for c in clips.values()][:3]
    a = MelUnitTokenizer.fit(paths, 8, seed=3)
    b = MelUnitTokenizer.fit(paths, 8, seed=3)
    assert torch.equal(a.centroids, b.centroids)


def test_bad_inputs_raise_typed_errors(fitted, tmp_path):
    tok, _ = fitted
    with pytest.raises(AudioError, match="too short"):
        tok.features(np.zeros(399, np.float32))
    with pytest.raises(AudioError, match="NaN"):
        tok.features(np.full(800, np.nan, np.float32))
    with pytest.raises(AudioError, match="float"):
        tok.features(np.zeros(800, np.int16))
    with pytest.raises(AudioError):
        tok.encode(b"not audio at all")
    with pytest.raises(ModelNotFoundError, match=CONFIG_NAME):
        MelUnitTokenizer.from_pretrained(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="dimension"):
        MelUnitTokenizer(np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="frames"):
        MelUnitTokenizer.fit([np.zeros(800, np.float32)], 50, sample_rate=16_000)
    tok.save_pretrained(tmp_path / "t")
    cfg = json.loads((tmp_path / "t" / CONFIG_NAME).read_text())
    (tmp_path / "t" / CONFIG_NAME).write_text(json.dumps({**cfg, "n_mfcc": 12}))
    with pytest.raises(CheckpointError, match="dimension"):
        MelUnitTokenizer.from_pretrained(tmp_path / "t")
    (tmp_path / "t" / CONFIG_NAME).write_text(json.dumps({**cfg, "hop_length": 0}))
    with pytest.raises(CheckpointError, match="hop_length"):
        MelUnitTokenizer.from_pretrained(tmp_path / "t")
    (tmp_path / "t" / CONFIG_NAME).write_text("{not json")
    with pytest.raises(CheckpointError, match="json"):
        MelUnitTokenizer.from_pretrained(tmp_path / "t")


def test_pipeline_loads_a_mel_tokenizer_folder(fitted, tiny_model_set, tmp_path, one_thread):
    from speechgpt_agent.pipeline import SpeechGPT

    tok, paths = fitted
    tok.save_pretrained(tmp_path / "mel")
    sg = SpeechGPT.from_pretrained(tiny_model_set.model, tiny_model_set.adapter, speech_tokenizer=tmp_path / "mel",
                                   vocoder=tiny_model_set.vocoder, quantization=None, progress=False)
    assert isinstance(sg.speech_tokenizer, MelUnitTokenizer)
    response = sg.chat(audio=paths[0], output="text", seed=0,
                       options=__import__("speechgpt_agent.model", fromlist=["x"]).GenerationOptions(max_new_tokens=5))
    assert response.input_units == tok.encode(paths[0]).units


WARPS = tuple(round(0.82 + 0.04 * k, 2) for k in range(10))  # 0.82 .. 1.18, as the demo recipe


@pytest.fixture(scope="module")
def vtln(clips):
    paths = [c["path"] for c in clips.values()]
    return MelUnitTokenizer.fit(paths, 24, config=MelFeatureConfig(warp_factors=WARPS), seed=0), paths


def _formants_scaled(x: np.ndarray, scale: float) -> np.ndarray:
    """``x`` played ``scale`` times faster: every frequency times ``scale`` (a shorter vocal tract)."""
    from scipy.signal import resample

    return resample(x, round(x.size / scale)).astype(np.float32)


def test_vtln_finds_the_voice_scale(vtln):
    """A voice whose frequencies are all scaled by s is read at about s times the warp."""
    tok, paths = vtln
    from speechgpt_agent.audio import load_audio

    x = load_audio(paths[0])
    base = tok.warp(x)
    assert base in WARPS
    for scale in (0.9, 1.1):
        ratio = tok.warp(_formants_scaled(x, scale)) / base
        assert abs(ratio - scale) <= 0.05, (scale, ratio, base)
    # the units are those of the nearest centroid of the chosen warp's features
    feats = tok.features(x)
    assert torch.equal(feats, features_from_power(power_spectrum(x, tok.config), tok.config, base))
    assert list(tok.encode(paths[0]).frames) == torch.cdist(feats, tok.centroids).argmin(1).tolist()


def test_vtln_config_roundtrips_and_old_folders_load_unwarped(vtln, fitted, tmp_path):
    tok, paths = vtln
    tok.save_pretrained(tmp_path / "v")
    saved = json.loads((tmp_path / "v" / CONFIG_NAME).read_text())
    assert saved["warp_factors"] == list(WARPS)
    again = MelUnitTokenizer.from_pretrained(tmp_path / "v")
    assert again.config.warp_factors == WARPS and again.encode(paths[1]) == tok.encode(paths[1])
    # a folder written before warps existed (the first edition's) reads unwarped, as before
    plain, _ = fitted
    plain.save_pretrained(tmp_path / "p")
    cfg = json.loads((tmp_path / "p" / CONFIG_NAME).read_text())
    cfg.pop("warp_factors")
    (tmp_path / "p" / CONFIG_NAME).write_text(json.dumps(cfg))
    old = MelUnitTokenizer.from_pretrained(tmp_path / "p")
    assert old.config.warp_factors == () and old.warp(np.zeros(800, np.float32)) == 1.0
    assert old.encode(paths[1]) == plain.encode(paths[1])
    for bad in ([0.1], ["x"], [True]):
        (tmp_path / "p" / CONFIG_NAME).write_text(json.dumps({**cfg, "warp_factors": bad}))
        with pytest.raises(CheckpointError, match="warp_factors"):
            MelUnitTokenizer.from_pretrained(tmp_path / "p")


def test_vtln_fit_is_reproducible(clips):
    paths = [c["path"] for c in clips.values()][:3]
    config = MelFeatureConfig(warp_factors=(0.9, 1.0, 1.1))
    a = MelUnitTokenizer.fit(paths, 8, config=config, seed=3)
    b = MelUnitTokenizer.fit(paths, 8, config=config, seed=3)
    assert torch.equal(a.centroids, b.centroids)
