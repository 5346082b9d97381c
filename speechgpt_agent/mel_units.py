"""Speech -> discrete units from MFCCs + k-means: the speech tokenizer of the embedded demo.

mHuBERT (DESIGN.md section 2) is 95M parameters trained on thousands of hours; the demo
model that ships inside the package (``speechgpt-agent demo``) needs a tokenizer that is
small, can be fitted in a minute on a CPU, and behaves the same way: 50 frames per second,
nearest of ``K`` centroids, repeats merged. GSLM (Lakhotia et al., 2021) used log-mel
features + k-means as its baseline tokenizer; we use their cepstral form (MFCC with deltas)
and per-utterance mean/variance normalisation, which removes most of the difference
between voices while keeping what is said.

Features of one clip (16 kHz mono float32, ``T`` samples):

1. frames of ``win_length`` = 400 samples (25 ms) every ``hop_length`` = 320 samples
   (20 ms, the vocoder's samples per unit), Hann window, no padding: ``floor((T - 400) /
   320) + 1`` frames, the same count as mHuBERT's;
2. power spectrum -> ``n_mels`` Slaney mel bands (0..8 kHz) -> ``log(x + 1e-6)``;
3. DCT-II (orthonormal) -> the first ``n_mfcc`` = 8 coefficients (fewer than speech
   recognisers' usual 13: the higher ones describe the speaker's vocal tract more than the
   words; on the demo corpus a nearest-neighbour match of unit strings finds the right
   question for an unheard voice 93% of the time with 8, 74% with 13);
4. ``deltas`` orders of regression deltas over +-2 frames (edges repeated);
5. per-utterance normalisation of each dimension to zero mean and unit variance.

Vocal tract length normalisation (optional, ``warp_factors``): voices differ most in the
length of the vocal tract, which scales every formant by one factor. Before the mel
filters, the power spectrum ``P(f)`` of a clip is read at ``P(alpha * f)`` (linear
interpolation between bins, clamped at the Nyquist bin), for each ``alpha`` in
``warp_factors``; the clip keeps the warp whose features lie closest to the codebook (the
smallest mean squared distance to their nearest centroids): the maximum-likelihood warp
search of Lee & Rose (1996), with k-means distortion as the likelihood. :meth:`MelUnitTokenizer.fit`
alternates it with k-means (fit unwarped, pick each clip's warp, refit). On the demo corpus
a nearest-neighbour match of unit strings finds the right question for six unheard voices
72% of the time with warps 0.82..1.18 (10 steps), 66% without (issue 20's note).

The folder format: ``mel_units.json`` (:class:`MelFeatureConfig` fields and ``num_units``)
plus ``kmeans.safetensors`` (tensor ``cluster_centers``, ``[K, D]``), read by
:func:`speechgpt_agent.kmeans.load_centroids`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .audio import AudioSource, load_audio
from .errors import AudioError, CheckpointError, ModelNotFoundError
from .kmeans import SAFETENSORS_NAME, load_centroids
from .units import UnitTokenizer

__all__ = ["CONFIG_NAME", "MelFeatureConfig", "MelUnitTokenizer", "best_warp", "features_from_power",
           "is_mel_tokenizer_folder", "mfcc_features", "power_spectrum"]

PathLike = str | os.PathLike

CONFIG_NAME = "mel_units.json"
"""The file that marks a folder as a :class:`MelUnitTokenizer`."""


@dataclass(frozen=True)
class MelFeatureConfig:
    """How frames become feature vectors (see the module docstring)."""

    sampling_rate: int = 16_000
    win_length: int = 400
    hop_length: int = 320
    n_mels: int = 40
    n_mfcc: int = 8
    deltas: int = 2
    f_min: float = 0.0
    f_max: float = 8_000.0
    warp_factors: tuple[float, ...] = ()
    """Frequency warps searched per clip (vocal tract length normalisation, see the module
    docstring); empty: none (the features of the first edition)."""

    def __post_init__(self) -> None:
        ints = ("sampling_rate", "win_length", "hop_length", "n_mels", "n_mfcc")
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CheckpointError(f"mel features: {name} must be a positive integer, got {value!r}.")
        if isinstance(self.deltas, bool) or not isinstance(self.deltas, int) or not 0 <= self.deltas <= 2:
            raise CheckpointError(f"mel features: deltas must be 0, 1 or 2, got {self.deltas!r}.")
        if self.n_mfcc > self.n_mels:
            raise CheckpointError(f"mel features: n_mfcc ({self.n_mfcc}) > n_mels ({self.n_mels}).")
        warps = tuple(self.warp_factors)
        if any(isinstance(a, bool) or not isinstance(a, int | float) or not 0.5 <= a <= 2.0 for a in warps):
            raise CheckpointError(f"mel features: warp_factors must be numbers in [0.5, 2], got {warps!r}.")
        object.__setattr__(self, "warp_factors", tuple(float(a) for a in warps))
        if not 0 <= self.f_min < self.f_max <= self.sampling_rate / 2:
            raise CheckpointError(
                f"mel features: need 0 <= f_min < f_max <= {self.sampling_rate / 2} Hz, "
                f"got {self.f_min}..{self.f_max}.")

    @property
    def dim(self) -> int:
        """Size ``D`` of one feature vector."""
        return self.n_mfcc * (1 + self.deltas)


@functools.lru_cache(maxsize=4)
def _bases(config: MelFeatureConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hann window ``[win]``, mel filters ``[win // 2 + 1, n_mels]``, DCT ``[n_mels, n_mfcc]``."""
    from scipy.fft import dct
    from transformers.audio_utils import mel_filter_bank

    window = torch.hann_window(config.win_length, periodic=True, dtype=torch.float64)
    mel = mel_filter_bank(
        num_frequency_bins=config.win_length // 2 + 1, num_mel_filters=config.n_mels,
        min_frequency=config.f_min, max_frequency=config.f_max,
        sampling_rate=config.sampling_rate, norm="slaney", mel_scale="slaney",
    )
    basis = dct(np.eye(config.n_mels), type=2, norm="ortho", axis=0)[:, :config.n_mfcc]
    return (window, torch.as_tensor(mel, dtype=torch.float64),
            torch.as_tensor(basis, dtype=torch.float64))


