"""SpeechTokenizer (audio -> units) and UnitSequence, on a tiny converted mHuBERT."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import joblib
import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from speechgpt_agent.errors import (
    AudioError,
    CheckpointError,
    ModelNotFoundError,
    UnitError,
    UnsafeCheckpointError,
)
from speechgpt_agent.hubert import convert_fairseq_hubert, load_hubert
from speechgpt_agent.kmeans import UPSTREAM_KMEANS
from speechgpt_agent.testing.hubert import make_fairseq_hubert_checkpoint, make_kmeans_joblib
from speechgpt_agent.units import SpeechTokenizer, UnitSequence

SR = 16_000
DIM = 32


def _clip(seconds: float, seed: int) -> np.ndarray:
    """Noise bursts with a slow envelope: varied frames, so units change over time."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    envelope = 0.05 + 0.3 * np.abs(np.sin(np.linspace(0, 9, n)))
    return (rng.standard_normal(n) * envelope).astype(np.float32)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mhubert")
    pt = make_fairseq_hubert_checkpoint(root / "mhubert_base_vp_en_es_fr_it3.pt", seed=1)
    out = convert_fairseq_hubert(pt, root / "hf", trust_pickle=True)
    # k-means fitted on the model's own layer-2 features, dumped like the upstream .bin
    model, fe = load_hubert(out, device="cpu")
    probe = SpeechTokenizer(model, fe, np.zeros((1, DIM), np.float32), layer=2)
    feats = torch.cat([probe.features(_clip(1.0, s)) for s in range(4)]).numpy()
    make_kmeans_joblib(out / UPSTREAM_KMEANS, n_clusters=12, features=feats, seed=0)
    return out


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return SpeechTokenizer.from_pretrained(model_dir, layer=2, device="cpu", trust_pickle=True)


def _variant(tokenizer, *, normalize=None, max_chunk_samples=None):
    """The same model and centroids with another feature-extractor flag or chunk size."""
    from transformers import Wav2Vec2FeatureExtractor

    fe = tokenizer.feature_extractor
    if normalize is not None:
        fe = Wav2Vec2FeatureExtractor(sampling_rate=SR, do_normalize=normalize)
    return SpeechTokenizer(tokenizer.model, fe, tokenizer.centroids.numpy(), layer=tokenizer.layer,
                           max_chunk_samples=max_chunk_samples or tokenizer.max_chunk_samples)


# ----------------------------------------------------------------------------- UnitSequence


def test_unit_sequence_merges_runs_and_keeps_frames():
    seq = UnitSequence.from_frames([661, 661, 588, 5, 5, 5, 661])
    assert seq.units == (661, 588, 5, 661)
    assert seq.durations == (2, 1, 3, 1)
    assert seq.frames == (661, 661, 588, 5, 5, 5, 661)
    assert sum(seq.durations) == len(seq.frames) and len(seq) == 4
    assert seq.text() == "<sosp><661><588><5><661><eosp>"
    assert seq.text(merged=False) == "<sosp><661><661><588><5><5><5><661><eosp>"
    empty = UnitSequence.from_frames([])
    assert empty.text() == "<sosp><eosp>" and len(empty) == 0


def test_unit_text_parsing_is_tolerant_of_spaces_and_round_trips():
    seq = UnitSequence.from_frames([3, 3, 7, 1, 1])
    assert UnitSequence.from_text(seq.text(merged=False)) == seq
    merged = UnitSequence.from_text(seq.text())
    assert merged.units == seq.units and merged.durations == (1, 1, 1)
    assert UnitSequence.from_text(" <sosp> <3> <7>\n<1> <eosp> ").units == (3, 7, 1)
    assert UnitSequence.from_text("<3><7><1>").units == (3, 7, 1)
    for bad in ("", "<sosp><3>x<eosp>", "<sosp><-3><eosp>", "<3><sosp><4>", "<sosp><3><eosp><4>",
                "<sosp><sosp><3>", "hello"):
        with pytest.raises(UnitError):
            UnitSequence.from_text(bad)


def test_unit_sequence_invariants_are_enforced():
    with pytest.raises(UnitError):
        UnitSequence((1, 2), (1,), (1, 2))
    with pytest.raises(UnitError):
        UnitSequence((1, 2), (1, 1), (1, 1))
    with pytest.raises(UnitError):
        UnitSequence((1, 1), (1, 1), (1, 1))  # not merged
    with pytest.raises(UnitError):
        UnitSequence((1,), (0,), ())
    seq = UnitSequence([4, 2], [2, 1], [4, 4, 2])  # lists are stored as tuples
    assert seq.units == (4, 2) and hash(seq) == hash(UnitSequence.from_frames([4, 4, 2]))


# ---------------------------------------------------------------------------- SpeechTokenizer


