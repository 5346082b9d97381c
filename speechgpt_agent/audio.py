"""Audio I/O: decode, validate, mix to mono, resample, and write WAV.

This is the first stage of a turn (DESIGN.md section 4). Whatever a user hands in (a path,
the bytes of an encoded file, base64 or a ``data:`` URL, an open binary file, or a
numpy / torch array of samples at any rate with any number of channels) leaves as one
float32 mono signal at 16 kHz, the rate of the mHuBERT speech tokenizer and of the unit
vocoder. Anything that cannot be used raises :class:`~speechgpt_agent.errors.AudioError`
(a ``ValueError``) with a message that says what is wrong and what to do.

Conventions: lengths are in samples per channel ("frames"), rates in Hz, durations in
seconds. Multi-channel arrays are ``[frames, channels]`` (the soundfile layout), except
that a 2-D array whose first dimension is at most 8 and whose second is larger is read as
``[channels, frames]`` (the torchaudio layout). Float samples are taken as they are
(full scale is [-1, 1]; louder values are kept, not clipped); integer PCM is scaled to
[-1, 1). Decoding is done by libsndfile (through ``soundfile``: WAV, FLAC, Ogg
Vorbis/Opus, MP3, AIFF, ...).

Resampling has two methods (``resampler=``):

* ``"soxr"`` (the default here): libsoxr (through ``soxr``, quality "HQ"), a steep
  linear-phase filter; ``floor(frames * target / rate + 0.5)`` samples.
* ``"torchaudio"``: the windowed-sinc algorithm of ``torchaudio.functional.resample`` with
  its defaults (Hann window, 6 zero crossings, rolloff 0.99; ``ceil(target * frames /
  rate)`` samples, rates gcd-reduced), computed by :mod:`speechgpt_agent.sinc_resample`.
  SpeechGPT's ``speech2unit`` prepared mHuBERT's input that way, and the two differ by
  about 30 dB SNR on speech (mostly in 4-8 kHz), enough to change 8-10 % of the units of
  22.05/44.1/8 kHz input, so the mHuBERT :class:`~speechgpt_agent.units.SpeechTokenizer`
  uses it by default.

Channels are averaged to mono. (The original ``speech2unit`` concatenated the channels of a
stereo file into one signal twice as long, a bug this package does not reproduce.)
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, Union
from urllib.parse import unquote_to_bytes

import numpy as np
import soundfile as sf
import soxr

from .errors import AudioError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_MAX_SECONDS",
    "MAX_SAMPLE_RATE",
    "RESAMPLERS",
    "SAMPLE_RATE",
    "AudioError",
    "AudioSource",
    "Resampler",
    "decode_audio",
    "encode_wav",
    "load_audio",
    "resample",
    "wav_base64",
    "write_wav",
]

SAMPLE_RATE = 16000
"""Rate (Hz) of the speech tokenizer's input and of the vocoder's output."""

DEFAULT_MAX_SECONDS = 600.0
"""Longest clip (s) that :func:`load_audio` accepts unless told otherwise."""

MAX_SAMPLE_RATE = 384_000
"""Highest rate (Hz) accepted anywhere; a larger value is taken to be a mistake."""

AudioSource = Union[
    str, "os.PathLike[str]", bytes, bytearray, memoryview, BinaryIO, np.ndarray, "torch.Tensor"
]
"""Everything :func:`load_audio` accepts."""

WavSubtype = Literal["PCM_16", "FLOAT"]

Resampler = Literal["torchaudio", "soxr"]
"""How :func:`resample` converts rates (see the module docstring)."""

RESAMPLERS: tuple[Resampler, ...] = ("torchaudio", "soxr")

# 2-D arrays with at most this many rows (and more columns) are [channels, frames].
_MAX_CHANNELS_FIRST = 8

# Integer PCM dtypes as (kind, itemsize) -> (offset, full scale): x -> (x - offset) / scale.
_PCM_SCALE = {
    ("i", 1): (0.0, 128.0),
    ("i", 2): (0.0, 32768.0),
    ("i", 4): (0.0, 2.0**31),
    ("u", 1): (128.0, 128.0),
}

# First bytes of containers libsndfile reads: a failure to decode them means damage.
_KNOWN_MAGIC = (
    (b"RIFF", "WAV"),
    (b"RIFX", "WAV"),
    (b"RF64", "RF64 WAV"),
    (b"fLaC", "FLAC"),
    (b"OggS", "Ogg"),
    (b"FORM", "AIFF"),
    (b"ID3", "MP3"),
    (b".snd", "AU"),
    (b"caff", "CAF"),
)
# Containers libsndfile cannot read: say so, and how to convert them.
_UNSUPPORTED_MAGIC = (
    (b"\x1aE\xdf\xa3", "WebM/Matroska"),
    (b"#!AMR", "AMR"),
    (b"\xff\xf1", "AAC (ADTS)"),
    (b"\xff\xf9", "AAC (ADTS)"),
)
_CONVERT_HINT = "convert it first, e.g. `ffmpeg -i INPUT -ar 16000 -ac 1 output.wav`"

# libsndfile's log line for a chunk whose declared length exceeds what the file holds,
# e.g. "data : 68474 (should be 34215)". Only chunks that carry the samples are checked.
_CHUNK_LENGTH_RE = re.compile(r"^\s*(data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Declared lengths at or above this are "unknown length" placeholders of streamed files.
_STREAMING_PLACEHOLDER = 0x7FFF0000
# libsndfile reports SF_COUNT_MAX frames for streams of unknown length.
_UNKNOWN_FRAMES = 2**62
_OGG_TRUNCATION_LOG = ("lacks an end-of-stream bit", "Junk after the last page")

_B64_RE = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_DATA_URL_TYPES = ("audio/", "application/octet-stream", "application/ogg", "video/ogg")


# ----------------------------------------------------------------------------- public API


def load_audio(
    source: AudioSource,
    sample_rate: int | None = None,
    *,
    target_rate: int = SAMPLE_RATE,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    resampler: Resampler = "soxr",
) -> np.ndarray:
    """Load audio from any supported source as float32 mono samples at ``target_rate``.

    Args:
        source: one of
            - a path (``str`` or ``os.PathLike``) of an audio file;
            - ``bytes`` / ``bytearray`` / ``memoryview`` holding an encoded file;
            - a ``str`` with base64 of an encoded file, or a ``data:audio/...;base64,...``
              URL;
            - a binary file object (anything with ``.read()``; read from its current
              position);
            - a numpy array or torch tensor of samples, 1-D ``[frames]`` or 2-D
              ``[frames, channels]`` (``[channels, frames]`` when ``shape[0] <= 8 <
              shape[1]``). Float samples are used as they are (values beyond [-1, 1] are
              kept); int16 is divided by 32768, int32 by 2**31, int8 by 128, and uint8
              maps as ``(x - 128) / 128``.

            A ``str`` is tried as a data URL, then as an existing file, then as base64.
        sample_rate: rate (Hz) of an array ``source``; required for arrays. For encoded
            sources the file header gives the rate; if ``sample_rate`` is also given, it
            must agree with the header.
        target_rate: rate (Hz) of the result; default 16000.
        max_seconds: longest accepted duration (s) of the input, checked from the file
            header before decoding where the format allows; ``None`` disables the limit.
        resampler: ``"soxr"`` (default) or ``"torchaudio"`` (the original SpeechGPT's
            windowed sinc); see :func:`resample`.

    Returns:
        float32 array ``[T]``, C-contiguous, never a view of ``source``. Channels are
        averaged (the original ``speech2unit`` concatenated them, a bug); the rate is
        converted by ``resampler``: ``T = floor(frames * target_rate / rate + 0.5)`` with
        ``"soxr"``, ``ceil(frames * target_rate / rate)`` with ``"torchaudio"``.

    Raises:
        AudioError: the source is missing, unreadable, truncated, corrupt, in an
            unsupported format, empty, too long, has NaN/Inf samples, a bad shape or
            dtype, or a missing/invalid rate; an unknown ``resampler``.
    """
    _check_resampler(resampler)
    target_rate = _check_rate(target_rate, "target_rate")
    max_seconds = _check_max_seconds(max_seconds)

    array = _as_numpy(source)
    if array is not None:
        if sample_rate is None:
            raise AudioError(
                "sample_rate is required when audio is given as an array of samples "
                f"(shape {tuple(array.shape)}): pass load_audio(samples, sample_rate=16000) "
                "with the rate the samples were recorded at."
            )
        rate = _check_rate(sample_rate, "sample_rate")
        what = f"audio array of shape {tuple(array.shape)}"
        frames = _frames_layout(array, what)
        _check_duration(frames.shape[0], rate, max_seconds, what)
        frames = _to_float32(frames, what)
    else:
        frames, rate, what = _decode_source(source, max_seconds)
        if sample_rate is not None and _check_rate(sample_rate, "sample_rate") != rate:
            raise AudioError(
                f"{what} declares {rate} Hz in its header but sample_rate={sample_rate} was "
                "passed; drop sample_rate for encoded audio (the header is authoritative)."
            )

    _check_samples(frames, rate, max_seconds, what)
    mono = frames[:, 0] if frames.shape[1] == 1 else frames.mean(axis=1, dtype=np.float32)
    out = resample(mono, rate, target_rate, resampler=resampler)
    if out.shape[0] == 0:
        raise AudioError(
            f"{what} is too short: {frames.shape[0]} sample(s) at {rate} Hz give no sample "
            f"at {target_rate} Hz."
        )
    # `frames` is always a fresh array (decoded, or converted with a copy), so `out` never
    # aliases the caller's memory.
    return np.ascontiguousarray(out, dtype=np.float32)


def decode_audio(data: bytes, *, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode an encoded audio file held in memory.

    Args:
        data: the bytes of a file in any format libsndfile reads (WAV, FLAC, Ogg
            Vorbis/Opus, MP3, AIFF, ...).
        max_seconds: if given, reject a longer clip from its header, before decoding.

    Returns:
        ``(samples, sample_rate)``: float32 ``[frames, channels]`` as stored (no mixing,
        no resampling, no NaN check) and the file's rate in Hz.

    Raises:
        AudioError: empty, unrecognised, unsupported, corrupt or truncated data, an
            invalid rate in the header, or longer than ``max_seconds``.
    """
    data = _as_bytes(data)
    what = f"audio data ({len(data)} bytes)"
    if not data:
        raise AudioError("audio data is empty (0 bytes): nothing to decode.")
    frames, rate = _decode_file(io.BytesIO(data), what, data[:16], _check_max_seconds(max_seconds))
    return frames, rate


