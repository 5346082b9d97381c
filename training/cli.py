"""The ``speechgpt-agent train`` and ``speechgpt-agent data`` commands.

:func:`add_train_parser` and :func:`add_data_parser` register them on the main parser's
subparsers; each sets ``func(args) -> int``. Heavy imports happen when a command runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_data_parser", "add_train_parser"]

_TRAIN_EPILOG = """\
Outputs: OUTPUT_DIR/checkpoints/checkpoint-N (resumed automatically by a rerun), then
OUTPUT_DIR/model (full fine-tuning: SpeechGPTChat(model=OUTPUT_DIR/model, adapter=None))
or OUTPUT_DIR/adapter (LoRA: SpeechGPTChat(model=BASE, adapter=OUTPUT_DIR/adapter)).

Several GPUs or nodes: launch the same command with torchrun or accelerate, e.g.
  torchrun --nproc_per_node 8 -m speechgpt_agent.cli train --stage cm ...
  torchrun --nnodes 2 --node_rank $RANK --master_addr $ADDR --nproc_per_node 8 \\
      -m speechgpt_agent.cli train --stage cm ... \\
      --trainer-arg fsdp='"full_shard auto_wrap"' \\
      --trainer-arg fsdp_config='{"transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]}'
  accelerate launch --config_file fsdp.yaml -m speechgpt_agent.cli train --stage ma ...
(the original recipe trained stages 1 and 2 with FSDP full_shard on 8 GPUs per node).
One GPU: --method lora --quantization nf4 (QLoRA) --gradient-checkpointing.
"""


# --- train -------------------------------------------------------------------------------


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}.")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``train``: run (or resume) one stage of the SpeechGPT recipe."""
    p = subparsers.add_parser(
        "train",
        help="train a stage: ma (units LM), cm (cross-modal), com (chain-of-modality LoRA)",
        description="Train one stage of SpeechGPT with the original recipe's hyper-parameters "
        "(training/configs/STAGE.json), overridable by --config and by flags. --stage expand only "
        "adds the speech tokens to a plain LLaMA (--model) and saves it to OUTPUT_DIR/base.",
        epilog=_TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--stage", required=True, choices=["ma", "cm", "com", "expand"])
    p.add_argument("--model", help="start checkpoint: folder or hub id (a SpeechGPT model, or a plain "
                   "LLaMA whose vocabulary is expanded first); default per stage")
    p.add_argument("--train-file", help="train.txt (ma) or train.jsonl (cm, com) from `data build`")
    p.add_argument("--dev-file", help="held-out file of the same kind (default: --val-set-size samples "
                   "of the training file)")
    p.add_argument("--output-dir", required=True, help="folder of the run")
    p.add_argument("--config", help="JSON file overriding the stage defaults")
    g = p.add_argument_group("method")
    g.add_argument("--method", choices=["full", "lora"])
    g.add_argument("--quantization", choices=["none", "nf4", "int8"],
                   help="load the base in 4 bits (QLoRA) or 8 bits; LoRA only")
    g.add_argument("--lora-r", type=int)
    g.add_argument("--lora-alpha", type=int)
    g.add_argument("--lora-dropout", type=float)
    g.add_argument("--lora-target-modules", type=lambda s: [m for m in s.split(",") if m],
                   help="comma-separated module names (default q_proj,v_proj)")
    g.add_argument("--train-new-tokens", action=argparse.BooleanOptionalAction,
                   help="with LoRA, also train the speech-token rows of the embeddings and LM head")
    g = p.add_argument_group("data")
    g.add_argument("--block-size", type=int, help="ma: tokens per sequence")
    g.add_argument("--model-max-length", type=int, help="cm/com: longest sample in tokens")
    g.add_argument("--loss-on", choices=["plain_text", "response"],
                   help="cm/com: loss on everything after the system prefix (original) or on the "
                   "response only")
    g.add_argument("--val-set-size", type=float, help="samples held out (a fraction when < 1)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--learning-rate", type=float)
    g.add_argument("--num-train-epochs", type=float)
    g.add_argument("--max-steps", type=int, help="> 0 overrides the epochs")
    g.add_argument("--per-device-train-batch-size", type=int)
    g.add_argument("--per-device-eval-batch-size", type=int)
    g.add_argument("--gradient-accumulation-steps", type=int)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--warmup-ratio", type=float)
    g.add_argument("--lr-scheduler-type")
    g.add_argument("--bf16", action=argparse.BooleanOptionalAction)
    g.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction)
    g.add_argument("--seed", type=int)
    g = p.add_argument_group("bookkeeping")
    g.add_argument("--logging-steps", type=int)
    g.add_argument("--save-steps", type=int)
    g.add_argument("--save-total-limit", type=int)
    g.add_argument("--eval-steps", type=int)
    g.add_argument("--sample-max-new-tokens", type=int, help="length of the logged generation sample")
    g.add_argument("--resume", action=argparse.BooleanOptionalAction,
                   help="continue from the last checkpoint in OUTPUT_DIR (default: yes)")
    g.add_argument("--trainer-arg", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="another transformers TrainingArguments field (VALUE parsed as JSON when it can be)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)
    return p


_OVERRIDES = (
    "model", "train_file", "dev_file", "output_dir", "method", "lora_r", "lora_alpha",
    "lora_dropout", "lora_target_modules", "train_new_tokens", "block_size", "model_max_length",
    "loss_on", "val_set_size", "learning_rate", "num_train_epochs", "max_steps",
    "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
    "weight_decay", "warmup_ratio", "lr_scheduler_type", "bf16", "gradient_checkpointing", "seed",
    "logging_steps", "save_steps", "save_total_limit", "eval_steps", "sample_max_new_tokens", "resume",
)


def _setup_logging() -> None:
    log = logging.getLogger("speechgpt_agent.training")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)