def _deltas(x: torch.Tensor, width: int = 2) -> torch.Tensor:
    """Regression deltas over ``+-width`` frames of ``x`` ``[frames, D]`` (edges repeated)."""
    padded = torch.cat([x[:1].expand(width, -1), x, x[-1:].expand(width, -1)])
    n = x.shape[0]
    num = sum(k * (padded[width + k:width + k + n] - padded[width - k:width - k + n])
              for k in range(1, width + 1))
    return num / (2 * sum(k * k for k in range(1, width + 1)))


def power_spectrum(samples: np.ndarray | torch.Tensor, config: MelFeatureConfig) -> torch.Tensor:
    """Power spectrum of one clip's frames: ``[frames, win_length // 2 + 1]`` float64.

    Raises:
        AudioError: not 1-D float samples, NaN/Inf, or shorter than one window.
    """
    x = torch.as_tensor(np.asarray(samples))
    if not x.is_floating_point():
        raise AudioError(f"features take float samples at {config.sampling_rate} Hz, got "
                         f"{x.dtype}; use encode() (or audio.load_audio) for PCM and files.")
    if x.dim() != 1:
        raise AudioError(f"features take a 1-D mono signal [T], got shape {tuple(x.shape)}.")
    if not torch.isfinite(x).all():
        raise AudioError("audio contains NaN or infinite samples; fix or replace them first.")
    if x.shape[0] < config.win_length:
        raise AudioError(
            f"audio is too short: {x.shape[0]} samples; one frame needs {config.win_length} "
            f"({1000 * config.win_length / config.sampling_rate:.0f} ms at {config.sampling_rate} Hz).")
    window, _, _ = _bases(config)
    frames = x.to(torch.float64).unfold(0, config.win_length, config.hop_length) * window
    return torch.fft.rfft(frames).abs().square()


