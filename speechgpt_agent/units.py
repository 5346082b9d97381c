"""Speech -> discrete units, as SpeechGPT's ``speech2unit`` does it, without fairseq.

The pipeline (DESIGN.md section 4): 16 kHz mono audio -> mHuBERT -> the output of
transformer layer 11 (one 768-d frame per 320 samples, i.e. 50 Hz) -> nearest of 1000
k-means centroids -> consecutive duplicates merged. The result is a :class:`UnitSequence`,
whose text form ``<sosp><661><588>...<eosp>`` is what the SpeechGPT LLM reads.

Fidelity to the original ``FeatureReader``/``ApplyKmeans``/``merge_duplicates``:

* Normalisation: when the model's feature-extractor config says ``do_normalize`` (the
  fairseq task's ``normalize``), the WHOLE waveform is normalised once, before chunking,
  with fairseq's formula ``F.layer_norm(x, x.shape)`` (zero mean, unit variance,
  eps 1e-5); otherwise the samples are used as they are (mHuBERT: not normalised).
* Chunking: the waveform is cut into chunks of ``max_chunk_samples`` (1,600,000 = 100 s)
  that run through the model independently; their frames are concatenated. A last chunk
  shorter than the conv receptive field (400 samples) yields no frame and is skipped
  (fairseq would crash on it).
* Layer: fairseq's ``extract_features(output_layer=L)`` returns the output of
  transformer layer ``L`` (1-based) and stops there, with no final encoder LayerNorm,
  for both post-LN (mHuBERT) and pre-LN (``layer_norm_first``) models. We capture that
  same tensor with a forward hook on ``encoder.layers[L - 1]``. (transformers'
  ``hidden_states[L]`` is the same tensor in transformers 5 and for post-LN models, but
  for pre-LN models transformers 4 returned the final LayerNorm's output as the last
  hidden state; the hook does not depend on that.)
* Quantisation: ``argmin_k |x|^2 - 2 x.c_k + |c_k|^2`` (:func:`speechgpt_agent.kernels.quantize`),
  first index on ties, computed in float32.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .audio import RESAMPLERS, AudioSource, Resampler, load_audio
from .errors import AudioError, CheckpointError, UnitError
from .hubert import DEFAULT_HUBERT, load_hubert
from .kernels import merge_repeats, quantize
from .kmeans import load_centroids

if TYPE_CHECKING:
    from transformers import HubertModel, Wav2Vec2FeatureExtractor

PathLike = str | os.PathLike

SOSP, EOSP = "<sosp>", "<eosp>"
"""Tags that open and close a unit sequence in SpeechGPT's text."""

DEFAULT_MAX_CHUNK_SAMPLES = 1_600_000
"""Samples per model call (100 s at 16 kHz), fairseq's ``max_chunk``."""

_TOKEN = re.compile(r"\s*(?:<(sosp|eosp)>|<(\d+)>)")


