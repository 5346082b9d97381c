"""resampler="torchaudio": torchaudio.functional.resample's algorithm, without torchaudio.

Two references, neither of them the code under test:

* tests/data/resample_reference.npz: torchaudio 2.9.1's own ``resample`` (its source, run
  by tests/data/make_resample_reference.py) on espeak-ng speech at 8, 22.05, 24, 44.1 and
  48 kHz, at 8001 Hz (a large reduced ratio) and upsampled from 16 to 22.05 kHz;
* a direct float64 evaluation of the windowed-sinc sum, one output sample at a time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from speechgpt_agent import sinc_resample as sinc_resample_module
from speechgpt_agent.audio import load_audio, resample
from speechgpt_agent.errors import AudioError
from speechgpt_agent.sinc_resample import sinc_resample, sinc_resample_output_length

DATA = Path(__file__).parent / "data"
REFERENCE = np.load(DATA / "resample_reference.npz", allow_pickle=False)
META = json.loads(str(REFERENCE["meta"]))
CASES = sorted(k for k in META if not k.startswith("_"))


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    noise = float(np.sum((reference.astype(np.float64) - estimate) ** 2))
    return math.inf if noise == 0 else 10 * math.log10(float(np.sum(reference.astype(np.float64) ** 2)) / noise)


def excerpt(name: str) -> tuple[np.ndarray, dict]:
    """The input of a reference case: decoded, channels averaged, excerpted as the script did."""
    m = META[name]
    frames, _ = sf.read(DATA / m["clip"], dtype="float32", always_2d=True)
    mono = frames.mean(axis=1, dtype=np.float32)[:: m["step"]]
    return np.ascontiguousarray(mono[m["start"]:m["start"] + m["frames"]]), m


def direct_sinc(x: np.ndarray, orig_rate: int, new_rate: int, zeros: int = 6, rolloff: float = 0.99):
    """y[j] = sum_i x[i] h(base (i/orig - j/new)), evaluated output by output in float64."""
    g = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // g, new_rate // g
    base = min(orig, new) * rolloff
    n_out = math.ceil(new * len(x) / orig)
    i = np.arange(len(x), dtype=np.float64)
    y = np.empty(n_out)
    for j in range(n_out):
        u = np.clip(base * (i / orig - j / new), -zeros, zeros)
        h = (base / orig) * np.sinc(u) * np.cos(np.pi * u / (2 * zeros)) ** 2
        y[j] = np.dot(x, h)
    return y


@pytest.mark.parametrize("path", ["default", "gather"])
@pytest.mark.parametrize("name", CASES)
def test_matches_torchaudio_on_speech(name, path, monkeypatch):
    """Both ways of running the filter: torchaudio's conv1d (small kernels) and the per-phase
    gather (large reduced ratios, e.g. 8001 Hz by default; forced here for every case)."""
    if path == "gather":
        monkeypatch.setattr(sinc_resample_module, "_CONV_KERNEL_LIMIT", 0)
    x, m = excerpt(name)
    expected = REFERENCE[name]
    got = resample(x, m["rate"], m["target"], resampler="torchaudio")
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert got.shape[0] == sinc_resample_output_length(m["frames"], m["rate"], m["target"])
    # the bar is 60 dB; the conv1d path is bitwise torchaudio's, the gather path within float32
    # rounding (about 140 dB)
    assert snr_db(expected, got) >= 100
    # load_audio with the same resampler gives the same samples
    np.testing.assert_array_equal(
        load_audio(x, m["rate"], target_rate=m["target"], resampler="torchaudio"), got)


@pytest.mark.parametrize("name", ["8k", "22k", "44k"])
def test_soxr_is_another_filter(name):
    """The reason for the option: libsoxr HQ differs from torchaudio by ~30 dB on speech."""
    x, m = excerpt(name)
    expected = REFERENCE[name]
    other = resample(x, m["rate"], m["target"])  # the default of resample/load_audio: soxr
    np.testing.assert_array_equal(other, soxr.resample(x, m["rate"], m["target"], quality="HQ"))
    assert other.shape == expected.shape
    assert snr_db(expected, other) < 50


@pytest.mark.parametrize("orig, new", [(8000, 16000), (22050, 16000), (24000, 16000), (44100, 16000),
                                       (48000, 16000), (16000, 22050), (11025, 16000), (44099, 16000),
                                       (16000, 8000), (7, 3)])
def test_matches_the_direct_windowed_sinc_sum(orig, new):
    rng = np.random.default_rng(orig + new)
    for length in (1, 3, 50, 997):
        x = rng.standard_normal(length).astype(np.float32)
        got = resample(x, orig, new, resampler="torchaudio")
        want = direct_sinc(x.astype(np.float64), orig, new)
        assert got.shape == want.shape
        # float32 kernel and sums, as torchaudio computes them for float32 audio: 95-140 dB
        assert snr_db(want, got) >= 80, (orig, new, length)


def test_output_length_is_torchaudios():
    """ceil(new * T / orig), as torchaudio computes it: the quotient in float32 first."""
    for orig, new in [(44100, 16000), (8000, 16000), (48000, 16000), (22050, 16000), (3, 7)]:
        for length in range(1, 60):
            expected = -(-new // math.gcd(orig, new) * length // (orig // math.gcd(orig, new)))
            assert sinc_resample_output_length(length, orig, new) == expected
            y = sinc_resample(torch.zeros(length), orig, new)
            assert y.shape == (expected,)
    # 16000 * 4000 / 8001 = 7999.0001 is 7999.0 in float32: torchaudio gives 7999 samples
    assert sinc_resample_output_length(4000, 8001, 16000) == 7999 == META["8001"]["frames"] * 2 - 1
    assert REFERENCE["8001"].shape == (7999,)
    # 10 min at 44.1 kHz: 9,600,000 exactly; one sample more is 9,600,000.36 -> 9,600,000
    assert sinc_resample_output_length(26_460_000, 44100, 16000) == 9_600_000
    assert sinc_resample_output_length(26_460_001, 44100, 16000) == 9_600_000


def test_channels_batch_and_dtype():
    rng = np.random.default_rng(0)
    stereo = rng.standard_normal((3001, 2)).astype(np.float32)  # [frames, channels]
    both = resample(stereo, 44100, 16000, resampler="torchaudio")
    assert both.shape == (math.ceil(3001 * 160 / 441), 2) and both.flags.c_contiguous
    for c in range(2):
        np.testing.assert_allclose(both[:, c], resample(stereo[:, c].copy(), 44100, 16000,
                                                        resampler="torchaudio"), rtol=0, atol=1e-6)
    batch = torch.from_numpy(stereo.T.copy()).reshape(1, 2, -1)
    out = sinc_resample(batch, 44100, 16000)
    assert out.shape == (1, 2, both.shape[0])
    np.testing.assert_allclose(out[0].numpy().T, both, rtol=0, atol=1e-6)
    # float64 in: computed and returned in float64, like torchaudio
    x64 = torch.from_numpy(stereo[:, 0].astype(np.float64))
    y64 = sinc_resample(x64, 22050, 16000)
    assert y64.dtype == torch.float64
    assert snr_db(direct_sinc(stereo[:, 0].astype(np.float64), 22050, 16000), y64.numpy()) > 200
    # equal rates: the input itself
    same = torch.ones(5)
    assert sinc_resample(same, 16000, 16000) is same


def test_bad_arguments():
    with pytest.raises(AudioError, match="resampler must be one of 'torchaudio', 'soxr'"):
        resample(np.zeros(10, np.float32), 8000, 16000, resampler="sox")
    with pytest.raises(AudioError, match="resampler"):
        load_audio(np.zeros(10, np.float32), 8000, resampler="linear")
    with pytest.raises(TypeError, match="float tensor"):
        sinc_resample(torch.zeros(4, dtype=torch.int16), 8000, 16000)
    for orig in (0, -8000, 8000.5):
        with pytest.raises(ValueError, match="orig_rate"):
            sinc_resample(torch.zeros(4), orig, 16000)
    with pytest.raises(ValueError, match="lowpass_filter_width"):
        sinc_resample(torch.zeros(4), 8000, 16000, lowpass_filter_width=0)
    with pytest.raises(ValueError, match="rolloff"):
        sinc_resample(torch.zeros(4), 8000, 16000, rolloff=1.5)


def test_the_filter_is_torchaudios_gentle_one():
    """Gain of tones from 44.1 to 16 kHz: the Hann-windowed sinc with 6 zero crossings rolls
    off below 8 kHz and lets some of 8-10 kHz alias back, which libsoxr HQ does not; this is
    the difference that changes mHuBERT's units."""
    t = np.arange(44100) / 44100

    def gain_db(freq, resampler):
        tone = np.sin(2 * np.pi * freq * t).astype(np.float32)
        y = resample(tone, 44100, 16000, resampler=resampler)[1000:-1000]
        return 20 * math.log10(np.sqrt(np.mean(y.astype(np.float64) ** 2)) / math.sqrt(0.5))

    assert abs(gain_db(1000, "torchaudio")) < 0.01
    assert -2.5 < gain_db(7000, "torchaudio") < -1.0 and abs(gain_db(7000, "soxr")) < 0.1
    assert -20 < gain_db(9000, "torchaudio") < -12 and gain_db(9000, "soxr") < -100
    assert gain_db(12000, "torchaudio") < -50