def _cmd_train(args: argparse.Namespace) -> int:
    _setup_logging()
    if args.stage == "expand":
        from .vocab import expand_vocabulary

        if args.model is None:
            from .trainer import TrainingError

            raise TrainingError("--stage expand needs --model, a LLaMA folder or hub id.")
        out = expand_vocabulary(args.model, Path(args.output_dir) / "base")
        print(f"wrote {out}: train it with --stage ma --model {out}")
        return 0

    from .config import load_config
    from .trainer import train

    overrides = {name: getattr(args, name) for name in _OVERRIDES}
    if args.quantization is not None:
        overrides["quantization"] = None if args.quantization == "none" else args.quantization
    if args.trainer_arg:
        overrides["trainer_args"] = dict(args.trainer_arg)
    cfg = load_config(args.stage, args.config, **overrides)
    if args.quantization == "none":
        cfg = cfg.replace(quantization=None)
    outcome = train(cfg, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) != 0:  # one report per run, not one per process
        return 0
    if outcome.kind == "model":
        usage = f"SpeechGPTChat(model={str(outcome.output)!r}, adapter=None)"
    else:
        usage = f"SpeechGPTChat(model={str(outcome.base_model)!r}, adapter={str(outcome.output)!r})"
    print(f"wrote {outcome.output} after {outcome.global_step} steps; load it with {usage}")
    if outcome.skipped:
        print(outcome.skipped.summary(), file=sys.stderr)
    return 0


# --- data --------------------------------------------------------------------------------


