"""One training run of a stage, on the Hugging Face ``Trainer``.

:func:`train` takes a :class:`~.config.TrainConfig` and does what the original scripts did,
with a few additions:

* start model: a SpeechGPT folder, or a plain LLaMA whose vocabulary is expanded first
  (into ``{output_dir}/base``, :func:`~.vocab.expand_vocabulary`);
* methods: full fine-tuning (the original stages 1 and 2), LoRA (stage 3), LoRA on an NF4
  (QLoRA) or int8 base; with LoRA the new token rows can be trained too
  (``train_new_tokens``, peft's trainable token indices on the embeddings and the LM head);
* one process on CPU or GPU; several GPUs or nodes by launching the same command with
  ``torchrun`` or ``accelerate launch`` (DDP, or FSDP via ``trainer_args``): the Trainer
  does the distribution;
* checkpoints every ``save_steps`` in ``{output_dir}/checkpoints``, each written into a
  staging folder and renamed into place when complete, so a kill never leaves a partial
  ``checkpoint-N``; a rerun resumes from the last one (optimizer, scheduler, RNG, data
  position); a rerun whose last checkpoint is the final step (killed while exporting) only
  exports it;
* batches padded on the right (the original padded on the left, which shifted the positions
  of a shorter sample's tokens away from those it has at inference);
* evaluation loss every ``eval_steps``, with a greedy generation sample logged and appended
  to ``{output_dir}/samples.jsonl``;
* the result written atomically: ``{output_dir}/model`` (full; a release-layout folder) or
  ``{output_dir}/adapter`` (LoRA; peft format). Both load in
  ``SpeechGPTModel.from_pretrained(model=..., adapter=...)`` and so in ``SpeechGPTChat``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from speechgpt_agent.errors import SpeechGPTError
from speechgpt_agent.hub import resolve_dir
from speechgpt_agent.prompt import ADDED_TOKENS

from .checkpointing import copy_tokenizer_files, publish_directory
from .config import TrainConfig
from .data import (
    Example,
    instruction_examples,
    lm_blocks,
    prompt_length,
    read_instruction_file,
    read_unit_corpus,
    split_validation,
)
from .records import SkipReport, atomic_write_lines
from .vocab import expand_vocabulary, has_speech_vocabulary

__all__ = ["TrainOutcome", "TrainingError", "train"]

logger = logging.getLogger("speechgpt_agent.training")

_MODEL_FILES = ("*.json", "tokenizer.model", "*.safetensors", "*.bin")


class TrainingError(SpeechGPTError, ValueError):
    """A training run that cannot start as configured (no data, no model, a clash of outputs)."""


@dataclass(frozen=True)
class TrainOutcome:
    """What a run produced.

    Attributes:
        output: ``{output_dir}/model`` or ``{output_dir}/adapter``.
        kind: ``"model"`` (pass it as ``model=``) or ``"adapter"`` (pass it as ``adapter=``,
            with ``base_model`` as ``model=``).
        base_model: the model the run started from (after any vocabulary expansion).
        global_step: optimizer steps done in total (resumed runs included).
        metrics: the final train (and eval) metrics.
        skipped: samples left out of the data, with reasons.
    """

    output: Path
    kind: Literal["model", "adapter"]
    base_model: Path
    global_step: int
    metrics: dict[str, float]
    skipped: SkipReport = field(repr=False)


# --- data --------------------------------------------------------------------------------


def _examples(cfg: TrainConfig, tokenizer: Any, report: SkipReport
              ) -> tuple[list[Example], list[Example], list[int]]:
    """Training and evaluation examples of the run's files, and the prompt of the logged
    generation sample (the question of the first evaluation sample, or a unit prefix)."""
    if cfg.train_file is None:
        raise TrainingError("no training data: give --train-file (from `speechgpt-agent data build`).")
    if cfg.stage == "ma":
        train_lines = read_unit_corpus(cfg.train_file)
        if cfg.dev_file:
            dev_lines = read_unit_corpus(cfg.dev_file)
        else:
            train_lines, dev_lines = split_validation(train_lines, cfg.val_set_size, seed=cfg.seed)
        train_set = lm_blocks(train_lines, tokenizer, cfg.block_size)
        eval_set = lm_blocks(dev_lines, tokenizer, cfg.block_size) if dev_lines else []
        return train_set, eval_set, eval_set[0]["input_ids"][:16] if eval_set else []
    pairs = read_instruction_file(cfg.train_file, report)
    if cfg.dev_file:
        dev_pairs = read_instruction_file(cfg.dev_file, report)
    else:
        pairs, dev_pairs = split_validation(pairs, cfg.val_set_size, seed=cfg.seed)

    def tokenize(items: Sequence[tuple[str, str]], name: str) -> list[Example]:
        return instruction_examples(items, tokenizer, max_length=cfg.model_max_length,
                                    loss_on=cfg.loss_on, report=report,
                                    ids=[f"{name}:{i}" for i in range(len(items))])

    prompt: list[int] = []
    if dev_pairs:
        prefix, text = dev_pairs[0]
        full = tokenizer.encode(prefix + text)
        prompt = full[:prompt_length(tokenizer, prefix, text, full) or len(full) // 2]
    return tokenize(pairs, "train"), tokenize(dev_pairs, "dev"), prompt


# --- model -------------------------------------------------------------------------------


def _bf16(requested: bool) -> bool:
    if requested and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        logger.warning("bf16 requested but this GPU has no bf16 support: training in float32.")
        return False
    return requested


def _load_model(cfg: TrainConfig, folder: Path, bf16: bool) -> Any:
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    compute = torch.bfloat16 if bf16 else torch.float32
    kwargs: dict[str, Any] = {}
    if cfg.quantization is not None:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        ) if cfg.quantization == "nf4" else BitsAndBytesConfig(load_in_8bit=True)
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        kwargs["device_map"] = {"": local_rank} if torch.cuda.is_available() else "cpu"
    # full fine-tuning keeps float32 master weights (bf16 autocast), as the original
    dtype = torch.float32 if cfg.method == "full" else compute
    model = LlamaForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs)
    model.config.use_cache = False
    return model


def _add_lora(cfg: TrainConfig, model: Any, tokenizer: Any) -> Any:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.quantization is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    token_ids = None
    if cfg.train_new_tokens:
        vocab = tokenizer.get_vocab()
        token_ids = sorted(vocab[t] for t in ADDED_TOKENS if t in vocab)
        token_ids = {"embed_tokens": token_ids, "lm_head": token_ids}
    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules), bias="none", task_type="CAUSAL_LM",
        trainable_token_indices=token_ids,
    )
    return get_peft_model(model, lora)


# --- the Trainer ---------------------------------------------------------------------------


def _cpu_distributed_settings() -> dict[str, Any]:
    """Trainer settings for several CPU processes under torchrun / accelerate.

    Without a GPU, ``TrainingArguments`` treats each torchrun process as a lone run (every
    rank "main", all writing the same checkpoints) unless told to use the CPU with gloo.
    """
    import os

    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        return {"use_cpu": True, "ddp_backend": "gloo"}
    return {}


def _trainer_class() -> type:
    from transformers import Trainer
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

    class SpeechGPTTrainer(Trainer):
        """``Trainer`` whose checkpoints appear atomically and carry the release tokenizer files."""

        def __init__(self, *args: Any, tokenizer_source: Path, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._tokenizer_source = tokenizer_source
            self._staging: str | None = None

        def _get_output_dir(self, trial: Any) -> str:
            return self._staging or super()._get_output_dir(trial)

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            run_dir = Path(super()._get_output_dir(trial))
            staging = run_dir / ".staging"
            name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            if self.args.should_save:
                shutil.rmtree(staging, ignore_errors=True)  # what a killed save left
                staging.mkdir(parents=True)
            self.accelerator.wait_for_everyone()
            self._staging = str(staging)
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._staging = None
            self.accelerator.wait_for_everyone()
            if self.args.should_save:
                publish_directory(staging / name, run_dir / name)
                shutil.rmtree(staging, ignore_errors=True)
                rotate_checkpoints(output_dir=str(run_dir), save_total_limit=self.args.save_total_limit,
                                   best_model_checkpoint=self.state.best_model_checkpoint)
            self.accelerator.wait_for_everyone()

        def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
            super()._save(output_dir, state_dict)
            from peft import PeftModel

            target = Path(output_dir or self.args.output_dir)
            if not self.args.should_save:
                return
            if isinstance(self.model, PeftModel):
                # the collator's tokenizer, saved by the Trainer: an adapter needs none
                for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                    (target / name).unlink(missing_ok=True)
            else:
                copy_tokenizer_files(self._tokenizer_source, target)

        def export(self, target: Path) -> Path:
            """Save the model (or adapter) to ``target`` through a staging folder."""
            staging = target.with_name(f".{target.name}.staging")
            if self.args.should_save:
                shutil.rmtree(staging, ignore_errors=True)
            self.accelerator.wait_for_everyone()
            self.save_model(str(staging))
            self.accelerator.wait_for_everyone()
            if self.args.should_save:
                for extra in ("training_args.bin", "README.md"):
                    (staging / extra).unlink(missing_ok=True)
                publish_directory(staging, target)
            self.accelerator.wait_for_everyone()
            return target

    return SpeechGPTTrainer


def _sample_callback(tokenizer: Any, prompt: list[int], max_new_tokens: int, log_file: Path) -> Any:
    from transformers import TrainerCallback

    class GenerationSample(TrainerCallback):
        """After each evaluation, decode greedily from a fixed prompt and log the text."""

        def on_evaluate(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if not state.is_world_process_zero or model is None or args.fsdp:
                return  # under FSDP every rank would have to take part in generate
            was_training = model.training
            model.eval()
            try:
                device = next(model.parameters()).device
                with torch.no_grad():
                    out = model.generate(
                        input_ids=torch.tensor([prompt], device=device), max_new_tokens=max_new_tokens,
                        do_sample=False, pad_token_id=tokenizer.pad_token_id)
                text = tokenizer.decode(out[0, len(prompt):].tolist(), skip_special_tokens=True)
            finally:
                model.train(was_training)
            logger.info("step %d sample: %s", state.global_step, text)
            with log_file.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": state.global_step, "sample": text}, ensure_ascii=False) + "\n")

    return GenerationSample()


# --- the run -----------------------------------------------------------------------------


def _start_model(cfg: TrainConfig, out: Path) -> Path:
    """A SpeechGPT-format folder to start from (expanding a plain LLaMA into ``out/base``)."""
    if cfg.model is None:
        raise TrainingError(
            f"stage {cfg.stage}: give --model, the checkpoint to start from (for stage ma: a LLaMA "
            "folder in the transformers layout; its vocabulary is expanded first).")
    folder = resolve_dir(cfg.model, what="start model", allow_patterns=_MODEL_FILES)
    if has_speech_vocabulary(folder):
        return folder
    from accelerate import PartialState

    expanded = out / "base"
    with PartialState().main_process_first():  # one process expands, the others wait
        if not has_speech_vocabulary(expanded):
            logger.info("%s has no speech tokens: expanding its vocabulary into %s", folder, expanded)
            expand_vocabulary(folder, expanded)
    return expanded


def _finished_state(checkpoint: str, max_steps: int) -> Any:
    """The ``TrainerState`` of ``checkpoint`` if it already reached the run's last step, else ``None``.

    ``max_steps`` is the configured one; ``<= 0`` (a run by epochs) uses the total the
    Trainer computed and stored in the checkpoint.
    """
    from transformers import TrainerState

    file = Path(checkpoint) / "trainer_state.json"
    if not file.is_file():
        return None
    state = TrainerState.load_from_json(str(file))
    target = max_steps if max_steps > 0 else state.max_steps
    return state if target > 0 and state.global_step >= target else None


def train(cfg: TrainConfig, *, callbacks: Sequence[Any] = (), progress: bool = True) -> TrainOutcome:
    """Run (or resume) the training ``cfg`` describes; see the module documentation.

    Args:
        cfg: the run (:func:`~.config.load_config`); needs ``model``, ``train_file`` and
            ``output_dir``.
        callbacks: more ``transformers.TrainerCallback`` s.
        progress: show the Trainer's progress bar.

    Raises:
        TrainingError: missing model/data/output, or checkpoints in the way of a fresh run.
        DataError: unreadable data files, or no usable sample.
        CheckpointError, ModelNotFoundError: the start model cannot be loaded.
    """
    from transformers import DataCollatorForSeq2Seq, TrainingArguments, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    from speechgpt_agent.model import load_speech_tokenizer

    if cfg.output_dir is None:
        raise TrainingError("give --output-dir, the folder of the run.")
    out = Path(cfg.output_dir)
    ckpt_dir = out / "checkpoints"
    last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    if last is not None and not cfg.resume:
        raise TrainingError(f"{ckpt_dir} already holds checkpoints; resume (the default) or choose "
                            "another --output-dir.")
    bf16 = _bf16(cfg.bf16)
    set_seed(cfg.seed)
    base = _start_model(cfg, out)
    tokenizer, _ = load_speech_tokenizer(base)
    tokenizer.padding_side = "right"  # real tokens at positions 0.. in every row
    report = SkipReport(f"train {cfg.stage}")
    train_set, eval_set, sample_prompt = _examples(cfg, tokenizer, report)
    if report:
        logger.warning("%s (listed in %s)", report.summary(), out / "skipped.jsonl")
    if not train_set:
        raise TrainingError(f"no usable training sample in {cfg.train_file} ({report.summary()}).")
    settings: dict[str, Any] = {
        "output_dir": str(ckpt_dir),
        "per_device_train_batch_size": cfg.per_device_train_batch_size,
        "per_device_eval_batch_size": cfg.per_device_eval_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "num_train_epochs": cfg.num_train_epochs,
        "max_steps": cfg.max_steps,
        "learning_rate": cfg.learning_rate,
        "weight_decay": cfg.weight_decay,
        "warmup_steps": cfg.warmup_ratio,  # < 1: a fraction of the steps
        "lr_scheduler_type": cfg.lr_scheduler_type,
        "optim": cfg.optim,
        "bf16": bf16,
        "use_cpu": bf16 and not torch.cuda.is_available(),  # bf16 autocast on the CPU
        "activation_checkpointing": cfg.gradient_checkpointing,
        "logging_steps": cfg.logging_steps,
        "save_strategy": "steps",
        "save_steps": cfg.save_steps,
        "save_total_limit": cfg.save_total_limit,
        "eval_strategy": "steps" if eval_set else "no",
        "eval_steps": (cfg.eval_steps or cfg.save_steps) if eval_set else None,
        "seed": cfg.seed,
        "report_to": "none",
        "remove_unused_columns": False,
        "ddp_find_unused_parameters": False if cfg.method == "lora" else None,
        "dataloader_pin_memory": torch.cuda.is_available(),
        "disable_tqdm": not progress,
    }
    settings.update(_cpu_distributed_settings())
    settings.update(cfg.trainer_args)  # e.g. fsdp, deepspeed, report_to
    args = TrainingArguments(**settings)
    model = _load_model(cfg, base, bf16)
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        raise TrainingError(f"{base}: the model has fewer embedding rows than its tokenizer has tokens.")
    if cfg.method == "lora":
        model = _add_lora(cfg, model, tokenizer)

    callback_list = list(callbacks)
    if sample_prompt and cfg.sample_max_new_tokens > 0:
        callback_list.append(_sample_callback(tokenizer, sample_prompt, cfg.sample_max_new_tokens,
                                              out / "samples.jsonl"))
    trainer = _trainer_class()(
        model=model, args=args, train_dataset=train_set, eval_dataset=eval_set or None,
        data_collator=DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8, padding=True,
                                             return_tensors="pt"),
        callbacks=callback_list, tokenizer_source=base,
    )
    if args.should_save:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n", encoding="utf-8")
        report.write(out / "skipped.jsonl")
    finished = _finished_state(last, cfg.max_steps) if last is not None else None
    if finished is not None:
        # the run ended (a kill during the export): the Trainer would fast-forward into the
        # epoch and take one more step before it checks max_steps, so it is not asked to
        logger.info("%s already reached step %d of %d: exporting it without more training",
                    last, finished.global_step, finished.max_steps)
        trainer._load_from_checkpoint(last)
        trainer.state = finished
        losses = [h["loss"] for h in finished.log_history if isinstance(h.get("loss"), (int, float))]
        metrics = {"train_loss": float(losses[-1])} if losses else {}
    else:
        if last is not None:
            logger.info("resuming from %s", last)
        result = trainer.train(resume_from_checkpoint=last)
        metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
    if eval_set:
        final = [h for h in trainer.state.log_history
                 if "eval_loss" in h and h.get("step") == trainer.state.global_step]
        evaluation = final[-1] if final else trainer.evaluate()
        metrics.update({k: float(v) for k, v in evaluation.items()
                        if k.startswith("eval_") and isinstance(v, (int, float))})
    kind: Literal["model", "adapter"] = "adapter" if cfg.method == "lora" else "model"
    target = trainer.export(out / kind)
    if args.should_save:
        atomic_write_lines(out / "train_results.json", [json.dumps(
            {"output": str(target), "kind": kind, "base_model": str(base),
             "global_step": trainer.state.global_step, "metrics": metrics,
             "skipped": report.counts}, indent=2)])
    return TrainOutcome(target, kind, base, trainer.state.global_step, metrics, report)
