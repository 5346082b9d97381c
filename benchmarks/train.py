"""Throughput and peak memory of a stage-3 (chain-of-modality) LoRA training step:
QLoRA on the NF4 model vs LoRA on the bf16 model, same model, data and batch, in one run.

Each variant trains in its own process (so peak memories do not mix) through the real path:
a model folder in the release layout, ``speechgpt_agent.training.train`` with the ``com``
config, LoRA r 8 on q_proj,v_proj. The model is a small random LLaMA (sizes below); speed
and memory do not depend on the weights.

    .venv/bin/python benchmarks/train.py                 # table + benchmarks/results/train.json
    .venv/bin/python benchmarks/train.py --hidden 1024 --layers 8 --seq-len 512

tokens/s counts the tokens of the batches (padding excluded) over the timed optimizer steps
(after ``--warmup`` steps). Peak memory: on a GPU the CUDA allocator's peak; on the CPU the
growth of the process's peak resident set (VmHWM) from before the model was loaded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, print_table, write_json

VARIANTS = {"qlora-nf4": "nf4", "lora-bf16": None}


def _vm_hwm_mb() -> float:
    """Peak resident set of this process in MiB (Linux), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker(args: argparse.Namespace) -> dict:
    """Train one variant for warmup + steps optimizer steps and measure them."""
    from transformers import TrainerCallback

    from speechgpt_agent.training.config import load_config
    from speechgpt_agent.training.trainer import train

    torch.set_num_threads(args.threads)
    root = Path(args.root)
    cuda = torch.cuda.is_available()
    base_mb = _vm_hwm_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            if state.global_step > args.warmup:
                times.append(time.perf_counter() - self.t0)

    per_sample = json.loads((root / "tokens.json").read_text())
    cfg = load_config(
        "com", model=str(root / "model"), train_file=str(root / "train.jsonl"),
        output_dir=str(root / f"run-{args.worker}"), quantization=VARIANTS[args.worker], bf16=True,
        max_steps=args.warmup + args.steps, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1, save_steps=10_000, val_set_size=0, warmup_ratio=0.0,
        gradient_checkpointing=args.gradient_checkpointing, model_max_length=per_sample + 8,
        logging_steps=args.warmup + args.steps)
    outcome = train(cfg, callbacks=[Timer()], progress=False)
    tokens = per_sample * args.batch_size
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _vm_hwm_mb() - base_mb
    step_s = statistics.median(times)
    return {"variant": args.worker, "quantization": VARIANTS[args.worker] or "none (bf16)",
            "device": "cuda" if cuda else "cpu", "batch": args.batch_size, "seq_len": per_sample,
            "step_s": step_s, "tokens_per_s": tokens / step_s, "peak_mem_mib": peak,
            "train_loss": outcome.metrics.get("train_loss")}


def _prepare(root: Path, args: argparse.Namespace) -> None:
    """The model folder (release layout) and a com training file of fixed-length samples."""
    import random

    from speechgpt_agent.model import load_speech_tokenizer
    from speechgpt_agent.testing.llm import make_tiny_speechgpt
    from speechgpt_agent.training.builders import chain_of_modality_example
    from speechgpt_agent.training.data import instruction_examples
    from speechgpt_agent.training.records import SkipReport

    model = make_tiny_speechgpt(root / "model", hidden_size=args.hidden, layers=args.layers,
                                heads=args.heads, intermediate_size=args.intermediate,
                                dtype=torch.bfloat16, safetensors=True)
    tokenizer, _ = load_speech_tokenizer(model)
    rng = random.Random(0)
    n = 8
    while True:  # answer units until the sample has seq_len tokens
        sample = chain_of_modality_example(
            "s2s", question="What is a bad term for poop?", answer="A bad term for poop is excrement.",
            question_units=[rng.randrange(1000) for _ in range(n)],
            answer_units=[rng.randrange(1000) for _ in range(n)])
        (ex,) = instruction_examples([(sample["prefix"], sample["plain_text"])], tokenizer,
                                     max_length=10**6, report=SkipReport("bench"))
        if len(ex["input_ids"]) >= args.seq_len:
            break
        n += max(1, (args.seq_len - len(ex["input_ids"])) // 2)
    (root / "train.jsonl").write_text((json.dumps(sample) + "\n") * max(64, args.batch_size * 4))
    (root / "tokens.json").write_text(json.dumps(len(ex["input_ids"])))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--intermediate", type=int, default=1376)
    parser.add_argument("--seq-len", type=int, default=384, help="tokens per sample (at least the system prefix, about 210)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "train.json"))
    parser.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(_worker(args)))
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        _prepare(Path(tmp), args)
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--worker", variant, "--root", tmp,
                   *(argv if argv is not None else sys.argv[1:])]
            done = subprocess.run(cmd, check=False, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return 1
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print_table(rows, ["variant", "quantization", "device", "batch", "seq_len", "step_s", "tokens_per_s",
                       "peak_mem_mib", "train_loss"])
    path = write_json(args.out, {
        "benchmark": "train", "environment": environment(),
        "model": {"hidden": args.hidden, "layers": args.layers, "heads": args.heads,
                  "intermediate": args.intermediate, "vocab": "tiny sentencepiece + 1006"},
        "lora": {"r": 8, "alpha": 16, "targets": ["q_proj", "v_proj"]},
        "steps": args.steps, "warmup": args.warmup, "worker_threads": args.threads,
        "gradient_checkpointing": args.gradient_checkpointing,
        "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
