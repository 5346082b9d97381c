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

import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UnitError
from .vocoder_config import CodeHiFiGANConfig, DurationPredictorConfig
from .vocoder_loading import (
    CONFIG_NAME,
    DEFAULT_VOCODER,
    SAFETENSORS_NAME,
    TORCH_CHECKPOINT_NAMES,
    _load_weights,
    _locate,
    find_vocoder_files,
    fold_weight_norm,
    read_vocoder_config,
    read_vocoder_state_dict,
)
from .vocoder_modules import (
    LRELU_SLOPE,
    CodeHiFiGAN,
    DurationPredictor,
    HiFiGANGenerator,
    ResBlock,
    UnitsLike,
    _as_unit_ids,
    durations_from_log,
)
from .vocoder_stream import StreamingVocoder

__all__ = [
    "CONFIG_NAME",
    "DEFAULT_VOCODER",
    "LRELU_SLOPE",
    "SAFETENSORS_NAME",
    "TORCH_CHECKPOINT_NAMES",
    "CodeHiFiGAN",
    "CodeHiFiGANConfig",
    "DurationPredictor",
    "DurationPredictorConfig",
    "HiFiGANGenerator",
    "ResBlock",
    "StreamingVocoder",
    "UnitVocoder",
    "UnitsLike",
    "convert_vocoder",
    "durations_from_log",
    "find_vocoder_files",
    "fold_weight_norm",
    "read_vocoder_config",
    "read_vocoder_state_dict",
]


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


def convert_vocoder(
    src: str | os.PathLike, out_dir: str | os.PathLike, *, trust_pickle: bool = False
) -> Path:
    """Convert a fairseq CodeHiFiGAN (folder, or checkpoint file + ``config.json``) into
    ``out_dir/config.json`` + ``out_dir/model.safetensors`` with weight norm folded.

    Returns ``out_dir``. Raises like :meth:`UnitVocoder.from_pretrained`.
    """
    vocoder = UnitVocoder.from_pretrained(src, device="cpu", trust_pickle=trust_pickle)
    return vocoder.save_pretrained(out_dir)
