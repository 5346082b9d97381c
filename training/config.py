"""Hyper-parameters of the three stages: the original recipe as defaults, overridable.

``configs/{ma,cm,com}.json`` (shipped with the package) hold the original scripts' values
(``speechgpt/scripts/*.sh``); a user JSON file given with ``--config`` overrides some of
them, and command-line flags override both. :func:`load_config` merges the three layers
into a validated :class:`TrainConfig`. Keys starting with ``_`` are comments.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from .records import DataError

__all__ = ["STAGES", "Method", "Stage", "TrainConfig", "default_config_path", "load_config"]

PathLike = str | os.PathLike
Stage = Literal["ma", "cm", "com"]
Method = Literal["full", "lora"]
STAGES: tuple[Stage, ...] = ("ma", "cm", "com")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs. Defaults are neutral; the stage files set the recipe.

    Data and model:
        stage: ``"ma"`` (units LM), ``"cm"`` (cross-modal instructions) or ``"com"``
            (chain-of-modality instructions).
        model: start checkpoint (folder or hub id): a SpeechGPT model, or for any stage a
            plain LLaMA, whose vocabulary is then expanded first.
        train_file: ``train.txt`` (ma) or ``train.jsonl`` (cm/com) from ``data build``.
        dev_file: held-out file of the same kind; without it ``val_set_size`` samples of
            ``train_file`` are held out (a fraction when < 1).
        output_dir: run folder: ``checkpoints/``, then ``model/`` (full) or ``adapter/`` (LoRA).
        block_size: ma: tokens per training sequence (unit lines are concatenated and cut).
        model_max_length: cm/com: longest sample in tokens; longer ones are skipped and reported.
        loss_on: cm/com: ``"plain_text"`` (the original: the system prefix is masked) or
            ``"response"`` (also mask the question, up to and including ``[SpeechGPT]:``).

    Method:
        method: ``"full"`` fine-tuning or ``"lora"``.
        quantization: ``None``, ``"nf4"`` (QLoRA) or ``"int8"`` (the original stage 3); LoRA only.
        train_new_tokens: with LoRA, also train the rows of the 1006 SpeechGPT tokens in the
            input embeddings and the LM head (needed when they were just initialised).
        lora_r, lora_alpha, lora_dropout, lora_target_modules: the LoRA adapter.

    Optimisation (as transformers ``TrainingArguments``): per_device_train_batch_size,
        per_device_eval_batch_size, gradient_accumulation_steps, num_train_epochs,
        max_steps (> 0 overrides epochs), learning_rate, weight_decay, warmup_ratio,
        lr_scheduler_type, optim, bf16, gradient_checkpointing, seed.

    Bookkeeping:
        logging_steps, save_steps, save_total_limit, eval_steps (default: save_steps),
        sample_max_new_tokens (length of the generation sample logged at each evaluation;
        0 disables it), resume (continue from the last checkpoint in ``output_dir``),
        trainer_args (more ``TrainingArguments``, e.g. ``{"fsdp": "full_shard auto_wrap"}``).
    """

    stage: Stage
    model: str | None = None
    train_file: str | None = None
    dev_file: str | None = None
    output_dir: str | None = None
    block_size: int = 1024
    model_max_length: int = 512
    loss_on: Literal["plain_text", "response"] = "plain_text"
    val_set_size: float = 0
    method: Method = "full"
    quantization: Literal["nf4", "int8"] | None = None
    train_new_tokens: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    per_device_train_batch_size: int = 1
    per_device_eval_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    num_train_epochs: float = 1.0
    max_steps: int = -1
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    lr_scheduler_type: str = "linear"
    optim: str = "adamw_torch"
    bf16: bool = False
    gradient_checkpointing: bool = False
    seed: int = 42
    logging_steps: int = 1
    save_steps: int = 300
    save_total_limit: int | None = None
    eval_steps: int | None = None
    sample_max_new_tokens: int = 48
    resume: bool = True
    trainer_args: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def fail(message: str) -> None:
            raise ValueError(f"training config: {message}")

        if self.stage not in STAGES:
            fail(f"stage must be one of {STAGES}, got {self.stage!r}.")
        if self.method not in ("full", "lora"):
            fail(f"method must be 'full' or 'lora', got {self.method!r}.")
        if self.quantization not in (None, "nf4", "int8"):
            fail(f"quantization must be null, 'nf4' or 'int8', got {self.quantization!r}.")
        if self.quantization is not None and self.method != "lora":
            fail(f"quantization {self.quantization!r} needs method 'lora' (a quantized base cannot be "
                 "fully fine-tuned); use --method lora.")
        if self.loss_on not in ("plain_text", "response"):
            fail(f"loss_on must be 'plain_text' or 'response', got {self.loss_on!r}.")
        for name in ("block_size", "model_max_length", "per_device_train_batch_size",
                     "per_device_eval_batch_size", "gradient_accumulation_steps", "lora_r",
                     "logging_steps", "save_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(f"{name} must be a positive integer, got {value!r}.")
        if self.val_set_size < 0:
            fail(f"val_set_size must be >= 0, got {self.val_set_size}.")
        if not 0.0 <= self.lora_dropout < 1.0:
            fail(f"lora_dropout must be in [0, 1), got {self.lora_dropout}.")
        if not 0.0 <= self.warmup_ratio < 1.0:
            fail(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")
        if self.learning_rate <= 0:
            fail(f"learning_rate must be > 0, got {self.learning_rate}.")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            fail("give num_train_epochs > 0 or max_steps > 0.")
        if not self.lora_target_modules:
            fail("lora_target_modules must name at least one module.")
        object.__setattr__(self, "lora_target_modules", tuple(self.lora_target_modules))
        object.__setattr__(self, "trainer_args", dict(self.trainer_args))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (written beside the run as ``train_config.json``)."""
        data = dataclasses.asdict(self)
        data["lora_target_modules"] = list(self.lora_target_modules)
        return data


def default_config_path(stage: Stage) -> Path:
    """The shipped defaults of ``stage`` (``training/configs/{stage}.json``)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}.")
    return Path(str(resources.files("speechgpt_agent.training").joinpath("configs", f"{stage}.json")))


def _read_json_config(path: PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"cannot read the training config {path}: {exc.strerror or exc}.") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"the training config {path} is not valid JSON: {exc}.") from exc
    if not isinstance(data, dict):
        raise DataError(f"the training config {path} must hold a JSON object.")
    return {k: v for k, v in data.items() if not k.startswith("_")}


def load_config(stage: Stage, config_file: PathLike | None = None, **overrides: Any) -> TrainConfig:
    """The stage's defaults, updated by ``config_file`` and then by the non-``None`` ``overrides``.

    Raises:
        ValueError: an unknown key, or a value out of range.
        DataError: ``config_file`` cannot be read.
    """
    values = _read_json_config(default_config_path(stage))
    if config_file is not None:
        values.update(_read_json_config(config_file))
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["stage"] = stage
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"training config: unknown key(s) {unknown}; known keys: {sorted(known)}.")
    return TrainConfig(**values)
