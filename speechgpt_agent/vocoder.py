"""Unit vocoder: speech units -> 16 kHz waveform, with fairseq's CodeHiFiGAN weights.

SpeechGPT speaks through fairseq's unit HiFi-GAN (``CodeHiFiGANVocoder`` with
``dur_prediction=True``). This module re-implements that model in plain PyTorch and
loads its released files without fairseq:

* :class:`CodeHiFiGANConfig` reads the vocoder's ``config.json``.
* :class:`CodeHiFiGAN` is the network. Its parameter names are fairseq's, so a fairseq
  ``generator`` state dict loads once its weight-norm pairs are folded
  (:func:`fold_weight_norm`).
* :class:`UnitVocoder` finds and loads the files (hub id, folder, checkpoint file or a
  converted ``model.safetensors``), synthesizes whole utterances and opens streams
  (:class:`~speechgpt_agent.vocoder_stream.StreamingVocoder`).
* :func:`convert_vocoder` writes the safe converted folder for
  ``speechgpt-agent convert vocoder``.

How units become audio (one unit frame = ``hop_length`` = 320 samples = 20 ms at 16 kHz):

1. Ids below 0 are padding and are dropped, as fairseq does; ids ``>= num_embeddings``
   raise :class:`~speechgpt_agent.errors.UnitError`.
2. The duration predictor (fairseq's ``VariancePredictor``) turns the unit embeddings
   into log-durations; ``duration = max(1, round(exp(log_d) - 1))`` frames.
3. Each unit's embedding is repeated ``duration`` times (``kernels.unit_embedding``);
   a multi-speaker vocoder appends its speaker embedding to every frame.
4. The HiFi-GAN generator upsamples the frames by 5*4*4*2*2 = 320 to a waveform in [-1, 1].
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import load_torch_checkpoint
from .errors import CheckpointError, ModelNotFoundError, UnitError
from .hub import resolve_dir
from .kernels import resblock, unit_embedding

if TYPE_CHECKING:
    from .vocoder_stream import StreamingVocoder

DEFAULT_VOCODER = "facebook/unit_hifigan_mhubert_vp_en_es_fr_it3_400k_layer11_km1000_lj_dur"
"""Hub id of the vocoder SpeechGPT uses (mHuBERT layer 11, 1000 units, LJSpeech voice)."""

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
TORCH_CHECKPOINT_NAMES = ("model.pt", "vocoder.pt")
"""Pickled checkpoint names looked for in a folder, in order, after ``model.safetensors``
and before the newest training checkpoint ``g_<step>``."""

LRELU_SLOPE = 0.1
"""Leaky-ReLU slope inside the generator (the final activation uses PyTorch's default 0.01)."""

UnitsLike = Sequence[int] | np.ndarray | torch.Tensor


# --------------------------------------------------------------------------- config


@dataclass
class DurationPredictorConfig:
    """``dur_predictor_params`` of the vocoder config (fairseq ``VariancePredictor``)."""

    encoder_embed_dim: int = 128
    var_pred_hidden_dim: int = 128
    var_pred_kernel_size: int = 3
    var_pred_dropout: float = 0.5  # training only: inference runs without dropout


@dataclass
class CodeHiFiGANConfig:
    """Architecture of a fairseq unit HiFi-GAN (the keys of its ``config.json``).

    The defaults are the released SpeechGPT vocoder. :meth:`from_dict` reads a
    ``config.json``, ignores its training-only keys (learning rate, segment size, mel
    settings...) and, for absent optional keys, takes the defaults fairseq's
    ``CodeGenerator`` takes (``model_in_dim`` 80, no duration predictor, single speaker).

    Attributes:
        upsample_rates: stride of each transposed convolution; their product is the
            number of samples per unit frame.
        upsample_kernel_sizes: kernel of each transposed convolution.
        upsample_initial_channel: channels after ``conv_pre``; halved by every upsampling.
        resblock_kernel_sizes / resblock_dilation_sizes: one residual block per pair,
            run in parallel after each upsampling and averaged.
        num_embeddings / embedding_dim: the unit embedding table (``dict``).
        model_in_dim: channels entering the generator (``embedding_dim``, doubled when a
            speaker embedding is appended).
        dur_predictor: the duration predictor, or ``None`` (every unit lasts one frame).
        sampling_rate: Hz of the output.
        multispkr / num_speakers: speaker embedding table ``spkr`` appended to every frame.
        embedder_params / embedder_dim: speaker given as an ``embedder_dim`` vector
            projected by a linear ``spkr`` layer instead of an id.
    """

    upsample_rates: tuple[int, ...] = (5, 4, 4, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (11, 8, 8, 4, 4)
    upsample_initial_channel: int = 512
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    num_embeddings: int = 1000
    embedding_dim: int = 128
    model_in_dim: int = 128
    dur_predictor: DurationPredictorConfig | None = field(default_factory=DurationPredictorConfig)
    sampling_rate: int = 16000
    multispkr: bool = False
    num_speakers: int = 200
    embedder_params: dict[str, Any] | None = None
    embedder_dim: int = 256

    _REQUIRED = (
        "upsample_rates",
        "upsample_kernel_sizes",
        "upsample_initial_channel",
        "resblock_kernel_sizes",
        "resblock_dilation_sizes",
        "num_embeddings",
        "embedding_dim",
    )

    def __post_init__(self) -> None:
        self.upsample_rates = tuple(int(u) for u in self.upsample_rates)
        self.upsample_kernel_sizes = tuple(int(k) for k in self.upsample_kernel_sizes)
        self.resblock_kernel_sizes = tuple(int(k) for k in self.resblock_kernel_sizes)
        self.resblock_dilation_sizes = tuple(
            tuple(int(d) for d in dilations) for dilations in self.resblock_dilation_sizes
        )
        problems = []
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes) or not self.upsample_rates:
            problems.append(
                "upsample_rates and upsample_kernel_sizes must be non-empty lists of one length"
            )
        for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes):
            # (k - u) even: the padding (k - u) / 2 makes each stage exactly u times longer
            if u < 1 or k < u or (k - u) % 2:
                problems.append(
                    f"upsampling with stride {u} needs a kernel >= the stride and of the same parity, got {k}"
                )
        if (
            len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes)
            or not self.resblock_kernel_sizes
        ):
            problems.append(
                "resblock_kernel_sizes and resblock_dilation_sizes must be non-empty lists of one length"
            )
        for k, dilations in zip(self.resblock_kernel_sizes, self.resblock_dilation_sizes):
            if k % 2 == 0 or not dilations or min(dilations) < 1:
                problems.append(
                    f"residual blocks need an odd kernel and dilations >= 1, got {k}, {dilations}"
                )
        if self.upsample_initial_channel >> len(self.upsample_rates) < 1:
            problems.append(
                f"upsample_initial_channel {self.upsample_initial_channel} is too small to halve "
                f"{len(self.upsample_rates)} times"
            )
        expected_in = self.embedding_dim * (2 if self.multispkr else 1)
        if self.model_in_dim != expected_in:
            problems.append(
                f"model_in_dim is {self.model_in_dim} but the generator receives {expected_in} "
                "channels (unit embedding" + (" + speaker embedding)" if self.multispkr else ")")
            )
        dp = self.dur_predictor
        if dp is not None:
            if dp.encoder_embed_dim != self.embedding_dim:
                problems.append(
                    f"dur_predictor_params.encoder_embed_dim {dp.encoder_embed_dim} != embedding_dim "
                    f"{self.embedding_dim}"
                )
            if dp.var_pred_kernel_size != 3:
                # fairseq pads the second convolution by 1 whatever the kernel: only 3 keeps the length
                problems.append(
                    f"dur_predictor_params.var_pred_kernel_size must be 3, got {dp.var_pred_kernel_size}"
                )
        if problems:
            raise CheckpointError("invalid vocoder config: " + "; ".join(problems) + ".")

    @property
    def hop_length(self) -> int:
        """Output samples per unit frame (product of the upsample rates; 320 = 20 ms at 16 kHz)."""
        return math.prod(self.upsample_rates)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> CodeHiFiGANConfig:
        """Read a fairseq CodeHiFiGAN ``config.json`` (already parsed).

        Raises:
            CheckpointError: missing required keys, an unsupported variant (``f0``
                conditioning, ``resblock`` "2") or inconsistent sizes.
        """
        if not isinstance(config, Mapping):
            raise CheckpointError(
                f"vocoder config: expected a JSON object, got {type(config).__name__}."
            )
        missing = [key for key in cls._REQUIRED if key not in config]
        if missing:
            raise CheckpointError(
                f"vocoder config lacks {', '.join(missing)}; is this a CodeHiFiGAN config.json?"
            )
        if config.get("f0"):
            raise CheckpointError(
                "vocoder config has f0 enabled: pitch-conditioned CodeHiFiGAN vocoders are not "
                "supported (SpeechGPT's vocoder uses units only)."
            )
        if str(config.get("resblock", "1")) != "1":
            raise CheckpointError(
                f"vocoder config asks for resblock {config['resblock']!r}; fairseq's CodeHiFiGAN "
                "(and this package) only has residual block type '1'."
            )
        dur = config.get("dur_predictor_params")
        try:
            dur_fields = {f.name for f in dataclasses.fields(DurationPredictorConfig)}
            parsed = cls(
                upsample_rates=config["upsample_rates"],
                upsample_kernel_sizes=config["upsample_kernel_sizes"],
                upsample_initial_channel=int(config["upsample_initial_channel"]),
                resblock_kernel_sizes=config["resblock_kernel_sizes"],
                resblock_dilation_sizes=config["resblock_dilation_sizes"],
                num_embeddings=int(config["num_embeddings"]),
                embedding_dim=int(config["embedding_dim"]),
                model_in_dim=int(config.get("model_in_dim", 80)),
                dur_predictor=(
                    DurationPredictorConfig(**{k: v for k, v in dur.items() if k in dur_fields})
                    if dur
                    else None
                ),
                sampling_rate=int(config.get("sampling_rate", 16000)),
                multispkr=bool(config.get("multispkr")),
                num_speakers=int(config.get("num_speakers", 200)),
                embedder_params=dict(config["embedder_params"])
                if config.get("embedder_params")
                else None,
                embedder_dim=int(config.get("embedder_dim", 256)),
            )
        except CheckpointError:
            raise
        except (TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"vocoder config has a malformed value: {exc}.") from exc
        code_hop = config.get("code_hop_size")
        if code_hop is not None and int(code_hop) != parsed.hop_length:
            raise CheckpointError(
                f"vocoder config: code_hop_size {code_hop} != {parsed.hop_length}, the product of "
                "upsample_rates."
            )
        return parsed

    def to_dict(self) -> dict[str, Any]:
        """The config in fairseq's ``config.json`` layout (what :meth:`from_dict` reads)."""
        out: dict[str, Any] = {
            "resblock": "1",
            "upsample_rates": list(self.upsample_rates),
            "upsample_kernel_sizes": list(self.upsample_kernel_sizes),
            "upsample_initial_channel": self.upsample_initial_channel,
            "resblock_kernel_sizes": list(self.resblock_kernel_sizes),
            "resblock_dilation_sizes": [list(d) for d in self.resblock_dilation_sizes],
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "model_in_dim": self.model_in_dim,
            "sampling_rate": self.sampling_rate,
            "code_hop_size": self.hop_length,
            "f0": False,
        }
        if self.dur_predictor is not None:
            out["dur_predictor_params"] = dataclasses.asdict(self.dur_predictor)
        if self.multispkr:
            out["multispkr"] = True
            out["num_speakers"] = self.num_speakers
        if self.embedder_params:
            out["embedder_params"] = dict(self.embedder_params)
            out["embedder_dim"] = self.embedder_dim
        return out


