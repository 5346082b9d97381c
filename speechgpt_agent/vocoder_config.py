"""The unit vocoder's configuration: fairseq CodeHiFiGAN's ``config.json`` as dataclasses."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import CheckpointError

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