def resample(
    samples: np.ndarray, orig_rate: int, target_rate: int, *, resampler: Resampler = "soxr"
) -> np.ndarray:
    """Convert ``samples`` from ``orig_rate`` to ``target_rate`` (Hz).

    Args:
        samples: float array ``[frames]`` or ``[frames, channels]``.
        orig_rate: rate of ``samples`` in Hz.
        target_rate: wanted rate in Hz.
        resampler: ``"soxr"`` (libsoxr HQ, default) or ``"torchaudio"``: the windowed sinc
            of ``torchaudio.functional.resample`` with its defaults (Hann window,
            ``lowpass_filter_width`` 6, ``rolloff`` 0.99), computed in float32 with torch
            (:func:`speechgpt_agent.sinc_resample.sinc_resample`; torchaudio itself is not
            needed).

    Returns:
        float32 array of ``floor(frames * target_rate / orig_rate + 0.5)`` frames
        (``"soxr"``) or ``ceil(frames * target_rate / orig_rate)`` frames
        (``"torchaudio"``), plus the channel axis when given; ``samples`` as float32 when
        the rates are equal.

    Raises:
        AudioError: an invalid rate, a shape other than 1-D/2-D, non-float samples, or an
            unknown ``resampler``.
    """
    _check_resampler(resampler)
    orig_rate = _check_rate(orig_rate, "orig_rate")
    target_rate = _check_rate(target_rate, "target_rate")
    samples = np.asarray(samples)
    if samples.ndim not in (1, 2):
        raise AudioError(
            f"resample expects [frames] or [frames, channels]; got shape {samples.shape}."
        )
    if samples.dtype.kind != "f":
        raise AudioError(f"resample expects float samples; got dtype {samples.dtype}.")
    samples = samples.astype(np.float32, copy=False)
    if orig_rate == target_rate or samples.shape[0] == 0:
        return samples
    if resampler == "torchaudio":
        import torch

        from .sinc_resample import sinc_resample

        channels_first = torch.from_numpy(np.ascontiguousarray(samples.T))  # [..., frames]
        out = sinc_resample(channels_first, orig_rate, target_rate).numpy().T
        return np.ascontiguousarray(out, dtype=np.float32)
    return soxr.resample(np.ascontiguousarray(samples), orig_rate, target_rate, quality="HQ")