# --------------------------------------------------------------------------- model


class DurationPredictor(nn.Module):
    """Log-duration of every unit from its embedding (fairseq ``VariancePredictor``, eval mode).

    conv(k3) -> ReLU -> LayerNorm -> conv(k3) -> ReLU -> LayerNorm -> Linear(1), over the
    unit sequence; dropout is a training-only layer and is not applied.
    """

    def __init__(self, config: DurationPredictorConfig) -> None:
        super().__init__()
        hidden, kernel = config.var_pred_hidden_dim, config.var_pred_kernel_size
        # Sequential wrappers keep fairseq's parameter names: conv1.0.weight, conv2.0.weight
        self.conv1 = nn.Sequential(
            nn.Conv1d(config.encoder_embed_dim, hidden, kernel, padding=(kernel - 1) // 2),
            nn.ReLU(),
        )
        self.ln1 = nn.LayerNorm(hidden)
        self.conv2 = nn.Sequential(nn.Conv1d(hidden, hidden, kernel, padding=1), nn.ReLU())
        self.ln2 = nn.LayerNorm(hidden)
        self.proj = nn.Linear(hidden, 1)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """embeddings [B, C, N] (channels-first) -> log-durations [B, N]."""
        hidden = self.ln1(self.conv1(embeddings).transpose(1, 2))  # [B, N, H]
        hidden = self.ln2(self.conv2(hidden.transpose(1, 2)).transpose(1, 2))  # [B, N, H]
        return self.proj(hidden).squeeze(2)


def durations_from_log(log_durations: torch.Tensor) -> torch.Tensor:
    """Frames per unit from predicted log-durations: ``max(1, round(exp(log_d) - 1))``, int64.

    ``round`` is PyTorch's (half to even), as in fairseq.
    """
    return torch.clamp(torch.round(torch.exp(log_durations.float()) - 1).long(), min=1)


class ResBlock(nn.Module):
    """HiFi-GAN residual block (type 1): for each dilation d,
    ``x = x + conv2(lrelu(conv1_d(lrelu(x))))``, all 'same'-padded, channels kept."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(
                channels, channels, kernel_size, dilation=d, padding=(kernel_size - 1) * d // 2
            )
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2)
            for _ in dilations
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, C, T] -> [B, C, T].

        Each ``lrelu -> conv`` (and the skip add) is one fused
        :func:`~speechgpt_agent.kernels.lrelu_conv1d`: Triton on CUDA, PyTorch elsewhere and
        under autograd. It reads the convolutions' ``weight`` and ``bias`` (parametrizations
        such as weight norm apply) without calling them, so hooks on them do not run.
        """
        return resblock(hidden, self.convs1, self.convs2, slope=LRELU_SLOPE)


class HiFiGANGenerator(nn.Module):
    """HiFi-GAN generator: frames [B, model_in_dim, T] -> waveform [B, 1, T * hop_length].

    conv_pre (k7) -> per upsampling stage: leaky ReLU(0.1) -> transposed conv (x rate)
    -> mean of the stage's residual blocks -> leaky ReLU (PyTorch default slope 0.01, as
    in fairseq) -> conv_post (k7, 1 channel) -> tanh.
    """

    def __init__(self, config: CodeHiFiGANConfig) -> None:
        super().__init__()
        self.num_kernels = len(config.resblock_kernel_sizes)
        channels = config.upsample_initial_channel
        self.conv_pre = nn.Conv1d(config.model_in_dim, channels, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (rate, kernel) in enumerate(
            zip(config.upsample_rates, config.upsample_kernel_sizes)
        ):
            c_in, c_out = channels >> i, channels >> (i + 1)
            self.ups.append(
                nn.ConvTranspose1d(c_in, c_out, kernel, rate, padding=(kernel - rate) // 2)
            )
            for k, dilations in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes):
                self.resblocks.append(ResBlock(c_out, k, dilations))
        self.conv_post = nn.Conv1d(channels >> len(config.upsample_rates), 1, 7, padding=3)

    def stage_resblocks(self, stage: int) -> list[ResBlock]:
        """The residual blocks that follow upsampling ``stage``."""
        return list(self.resblocks[stage * self.num_kernels : (stage + 1) * self.num_kernels])

    def generate(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B, model_in_dim, T] -> waveform [B, 1, T * hop_length] in [-1, 1]."""
        hidden = self.conv_pre(frames)
        for stage, upsample in enumerate(self.ups):
            hidden = upsample(F.leaky_relu(hidden, LRELU_SLOPE))
            blocks = self.stage_resblocks(stage)
            total = blocks[0](hidden)
            for block in blocks[1:]:
                total = total + block(hidden)
            hidden = total / self.num_kernels
        return torch.tanh(self.conv_post(F.leaky_relu(hidden)))


class CodeHiFiGAN(HiFiGANGenerator):
    """Unit HiFi-GAN (fairseq ``CodeGenerator``): units [B, N] -> waveform [B, samples].

    Parameter names are fairseq's (``dict``, ``spkr``, ``dur_predictor.*``, ``conv_pre``,
    ``ups.*``, ``resblocks.*``, ``conv_post``) with weight norm folded.
    """

    def __init__(self, config: CodeHiFiGANConfig) -> None:
        super().__init__(config)
        self.config = config
        self.dict = nn.Embedding(config.num_embeddings, config.embedding_dim)  # fairseq's name
        self.spkr: nn.Module | None = None
        if config.embedder_params:
            self.spkr = nn.Linear(config.embedder_dim, config.embedding_dim)
        elif config.multispkr:
            self.spkr = nn.Embedding(config.num_speakers, config.embedding_dim)
        self.dur_predictor = (
            DurationPredictor(config.dur_predictor) if config.dur_predictor else None
        )

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    # ------------------------------------------------------------ input checks

    def check_units(self, units: torch.Tensor) -> None:
        """Raise :class:`UnitError` unless ``units`` holds integers ``< num_embeddings``
        (negative ids are allowed: they mean padding and are dropped)."""
        if units.dtype.is_floating_point or units.dtype.is_complex or units.dtype == torch.bool:
            raise UnitError(f"units must be integers, got dtype {units.dtype}.")
        if units.numel() and int(units.max()) >= self.config.num_embeddings:
            bad = int(units.max())
            raise UnitError(
                f"unit id {bad} is outside this vocoder's codebook of {self.config.num_embeddings} "
                f"units (valid ids: 0..{self.config.num_embeddings - 1})."
            )

    def speaker_features(self, speaker: Any, batch: int = 1) -> torch.Tensor | None:
        """Speaker embedding [batch, embedding_dim, 1] appended to every frame, or ``None``.

        ``speaker``: an id (int or [batch] ints) for a ``multispkr`` vocoder, or a vector
        ([embedder_dim] or [batch, embedder_dim]) for one with ``embedder_params``.
        """
        config = self.config
        if not config.multispkr:
            if speaker is not None:
                raise UnitError("this vocoder has a single voice; do not pass a speaker.")
            return None
        if speaker is None:
            raise UnitError(
                f"this vocoder has {config.num_speakers} voices: pass speaker=<id in 0..{config.num_speakers - 1}>."
                if not config.embedder_params
                else f"this vocoder needs a speaker embedding of {config.embedder_dim} values (speaker=...)."
            )
        device, dtype = self.dict.weight.device, self.dict.weight.dtype
        if config.embedder_params:
            try:
                vector = torch.as_tensor(speaker).to(device=device, dtype=dtype)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise UnitError(
                    f"speaker must be a vector of {config.embedder_dim} numbers: {exc}."
                ) from exc
            vector = vector[None] if vector.dim() == 1 else vector
            if (
                vector.dim() != 2
                or vector.shape[1] != config.embedder_dim
                or vector.shape[0] not in (1, batch)
            ):
                raise UnitError(
                    f"speaker must be a vector of {config.embedder_dim} numbers (or one per row), "
                    f"got shape {tuple(vector.shape)}."
                )
            return self.spkr(vector.expand(batch, -1)).unsqueeze(2)
        try:
            ids = torch.as_tensor(speaker).reshape(-1)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise UnitError(f"speaker must be an integer id, got {speaker!r}.") from exc
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.numel() not in (1, batch):
            raise UnitError(f"speaker must be an integer id (or one per row), got {speaker!r}.")
        if int(ids.min()) < 0 or int(ids.max()) >= config.num_speakers:
            raise UnitError(f"speaker id {speaker!r} is outside 0..{config.num_speakers - 1}.")
        return self.spkr(ids.to(device).expand(batch)).unsqueeze(2)

    # ------------------------------------------------------------ forward

    def _row_durations(self, ids: torch.Tensor) -> torch.Tensor:
        """Predicted durations [N] of one row of valid ids [N] (the predictor sees the row alone)."""
        if self.dur_predictor is None or ids.numel() == 0:
            return torch.ones_like(ids)
        embeddings = self.dict(ids).T.unsqueeze(0)  # [1, C, N]
        return durations_from_log(self.dur_predictor(embeddings))[0]

    def predict_durations(self, units: torch.Tensor) -> torch.Tensor:
        """Predicted frames per unit.

        Args:
            units: [B, N] int ids; ids < 0 are padding (removed before prediction, as fairseq does).

        Returns:
            [B, N] int64 durations >= 1, and 0 at padding positions.

        Raises:
            UnitError: ids out of range, or the vocoder has no duration predictor.
        """
        if self.dur_predictor is None:
            raise UnitError("this vocoder has no duration predictor; pass durations explicitly.")
        if units.dim() != 2:
            raise UnitError(f"units must be [batch, length], got shape {tuple(units.shape)}.")
        self.check_units(units)
        out = torch.zeros(units.shape, dtype=torch.long, device=units.device)
        for b in range(units.shape[0]):
            keep = units[b] >= 0
            out[b, keep] = self._row_durations(units[b][keep].to(self.dict.weight.device)).to(
                out.device
            )
        return out

    def forward(
        self, units: torch.Tensor, durations: torch.Tensor | None = None, speaker: Any = None
    ) -> torch.Tensor:
        """Synthesize waveforms.

        Args:
            units: [B, N] int ids; ids < 0 are padding and are dropped (with their durations).
            durations: [B, N] frames per unit (>= 0); ``None`` predicts them when the
                vocoder has a duration predictor, and otherwise gives every unit one frame.
            speaker: speaker id(s) or embedding(s) for a multi-speaker vocoder (see
                :meth:`speaker_features`); must be ``None`` otherwise.

        Returns:
            [B, S] float waveform in [-1, 1] at ``config.sampling_rate``; row ``b`` has
            ``hop_length * sum(durations[b])`` samples and is zero-padded up to ``S``.
            Each row is synthesized on its own, so a row's samples never depend on the
            other rows.

        Raises:
            UnitError: bad shapes, ids ``>= num_embeddings``, negative durations, bad speaker.
        """
        if units.dim() != 2:
            raise UnitError(f"units must be [batch, length], got shape {tuple(units.shape)}.")
        self.check_units(units)
        if durations is not None:
            if (
                durations.shape != units.shape
                or durations.dtype.is_floating_point
                or durations.dtype == torch.bool
            ):
                raise UnitError(
                    f"durations must be integers shaped like units {tuple(units.shape)}, got "
                    f"{tuple(durations.shape)} {durations.dtype}."
                )
            if durations.numel() and int(durations.min()) < 0:
                raise UnitError("durations must be >= 0 frames.")
        batch = units.shape[0]
        speaker_all = self.speaker_features(speaker, batch)
        device = self.dict.weight.device
        rows = []
        for b in range(batch):
            keep = units[b] >= 0
            ids = units[b][keep].to(device)
            if durations is not None:
                dur = durations[b][keep].to(device=device, dtype=torch.long)
            else:
                dur = self._row_durations(ids)  # all ones without a duration predictor
            spk = None if speaker_all is None else speaker_all[b : b + 1]
            rows.append(
                self.synthesize_frames(unit_embedding(ids[None], dur[None], self.dict.weight), spk)[
                    0
                ]
            )
        length = max((row.shape[0] for row in rows), default=0)
        out = self.dict.weight.new_zeros(batch, length)
        for b, row in enumerate(rows):
            out[b, : row.shape[0]] = row
        return out

    def synthesize_frames(
        self, frames: torch.Tensor, speaker: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Unit frames [B, embedding_dim, T] (+ speaker [B, embedding_dim, 1]) -> waveform [B, T * hop]."""
        if frames.shape[2] == 0:
            return frames.new_zeros(frames.shape[0], 0)
        if speaker is not None:
            frames = torch.cat([frames, speaker.expand(-1, -1, frames.shape[2])], dim=1)
        return self.generate(frames).squeeze(1)


# --------------------------------------------------------------------------- checkpoints


def _weight_norm_fold(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``g * v / ||v||`` with the norm over every dim but 0 (``torch.nn.utils.weight_norm``'s
    default ``dim=0``; for a ConvTranspose1d weight [in, out, k] that is one norm per input channel)."""
    norm = v.norm(p=2, dim=tuple(range(1, v.dim())), keepdim=True)
    return v * (g / norm)


def fold_weight_norm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace weight-norm pairs by plain weights, keeping every other entry.

    Reads both layouts: ``x.weight_g`` / ``x.weight_v`` (``torch.nn.utils.weight_norm``,
    what fairseq saved) and ``x.parametrizations.weight.original0`` / ``original1``
    (``torch.nn.utils.parametrizations.weight_norm``).

    Raises:
        CheckpointError: a pair with one half missing or a magnitude not shaped [out, 1, ...].
    """
    out: dict[str, torch.Tensor] = {}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        match = re.fullmatch(
            r"(.+\.)?(?:weight_(g|v)|parametrizations\.weight\.original([01]))", key
        )
        if match is None:
            out[key] = value
            continue
        part = match.group(2) or ("g" if match.group(3) == "0" else "v")
        pairs.setdefault(match.group(1) or "", {})[part] = value
    for prefix, pair in pairs.items():
        if set(pair) != {"g", "v"}:
            half = "magnitude (weight_g)" if "g" not in pair else "direction (weight_v)"
            raise CheckpointError(
                f"vocoder checkpoint: the weight norm of {prefix}weight lacks its {half}."
            )
        g, v = pair["g"], pair["v"]
        if g.shape != (v.shape[0],) + (1,) * (v.dim() - 1):
            raise CheckpointError(
                f"vocoder checkpoint: {prefix}weight_g has shape {tuple(g.shape)}, expected "
                f"{(v.shape[0],) + (1,) * (v.dim() - 1)} (weight norm over dim 0)."
            )
        out[prefix + "weight"] = _weight_norm_fold(g, v)
    return out


def _newest_training_checkpoint(folder: Path) -> Path | None:
    steps = [
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if (m := re.fullmatch(r"g_(\d+)", p.name)) and p.is_file()
    ]
    return max(steps)[1] if steps else None


def find_vocoder_files(folder: Path) -> tuple[Path, Path]:
    """``(config.json, checkpoint)`` of a vocoder folder.

    The checkpoint is the first present of ``model.safetensors`` (converted, preferred),
    ``model.pt``, ``vocoder.pt`` and the newest ``g_<step>``.

    Raises:
        ModelNotFoundError: no config or no checkpoint in ``folder``.
    """
    config = folder / CONFIG_NAME
    candidates = [folder / SAFETENSORS_NAME] + [folder / name for name in TORCH_CHECKPOINT_NAMES]
    checkpoint = next((p for p in candidates if p.is_file()), None) or _newest_training_checkpoint(
        folder
    )
    if checkpoint is None:
        raise ModelNotFoundError(
            f"vocoder: no checkpoint in {folder}; expected {SAFETENSORS_NAME}, "
            f"{', '.join(TORCH_CHECKPOINT_NAMES)} or a training checkpoint g_<step>."
        )
    if not config.is_file():
        raise ModelNotFoundError(
            f"vocoder: {folder} has the checkpoint {checkpoint.name} but no {CONFIG_NAME}; put the "
            "vocoder's config.json next to it."
        )
    return config, checkpoint


def read_vocoder_config(path: Path) -> CodeHiFiGANConfig:
    """Parse a vocoder ``config.json``; :class:`CheckpointError` when unreadable or invalid."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"vocoder: {path} is not a readable JSON config ({exc}).") from exc
    return CodeHiFiGANConfig.from_dict(raw)


def read_vocoder_state_dict(path: Path, *, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The folded generator state dict of a checkpoint file.

    Reads ``model.safetensors`` (already folded) or a torch pickle holding
    ``{"generator": state_dict, ...}`` (a bare state dict is accepted too).

    Raises:
        CheckpointError: unreadable file or no generator weights in it.
    """
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"vocoder: {path} is not a readable safetensors file ({exc})."
            ) from exc
    else:
        checkpoint = load_torch_checkpoint(path, trust_pickle=trust_pickle, what="vocoder")
        state = checkpoint.get("generator") if isinstance(checkpoint, Mapping) else None
        if (
            state is None
            and isinstance(checkpoint, Mapping)
            and any(str(k).startswith("conv_pre.") for k in checkpoint)
        ):
            state = checkpoint
        if not isinstance(state, Mapping):
            keys = (
                list(checkpoint)[:8]
                if isinstance(checkpoint, Mapping)
                else type(checkpoint).__name__
            )
            raise CheckpointError(
                f"vocoder: {path} holds no CodeHiFiGAN generator weights (expected a dict with a "
                f"'generator' state dict; found {keys})."
            )
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"vocoder: the generator state dict in {path} holds non-tensor values."
        )
    return fold_weight_norm(state)


