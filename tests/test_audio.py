"""Tests of speechgpt_agent.audio on the committed speech clips and on synthetic signals."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from speechgpt_agent.audio import (
    DEFAULT_MAX_SECONDS,
    SAMPLE_RATE,
    decode_audio,
    encode_wav,
    load_audio,
    resample,
    wav_base64,
    write_wav,
)
from speechgpt_agent.errors import AudioError

DATA = Path(__file__).parent / "data"
CLIPS: dict[str, dict] = json.loads((DATA / "clips.json").read_text())
HELLO = DATA / "hello_16k_mono.wav"


def expected_length(frames: int, rate: int, target: int = SAMPLE_RATE) -> int:
    """Length of a resampled signal: libsoxr rounds half up."""
    return math.floor(frames * target / rate + 0.5)


def sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


@pytest.fixture(scope="module")
def hello() -> np.ndarray:
    return load_audio(HELLO)


# ------------------------------------------------------------------------- committed clips


def test_constants():
    assert SAMPLE_RATE == 16000
    assert DEFAULT_MAX_SECONDS == 600.0


def test_clips_json_describes_the_committed_files():
    assert len(CLIPS) >= 5
    total = 0
    for name, clip in CLIPS.items():
        info = sf.info(str(DATA / name))
        assert (info.samplerate, info.channels, info.format, info.subtype, info.frames) == (
            clip["sample_rate"],
            clip["channels"],
            clip["format"],
            clip["subtype"],
            clip["frames"],
        ), name
        assert 2.0 <= info.frames / info.samplerate <= 4.0, name
        assert clip["text"].strip()
        assert name in (DATA / "README.md").read_text()
        total += (DATA / name).stat().st_size
    assert total < 600_000
    assert {c["sample_rate"] for c in CLIPS.values()} >= {8000, 16000, 22050, 44100, 48000}
    assert {c["format"] for c in CLIPS.values()} >= {"WAV", "FLAC", "OGG"}


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_each_clip_loads_as_16k_mono_speech(name):
    clip = CLIPS[name]
    x = load_audio(DATA / name)
    assert x.dtype == np.float32 and x.ndim == 1 and x.flags.c_contiguous
    assert abs(len(x) - clip["frames"] * SAMPLE_RATE / clip["sample_rate"]) <= 1
    assert np.isfinite(x).all()
    assert 0.05 < np.abs(x).max() <= 1.0  # speech at a sane level, not silence
    assert np.sqrt(np.mean(x**2)) > 0.01


def test_clip_at_16k_is_returned_unchanged():
    """No resampling at the target rate: samples are the PCM values / 32768."""
    raw, rate = sf.read(str(HELLO), dtype="int16")
    assert rate == SAMPLE_RATE
    np.testing.assert_array_equal(load_audio(HELLO), raw.astype(np.float32) / 32768)


def test_stereo_clip_is_averaged_to_mono():
    path = DATA / "question_22k_stereo.flac"
    frames, rate = decode_audio(path.read_bytes())
    assert frames.shape == (CLIPS[path.name]["frames"], 2) and rate == 22050
    expected = resample(frames.mean(axis=1), rate, SAMPLE_RATE)
    np.testing.assert_allclose(load_audio(path), expected, atol=1e-6)


def test_target_rate_is_honoured():
    clip = CLIPS["sentence_48k_float.wav"]
    x = load_audio(DATA / "sentence_48k_float.wav", target_rate=24000)
    assert len(x) == expected_length(clip["frames"], 48000, 24000)


# --------------------------------------------------------------------------- input kinds


class ReadOnlyStream:
    """A non-seekable binary stream (a socket or pipe): only read()."""

    def __init__(self, data: bytes) -> None:
        self._buffer = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._buffer.read(size)


ENCODED_SOURCES = {
    "str path": lambda b: str(HELLO),
    "Path": lambda b: HELLO,
    "bytes": lambda b: b,
    "bytearray": lambda b: bytearray(b),
    "memoryview": lambda b: memoryview(b),
    "base64": lambda b: base64.b64encode(b).decode(),
    "base64 with line breaks": lambda b: base64.encodebytes(b).decode(),
    "urlsafe base64 without padding": lambda b: base64.urlsafe_b64encode(b).decode().rstrip("="),
    "data URL": lambda b: "data:audio/wav;base64," + base64.b64encode(b).decode(),
    "BytesIO": lambda b: io.BytesIO(b),
    "non-seekable stream": lambda b: ReadOnlyStream(b),
}


@pytest.mark.parametrize("kind", sorted(ENCODED_SOURCES))
def test_every_encoded_source_kind_gives_the_same_samples(kind, hello):
    source = ENCODED_SOURCES[kind](HELLO.read_bytes())
    np.testing.assert_array_equal(load_audio(source), hello)


def test_open_binary_file(hello):
    with open(HELLO, "rb") as handle:
        np.testing.assert_array_equal(load_audio(handle), hello)


def test_sample_rate_matching_the_header_is_accepted(hello):
    np.testing.assert_array_equal(load_audio(HELLO, 16000), hello)


def test_integer_pcm_is_scaled_to_unit_range():
    rate = 16000
    cases = {
        np.int16: (np.array([-32768, 0, 16384, 32767], np.int16), [-1, 0, 0.5, 32767 / 32768]),
        np.int32: (np.array([-(2**31), 0, 2**30], np.int32), [-1, 0, 0.5]),
        np.int8: (np.array([-128, 0, 64], np.int8), [-1, 0, 0.5]),
        np.uint8: (np.array([0, 128, 192, 255], np.uint8), [-1, 0, 0.5, 127 / 128]),
    }
    for dtype, (samples, expected) in cases.items():
        out = load_audio(samples, rate)
        assert out.dtype == np.float32, dtype
        np.testing.assert_allclose(out, expected, atol=1e-7, err_msg=str(dtype))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_samples_are_kept(dtype):
    samples = np.array([-0.5, 0.0, 0.25, 1.5], dtype)  # beyond full scale is kept, not clipped
    np.testing.assert_allclose(load_audio(samples, 16000), samples.astype(np.float32))


def test_numpy_input_matches_file(hello):
    int16, _ = sf.read(str(HELLO), dtype="int16")
    float64, _ = sf.read(str(HELLO), dtype="float64")
    np.testing.assert_array_equal(load_audio(int16, 16000), hello)
    np.testing.assert_array_equal(load_audio(float64, 16000), hello)
    np.testing.assert_array_equal(load_audio(float64.astype(np.float32), 16000), hello)


def test_result_never_aliases_the_input():
    samples = np.full(100, 0.25, np.float32)
    out = load_audio(samples, 16000)
    out[:] = 0
    assert (samples == 0.25).all()


def test_torch_tensors():
    torch = pytest.importorskip("torch")
    samples = sine(300, 16000, 0.1)
    expected = load_audio(samples, 16000)
    np.testing.assert_array_equal(load_audio(torch.from_numpy(samples), 16000), expected)
    grad = torch.from_numpy(samples).requires_grad_()
    np.testing.assert_array_equal(load_audio(grad, 16000), expected)
    as_int16 = torch.tensor([-32768, 16384], dtype=torch.int16)
    np.testing.assert_allclose(load_audio(as_int16, 16000), [-1.0, 0.5])
    bf16 = torch.tensor([0.5, -0.25], dtype=torch.bfloat16)
    np.testing.assert_allclose(load_audio(bf16, 16000), [0.5, -0.25])
    stereo = torch.from_numpy(np.stack([samples, 0.5 * samples]))  # [channels, frames]
    np.testing.assert_allclose(load_audio(stereo, 16000), 0.75 * samples, atol=1e-7)


def test_channel_layouts_and_mixing():
    left, right = sine(300, 16000, 0.2), sine(500, 16000, 0.2, amplitude=0.2)
    mono = (left + right) / 2
    frames_first = np.stack([left, right], axis=1)  # [T, C], soundfile layout
    channels_first = frames_first.T.copy()  # [C, T], torchaudio layout
    np.testing.assert_allclose(load_audio(frames_first, 16000), mono, atol=1e-7)
    np.testing.assert_allclose(load_audio(channels_first, 16000), mono, atol=1e-7)
    np.testing.assert_array_equal(load_audio(left[None, :], 16000), left)  # [1, T]
    np.testing.assert_array_equal(load_audio(left[:, None], 16000), left)  # [T, 1]
    six = np.tile(left[:, None], (1, 6))  # 5.1 audio: [T, 6]
    np.testing.assert_allclose(load_audio(six, 16000), left, atol=1e-7)
    # A 2-D array that is not "few rows, more columns" is [frames, channels].
    square = np.array([[0.2, 0.4], [0.6, 0.8]], np.float32)
    np.testing.assert_allclose(load_audio(square, 16000), [0.3, 0.7])


# ---------------------------------------------------------------------------- resampling


@pytest.mark.parametrize(
    ("freq", "rate"), [(440.0, 44100), (1000.0, 8000), (3000.0, 48000), (250.0, 22050)]
)
def test_resampling_keeps_frequency_and_duration(freq, rate):
    seconds = 1.0
    x = load_audio(sine(freq, rate, seconds), rate)
    assert len(x) == expected_length(round(rate * seconds), rate)
    assert abs(peak_hz(x, SAMPLE_RATE) - freq) <= 1.0  # FFT bin width is 1 Hz here
    amplitude = np.sqrt(2 * np.mean(x[800:-800] ** 2))  # away from the filter's edges
    assert abs(amplitude - 0.5) < 0.01


def test_downsampling_removes_content_above_nyquist():
    x = load_audio(sine(12000, 48000, 0.5), 48000)  # 12 kHz cannot exist at 16 kHz
    assert np.sqrt(np.mean(x[800:-800] ** 2)) < 1e-4  # away from the onset transients


def test_resample_function_handles_channels_and_identity():
    stereo = np.stack([sine(440, 32000, 0.5), sine(880, 32000, 0.5)], axis=1)
    out = resample(stereo, 32000, 16000)
    assert out.shape == (8000, 2) and out.dtype == np.float32
    assert abs(peak_hz(out[:, 0], 16000) - 440) <= 2 and abs(peak_hz(out[:, 1], 16000) - 880) <= 2
    same = resample(stereo[:, 0].astype(np.float64), 32000, 32000)
    assert same.dtype == np.float32
    np.testing.assert_array_equal(same, stereo[:, 0])


@settings(max_examples=40, deadline=None, database=None)
@given(
    rate=st.integers(4000, 192000),
    frames=st.integers(1, 4000),
    channels=st.integers(1, 3),
    dtype=st.sampled_from([np.float32, np.float64, np.int16]),
)
def test_any_rate_and_length_resamples_to_the_expected_length(rate, frames, channels, dtype):
    expected = expected_length(frames, rate)
    rng = np.random.default_rng(frames)
    samples = rng.uniform(-0.9, 0.9, size=(frames, channels))
    if dtype is np.int16:
        samples = samples * 32767
    samples = samples.astype(dtype)
    if expected == 0:
        with pytest.raises(AudioError, match="too short"):
            load_audio(samples, rate)
        return
    out = load_audio(samples, rate)
    assert out.shape == (expected,) and out.dtype == np.float32
    assert np.isfinite(out).all()


# ------------------------------------------------------------------------ writing and round trips


def test_pcm16_round_trip_is_within_one_step(tmp_path):
    x = np.random.default_rng(0).uniform(-1, 1, 16000).astype(np.float32)
    path = write_wav(tmp_path / "a.wav", x)
    assert path == tmp_path / "a.wav"
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert np.abs(load_audio(path) - x).max() <= 1 / 32768


def test_float_round_trip_is_exact(tmp_path):
    x = np.random.default_rng(1).uniform(-1.5, 1.5, 8000).astype(np.float32)
    path = write_wav(tmp_path / "f.wav", x, subtype="FLOAT")
    assert sf.info(str(path)).subtype == "FLOAT"
    np.testing.assert_array_equal(load_audio(path), x)


def test_pcm16_clips_instead_of_wrapping():
    data = encode_wav(np.array([1.5, -1.5, 1.0, -1.0], np.float32))
    decoded, _ = decode_audio(data)
    np.testing.assert_array_equal(decoded[:, 0], [32767 / 32768, -1, 32767 / 32768, -1])


def test_encode_wav_keeps_rate_and_channels():
    stereo = np.stack([sine(440, 22050, 0.1), sine(660, 22050, 0.1)], axis=1)
    decoded, rate = decode_audio(encode_wav(stereo, 22050, subtype="FLOAT"))
    assert rate == 22050
    np.testing.assert_array_equal(decoded, stereo)
    empty, _ = decode_audio(encode_wav(np.zeros(0, np.float32)))
    assert empty.shape == (0, 1)


def test_wav_base64_round_trip():
    x = sine(440, 16000, 0.25)
    text = wav_base64(x)
    assert base64.b64decode(text)[:4] == b"RIFF"
    assert np.abs(load_audio(text) - x).max() <= 1 / 32768


def test_write_wav_creates_parents_and_replaces(tmp_path):
    target = tmp_path / "a" / "b" / "out.wav"
    write_wav(target, np.zeros(160, np.float32))
    write_wav(target, np.full(320, 0.5, np.float32))
    assert len(load_audio(target)) == 320
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.wav"]


def test_failed_write_leaves_no_file_behind(tmp_path):
    bad = np.array([0.0, np.nan, 0.1], np.float32)
    with pytest.raises(AudioError, match="NaN"):
        write_wav(tmp_path / "new" / "x.wav", bad)
    assert list(tmp_path.iterdir()) == []  # not even the parent folder

    existing = write_wav(tmp_path / "keep.wav", np.full(100, 0.25, np.float32))
    before = existing.read_bytes()
    with pytest.raises(AudioError, match="infinite"):
        write_wav(existing, np.array([np.inf], np.float32))
    assert existing.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.wav"]


def test_failed_load_writes_nothing(tmp_path):
    """The load -> write path: a bad input stops before any output file exists."""
    target = tmp_path / "out.wav"
    with pytest.raises(AudioError):
        write_wav(target, load_audio(HELLO.read_bytes()[:100]))
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ bad inputs


def _hello_bytes() -> bytes:
    return HELLO.read_bytes()


def _half(name: str) -> bytes:
    data = (DATA / name).read_bytes()
    return data[: len(data) // 2]


BAD_INPUTS = {
    "truncated wav (half)": (lambda: load_audio(_half("hello_16k_mono.wav")), "truncated"),
    "truncated float wav (half)": (
        lambda: load_audio(_half("sentence_48k_float.wav")),
        "truncated",
    ),
    "wav header only": (lambda: load_audio(_hello_bytes()[:44]), "truncated"),
    "wav cut inside the last frame": (lambda: load_audio(_hello_bytes()[:-1]), "truncated"),
    "truncated flac": (lambda: load_audio(_half("question_22k_stereo.flac")), "corrupt"),
    "truncated ogg": (lambda: load_audio(_half("numbers_44k_mono.ogg")), "truncated"),
    "garbage bytes": (
        lambda: load_audio(np.random.default_rng(0).bytes(4000)),
        "not in a recognised audio format",
    ),
    "mp4 container": (lambda: load_audio(b"\x00\x00\x00\x20ftypM4A " + bytes(200)), "MP4"),
    "empty bytes": (lambda: load_audio(b""), "empty"),
    "empty stream": (lambda: load_audio(io.BytesIO(b"")), "empty"),
    "zero-length array": (lambda: load_audio(np.zeros(0, np.float32), 16000), "empty"),
    "zero-frame stereo array": (lambda: load_audio(np.zeros((0, 2)), 16000), "empty"),
    "no channels": (lambda: load_audio(np.zeros((100, 0)), 16000), "no channels"),
    "NaN": (lambda: load_audio(np.array([0.0, np.nan]), 16000), "NaN"),
    "Inf": (lambda: load_audio(np.array([0.0, -np.inf]), 16000), "infinite"),
    "too long": (lambda: load_audio(HELLO, max_seconds=1.0), "longer than max_seconds"),
    "too long array": (
        lambda: load_audio(np.zeros(16001), 16000, max_seconds=1.0),
        "longer than max_seconds",
    ),
    "too short to resample": (lambda: load_audio(np.zeros(1), 48000), "too short"),
    "missing path": (lambda: load_audio("no/such/clip.wav"), "not found.*no/such/clip.wav"),
    "missing Path": (lambda: load_audio(Path("no/such/clip.wav")), "not found.*clip.wav"),
    "word that is valid base64": (lambda: load_audio("abcd"), "not found.*abcd"),
    "base64 of a broken wav": (
        lambda: load_audio(base64.b64encode(_hello_bytes()[:60]).decode()),
        "truncated",
    ),
    "directory": (lambda: load_audio(DATA), "directory"),
    "3-D array": (lambda: load_audio(np.zeros((2, 3, 400)), 16000), "3-D"),
    "0-D array": (lambda: load_audio(np.float32(0.5), 16000), "0-D"),
    "missing sample_rate": (lambda: load_audio(np.zeros(100)), "sample_rate is required"),
    "zero sample_rate": (lambda: load_audio(np.zeros(100), 0), "positive"),
    "negative sample_rate": (lambda: load_audio(np.zeros(100), -16000), "positive"),
    "absurd sample_rate": (lambda: load_audio(np.zeros(100), 10**7), "384000"),
    "fractional sample_rate": (lambda: load_audio(np.zeros(100), 22050.5), "whole number"),
    "bool sample_rate": (lambda: load_audio(np.zeros(100), True), "number of Hz"),
    "bad target_rate": (lambda: load_audio(HELLO, target_rate=0), "target_rate"),
    "bad max_seconds": (lambda: load_audio(HELLO, max_seconds=-1), "max_seconds"),
    "header/sample_rate mismatch": (lambda: load_audio(HELLO, 8000), "header"),
    "complex dtype": (lambda: load_audio(np.zeros(10, complex), 16000), "complex128"),
    "bool dtype": (lambda: load_audio(np.zeros(10, bool), 16000), "not audio"),
    "string dtype": (lambda: load_audio(np.array(["a", "b"]), 16000), "not audio"),
    "int64 dtype": (lambda: load_audio(np.zeros(10, np.int64), 16000), "ambiguous"),
    "python list": (lambda: load_audio([0.1, 0.2], 16000), "cannot load audio from a list"),
    "text-mode file": (lambda: load_audio(io.StringIO("RIFF")), "binary mode"),
    "non-audio data URL": (lambda: load_audio("data:image/png;base64,AAAA"), "media type"),
    "data URL without base64": (lambda: load_audio("data:audio/wav,abc"), "not base64"),
    "data URL with bad base64": (lambda: load_audio("data:audio/wav;base64,@@@"), "base64"),
    "bad WAV subtype": (lambda: encode_wav(np.zeros(10), subtype="PCM_24"), "subtype"),
    "encode_wav of a list": (lambda: encode_wav([0.1]), "numpy array"),
    "resample of ints": (lambda: resample(np.zeros(10, np.int16), 8000, 16000), "float"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_audio_error_naming_the_problem(case):
    call, pattern = BAD_INPUTS[case]
    with pytest.raises(AudioError, match=pattern) as info:
        call()
    assert isinstance(info.value, ValueError)


def test_empty_file_on_disk(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty.wav' is empty"):
        load_audio(empty)


class CountingReader(io.RawIOBase):
    """A seekable binary file that counts the bytes handed out."""

    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._inner.readinto(buffer)
        self.bytes_read += n
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._inner.seek(offset, whence)

    def tell(self) -> int:
        return self._inner.tell()


def test_length_is_checked_from_the_header_before_decoding():
    long_clip = encode_wav(np.zeros(16000 * 30, np.float32))  # 30 s, ~1 MB
    reader = CountingReader(long_clip)
    with pytest.raises(AudioError, match="30.0 s long"):
        load_audio(reader, max_seconds=10)
    assert reader.bytes_read < len(long_clip) // 10
    reader = CountingReader(long_clip)
    assert len(load_audio(reader, max_seconds=None)) == 16000 * 30
    assert reader.bytes_read >= len(long_clip) - 100


def test_streamed_wav_with_unknown_length_is_not_called_truncated(hello):
    """Writers on pipes put 0xFFFFFFFF in the size fields; that is not truncation."""
    data = bytearray(_hello_bytes())
    assert data[36:40] == b"data"
    data[4:8] = data[40:44] = (0xFFFFFFFF).to_bytes(4, "little")
    np.testing.assert_array_equal(load_audio(bytes(data)), hello)


def test_float_wav_with_nan_is_rejected_on_load():
    """A float WAV can hold NaN (a broken recorder); it decodes, but load_audio refuses it."""
    buffer = io.BytesIO()
    sf.write(buffer, np.array([0.1, np.nan, 0.2], np.float32), 16000, format="WAV", subtype="FLOAT")
    samples, _ = decode_audio(buffer.getvalue())
    assert np.isnan(samples[1, 0])
    with pytest.raises(AudioError, match="NaN"):
        load_audio(buffer.getvalue())