def encode_wav(
    samples: np.ndarray | torch.Tensor,
    sample_rate: int = SAMPLE_RATE,
    *,
    subtype: WavSubtype = "PCM_16",
) -> bytes:
    """Encode samples as a WAV file in memory.

    Args:
        samples: ``[frames]`` or ``[frames, channels]`` (same layout and dtype rules as
            :func:`load_audio`); may be empty (a valid WAV with no frames).
        sample_rate: rate of ``samples`` in Hz, written to the header.
        subtype: ``"PCM_16"`` (16-bit integer: float samples are rounded to multiples of
            1/32768 and clipped to [-1, 1 - 1/32768]) or ``"FLOAT"`` (32-bit IEEE float,
            lossless for float32 input, values beyond [-1, 1] kept).

    Returns:
        The bytes of the WAV file.

    Raises:
        AudioError: bad rate, subtype, shape or dtype, or NaN/Inf samples.
    """
    rate = _check_rate(sample_rate, "sample_rate")
    if subtype not in ("PCM_16", "FLOAT"):
        raise AudioError(f"WAV subtype must be 'PCM_16' or 'FLOAT'; got {subtype!r}.")
    array = _as_numpy(samples)
    if array is None:
        raise AudioError(
            f"encode_wav needs a numpy array or torch tensor of samples; got {type(samples).__name__}."
        )
    what = f"samples of shape {tuple(array.shape)}"
    frames = _to_float32(_frames_layout(array, what, allow_empty=True), what)
    _check_finite(frames, what)
    if subtype == "PCM_16":
        frames = np.clip(np.round(frames * 32768.0), -32768, 32767).astype(np.int16)
    buffer = io.BytesIO()
    sf.write(buffer, frames, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def write_wav(
    path: str | os.PathLike[str],
    samples: np.ndarray | torch.Tensor,
    sample_rate: int = SAMPLE_RATE,
    *,
    subtype: WavSubtype = "PCM_16",
) -> Path:
    """Write samples to a WAV file atomically; see :func:`encode_wav` for the arguments.

    The file is encoded in memory first, written to a temporary file in the same folder
    and moved into place with ``os.replace``, so readers never see a partial file and a
    failure leaves neither a partial file nor a changed old one. Parent folders are
    created.

    Returns:
        The path written.
    """
    data = encode_wav(samples, sample_rate, subtype=subtype)
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(temp, "xb") as handle:  # "x": never clobber; the umask sets the mode
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return target


def wav_base64(samples: np.ndarray | torch.Tensor, sample_rate: int = SAMPLE_RATE) -> str:
    """Base64 (standard alphabet, ASCII) of a 16-bit PCM WAV of ``samples``.

    This is the form that chat APIs carry audio in (``{"type": "audio", "base64": ...,
    "mime_type": "audio/wav"}``).
    """
    return base64.b64encode(encode_wav(samples, sample_rate)).decode("ascii")


# ------------------------------------------------------------------------ encoded sources


def _decode_source(source: Any, max_seconds: float | None) -> tuple[np.ndarray, int, str]:
    """Decode any non-array source; returns ``([frames, channels] float32, rate, name)``."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = _as_bytes(source)
        return _decode_bytes(data, f"audio bytes ({len(data)} bytes)", max_seconds)
    if isinstance(source, str):
        return _decode_string(source, max_seconds)
    if isinstance(source, os.PathLike):
        return _decode_path(Path(os.fspath(source)), max_seconds)
    if hasattr(source, "read"):
        return _decode_file_object(source, max_seconds)
    raise AudioError(
        f"cannot load audio from a {type(source).__name__}; pass a path, bytes, base64 or "
        "data URL string, a binary file object, or a numpy array / torch tensor with "
        "sample_rate."
    )


def _decode_string(text: str, max_seconds: float | None) -> tuple[np.ndarray, int, str]:
    if text[:5].lower() == "data:":
        return _decode_bytes(_data_url_bytes(text), "data URL audio", max_seconds)
    path = Path(os.path.expanduser(text))
    if os.path.exists(path):  # False, not an error, for over-long names or NUL characters
        return _decode_path(path, max_seconds)
    data = _b64decode(text)
    if data is not None and data:
        what = f"base64 audio ({len(data)} bytes)"
        if _sniff(data) is not None:
            return _decode_bytes(data, what, max_seconds)
        try:  # a format without a magic number we know: let libsndfile try
            return _decode_bytes(data, what, max_seconds)
        except AudioError:
            pass
    raise AudioError(
        f"audio file not found: {_shorten(text)!r} does not exist. A string must be the path "
        "of an existing audio file, a data:audio/...;base64,... URL, or base64 of an "
        "encoded audio file."
    )


def _data_url_bytes(url: str) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma:
        raise AudioError("malformed data URL: no ',' separates the header from the data.")
    params = [p.strip().lower() for p in header[5:].split(";")]
    mime = params[0]
    if mime and not mime.startswith(_DATA_URL_TYPES):
        raise AudioError(
            f"data URL has media type {mime!r}, not audio: expected data:audio/...;base64,..."
        )
    if "base64" not in params[1:]:
        raise AudioError(
            "data URL is not base64-encoded: expected data:audio/wav;base64,<base64 data>."
        )
    if "%" in payload:
        payload = unquote_to_bytes(payload).decode("ascii", errors="replace")
    data = _b64decode(payload)
    if data is None:
        raise AudioError("data URL payload is not valid base64.")
    if not data:
        raise AudioError("data URL holds no data (empty payload).")
    return data


def _b64decode(text: str) -> bytes | None:
    """Standard or URL-safe base64, whitespace and missing padding tolerated; None if not."""
    compact = "".join(text.split())
    if not compact or len(compact) % 4 == 1 or not _B64_RE.fullmatch(compact):
        return None
    padded = compact + "=" * (-len(compact) % 4)
    urlsafe = "-" in compact or "_" in compact
    try:
        return base64.b64decode(padded, altchars=b"-_" if urlsafe else None, validate=True)
    except (binascii.Error, ValueError):
        return None


def _decode_path(path: Path, max_seconds: float | None) -> tuple[np.ndarray, int, str]:
    what = f"audio file '{path}'"
    if not path.exists():
        raise AudioError(f"audio file not found: '{path}' does not exist.")
    if path.is_dir():
        raise AudioError(f"'{path}' is a directory, not an audio file.")
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise AudioError(f"cannot open {what}: {exc.strerror or exc}.") from exc
    with handle:
        head = handle.read(16)
        if not head:
            raise AudioError(f"{what} is empty (0 bytes): nothing to decode.")
        handle.seek(0)
        frames, rate = _decode_file(handle, what, head, max_seconds)
    return frames, rate, what


def _decode_file_object(handle: Any, max_seconds: float | None) -> tuple[np.ndarray, int, str]:
    name = getattr(handle, "name", None)
    what = f"audio file object {name!r}" if isinstance(name, str) else "audio file object"
    if isinstance(handle, io.TextIOBase):
        raise AudioError(f"{what} is open in text mode; open it in binary mode ('rb').")
    seekable = getattr(handle, "seekable", None)
    if callable(seekable) and seekable() and hasattr(handle, "seek") and hasattr(handle, "tell"):
        start = handle.tell()
        head = handle.read(16)
        _require_bytes(head, what)
        if not head:
            raise AudioError(f"{what} is empty (0 bytes left to read): nothing to decode.")
        handle.seek(start)
        frames, rate = _decode_file(handle, what, bytes(head), max_seconds)
        return frames, rate, what
    data = handle.read()
    _require_bytes(data, what)
    return _decode_bytes(bytes(data), what, max_seconds)


def _decode_bytes(data: bytes, what: str, max_seconds: float | None) -> tuple[np.ndarray, int, str]:
    if not data:
        raise AudioError(f"{what} is empty: nothing to decode.")
    frames, rate = _decode_file(io.BytesIO(data), what, data[:16], max_seconds)
    return frames, rate, what


def _decode_file(
    handle: Any, what: str, head: bytes, max_seconds: float | None
) -> tuple[np.ndarray, int]:
    """Decode an open binary file with libsndfile: header checks first, then the samples."""
    try:
        with sf.SoundFile(handle) as audio:
            rate, declared = audio.samplerate, audio.frames
            _check_rate(rate, f"the sample rate in the header of {what}")
            _check_truncation(audio.extra_info, what)
            known_length = declared < _UNKNOWN_FRAMES
            if known_length:
                _check_duration(declared, rate, max_seconds, what)
            frames = audio.read(dtype="float32", always_2d=True)
    except sf.SoundFileError as exc:
        raise _decode_error(exc, what, head) from exc
    if known_length and frames.shape[0] < declared:
        raise AudioError(
            f"{what} is truncated: its header declares {declared} frames but only "
            f"{frames.shape[0]} could be read. The file was cut short (an incomplete "
            "download or copy?); get a complete copy."
        )
    return frames, rate


def _check_truncation(log: str, what: str) -> None:
    """Detect a file cut short from libsndfile's parse log (it reads such files silently)."""
    for match in _CHUNK_LENGTH_RE.finditer(log):
        declared, present = int(match.group(2)), int(match.group(3))
        if present < declared < _STREAMING_PLACEHOLDER:
            raise AudioError(
                f"{what} is truncated: its header declares {declared} bytes of audio data "
                f"but only {present} are present. The file was cut short (an incomplete "
                "download or copy?); get a complete copy."
            )
    if any(marker in log for marker in _OGG_TRUNCATION_LOG):
        raise AudioError(
            f"{what} is truncated or corrupt: the Ogg stream does not end properly. "
            "Get a complete copy."
        )


def _decode_error(exc: Exception, what: str, head: bytes) -> AudioError:
    """Turn a libsndfile failure into a message that says what kind of problem it is."""
    reason = str(getattr(exc, "error_string", "") or exc)
    code = getattr(exc, "code", None)
    kind = _sniff(head)
    if kind is not None and kind[1] is False:
        return AudioError(
            f"{what} is {kind[0]} audio, which cannot be decoded here; {_CONVERT_HINT}."
        )
    if code == 4:  # SF_ERR_UNSUPPORTED_ENCODING: a known container, an unknown codec
        return AudioError(f"{what} uses an unsupported audio encoding ({reason}); {_CONVERT_HINT}.")
    if code == 1 and kind is None:  # SF_ERR_UNRECOGNISED_FORMAT
        return AudioError(
            f"{what} is not in a recognised audio format ({reason}); supported are WAV, FLAC, "
            f"Ogg Vorbis/Opus, MP3, AIFF and other libsndfile formats. If it is audio, {_CONVERT_HINT}."
        )
    label = f"looks like {kind[0]} but " if kind is not None else ""
    return AudioError(
        f"{what} could not be decoded: it {label}is corrupt or truncated ({reason}). "
        "Re-export or re-download the file."
    )


def _sniff(head: bytes) -> tuple[str, bool] | None:
    """``(container name, readable by libsndfile)`` from the first bytes, or None."""
    if head[4:8] == b"ftyp":
        return "MP4/M4A (AAC)", False
    for magic, name in _UNSUPPORTED_MAGIC:
        if head.startswith(magic):
            return name, False
    for magic, name in _KNOWN_MAGIC:
        if head.startswith(magic):
            return name, True
    return None


def _as_bytes(data: Any) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise AudioError(f"expected bytes of an encoded audio file; got {type(data).__name__}.")


def _require_bytes(data: Any, what: str) -> None:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise AudioError(
            f"{what} returned {type(data).__name__} from read(), not bytes; open it in "
            "binary mode ('rb')."
        )


# ------------------------------------------------------------------------ arrays of samples


def _as_numpy(source: Any) -> np.ndarray | None:
    """The samples of a numpy array or torch tensor as numpy; None for anything else."""
    if isinstance(source, (np.ndarray, np.generic)):
        return np.asarray(source)
    torch = sys.modules.get("torch")  # a tensor can only exist if torch was imported
    if torch is not None and isinstance(source, torch.Tensor):
        tensor = source.detach()
        if tensor.is_complex():
            raise AudioError(f"samples are complex ({tensor.dtype}); pass the real-valued signal.")
        if tensor.is_floating_point() and tensor.dtype not in (
            torch.float16,
            torch.float32,
            torch.float64,
        ):
            tensor = tensor.float()  # bfloat16 and float8 have no numpy dtype
        try:
            return tensor.cpu().numpy()
        except (RuntimeError, TypeError) as exc:
            raise AudioError(f"cannot read samples from a {tensor.dtype} tensor: {exc}") from exc
    return None


def _frames_layout(array: np.ndarray, what: str, *, allow_empty: bool = False) -> np.ndarray:
    """View ``array`` as ``[frames, channels]`` (see the module docstring for the rule)."""
    if array.ndim == 1:
        frames = array[:, None]
    elif array.ndim == 2:
        channels_first = array.shape[0] <= _MAX_CHANNELS_FIRST < array.shape[1]
        frames = array.T if channels_first else array
    else:
        hint = " Select one clip (e.g. x[0]) of a batch." if array.ndim > 2 else ""
        raise AudioError(
            f"{what}: expected a 1-D [frames] or 2-D [frames, channels] / [channels, frames] "
            f"array, got a {array.ndim}-D array.{hint}"
        )
    if frames.shape[1] == 0:
        raise AudioError(f"{what} has no channels.")
    if frames.shape[0] == 0 and not allow_empty:
        raise AudioError(f"{what} is empty: it contains no samples.")
    return frames


def _to_float32(frames: np.ndarray, what: str) -> np.ndarray:
    """Samples as float32; integer PCM scaled to [-1, 1)."""
    dtype = frames.dtype
    if dtype.kind == "f":
        return frames.astype(np.float32)
    scale = _PCM_SCALE.get((dtype.kind, dtype.itemsize))
    if scale is not None:
        offset, full_scale = scale
        return ((frames.astype(np.float64) - offset) / full_scale).astype(np.float32)
    if dtype.kind in "iu":
        raise AudioError(
            f"{what} has dtype {dtype}, whose full scale is ambiguous; convert to int16 or "
            "int32 PCM (e.g. x.astype(np.int16)) or to float in [-1, 1]."
        )
    raise AudioError(
        f"{what} has dtype {dtype}, which is not audio; use float samples in [-1, 1] or "
        "int8/int16/int32/uint8 PCM."
    )


# ------------------------------------------------------------------------------ validation


def _check_rate(rate: Any, name: str) -> int:
    """A whole number of Hz in [1, MAX_SAMPLE_RATE], as int."""
    if isinstance(rate, (bool, np.bool_)) or not isinstance(rate, (int, float, np.number)):
        raise AudioError(f"{name} must be a number of Hz (e.g. 16000); got {rate!r}.")
    if not np.isfinite(rate) or rate != int(rate):
        raise AudioError(f"{name} must be a whole number of Hz; got {rate!r}.")
    if rate <= 0:
        raise AudioError(f"{name} must be a positive number of Hz; got {rate!r}.")
    if rate > MAX_SAMPLE_RATE:
        raise AudioError(
            f"{name} of {rate!r} Hz is above the {MAX_SAMPLE_RATE} Hz limit; pass the rate "
            "in Hz (e.g. 16000)."
        )
    return int(rate)


def _check_resampler(resampler: Any) -> None:
    if resampler not in RESAMPLERS:
        raise AudioError(
            f"resampler must be one of {', '.join(map(repr, RESAMPLERS))}; got {resampler!r}."
        )


def _check_max_seconds(max_seconds: Any) -> float | None:
    if max_seconds is None:
        return None
    if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float, np.number)):
        raise AudioError(f"max_seconds must be a number of seconds or None; got {max_seconds!r}.")
    if not max_seconds > 0:
        raise AudioError(
            f"max_seconds must be positive (or None for no limit); got {max_seconds!r}."
        )
    return float(max_seconds)


def _check_duration(frames: int, rate: int, max_seconds: float | None, what: str) -> None:
    if max_seconds is not None and frames > max_seconds * rate:
        raise AudioError(
            f"{what} is {frames / rate:.1f} s long, longer than max_seconds={max_seconds:g} s; "
            "trim or split it, or raise max_seconds (None for no limit)."
        )


def _check_finite(frames: np.ndarray, what: str) -> None:
    finite = np.isfinite(frames)
    if not finite.all():
        bad = np.flatnonzero(~finite.all(axis=1))
        raise AudioError(
            f"{what} contains NaN or infinite samples ({bad.size} frame(s), the first at "
            f"frame {bad[0]}); the data is corrupt or came from a failed computation. "
            "Fix or replace them (e.g. np.nan_to_num) before passing them in."
        )


def _check_samples(frames: np.ndarray, rate: int, max_seconds: float | None, what: str) -> None:
    """Checks on decoded float32 ``[frames, channels]``: not empty, not too long, finite."""
    if frames.shape[0] == 0:
        raise AudioError(f"{what} is empty: it contains no samples.")
    _check_duration(frames.shape[0], rate, max_seconds, what)
    _check_finite(frames, what)


def _shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