def _load_weights(model: CodeHiFiGAN, state: Mapping[str, torch.Tensor], source: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {tuple(state[k].shape)} (config expects {tuple(expected[k].shape)})"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(
                f"missing {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")
            )
        if unexpected:
            details.append(
                f"unexpected {', '.join(unexpected[:5])}" + (" ..." if len(unexpected) > 5 else "")
            )
        if wrong:
            details.append(
                f"shape mismatch {', '.join(wrong[:3])}" + (" ..." if len(wrong) > 3 else "")
            )
        raise CheckpointError(
            f"vocoder: the weights in {source} do not match its config.json ({'; '.join(details)})."
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


# --------------------------------------------------------------------------- public API


def _as_unit_ids(units: UnitsLike | int, *, what: str = "units") -> torch.Tensor:
    """A 1-D int64 CPU tensor of ``units`` (a sequence, array, tensor or single int)."""
    if isinstance(units, (int, np.integer)) and not isinstance(units, bool):
        return torch.tensor([int(units)], dtype=torch.long)
    try:
        tensor = (
            units.detach().cpu() if torch.is_tensor(units) else torch.as_tensor(np.asarray(units))
        )
    except (TypeError, ValueError) as exc:
        raise UnitError(
            f"{what} must be a sequence of integers, got {type(units).__name__}: {exc}."
        ) from exc
    if tensor.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise UnitError(f"{what} must be integers, got dtype {tensor.dtype}.")
    if tensor.dim() > 1 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 1:
        raise UnitError(f"{what} must be one sequence (1-D), got shape {tuple(tensor.shape)}.")
    return tensor.to(torch.long)


class UnitVocoder:
    """Speech units -> 16 kHz float32 audio, offline or streaming, with a loaded :class:`CodeHiFiGAN`.

    Thread-safe: synthesis holds no state, and each stream keeps its own.

    Example::

        vocoder = UnitVocoder.from_pretrained()  # the released SpeechGPT vocoder
        wav = vocoder.synthesize([661, 588, 90])  # np.float32, 16 kHz
    """

    def __init__(self, model: CodeHiFiGAN) -> None:
        self.model = model.eval()

    # ------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        ref: str | os.PathLike = DEFAULT_VOCODER,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        trust_pickle: bool = False,
    ) -> UnitVocoder:
        """Load a vocoder.

        Args:
            ref: a hub id, a folder (``config.json`` + ``model.safetensors`` / ``model.pt``
                / ``vocoder.pt`` / ``g_<step>``), or a checkpoint file with
                ``config.json`` beside it.
            device: where to run (default: CUDA when available, else CPU).
            dtype: parameter dtype (float32; bfloat16/float16 on GPUs).
            trust_pickle: allow full unpickling of a checkpoint that holds more than
                tensors (see :func:`~speechgpt_agent.checkpoints.load_torch_checkpoint`).

        ``ref="demo"`` loads the embedded demo model's vocoder (offline).

        Raises:
            ModelNotFoundError: nothing at ``ref``, or a folder without config/checkpoint.
            CheckpointError: unreadable or mismatching config/weights.
        """
        from .demo import DEMO_NAME, demo_parts

        if os.fspath(ref) == DEMO_NAME:
            ref = demo_parts().vocoder
        config_path, checkpoint_path = _locate(ref)
        config = read_vocoder_config(config_path)
        state = read_vocoder_state_dict(checkpoint_path, trust_pickle=trust_pickle)
        model = CodeHiFiGAN(config)
        _load_weights(model, state, checkpoint_path)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(model.to(device=device, dtype=dtype))

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (folded float32 weights) into ``folder``.

        Each file is written to a temporary name and renamed, so a reader never sees a
        half-written file. Returns the folder.
        """
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            k: v.detach().to("cpu", torch.float32).contiguous()
            for k, v in self.model.state_dict().items()
        }
        config_text = json.dumps(self.config.to_dict(), indent=2) + "\n"
        for name, write in (
            (SAFETENSORS_NAME, lambda p: save_file(state, p, metadata={"format": "pt"})),
            (CONFIG_NAME, lambda p: Path(p).write_text(config_text, encoding="utf-8")),
        ):
            # a fresh name in the same folder (plain open: the umask applies, unlike mkstemp's 0600)
            tmp = folder / f".{name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
            try:
                write(str(tmp))
                os.replace(tmp, folder / name)
            finally:
                tmp.unlink(missing_ok=True)
        return folder

    # ------------------------------------------------------------ properties

    @property
    def config(self) -> CodeHiFiGANConfig:
        return self.model.config

    @property
    def sample_rate(self) -> int:
        """Output rate in Hz (16000)."""
        return self.config.sampling_rate

    @property
    def hop_length(self) -> int:
        """Samples per unit frame (320 = 20 ms at 16 kHz)."""
        return self.config.hop_length

    @property
    def device(self) -> torch.device:
        return self.model.dict.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dict.weight.dtype

    @property
    def has_duration_predictor(self) -> bool:
        return self.model.dur_predictor is not None

    # ------------------------------------------------------------ synthesis

    def synthesize(
        self, units: UnitsLike, durations: UnitsLike | None = None, *, speaker: Any = None
    ) -> np.ndarray:
        """Waveform of one unit sequence.

        Args:
            units: unit ids (list, array or tensor, 1-D). Ids < 0 are dropped (fairseq
                treats them as padding); ids ``>= num_embeddings`` raise.
            durations: frames per unit, same length as ``units``; ``None`` predicts them
                (or gives every unit one frame when the vocoder has no duration predictor).
            speaker: speaker id / embedding for a multi-speaker vocoder.

        Returns:
            float32 [hop_length * sum(durations)] samples in [-1, 1] at :attr:`sample_rate`
            (empty for no units).

        Raises:
            UnitError: ids out of range, non-integer input, mismatched durations, bad speaker.
        """
        ids = _as_unit_ids(units)
        dur = None
        if durations is not None:
            dur = _as_unit_ids(durations, what="durations")
            if dur.shape != ids.shape:
                raise UnitError(f"got {ids.numel()} units but {dur.numel()} durations.")
            dur = dur[None]
        with torch.inference_mode():
            wav = self.model(ids[None], dur, speaker)[0]
        return wav.float().cpu().numpy()

    def predict_durations(self, units: UnitsLike) -> np.ndarray:
        """Frames per unit as the vocoder predicts them (int64, 0 for dropped ids < 0)."""
        with torch.inference_mode():
            return self.model.predict_durations(_as_unit_ids(units)[None])[0].cpu().numpy()

    def stream(
        self, *, speaker: Any = None, predict_durations: bool | None = None
    ) -> StreamingVocoder:
        """A new :class:`~speechgpt_agent.vocoder_stream.StreamingVocoder` on this model.

        Args:
            speaker: as in :meth:`synthesize`.
            predict_durations: predict durations (default when the vocoder has a
                predictor); ``False`` takes them with every ``push`` (default one frame each).
        """
        from .vocoder_stream import StreamingVocoder

        return StreamingVocoder(self.model, speaker=speaker, predict_durations=predict_durations)


def _locate(ref: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(os.path.expanduser(str(ref)))
    if path.is_file():
        config = path.parent / CONFIG_NAME
        if not config.is_file():
            raise ModelNotFoundError(
                f"vocoder: no {CONFIG_NAME} beside the checkpoint {path}; put the vocoder's "
                "config.json in the same folder."
            )
        return config, path
    folder = resolve_dir(
        ref,
        what="vocoder",
        allow_patterns=[CONFIG_NAME, SAFETENSORS_NAME, *TORCH_CHECKPOINT_NAMES, "g_*"],
    )
    return find_vocoder_files(folder)


def convert_vocoder(
    src: str | os.PathLike, out_dir: str | os.PathLike, *, trust_pickle: bool = False
) -> Path:
    """Convert a fairseq CodeHiFiGAN (folder, or checkpoint file + ``config.json``) into
    ``out_dir/config.json`` + ``out_dir/model.safetensors`` with weight norm folded.

    Returns ``out_dir``. Raises like :meth:`UnitVocoder.from_pretrained`.
    """
    vocoder = UnitVocoder.from_pretrained(src, device="cpu", trust_pickle=trust_pickle)
    return vocoder.save_pretrained(out_dir)