# --------------------------------------------------------------------------------------
# unit sequences
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitSequence:
    """Units of one clip.

    Attributes:
        units: the merged ("reduced") units: ids in ``[0, K)`` with no two equal neighbours.
        durations: run length of each unit, in HuBERT frames (50 Hz for mHuBERT);
            ``len(durations) == len(units)`` and ``sum(durations) == len(frames)``.
        frames: the unmerged id of every frame.

    ``len(seq)`` is the number of merged units.
    """

    units: tuple[int, ...]
    durations: tuple[int, ...]
    frames: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in ("units", "durations", "frames"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if len(self.units) != len(self.durations):
            raise UnitError(
                f"UnitSequence: {len(self.units)} units but {len(self.durations)} durations."
            )
        if any(u < 0 for u in self.units) or any(f < 0 for f in self.frames):
            raise UnitError("UnitSequence: unit ids must be >= 0.")
        if any(d < 1 for d in self.durations):
            raise UnitError("UnitSequence: durations must be >= 1 frame.")
        expanded: list[int] = []
        for unit, duration in zip(self.units, self.durations):
            expanded.extend([unit] * duration)
        if tuple(expanded) != self.frames or any(
            a == b for a, b in zip(self.units, self.units[1:])
        ):
            raise UnitError(
                "UnitSequence: units/durations are not the run-length encoding of frames "
                "(build it with UnitSequence.from_frames)."
            )

    @classmethod
    def from_frames(cls, frames: Iterable[int] | torch.Tensor | np.ndarray) -> UnitSequence:
        """Merge per-frame ids into units and durations (SpeechGPT's ``merge_duplicates``)."""
        ids = torch.as_tensor(np.asarray(frames, dtype=np.int64)).reshape(-1)
        units, durations = merge_repeats(ids)
        return cls(tuple(units.tolist()), tuple(durations.tolist()), tuple(ids.tolist()))

    @classmethod
    def from_text(cls, text: str) -> UnitSequence:
        """Parse ``"<sosp><661><588><eosp>"`` (ours or SpeechGPT's).

        Whitespace between tokens is ignored (the LLaMA tokenizer decodes added tokens with
        spaces) and the ``<sosp>``/``<eosp>`` tags are optional. The ids are read as
        frames, so a merged string gives durations of 1 and an unmerged one
        (``text(merged=False)``) round-trips exactly.

        Raises:
            UnitError: anything else in ``text``, or tags out of place.
        """
        if not isinstance(text, str):
            raise UnitError(f"UnitSequence.from_text expects a str, got {type(text).__name__}.")
        ids: list[int] = []
        body = text.rstrip()
        if not body:
            raise UnitError("not a unit string: it is empty; expected '<sosp><12><345>...<eosp>'.")
        pos, opened, closed = 0, False, False
        while pos < len(body):
            match = _TOKEN.match(body, pos)
            if match is None or closed:
                problem = "unexpected text" if match is None else "text after <eosp>"
                raise UnitError(
                    f"not a unit string: {problem} at character {pos} "
                    f"({body[pos:pos + 20].strip()!r}); expected '<sosp><12><345>...<eosp>'."
                )
            tag, unit = match.groups()
            if tag == "sosp":
                if opened or ids:
                    raise UnitError("not a unit string: <sosp> must come first, and only once.")
                opened = True
            elif tag == "eosp":
                closed = True
            else:
                ids.append(int(unit))
            pos = match.end()
        return cls.from_frames(ids)

    def text(self, merged: bool = True) -> str:
        """``<sosp><u1><u2>...<eosp>`` of the merged units, or of every frame when not ``merged``."""
        ids = self.units if merged else self.frames
        return SOSP + "".join(f"<{u}>" for u in ids) + EOSP

    def __len__(self) -> int:
        return len(self.units)


# --------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------


class UnitTokenizer:
    """Audio -> :class:`UnitSequence`: frame features, nearest centroid, repeats merged.

    The interface every speech tokenizer of the runtime offers (the mHuBERT one of the
    release, :class:`SpeechTokenizer`, and the log-mel one of the embedded demo model,
    :class:`~speechgpt_agent.mel_units.MelUnitTokenizer`). Subclasses set
    ``_centroids`` (``[K, D]`` float32) and ``_centroid_sq_norms`` and implement
    :attr:`sampling_rate`, :attr:`frame_rate` and :meth:`features`.
    """

    _centroids: torch.Tensor
    _centroid_sq_norms: torch.Tensor

    resampler: Resampler = "soxr"
    """How :meth:`encode` converts other rates to :attr:`sampling_rate`: the method the
    tokenizer's k-means was fitted on (see :func:`speechgpt_agent.audio.resample`)."""

    @property
    def sampling_rate(self) -> int:
        """Rate (Hz) that input audio is resampled to."""
        raise NotImplementedError

    @property
    def frame_rate(self) -> float:
        """Feature frames (unmerged units) per second."""
        raise NotImplementedError

    @property
    def centroids(self) -> torch.Tensor:
        """The k-means centroids ``[K, D]``, float32."""
        return self._centroids

    @property
    def num_units(self) -> int:
        """Codebook size ``K`` (1000 for SpeechGPT)."""
        return int(self._centroids.shape[0])

    def features(self, audio: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``[frames, D]`` features of float samples ``[T]`` at :attr:`sampling_rate`."""
        raise NotImplementedError

    def encode(self, audio: AudioSource, sample_rate: int | None = None) -> UnitSequence:
        """Units of one clip.

        Args:
            audio: anything :func:`speechgpt_agent.audio.load_audio` accepts (path, bytes,
                base64, file object, or an array with ``sample_rate``); decoded, mixed to
                mono (channels averaged) and resampled to :attr:`sampling_rate` with
                :attr:`resampler`.
            sample_rate: rate (Hz) of an array ``audio``.

        Raises:
            AudioError: unusable audio (see ``load_audio``), or too short for one frame.
        """
        samples = load_audio(audio, sample_rate, target_rate=self.sampling_rate,
                             resampler=self.resampler)
        return self._encode_samples(samples)

    def encode_batch(
        self,
        sources: Sequence[AudioSource],
        *,
        sample_rate: int | None = None,
        batch_size: int = 8,
        progress: bool = False,
    ) -> list[UnitSequence]:
        """Units of many clips; equal to ``[self.encode(s, sample_rate) for s in sources]``.

        Up to ``batch_size`` clips are decoded and resampled ahead in background threads
        while the model works. The model itself takes one clip at a time, as fairseq does:
        padding clips into one batch would change the GroupNorm statistics of HuBERT's
        first conv layer over time, and so the units.

        Args:
            sources: anything :meth:`encode` accepts.
            sample_rate: rate (Hz) of the array sources.
            batch_size: clips decoded ahead (>= 1).
            progress: show a tqdm progress bar.

        Raises:
            AudioError: the first clip that cannot be used, with its index in the message.
            ValueError: ``batch_size`` < 1.
        """
        from tqdm.auto import tqdm

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        sources = list(sources)
        results: list[UnitSequence] = []
        pool = ThreadPoolExecutor(max_workers=min(batch_size, 4), thread_name_prefix="units-load")
        pending: deque[Future[np.ndarray]] = deque()
        submitted = 0
        try:
            with tqdm(total=len(sources), desc="units", unit="clip", disable=not progress) as bar:
                for index in range(len(sources)):
                    while submitted < len(sources) and len(pending) < batch_size:
                        pending.append(pool.submit(load_audio, sources[submitted], sample_rate,
                                                   target_rate=self.sampling_rate,
                                                   resampler=self.resampler))
                        submitted += 1
                    try:
                        results.append(self._encode_samples(pending.popleft().result()))
                    except AudioError as exc:
                        raise AudioError(f"sources[{index}]: {exc}") from exc
                    bar.update(1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return results

    def _encode_samples(self, samples: np.ndarray) -> UnitSequence:
        feats = self.features(samples)
        ids = quantize(feats, self._centroids, self._centroid_sq_norms)
        units, durations = merge_repeats(ids)
        return UnitSequence(tuple(units.tolist()), tuple(durations.tolist()), tuple(ids.tolist()))


class SpeechTokenizer(UnitTokenizer):
    """mHuBERT features + k-means: audio -> :class:`UnitSequence`.

    One instance serves concurrent callers: model calls are serialised by a lock, the
    rest (decoding, quantisation) runs in the callers' threads.

    Args:
        model: a transformers ``HubertModel`` (its device and dtype are used as they are).
        feature_extractor: its ``Wav2Vec2FeatureExtractor``; ``sampling_rate`` is the rate
            audio is resampled to and ``do_normalize`` whether the waveform is normalised.
        centroids: ``[K, D]`` k-means centroids, ``D`` the model's hidden size.
        layer: 1-based transformer layer whose output is quantised (SpeechGPT: 11).
        max_chunk_samples: samples per model call (fairseq's ``max_chunk``).
        resampler: how audio at other rates is brought to 16 kHz. ``"torchaudio"``
            (default): the windowed sinc of ``torchaudio.functional.resample`` with its
            defaults, which SpeechGPT's ``speech2unit`` used and mHuBERT's k-means was
            fitted on (libsoxr's steeper filter changes 8-10 % of the units of 22.05, 44.1
            and 8 kHz speech); ``"soxr"``: libsoxr HQ.

    Raises:
        ValueError: ``layer`` outside ``1..num_layers``, chunks shorter than the
            receptive field, or an unknown ``resampler``.
        CheckpointError: centroids that do not fit the model.
    """

    def __init__(
        self,
        model: HubertModel,
        feature_extractor: Wav2Vec2FeatureExtractor,
        centroids: np.ndarray | torch.Tensor,
        *,
        layer: int = 11,
        max_chunk_samples: int = DEFAULT_MAX_CHUNK_SAMPLES,
        resampler: Resampler = "torchaudio",
    ) -> None:
        if resampler not in RESAMPLERS:
            raise ValueError(f"resampler must be one of {RESAMPLERS}, got {resampler!r}.")
        self.resampler = resampler
        num_layers = len(model.encoder.layers)
        if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= num_layers:
            raise ValueError(f"layer must be between 1 and {num_layers} (the model's transformer "
                             f"layers), got {layer!r}.")
        config = model.config
        self._receptive_field = _receptive_field(config.conv_kernel, config.conv_stride)
        self._hop = math.prod(config.conv_stride)
        if max_chunk_samples < self._receptive_field:
            raise ValueError(f"max_chunk_samples must be at least the receptive field of "
                             f"{self._receptive_field} samples, got {max_chunk_samples}.")
        first = next(model.parameters())
        self._device, self._dtype = first.device, first.dtype
        c = torch.as_tensor(centroids).to(device=self._device, dtype=torch.float32)
        if c.dim() != 2 or c.shape[1] != config.hidden_size or c.shape[0] < 1:
            raise CheckpointError(
                f"k-means centroids have shape {tuple(c.shape)}, but the HuBERT features have "
                f"dimension {config.hidden_size}: this k-means was trained for another model."
            )
        self._centroids = c
        self._centroid_sq_norms = (c * c).sum(1)
        self.model = model.eval()
        self.feature_extractor = feature_extractor
        self.layer = layer
        self.max_chunk_samples = int(max_chunk_samples)
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls,
        model: PathLike = DEFAULT_HUBERT,
        kmeans: PathLike | None = None,
        *,
        layer: int = 11,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        trust_pickle: bool = False,
        max_chunk_samples: int = DEFAULT_MAX_CHUNK_SAMPLES,
        resampler: Resampler = "torchaudio",
    ) -> SpeechTokenizer:
        """Load HuBERT and k-means (local paths or hub ids).

        Args:
            model: transformers HuBERT folder or hub id (see :func:`~speechgpt_agent.hubert.load_hubert`).
            kmeans: k-means file/folder/hub id (see :func:`~speechgpt_agent.kmeans.load_centroids`);
                default: the one in ``model`` (hub repo ``voidful/mhubert-base`` holds the
                upstream ``mhubert_base_vp_en_es_fr_it3_L11_km1000.bin``).
            layer: 1-based HuBERT layer (SpeechGPT: 11). Layers above it are dropped from
                the loaded model: their output is never used.
            device: default CUDA when available, else CPU.
            dtype: model dtype (features are quantised in float32 whatever it is).
            trust_pickle: allow the joblib k-means pickle (it can run code); without it,
                convert once with ``speechgpt-agent convert kmeans``. Also lets
                :func:`~speechgpt_agent.hubert.load_hubert` read the task of a fairseq
                checkpoint lying in ``model`` to check ``do_normalize`` against it.
            max_chunk_samples: samples per model call.
            resampler: ``"torchaudio"`` (default, the original's) or ``"soxr"``; see the class.

        ``model="demo"`` returns the embedded demo model's speech tokenizer instead (a
        :class:`~speechgpt_agent.mel_units.MelUnitTokenizer`: MFCC + k-means units, offline).

        Raises:
            ModelNotFoundError, UnsafeCheckpointError, CheckpointError, ValueError.
        """
        from .demo import DEMO_NAME, demo_parts

        if os.fspath(model) == DEMO_NAME:
            from .mel_units import MelUnitTokenizer

            if kmeans is not None:
                raise ValueError("the demo speech tokenizer comes with its own k-means: pass no kmeans.")
            return MelUnitTokenizer.from_pretrained(demo_parts().speech_tokenizer)  # type: ignore[return-value]
        # the k-means first: it is small and may refuse (pickle) before the model loads
        centroids = load_centroids(model if kmeans is None else kmeans, trust_pickle=trust_pickle)
        hubert, feature_extractor = load_hubert(model, device=device, dtype=dtype,
                                                trust_pickle=trust_pickle)
        num_layers = len(hubert.encoder.layers)
        if isinstance(layer, int) and 1 <= layer < num_layers:
            del hubert.encoder.layers[layer:]
            hubert.config.num_hidden_layers = layer
        return cls(hubert, feature_extractor, centroids, layer=layer,
                   max_chunk_samples=max_chunk_samples, resampler=resampler)

    @property
    def sampling_rate(self) -> int:
        """Rate (Hz) of the model's input audio (16 kHz for mHuBERT)."""
        return int(self.feature_extractor.sampling_rate)

    @property
    def frame_rate(self) -> float:
        """Feature frames per second (50 for mHuBERT: one per 320 samples at 16 kHz)."""
        return self.sampling_rate / self._hop

    def features(self, audio: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Layer-``layer`` HuBERT features of a clip.

        Args:
            audio: float samples ``[T]``, mono, at :attr:`sampling_rate`.

        Returns:
            ``[frames, D]`` on the model's device in its dtype, ``frames`` =
            ``floor((n - 400) / 320) + 1`` per chunk of ``n`` samples (mHuBERT).

        Raises:
            AudioError: not a 1-D float signal, NaN/Inf, or shorter than the receptive field.
        """
        x = self._validated_samples(audio)
        if self.feature_extractor.do_normalize:
            x = F.layer_norm(x, x.shape)  # fairseq: whole waveform, before chunking
        x = x.to(self._dtype)
        chunks = [
            x[start:start + self.max_chunk_samples]
            for start in range(0, x.shape[0], self.max_chunk_samples)
        ]
        chunks = [c for c in chunks if c.shape[0] >= self._receptive_field]
        with self._lock:
            return torch.cat([self._layer_output(c) for c in chunks], dim=0)

    # ----------------------------------------------------------------------------------

    def _validated_samples(self, audio: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(audio, torch.Tensor):
            audio = audio.detach().to("cpu", torch.float32).numpy() if audio.is_floating_point() \
                else audio.detach().cpu().numpy()
        array = np.asarray(audio)
        if array.dtype.kind != "f":
            raise AudioError(
                f"features() takes float samples at {self.sampling_rate} Hz, got dtype "
                f"{array.dtype}; use encode() (or audio.load_audio) for PCM, files and other rates."
            )
        if array.ndim != 1:
            raise AudioError(f"features() takes a 1-D mono signal [T], got shape {array.shape}; "
                             "use encode() to mix channels down.")
        if array.shape[0] == 0:
            raise AudioError("audio is empty: it contains no samples.")
        if not np.isfinite(array).all():
            raise AudioError("audio contains NaN or infinite samples; fix or replace them "
                             "(e.g. np.nan_to_num) first.")
        n, rf, sr = array.shape[0], self._receptive_field, self.sampling_rate
        if n < rf:
            raise AudioError(
                f"audio is too short: {n} samples ({1000 * n / sr:.1f} ms at {sr} Hz); HuBERT "
                f"needs at least {rf} samples ({1000 * rf / sr:.0f} ms) to produce one frame."
            )
        return torch.as_tensor(np.array(array, dtype=np.float32), device=self._device)

    @torch.inference_mode()
    def _layer_output(self, chunk: torch.Tensor) -> torch.Tensor:
        """Output of transformer layer ``self.layer`` for one chunk ``[n]`` -> ``[frames, D]``."""
        captured: list[torch.Tensor] = []

        def hook(module: torch.nn.Module, args: object, output: object) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)

        handle = self.model.encoder.layers[self.layer - 1].register_forward_hook(hook)
        try:
            self.model(chunk[None])
        finally:
            handle.remove()
        return captured[0][0]


def _receptive_field(kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Input samples needed for one output frame of a conv stack."""
    field, jump = 1, 1
    for kernel, stride in zip(kernels, strides):
        field += (kernel - 1) * jump
        jump *= stride
    return field
