"""Train the demo model's unit vocoder: a small CodeHiFiGAN on MFCC + k-means units.

The embedded demo speaks through the same network as the release
(:class:`~speechgpt_agent.vocoder.CodeHiFiGAN`: unit embedding, duration predictor,
HiFi-GAN generator upsampling 5*4*4*2*2 = 320 samples per unit frame at 16 kHz), only
narrower, and trained here on the demo corpus's units
(:class:`~speechgpt_agent.mel_units.MelUnitTokenizer`, 50 frames/s).

What training does, and where it departs from fairseq / speech-resynthesis:

* **Segments.** Each step draws ``batch_size`` clips and, in each, ``segment_frames``
  consecutive unit frames (the merged units expanded by their durations) with the audio
  they cover. Frame ``i`` is paired with samples ``[320 i, 320 i + 320)``, offset 0:
  the tokenizer's frame ``i`` reads the 400-sample window ``[320 i, 320 i + 400)``, so
  with offset 0 the vocoder's output for frames ``0..F-1`` re-encodes through exactly
  the analysis windows the units came from (frame ``j`` of the vocoded audio reads
  vocoded samples ``[320 j, 320 j + 400)``, trained to equal the original ones). A
  40-sample shift would centre the 320-sample block in the window (centres at 320 i + 160
  vs 320 i + 200) but would then misplace every re-encoding window by 40 samples the
  other way. Offset 0 is also speech-resynthesis's pairing of ``code_hop_size`` blocks.
  A clip of ``T`` samples has ``F = floor((T - 400) / 320) + 1`` frames, so its audio
  always covers ``320 F`` samples.
* **Losses.** No discriminator (a CPU budget of minutes, one thread): the generator
  learns from reconstruction losses only, which give the right spectral envelope (what
  the MFCC tokenizer hears) but a buzzier fine structure than adversarial training.
  ``loss = sc + log_mag + mel + dur_weight * dur``, where

  - ``sc`` and ``log_mag``: multi-resolution STFT loss of Parallel WaveGAN (spectral
    convergence and L1 of log magnitudes, averaged over :data:`STFT_RESOLUTIONS`);
  - ``mel``: HiFi-GAN's mel loss, L1 between log mel spectrograms (n_fft 1024, hop 256,
    80 Slaney mel bands 0-8 kHz, ``log(max(mel, 1e-5))``) - without HiFi-GAN's factor 45,
    which only balances it against the adversarial losses dropped here;
  - ``dur``: the duration predictor's loss as in speech-resynthesis, MSE between the
    predicted log-durations and ``log(1 + duration)`` of the merged units, trained
    jointly (its gradient reaches the unit embedding, as there). It runs on the whole
    merged-unit sequences of the batch's clips (exact durations) rather than on the
    segments (whose edge units are cut), with the config's ``var_pred_dropout``.

* **Model.** Weight norm on every generator convolution during training (as HiFi-GAN),
  folded into plain weights before saving; HiFi-GAN's ``N(0, 0.01)`` initialisation of the
  upsampling and residual convolutions; AdamW (betas 0.8, 0.99 as HiFi-GAN) with a cosine
  decay of the learning rate to a tenth over the run. The run's progress is the step
  fraction or, with a time budget, the larger of the step and the time fractions, so a
  run cut short by its budget still ends at the low learning rate.

The result is written by :meth:`UnitVocoder.save_pretrained` (``config.json`` +
``model.safetensors``, loadable by :meth:`UnitVocoder.from_pretrained`) plus
``training.json`` (settings, steps done, last losses, wall time).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from speechgpt_agent.audio import load_audio
from speechgpt_agent.errors import AudioError, SpeechGPTError, UnitError
from speechgpt_agent.units import UnitTokenizer
from speechgpt_agent.vocoder import CodeHiFiGAN, CodeHiFiGANConfig, UnitVocoder

__all__ = [
    "DEMO_VOCODER_CONFIG",
    "STFT_RESOLUTIONS",
    "LogMelLoss",
    "MultiResolutionSTFTLoss",
    "UnitClip",
    "demo_vocoder_config",
    "evaluate_vocoder",
    "prepare_clips",
    "train_vocoder",
]

SAMPLE_RATE = 16_000
WINDOW = 400
"""Samples in one analysis window of the speech tokenizer (25 ms)."""

DEMO_VOCODER_CONFIG: dict[str, Any] = {
    "resblock": "1",
    "upsample_rates": [5, 4, 4, 2, 2],
    "upsample_kernel_sizes": [11, 8, 8, 4, 4],
    "upsample_initial_channel": 128,
    "resblock_kernel_sizes": [3, 7],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
    "num_embeddings": 1000,
    "embedding_dim": 64,
    "model_in_dim": 64,
    "dur_predictor_params": {
        "encoder_embed_dim": 64,
        "var_pred_hidden_dim": 64,
        "var_pred_kernel_size": 3,
        "var_pred_dropout": 0.5,
    },
    "sampling_rate": SAMPLE_RATE,
    "code_hop_size": 320,
    "f0": False,
}
"""The demo vocoder (fairseq ``config.json`` keys): the release's upsampling (320 samples
per frame), 1000-unit table and duration predictor, narrowed to fit a CPU-minutes budget
and a 2.4 MB float32 file (590k parameters): 128 channels after ``conv_pre`` instead of
512, two residual blocks per stage (kernels 3 and 7) instead of three (3, 7, 11), and
64-dim unit embeddings instead of 128. On one CPU thread a step of 8 x 24 frames takes
~0.3 s; at equal steps this trained better than 64 channels with all three blocks (1.3 MB,
~0.25 s) and at half the cost of 128 channels with three (3.8 MB, ~0.6 s)."""

STFT_RESOLUTIONS: tuple[tuple[int, int, int], ...] = (
    (1024, 120, 600),
    (2048, 240, 1200),
    (512, 50, 240),
)
"""``(n_fft, hop, win)`` of the multi-resolution STFT loss (Parallel WaveGAN's, in samples)."""

DUR_LOSS_WEIGHT = 1.0
"""Weight of the duration loss (``dur_prediction_weight`` of speech-resynthesis's configs)."""


def demo_vocoder_config(overrides: Mapping[str, Any] | None = None) -> CodeHiFiGANConfig:
    """:data:`DEMO_VOCODER_CONFIG` with ``overrides`` (``config.json`` keys) applied.

    Unless overridden too, ``model_in_dim`` and the duration predictor's widths follow
    ``embedding_dim``; ``dur_predictor_params=None`` removes the predictor.

    Raises:
        CheckpointError: an inconsistent configuration.
    """
    config = copy.deepcopy(DEMO_VOCODER_CONFIG)
    overrides = dict(overrides or {})
    config.update(overrides)
    dim = int(config["embedding_dim"])
    if "model_in_dim" not in overrides:
        config["model_in_dim"] = dim
    if config.get("dur_predictor_params") is None:
        config.pop("dur_predictor_params", None)
    elif "dur_predictor_params" not in overrides:
        config["dur_predictor_params"].update(encoder_embed_dim=dim, var_pred_hidden_dim=dim)
    return CodeHiFiGANConfig.from_dict(config)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class UnitClip:
    """One training clip: merged units, their durations and the audio they were read from.

    Attributes:
        id: the record's id (for messages).
        units: ``[N]`` int64 merged unit ids.
        durations: ``[N]`` int64 frames per unit (>= 1).
        audio: ``[T]`` float32 samples at 16 kHz, ``T >= 320 * sum(durations)``.
    """

    id: str
    units: np.ndarray
    durations: np.ndarray
    audio: np.ndarray

    @property
    def num_frames(self) -> int:
        return int(self.durations.sum())

    @property
    def frames(self) -> np.ndarray:
        """``[F]`` unit id of every frame (units repeated by their durations)."""
        return np.repeat(self.units, self.durations)


def _int_array(record: Mapping[str, Any], key: str, where: str) -> np.ndarray:
    if record.get(key) is None:
        raise UnitError(
            f"{where} has no {key!r}: extract units first (`speechgpt-agent data units`)."
        )
    values = np.asarray(record[key])
    if values.ndim != 1 or values.size == 0 or not np.issubdtype(values.dtype, np.integer):
        raise UnitError(
            f"{where}: {key!r} must be a non-empty list of integers, got {record[key]!r:.80}."
        )
    return values.astype(np.int64)


def prepare_clips(
    records: Iterable[Mapping[str, Any]],
    *,
    hop_length: int = 320,
    num_embeddings: int | None = None,
    min_frames: int = 1,
) -> list[UnitClip]:
    """Check the records (as in ``units.jsonl``) and load their audio.

    Args:
        records: dicts with ``"audio"`` (a path or anything
            :func:`~speechgpt_agent.audio.load_audio` reads, decoded to 16 kHz mono),
            ``"units"`` and ``"durations"`` (merged units and frames per unit), and
            optionally ``"id"``.
        hop_length: samples per unit frame.
        num_embeddings: the vocoder's codebook size; ids must be below it.
        min_frames: frames each clip must have at least (the training segment).

    Raises:
        UnitError: no/empty/non-integer units or durations, different lengths, ids out of
            range, durations < 1, or a frame count that does not fit the audio.
        AudioError: unreadable audio, or a clip shorter than ``min_frames``.
        ValueError: no records. TypeError: a record that is not a dict.
    """
    clips = []
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise TypeError(f"records[{index}] must be a dict, got {type(record).__name__}.")
        where = f"record {record.get('id', index)!r}"
        units = _int_array(record, "units", where)
        durations = _int_array(record, "durations", where)
        if units.shape != durations.shape:
            raise UnitError(f"{where} has {units.size} units but {durations.size} durations.")
        if units.min() < 0 or (num_embeddings is not None and units.max() >= num_embeddings):
            valid = f"0..{num_embeddings - 1}" if num_embeddings is not None else ">= 0"
            raise UnitError(
                f"{where}: unit ids must be {valid} (the vocoder's codebook), got "
                f"{int(units.min())}..{int(units.max())}."
            )
        if durations.min() < 1:
            raise UnitError(f"{where}: durations must be >= 1 frame.")
        if record.get("audio") is None:
            raise AudioError(f"{where} has no 'audio'.")
        try:
            audio = load_audio(record["audio"], target_rate=SAMPLE_RATE)
        except AudioError as exc:
            raise AudioError(f"{where}: {exc}") from exc
        frames = int(durations.sum())
        expected = (audio.shape[0] - WINDOW) // hop_length + 1 if audio.shape[0] >= WINDOW else 0
        if frames != expected:
            raise UnitError(
                f"{where}: its durations add up to {frames} frames, but its audio "
                f"({audio.shape[0]} samples) has {expected} frames of {WINDOW} samples every "
                f"{hop_length}; were the units extracted from this audio at 50 frames/s?"
            )
        if frames < min_frames:
            raise AudioError(
                f"{where} is {frames} frames ({audio.shape[0] / SAMPLE_RATE:.2f} s) long, shorter "
                f"than a training segment of {min_frames} frames: drop it or lower segment_frames."
            )
        clips.append(UnitClip(str(record.get("id", index)), units, durations, audio))
    if not clips:
        raise ValueError("no records to train on.")
    return clips


def _sample_batch(
    clips: Sequence[UnitClip],
    rng: np.random.Generator,
    batch_size: int,
    segment_frames: int,
    hop_length: int,
) -> tuple[torch.Tensor, torch.Tensor, list[UnitClip]]:
    """Frame ids ``[B, S]``, target audio ``[B, S * hop]`` and the drawn clips."""
    chosen = [clips[i] for i in rng.integers(len(clips), size=batch_size)]
    ids, wavs = [], []
    for clip in chosen:
        start = int(rng.integers(clip.num_frames - segment_frames + 1))
        ids.append(clip.frames[start : start + segment_frames])
        wavs.append(clip.audio[start * hop_length : (start + segment_frames) * hop_length])
    return torch.from_numpy(np.stack(ids)), torch.from_numpy(np.stack(wavs)), chosen


# --------------------------------------------------------------------------- losses


def _power(wav: torch.Tensor, n_fft: int, hop: int, win: int, *, center: bool) -> torch.Tensor:
    """``[B, T]`` samples -> ``[B, n_fft // 2 + 1, frames]`` STFT power (Hann window).

    Callers floor it before the square root (a finite gradient at silence).
    """
    window = torch.hann_window(win, device=wav.device, dtype=wav.dtype)
    spec = torch.stft(wav, n_fft, hop, win, window, center=center, return_complex=True)
    return spec.real.square() + spec.imag.square()


class MultiResolutionSTFTLoss(nn.Module):
    """Parallel WaveGAN's multi-resolution STFT loss: ``(spectral convergence, log magnitude)``.

    For each ``(n_fft, hop, win)`` (samples; Hann window, centred frames): spectral
    convergence ``||Y| - |X||_F / ||Y||_F`` and ``mean |log|Y| - log|X||``, each
    averaged over the resolutions. Inputs are waveforms ``[B, T]``, prediction first.
    """

    def __init__(self, resolutions: Sequence[tuple[int, int, int]] = STFT_RESOLUTIONS) -> None:
        super().__init__()
        self.resolutions = tuple(tuple(int(v) for v in r) for r in resolutions)

    def forward(
        self, predicted: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sc = log_mag = predicted.new_zeros(())
        for n_fft, hop, win in self.resolutions:
            x = _power(predicted, n_fft, hop, win, center=True).clamp_min(1e-7).sqrt()
            y = _power(target, n_fft, hop, win, center=True).clamp_min(1e-7).sqrt()
            # Frobenius norms over the whole batch, as Parallel WaveGAN's torch.norm(p="fro")
            sc = sc + torch.linalg.vector_norm(y - x) / torch.linalg.vector_norm(y)
            log_mag = log_mag + F.l1_loss(x.log(), y.log())
        return sc / len(self.resolutions), log_mag / len(self.resolutions)


class LogMelLoss(nn.Module):
    """HiFi-GAN's mel loss: L1 between log mel spectrograms of waveforms ``[B, T]``.

    Spectrogram as HiFi-GAN's ``mel_spectrogram``: reflect-pad ``(n_fft - hop) / 2``
    samples on both sides, uncentred STFT with a Hann window, magnitude, ``n_mels``
    Slaney-scale, Slaney-normalised mel filters (librosa's defaults, built by
    ``transformers.audio_utils.mel_filter_bank``), ``log(max(mel, 1e-5))``.
    """

    def __init__(
        self,
        *,
        sampling_rate: int = SAMPLE_RATE,
        n_fft: int = 1024,
        hop: int = 256,
        win: int = 1024,
        n_mels: int = 80,
        f_min: float = 0.0,
        f_max: float | None = None,
    ) -> None:
        super().__init__()
        from transformers.audio_utils import mel_filter_bank

        self.n_fft, self.hop, self.win = n_fft, hop, win
        filters = mel_filter_bank(
            num_frequency_bins=n_fft // 2 + 1,
            num_mel_filters=n_mels,
            min_frequency=f_min,
            max_frequency=f_max if f_max is not None else sampling_rate / 2,
            sampling_rate=sampling_rate,
            norm="slaney",
            mel_scale="slaney",
        )
        self.register_buffer(
            "filters", torch.as_tensor(filters.T, dtype=torch.float32), persistent=False
        )

    def log_mel(self, wav: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` samples -> ``[B, n_mels, frames]`` natural-log mel magnitudes."""
        pad = (self.n_fft - self.hop) // 2
        wav = F.pad(wav.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        mag = (_power(wav, self.n_fft, self.hop, self.win, center=False) + 1e-9).sqrt()
        return torch.log(torch.clamp(self.filters.to(mag.dtype) @ mag, min=1e-5))

    def forward(self, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(self.log_mel(predicted), self.log_mel(target))


def _duration_loss(model: CodeHiFiGAN, clips: Sequence[UnitClip], dropout: float) -> torch.Tensor:
    """MSE of the predicted log-durations against ``log(1 + duration)`` over the clips' units.

    fairseq's ``VariancePredictor`` in training mode (dropout after each LayerNorm) on a
    padded batch; hidden states at padding are zeroed before the second convolution, so
    that every clip sees the zero padding it sees alone at inference.
    """
    predictor = model.dur_predictor
    assert predictor is not None
    length = max(len(c.units) for c in clips)
    units = torch.zeros(len(clips), length, dtype=torch.long)
    target = torch.zeros(len(clips), length)
    mask = torch.zeros(len(clips), length, dtype=torch.bool)
    for b, clip in enumerate(clips):
        n = len(clip.units)
        units[b, :n] = torch.from_numpy(clip.units)
        target[b, :n] = torch.log1p(torch.from_numpy(clip.durations).float())
        mask[b, :n] = True
    emb = model.dict(units) * mask.unsqueeze(2)  # [B, N, C], zero at padding
    hidden = F.dropout(
        predictor.ln1(predictor.conv1(emb.transpose(1, 2)).transpose(1, 2)), dropout, True
    )
    hidden = hidden * mask.unsqueeze(2)
    hidden = F.dropout(
        predictor.ln2(predictor.conv2(hidden.transpose(1, 2)).transpose(1, 2)), dropout, True
    )
    log_pred = predictor.proj(hidden).squeeze(2)
    return F.mse_loss(log_pred[mask], target[mask])


def _losses(
    model: CodeHiFiGAN,
    batch: tuple[torch.Tensor, torch.Tensor, list[UnitClip]],
    stft_loss: MultiResolutionSTFTLoss,
    mel_loss: LogMelLoss,
    dropout: float,
) -> dict[str, torch.Tensor]:
    """The loss terms of one batch (see the module docstring) and their sum ``loss``."""
    ids, target, clips = batch
    wav = model.generate(model.dict(ids).transpose(1, 2)).squeeze(1)  # [B, S * hop]
    sc, log_mag = stft_loss(wav, target)
    mel = mel_loss(wav, target)
    dur = (
        _duration_loss(model, clips, dropout)
        if model.dur_predictor is not None
        else wav.new_zeros(())
    )
    loss = sc + log_mag + mel + DUR_LOSS_WEIGHT * dur
    return {"loss": loss, "sc": sc, "log_mag": log_mag, "mel": mel, "dur": dur}


# --------------------------------------------------------------------------- model set-up


def _generator_convs(model: CodeHiFiGAN) -> list[nn.Module]:
    convs: list[nn.Module] = [model.conv_pre, *model.ups, model.conv_post]
    for block in model.resblocks:
        convs.extend([*block.convs1, *block.convs2])
    return convs


def _init_hifigan(model: CodeHiFiGAN) -> None:
    """HiFi-GAN's ``init_weights``: ``N(0, 0.01)`` for the upsampling and residual convolutions."""
    with torch.no_grad():
        for module in [*model.ups, *(c for b in model.resblocks for c in [*b.convs1, *b.convs2])]:
            module.weight.normal_(0.0, 0.01)


def _set_weight_norm(model: CodeHiFiGAN, on: bool) -> None:
    """Add weight norm to the generator's convolutions, or fold it back into plain weights."""
    from torch.nn.utils import parametrize
    from torch.nn.utils.parametrizations import weight_norm

    for conv in _generator_convs(model):
        if on:
            weight_norm(conv)
        elif parametrize.is_parametrized(conv, "weight"):
            parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)


def _progress(step: int, steps: int, seconds: float, max_minutes: float | None) -> float:
    """Fraction of the run done: of the steps, or of the time budget when that is further."""
    done = step / steps
    if max_minutes is not None:
        done = max(done, seconds / (60 * max_minutes))
    return min(done, 1.0)


def _set_lr(optimizer: torch.optim.Optimizer, peak: float, progress: float) -> None:
    """Cosine from ``peak`` (progress 0) down to ``peak / 10`` (progress 1)."""
    for group in optimizer.param_groups:
        group["lr"] = peak * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def _check_positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return value


# --------------------------------------------------------------------------- training


def train_vocoder(
    records: Iterable[Mapping[str, Any]],
    out_dir: str | Path,
    *,
    config_overrides: Mapping[str, Any] | None = None,
    steps: int = 3000,
    batch_size: int = 8,
    segment_frames: int = 24,
    lr: float = 5e-3,
    seed: int = 0,
    threads: int | None = None,
    max_minutes: float | None = None,
    progress: bool = True,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> Path:
    """Train a unit vocoder on ``records`` and save it into ``out_dir``.

    Args:
        records: train clips as in ``units.jsonl`` (see :func:`prepare_clips`).
        out_dir: folder for ``config.json``, ``model.safetensors`` and ``training.json``.
        config_overrides: ``config.json`` keys replacing :data:`DEMO_VOCODER_CONFIG`'s.
        steps: optimiser steps (the most; the cosine learning-rate schedule spans them,
            or ``max_minutes`` when that ends the run sooner).
        batch_size: segments per step.
        segment_frames: unit frames per segment (``segment_frames * 320`` samples; 24 =
            0.48 s, near speech-resynthesis's 8960 samples, and below the demo corpus's
            shortest clip of 26 frames); every clip must be at least this long.
        lr: peak AdamW learning rate.
        seed: seeds the initial weights, the segment draws and dropout; with
            ``max_minutes=None`` and the same thread count the result is reproducible.
            The caller's RNG state is left untouched.
        threads: torch CPU threads while training (restored afterwards); ``None`` keeps
            the current setting.
        max_minutes: wall-clock budget from the call, data loading included; training
            stops after the step that exceeds it and saves what it has.
        progress: show a tqdm progress bar (stderr).
        callback: called after every step with ``(step, losses)``; ``losses`` holds the
            floats ``loss``, ``sc``, ``log_mag``, ``mel``, ``dur`` and ``lr``.

    Returns:
        ``out_dir``, loadable with :meth:`UnitVocoder.from_pretrained`.

    Raises:
        UnitError / AudioError: bad records (see :func:`prepare_clips`).
        ValueError: bad settings. CheckpointError: an inconsistent ``config_overrides``.
        SpeechGPTError: the loss became NaN or infinite.
    """
    from tqdm.auto import tqdm

    started = time.monotonic()
    for name, value in (
        ("steps", steps),
        ("batch_size", batch_size),
        ("segment_frames", segment_frames),
    ):
        _check_positive(name, value)
    if threads is not None:
        _check_positive("threads", threads)
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}.")
    if max_minutes is not None and not max_minutes > 0:
        raise ValueError(f"max_minutes must be > 0, got {max_minutes!r}.")
    config = demo_vocoder_config(config_overrides)
    if config.multispkr:
        raise ValueError("train_vocoder trains single-voice vocoders; multispkr is not supported.")
    hop = config.hop_length
    clips = prepare_clips(
        records, hop_length=hop, num_embeddings=config.num_embeddings, min_frames=segment_frames
    )
    dropout = config.dur_predictor.var_pred_dropout if config.dur_predictor else 0.0

    threads_before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = CodeHiFiGAN(config)
            _init_hifigan(model)
            _set_weight_norm(model, True)
            model.train()
            stft_loss, mel_loss = (
                MultiResolutionSTFTLoss(),
                LogMelLoss(sampling_rate=config.sampling_rate),
            )
            optimizer = torch.optim.AdamW(
                model.parameters(), lr=lr, betas=(0.8, 0.99), weight_decay=0.01
            )
            rng = np.random.default_rng(seed)
            losses: dict[str, float] = {}
            done = 0
            with tqdm(total=steps, desc="vocoder", disable=not progress, dynamic_ncols=True) as bar:
                for step in range(1, steps + 1):
                    batch = _sample_batch(clips, rng, batch_size, segment_frames, hop)
                    terms = _losses(model, batch, stft_loss, mel_loss, dropout)
                    if not torch.isfinite(terms["loss"]):
                        raise SpeechGPTError(
                            f"vocoder training diverged at step {step} (loss "
                            f"{terms['loss'].item()}); lower lr."
                        )
                    optimizer.zero_grad(set_to_none=True)
                    terms["loss"].backward()
                    losses = {name: value.item() for name, value in terms.items()}
                    losses["lr"] = optimizer.param_groups[0]["lr"]
                    optimizer.step()
                    _set_lr(
                        optimizer,
                        lr,
                        _progress(step, steps, time.monotonic() - started, max_minutes),
                    )
                    done = step
                    if callback is not None:
                        callback(step, losses)
                    bar.update(1)
                    bar.set_postfix(
                        mel=f"{losses['mel']:.3f}", dur=f"{losses['dur']:.3f}", refresh=False
                    )
                    if max_minutes is not None and time.monotonic() - started > 60 * max_minutes:
                        break
    finally:
        torch.set_num_threads(threads_before)

    _set_weight_norm(model, False)
    out = UnitVocoder(model.eval()).save_pretrained(out_dir)
    summary = {
        "steps_done": done,
        "steps": steps,
        "batch_size": batch_size,
        "segment_frames": segment_frames,
        "lr": lr,
        "seed": seed,
        "threads": threads,
        "max_minutes": max_minutes,
        "train_clips": len(clips),
        "parameters": sum(p.numel() for p in model.parameters()),
        "wall_seconds": round(time.monotonic() - started, 1),
        "last_losses": losses,
    }
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return out


# --------------------------------------------------------------------------- evaluation


def evaluate_vocoder(
    vocoder: UnitVocoder,
    tokenizer: UnitTokenizer,
    records: Sequence[Mapping[str, Any]],
    n: int = 50,
) -> dict[str, float]:
    """Does the vocoder say what the units say? Checked on the first ``n`` records.

    Each record's units are vocoded with their true durations and the audio is
    re-encoded by ``tokenizer``; its frame ids are compared position by position with the
    record's (units expanded by durations). ``F`` frames of units give ``320 F`` samples,
    which re-encode to ``F - 1`` frames (the last 400-sample window does not fit), so
    comparisons run over the common prefix.

    Returns:
        ``n``: records evaluated;
        ``frame_agreement``: fraction of frames whose re-encoded id equals the record's,
        pooled over all records;
        ``original_frame_agreement``: the same for the original audio (1.0 when the
        records' units came from ``tokenizer``: a sanity check);
        ``mel_l1``: mean L1 between the log mel spectrograms (HiFi-GAN's, natural log) of
        the vocoded and the original audio;
        ``duration_mae``: mean absolute error (frames) of the predicted durations, and
        ``length_ratio``: predicted over true total frames (absent without a duration
        predictor).

    Raises:
        UnitError / AudioError: bad records (see :func:`prepare_clips`).
        ValueError: ``n`` < 1.
    """
    _check_positive("n", n)
    clips = prepare_clips(
        list(records)[:n],
        hop_length=vocoder.hop_length,
        num_embeddings=vocoder.config.num_embeddings,
    )
    mel = LogMelLoss(sampling_rate=vocoder.sample_rate)
    equal = compared = equal_orig = compared_orig = 0
    mel_l1, abs_err, true_frames, pred_frames, units_seen = [], 0, 0, 0, 0
    for clip in clips:
        truth = clip.frames
        wav = vocoder.synthesize(clip.units, clip.durations)
        for audio, counts in ((wav, "vocoded"), (clip.audio, "original")):
            ids = np.asarray(tokenizer.encode(audio, sample_rate=SAMPLE_RATE).frames)
            m = min(len(ids), len(truth))
            hits = int((ids[:m] == truth[:m]).sum())
            if counts == "vocoded":
                equal, compared = equal + hits, compared + m
            else:
                equal_orig, compared_orig = equal_orig + hits, compared_orig + m
        with torch.no_grad():
            pair = torch.stack([torch.from_numpy(wav), torch.from_numpy(clip.audio[: len(wav)])])
            spec = mel.log_mel(pair)
            mel_l1.append(float((spec[0] - spec[1]).abs().mean()))
        if vocoder.has_duration_predictor:
            predicted = vocoder.predict_durations(clip.units)
            abs_err += int(np.abs(predicted - clip.durations).sum())
            pred_frames += int(predicted.sum())
            true_frames += clip.num_frames
            units_seen += len(clip.units)
    result = {
        "n": float(len(clips)),
        "frame_agreement": equal / max(compared, 1),
        "original_frame_agreement": equal_orig / max(compared_orig, 1),
        "mel_l1": float(np.mean(mel_l1)),
    }
    if vocoder.has_duration_predictor:
        result["duration_mae"] = abs_err / units_seen
        result["length_ratio"] = pred_frames / true_frames
    return result


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m speechgpt_agent.training.recipes.demo.vocoder_training``: train on the
    ``train`` split of a ``units.jsonl``, then evaluate on its held-out voice and on
    training clips (with ``--tokenizer``); prints the results as JSON and writes them to
    ``<out>/evaluation.json``. Returns them."""
    import argparse

    parser = argparse.ArgumentParser(description="Train the demo's unit vocoder.")
    parser.add_argument("--units", required=True, help="units.jsonl of the demo corpus")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--tokenizer", help="MelUnitTokenizer folder, to evaluate the result")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--segment-frames", type=int, default=24)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-minutes", type=float, default=None)
    parser.add_argument("--eval-n", type=int, default=50)
    args = parser.parse_args(argv)

    with open(args.units, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    train = [r for r in records if r.get("split") == "train"]
    out = train_vocoder(
        train,
        args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        segment_frames=args.segment_frames,
        lr=args.lr,
        seed=args.seed,
        threads=args.threads,
        max_minutes=args.max_minutes,
    )
    report: dict[str, Any] = json.loads((out / "training.json").read_text(encoding="utf-8"))
    if args.tokenizer:
        from speechgpt_agent.mel_units import MelUnitTokenizer

        torch.set_num_threads(args.threads)
        tokenizer = MelUnitTokenizer.from_pretrained(args.tokenizer)
        vocoder = UnitVocoder.from_pretrained(out, device="cpu")
        held = [r for r in records if r.get("split") == "heldout_voice"]
        # evenly spread clips, so that every text and voice has its turn
        for name, subset in (("heldout_voice", held), ("train", train)):
            if subset:
                picked = subset[:: max(1, len(subset) // args.eval_n)][: args.eval_n]
                report[f"eval_{name}"] = evaluate_vocoder(vocoder, tokenizer, picked, n=args.eval_n)
        (out / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