@functools.lru_cache(maxsize=64)
def _warp_taps(bins: int, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bins below and above ``alpha * k`` for each bin ``k`` and the weight of the upper one
    (the Nyquist bin repeated past the top): the same for every clip, so built once."""
    pos = (torch.arange(bins, dtype=torch.float64) * alpha).clamp(max=bins - 1)
    lo = pos.floor().long()
    return lo, (lo + 1).clamp(max=bins - 1), pos - lo


def _warp(power: torch.Tensor, alpha: float) -> torch.Tensor:
    """``P(alpha * f)`` of a power spectrum ``[frames, bins]``, linear between bins."""
    if alpha == 1.0:
        return power
    lo, hi, w = _warp_taps(power.shape[1], alpha)
    return power[:, lo] * (1 - w) + power[:, hi] * w


def features_from_power(power: torch.Tensor, config: MelFeatureConfig, warp: float = 1.0) -> torch.Tensor:
    """Normalised MFCC (+ deltas) ``[frames, config.dim]`` float32 of a :func:`power_spectrum`
    read at ``warp`` times each frequency."""
    _, mel, basis = _bases(config)
    ceps = torch.log(_warp(power, warp) @ mel + 1e-6) @ basis
    parts = [ceps]
    for _ in range(config.deltas):
        parts.append(_deltas(parts[-1]))
    feats = torch.cat(parts, dim=1)
    feats = (feats - feats.mean(0)) / (feats.std(0, correction=0) + 1e-5)
    return feats.to(torch.float32)


def mfcc_features(samples: np.ndarray | torch.Tensor, config: MelFeatureConfig, warp: float = 1.0) -> torch.Tensor:
    """Normalised MFCC (+ deltas) of one clip: ``[frames, config.dim]`` float32, with the
    spectrum read at ``warp`` times each frequency (1: unwarped).

    Computed in float64 so that the same clip gives the same units on every machine.

    Raises:
        AudioError: not 1-D float samples, NaN/Inf, or shorter than one window.
    """
    return features_from_power(power_spectrum(samples, config), config, warp)


def best_warp(power: torch.Tensor, config: MelFeatureConfig, centroids: torch.Tensor,
              centroid_sq_norms: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
    """The warp of ``config.warp_factors`` whose features lie closest to ``centroids``
    ``[K, D]`` (mean squared distance to the nearest), and those features ``[frames, D]``.
    Ties go to the first factor; with no factors, the unwarped features."""
    if not config.warp_factors:
        return 1.0, features_from_power(power, config)
    sq = (centroids * centroids).sum(1) if centroid_sq_norms is None else centroid_sq_norms
    best: tuple[float, float, torch.Tensor] | None = None
    for alpha in config.warp_factors:
        feats = features_from_power(power, config, alpha)
        dist = ((feats * feats).sum(1, keepdim=True) - 2 * feats @ centroids.T + sq).min(1).values.mean().item()
        if best is None or dist < best[1]:
            best = (alpha, dist, feats)
    assert best is not None
    return best[0], best[2]


def is_mel_tokenizer_folder(ref: PathLike) -> bool:
    """Whether ``ref`` is a local folder holding a :class:`MelUnitTokenizer`."""
    return (Path(ref) / CONFIG_NAME).is_file()


class MelUnitTokenizer(UnitTokenizer):
    """MFCC + k-means: audio -> :class:`~speechgpt_agent.units.UnitSequence` at 50 Hz.

    Stateless apart from its centroids, so one instance serves concurrent callers.

    Args:
        centroids: ``[K, D]`` k-means centroids, ``D == config.dim``.
        config: the feature settings the centroids were fitted on.

    Raises:
        CheckpointError: centroids that do not match the features.
    """

    def __init__(self, centroids: np.ndarray | torch.Tensor, config: MelFeatureConfig | None = None) -> None:
        self.config = config or MelFeatureConfig()
        c = torch.as_tensor(np.asarray(centroids), dtype=torch.float32)
        if c.dim() != 2 or c.shape[0] < 1 or c.shape[1] != self.config.dim:
            raise CheckpointError(
                f"k-means centroids have shape {tuple(c.shape)}, but these features have "
                f"dimension {self.config.dim}: the centroids were fitted with other settings.")
        self._centroids = c
        self._centroid_sq_norms = (c * c).sum(1)

    @property
    def sampling_rate(self) -> int:
        return self.config.sampling_rate

    @property
    def frame_rate(self) -> float:
        return self.config.sampling_rate / self.config.hop_length

    def features(self, audio: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Normalised MFCC features ``[frames, D]`` of float samples ``[T]`` (see module doc),
        at the clip's best warp when the config has ``warp_factors``."""
        return best_warp(power_spectrum(audio, self.config), self.config, self._centroids,
                         self._centroid_sq_norms)[1]

    def warp(self, audio: np.ndarray | torch.Tensor) -> float:
        """The warp factor the features of float samples ``[T]`` are read at (1.0 without
        ``warp_factors``): near 1 / (the voice's formant scale)."""
        return best_warp(power_spectrum(audio, self.config), self.config, self._centroids,
                         self._centroid_sq_norms)[0]

    # ------------------------------------------------------------------ fitting and files

    @classmethod
    def fit(
        cls,
        sources: Sequence[AudioSource],
        num_units: int,
        *,
        config: MelFeatureConfig | None = None,
        sample_rate: int | None = None,
        max_frames: int = 200_000,
        seed: int = 0,
        warp_iterations: int = 2,
        progress: bool = False,
    ) -> MelUnitTokenizer:
        """Fit the k-means codebook on the frames of ``sources`` (scikit-learn ``KMeans``).

        With ``config.warp_factors``, the codebook is fitted on unwarped features first, then
        ``warp_iterations`` times each clip's best warp is chosen against it and the codebook
        refitted on the warped features (the alternation of Lee & Rose's VTLN training).

        Args:
            sources: clips (anything :func:`~speechgpt_agent.audio.load_audio` takes).
            num_units: ``K``.
            max_frames: frames drawn at random (seeded) when the clips hold more.
            seed: seeds the frame draw and k-means; the same inputs give the same codebook.
            warp_iterations: warp-search and refit rounds (with ``warp_factors`` only).
            progress: a tqdm bar over the fitting rounds.

        Raises:
            AudioError: an unusable clip. ValueError: fewer frames than ``num_units``.
        """
        from sklearn.cluster import KMeans
        from tqdm.auto import tqdm

        config = config or MelFeatureConfig()
        powers = [power_spectrum(load_audio(s, sample_rate, target_rate=config.sampling_rate), config)
                  for s in sources]
        frames = sum(p.shape[0] for p in powers)
        if frames < num_units:
            raise ValueError(f"{frames} frames cannot make {num_units} clusters: give more audio.")
        rng = np.random.default_rng(seed)
        pick = rng.choice(frames, max_frames, replace=False) if frames > max_frames else None

        def kmeans(feats: list[torch.Tensor]) -> torch.Tensor:
            data = torch.cat(feats).numpy()
            if pick is not None:
                data = data[pick]
            km = KMeans(n_clusters=num_units, n_init=1, max_iter=100, random_state=seed).fit(data.astype(np.float64))
            return torch.as_tensor(km.cluster_centers_, dtype=torch.float32)

        rounds = 1 + (warp_iterations if config.warp_factors else 0)
        with tqdm(total=rounds, desc="k-means", disable=not progress) as bar:
            centroids = kmeans([features_from_power(p, config) for p in powers])
            bar.update(1)
            for _ in range(rounds - 1):
                centroids = kmeans([best_warp(p, config, centroids)[1] for p in powers])
                bar.update(1)
        return cls(centroids, config)

    @classmethod
    def from_pretrained(cls, folder: PathLike) -> MelUnitTokenizer:
        """Load ``mel_units.json`` + ``kmeans.safetensors`` from a local folder.

        Raises:
            ModelNotFoundError: no such folder or no ``mel_units.json``.
            CheckpointError: a malformed config or centroids that do not fit it.
        """
        folder = Path(folder)
        file = folder / CONFIG_NAME
        if not file.is_file():
            raise ModelNotFoundError(
                f"{folder} is not a mel speech tokenizer folder: it has no {CONFIG_NAME} "
                "(write one with MelUnitTokenizer.save_pretrained).")
        try:
            raw = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{file} is not readable json: {exc}") from exc
        if not isinstance(raw, dict):
            raise CheckpointError(f"{file} must hold a JSON object.")
        names = {f.name for f in dataclasses.fields(MelFeatureConfig)}
        unknown = set(raw) - names - {"num_units", "type"}
        if unknown:
            raise CheckpointError(f"{file}: unknown settings {sorted(unknown)}.")
        try:
            config = MelFeatureConfig(**{k: v for k, v in raw.items() if k in names})
        except TypeError as exc:
            raise CheckpointError(f"{file}: {exc}") from exc
        tokenizer = cls(load_centroids(folder / SAFETENSORS_NAME), config)
        if "num_units" in raw and raw["num_units"] != tokenizer.num_units:
            raise CheckpointError(f"{file} says {raw['num_units']} units but the k-means has "
                                  f"{tokenizer.num_units}.")
        return tokenizer

    def save_pretrained(self, folder: PathLike) -> Path:
        """Write ``mel_units.json`` and ``kmeans.safetensors`` into ``folder``."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"cluster_centers": self._centroids.numpy()}, str(folder / SAFETENSORS_NAME))
        meta = {"type": "mfcc-kmeans", **dataclasses.asdict(self.config), "num_units": self.num_units}
        (folder / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return folder
