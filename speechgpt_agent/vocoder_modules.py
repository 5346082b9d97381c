"""The unit vocoder's network: fairseq's CodeHiFiGAN (duration predictor + HiFi-GAN generator)
in plain PyTorch, with fairseq's parameter names. It imports no loader: loading lives in
:mod:`speechgpt_agent.vocoder_loading`, the public facade in :mod:`speechgpt_agent.vocoder`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import UnitError
from .kernels import resblock, unit_embedding
from .vocoder_config import CodeHiFiGANConfig, DurationPredictorConfig

LRELU_SLOPE = 0.1
"""Leaky-ReLU slope inside the generator (the final activation uses PyTorch's default 0.01)."""

UnitsLike = Sequence[int] | np.ndarray | torch.Tensor


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