def test_units_are_sklearn_predictions_on_the_layer_features(tokenizer, model_dir):
    km = joblib.load(model_dir / UPSTREAM_KMEANS)
    clip = _clip(1.3, seed=11)
    seq = tokenizer.encode(clip, sample_rate=SR)
    feats = tokenizer.features(clip)
    assert feats.shape == ((len(clip) - 400) // 320 + 1, DIM)
    assert seq.frames == tuple(km.predict(feats.numpy().astype(np.float32)).tolist())
    assert sum(seq.durations) == len(seq.frames) and len(set(seq.units)) > 1
    assert seq == UnitSequence.from_frames(seq.frames)
    assert tokenizer.frame_rate == 50.0 and tokenizer.num_units == 12


def test_chunks_run_separately_and_concatenate(tokenizer):
    clip = _clip(0.62, seed=5)  # 9920 samples: chunks of 3200, 3200, 3200, 320
    chunked = _variant(tokenizer, max_chunk_samples=3200)
    expected = torch.cat([tokenizer.features(clip[s:s + 3200]) for s in range(0, 9600, 3200)])
    # the 320-sample tail is shorter than the receptive field: no frame, no error
    torch.testing.assert_close(chunked.features(clip), expected, rtol=0, atol=0)
    # ... which differs from one pass over the whole clip (attention sees other frames)
    assert not torch.allclose(tokenizer.features(clip)[:9], expected[:9], atol=1e-3)
    # a clip that fits one chunk is not affected by the chunk size
    short = clip[:3000]
    torch.testing.assert_close(chunked.features(short), tokenizer.features(short), rtol=0, atol=0)


def test_normalisation_follows_the_feature_extractor(tokenizer):
    clip = _clip(0.5, seed=2)
    plain, norm = _variant(tokenizer, normalize=False), _variant(tokenizer, normalize=True)
    assert tokenizer.feature_extractor.do_normalize is False  # fairseq task normalize=False
    torch.testing.assert_close(plain.features(clip), tokenizer.features(clip))
    # whole-waveform layer norm (fairseq's F.layer_norm(x, x.shape)), then the model
    normalised = F.layer_norm(torch.from_numpy(clip), (len(clip),)).numpy()
    torch.testing.assert_close(norm.features(clip), plain.features(normalised), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm.features(3 * clip + 0.2), norm.features(clip), rtol=1e-3, atol=1e-3)
    # the first conv block's GroupNorm (eps 1e-5) makes quiet input differ from normalised input
    quiet = clip * 1e-3
    assert not torch.allclose(plain.features(quiet), norm.features(quiet), atol=1e-2)
    # normalisation happens once, on the whole waveform, before chunking
    chunked = _variant(norm, max_chunk_samples=3200)
    expected = _variant(plain, max_chunk_samples=3200).features(normalised)
    torch.testing.assert_close(chunked.features(clip), expected, rtol=1e-5, atol=1e-5)


def test_encode_accepts_files_and_resamples(tokenizer, tmp_path):
    clip = _clip(0.8, seed=8)
    sf.write(tmp_path / "a.wav", clip, SR, subtype="FLOAT")
    assert tokenizer.encode(tmp_path / "a.wav") == tokenizer.encode(clip, sample_rate=SR)
    stereo_8k = np.stack([clip[::2], clip[::2]], axis=1)
    sf.write(tmp_path / "b.flac", stereo_8k, 8000)
    seq = tokenizer.encode(str(tmp_path / "b.flac"))
    assert len(seq.frames) == (len(clip) - 400) // 320 + 1


@pytest.mark.parametrize("clip", ["question_22k_stereo.flac", "numbers_44k_mono.ogg", "weather_8k_mono.wav"])
def test_other_rates_are_resampled_as_the_original_did(tokenizer, model_dir, clip):
    """speech2unit resampled with torchaudio's windowed sinc: that is the default here too."""
    from speechgpt_agent.audio import load_audio
    from speechgpt_agent.mel_units import MelUnitTokenizer

    path = Path(__file__).parent / "data" / clip
    assert tokenizer.resampler == "torchaudio"
    sinc = load_audio(path, resampler="torchaudio")
    assert tokenizer.encode(path) == tokenizer._encode_samples(sinc)
    assert tokenizer.encode_batch([path]) == [tokenizer.encode(path)]
    soxr_tokenizer = SpeechTokenizer.from_pretrained(model_dir, layer=2, device="cpu", trust_pickle=True,
                                                     resampler="soxr")
    soxr_audio = load_audio(path)
    assert soxr_tokenizer.encode(path) == soxr_tokenizer._encode_samples(soxr_audio)
    n = min(len(sinc), len(soxr_audio))
    assert not np.allclose(sinc[:n], soxr_audio[:n], atol=1e-3)  # two different filters
    # the demo's tokenizer keeps the resampler its k-means was fitted with
    assert MelUnitTokenizer.resampler == "soxr"
    with pytest.raises(ValueError, match="resampler"):
        SpeechTokenizer(tokenizer.model, tokenizer.feature_extractor, tokenizer.centroids, layer=2,
                        resampler="sinc")


def test_encode_batch_equals_encode(tokenizer, tmp_path):
    paths = []
    for i, seconds in enumerate((0.3, 1.1, 0.05, 0.7, 0.45)):
        sf.write(tmp_path / f"{i}.wav", _clip(seconds, seed=20 + i), SR)
        paths.append(tmp_path / f"{i}.wav")
    sources = paths + [(tmp_path / "0.wav").read_bytes()]
    batch = tokenizer.encode_batch(sources, batch_size=2, progress=True)
    assert batch == [tokenizer.encode(s) for s in sources]
    arrays = [_clip(0.2, seed=1), _clip(0.3, seed=2)]
    assert tokenizer.encode_batch(arrays, sample_rate=SR) == [tokenizer.encode(a, SR) for a in arrays]
    assert tokenizer.encode_batch([]) == []


def test_encode_batch_names_the_failing_source(tokenizer, tmp_path):
    sf.write(tmp_path / "ok.wav", _clip(0.2, seed=0), SR)
    with pytest.raises(AudioError, match=r"sources\[1\]"):
        tokenizer.encode_batch([tmp_path / "ok.wav", tmp_path / "absent.wav", tmp_path / "ok.wav"])
    with pytest.raises(ValueError, match="batch_size"):
        tokenizer.encode_batch([tmp_path / "ok.wav"], batch_size=0)


def test_bad_audio_raises_audio_error(tokenizer):
    assert len(tokenizer.encode(np.zeros(400, np.float32), SR).frames) == 1
    with pytest.raises(AudioError, match="too short.*400 samples"):
        tokenizer.encode(np.zeros(399, np.float32), sample_rate=SR)
    with pytest.raises(AudioError, match="too short"):
        tokenizer.features(np.zeros(10, np.float32))
    with pytest.raises(AudioError, match="empty"):
        tokenizer.encode(np.zeros(0, np.float32), sample_rate=SR)
    with pytest.raises(AudioError, match="empty"):
        tokenizer.features(np.zeros(0, np.float32))
    nan = _clip(0.1, seed=0)
    nan[100] = np.nan
    with pytest.raises(AudioError, match="NaN"):
        tokenizer.encode(nan, sample_rate=SR)
    with pytest.raises(AudioError, match="NaN"):
        tokenizer.features(nan)
    with pytest.raises(AudioError, match="1-D"):
        tokenizer.features(np.zeros((2, 4000), np.float32))
    with pytest.raises(AudioError, match="float"):
        tokenizer.features(np.zeros(4000, np.int16))
    with pytest.raises(AudioError):
        tokenizer.encode("/nonexistent/clip.wav")


def test_concurrent_callers_get_the_sequential_results(tokenizer):
    clips = [_clip(0.3 + 0.1 * i, seed=40 + i) for i in range(6)]
    expected = [tokenizer.encode(c, SR) for c in clips]
    results: dict[int, UnitSequence] = {}

    def work(i: int) -> None:
        results[i] = tokenizer.encode(clips[i], SR)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(clips))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(clips))] == expected