def add_data_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``data units|label|build``: audio -> units -> SpeechInstruct training files."""
    p = subparsers.add_parser(
        "data", help="build training data: units, label, build",
        description="Turn audio into training data: `units` (audio -> speech units), `label` "
        "(transcribe clips without transcripts), `build` (stage-1 corpus, stage-2/3 "
        "instructions in the original SpeechInstruct format). Bad records are skipped, "
        "counted and listed in a .skipped.jsonl file beside the output.",
    )
    sub = p.add_subparsers(dest="data_command", metavar="STEP", required=True)

    u = sub.add_parser("units", help="audio folder or manifest -> unit JSON lines (resumable, sharded)")
    u.add_argument("source", help="folder of audio files, or JSON-lines manifest ({'audio', 'text'?, 'id'?})")
    u.add_argument("-o", "--output", required=True, help="output .jsonl (sharded runs: OUTPUT.i-of-n.jsonl)")
    u.add_argument("--model", default="voidful/mhubert-base", help="HuBERT folder or hub id (default: %(default)s)")
    u.add_argument("--kmeans", help="k-means file or folder (default: the one in --model)")
    u.add_argument("--trust-pickle", action="store_true", help="allow the upstream joblib k-means pickle")
    u.add_argument("--layer", type=int, default=11)
    u.add_argument("--device", help="torch device (default: cuda:LOCAL_RANK when available, else cpu)")
    u.add_argument("--batch-size", type=int, default=8, help="clips decoded ahead of the model")
    u.add_argument("--shard", help="'i/n': this process takes clips i, i+n, ...; 'auto': torchrun's RANK/WORLD_SIZE")
    u.add_argument("--max-seconds", type=float, default=600.0, help="skip longer clips")
    u.add_argument("--no-progress", action="store_true")
    u.set_defaults(func=_cmd_units)

    la = sub.add_parser("label", help="transcribe clips without transcripts (faster-whisper) -> manifest")
    la.add_argument("source", help="folder of audio files, or JSON-lines manifest")
    la.add_argument("-o", "--output", required=True, help="output manifest .jsonl")
    la.add_argument("--whisper-model", default=None, help="faster-whisper size, hub id or folder (default: large-v3)")
    la.add_argument("--language", help="language code (default: detected per clip)")
    la.add_argument("--compute-type", default="default", help="CTranslate2 compute type (int8, float16, ...)")
    la.add_argument("--device", default="auto", help="auto, cpu or cuda")
    la.add_argument("--beam-size", type=int, default=5)
    la.add_argument("--cpu-threads", type=int, default=0)
    la.add_argument("--shard", help="'i/n' or 'auto', as for units")
    la.add_argument("--max-seconds", type=float, default=600.0, help="skip longer clips")
    la.add_argument("--vad-filter", action="store_true", help="drop non-speech with Silero VAD first")
    la.add_argument("--no-progress", action="store_true")
    la.set_defaults(func=_cmd_label)

    b = sub.add_parser("build", help="units -> stage-1 corpus or stage-2/3 instruction files")
    b.add_argument("stage", choices=["ma", "cm", "com"])
    b.add_argument("inputs", nargs="+", help="ma/cm: unit .jsonl files from `data units` (shards too); "
                   "com: dialogue .jsonl files ({'question', 'answer', 'question_audio'?, 'answer_audio'?})")
    b.add_argument("-o", "--output-dir", required=True)
    b.add_argument("--units", nargs="+", default=[], help="com: unit .jsonl files that hold the dialogues' audio")
    b.add_argument("--dev-fraction", type=float, help="share held out for dev (default: 0.01 for ma, 0 otherwise)")
    b.add_argument("--max-units", type=int, help="skip records with more units")
    b.add_argument("--directions", default="asr,tts", help="cm: comma-separated asr,tts")
    b.add_argument("--formats", default="s2s,s2t,t2s,t2t", help="com: comma-separated s2s,s2t,t2s,t2t")
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=_cmd_build)
    return p


def _items_for_shard(source: str, shard: str | None, output: str) -> tuple[list[Any], Path, Any]:
    from .manifest import read_audio_items
    from .records import SkipReport
    from .unit_extraction import parse_shard, shard_items, shard_output

    report = SkipReport("manifest")
    items = read_audio_items(source, report)
    index, count = parse_shard(shard)
    return shard_items(items, index, count), shard_output(output, index, count), report


def _finish(step_report: Any, manifest_report: Any, output: Path) -> int:
    from .records import skipped_path

    manifest_report.extend(step_report)
    manifest_report.step = step_report.step
    manifest_report.write(skipped_path(output))
    print(f"wrote {output}; {manifest_report.summary()}", file=sys.stderr)
    return 0


def _cmd_units(args: argparse.Namespace) -> int:
    import torch

    from speechgpt_agent.units import SpeechTokenizer

    from .unit_extraction import extract_units

    items, output, report = _items_for_shard(args.source, args.shard, args.output)
    device = args.device
    if device is None and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    tokenizer = SpeechTokenizer.from_pretrained(
        args.model, kmeans=args.kmeans, layer=args.layer, device=device, trust_pickle=args.trust_pickle)
    step = extract_units(items, tokenizer, output, batch_size=args.batch_size,
                         max_seconds=args.max_seconds, progress=not args.no_progress)
    return _finish(step, report, output)


def _cmd_label(args: argparse.Namespace) -> int:
    from .label import DEFAULT_WHISPER, WhisperOptions, label_items, load_whisper

    items, output, report = _items_for_shard(args.source, args.shard, args.output)
    options = WhisperOptions(
        model=args.whisper_model or DEFAULT_WHISPER, language=args.language,
        compute_type=args.compute_type, device=args.device,
        device_index=int(os.environ.get("LOCAL_RANK", "0")), beam_size=args.beam_size,
        cpu_threads=args.cpu_threads)
    model = load_whisper(options)
    step = label_items(items, output, model, language=args.language, beam_size=args.beam_size,
                       max_seconds=args.max_seconds, progress=not args.no_progress,
                       vad_filter=args.vad_filter)
    return _finish(step, report, output)


def _cmd_build(args: argparse.Namespace) -> int:
    from . import builders
    from .records import SkipReport

    report = SkipReport(f"build {args.stage}")
    dev = args.dev_fraction if args.dev_fraction is not None else (0.01 if args.stage == "ma" else 0.0)
    common = {"dev_fraction": dev, "max_units": args.max_units, "seed": args.seed}
    if args.stage in ("ma", "cm"):
        records = builders.read_unit_records(args.inputs, report)
        if args.stage == "ma":
            result = builders.build_unit_corpus(records, args.output_dir, report=report, **common)
        else:
            directions = [d.strip() for d in args.directions.split(",") if d.strip()]
            result = builders.build_cross_modal(records, args.output_dir, directions=directions,
                                                report=report, **common)
    else:
        index = builders.unit_index(builders.read_unit_records(args.units, report))
        dialogues = [d for path in args.inputs for d in builders.read_dialogues(path, report, index)]
        formats = [f.strip() for f in args.formats.split(",") if f.strip()]
        result = builders.build_chain_of_modality(dialogues, args.output_dir, formats=formats,
                                                  report=report, **common)
    dev_note = f" and {result.dev_count} to {result.dev}" if result.dev else ""
    print(f"wrote {result.train_count} samples to {result.train}{dev_note}; {report.summary()}",
          file=sys.stderr)
    if result.dev:  # as the original scripts did: without it, train holds out val_set_size more
        print(f"train on them with: speechgpt-agent train --stage {args.stage} --train-file {result.train} "
              f"--dev-file {result.dev} ...", file=sys.stderr)
    return 0