def test_from_pretrained_drops_unused_layers_without_changing_features(model_dir, tokenizer):
    full, fe = load_hubert(model_dir, device="cpu")
    centroids = tokenizer.centroids.numpy()
    one = SpeechTokenizer.from_pretrained(model_dir, layer=1, device="cpu", trust_pickle=True)
    assert len(one.model.encoder.layers) == 1
    clip = _clip(0.4, seed=3)
    reference = SpeechTokenizer(full, fe, centroids, layer=1)
    assert len(reference.model.encoder.layers) == 2  # a caller's model is left whole
    torch.testing.assert_close(one.features(clip), reference.features(clip), rtol=0, atol=0)


def test_loading_errors(model_dir, tmp_path):
    with pytest.raises(UnsafeCheckpointError, match="speechgpt-agent convert kmeans"):
        SpeechTokenizer.from_pretrained()  # the hub default is a pickle: refused, nothing fetched
    with pytest.raises(UnsafeCheckpointError, match="trust_pickle"):
        SpeechTokenizer.from_pretrained(model_dir, device="cpu")
    with pytest.raises(ModelNotFoundError):
        SpeechTokenizer.from_pretrained(tmp_path / "absent", device="cpu")
    no_kmeans = tmp_path / "no_kmeans"
    shutil.copytree(model_dir, no_kmeans, ignore=shutil.ignore_patterns("*.bin"))
    with pytest.raises(ModelNotFoundError, match="k-means"):
        SpeechTokenizer.from_pretrained(no_kmeans, device="cpu")
    with pytest.raises(ModelNotFoundError):
        SpeechTokenizer.from_pretrained(model_dir, kmeans=tmp_path / "absent.npy", device="cpu")
    np.save(tmp_path / "wrong_dim.npy", np.zeros((5, DIM + 1), np.float32))
    with pytest.raises(CheckpointError, match="another model"):
        SpeechTokenizer.from_pretrained(model_dir, kmeans=tmp_path / "wrong_dim.npy", layer=2,
                                        device="cpu")
    model, fe = load_hubert(model_dir, device="cpu")
    with pytest.raises(ValueError, match="layer"):
        SpeechTokenizer(model, fe, np.zeros((5, DIM), np.float32), layer=3)
    with pytest.raises(ValueError, match="max_chunk_samples"):
        SpeechTokenizer(model, fe, np.zeros((5, DIM), np.float32), layer=2, max_chunk_samples=399)
