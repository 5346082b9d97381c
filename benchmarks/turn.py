"""One spoken turn: streaming vs the original batch shape, and NF4 vs bf16 memory.

For one spoken question and a fixed seed, on the same loaded model in the same run:

* streaming (this package): text deltas as tokens arrive, audio chunks from the streaming
  vocoder while generation continues;
* batch (the original SpeechGPT shape): generate the whole answer, then vocode it all.

The answer is steered to a fixed chain-of-modality answer with enough units for >= 5 s of
speech (a random-weight model would otherwise answer at random lengths). The LLM is a
LLaMA of 8 x 1024 layers (random weights, SpeechGPT vocabulary layout) loaded in NF4 on
this CPU; the vocoder has the released sizes (512 channels) with random weights.

Its sentencepiece tokenizer is trained on English text (the meta instruction, the task
templates, everyday words) so that, like LLaMA's 32000-piece vocabulary, it writes common
words as one piece: the prompt and the answer's text then take about as many tokens as with
the released model (the counts are in the JSON). A tokenizer trained on five sentences
spelled "twelve" letter by letter and doubled the text part of every answer.

Memory: NF4 vs bf16 weights of that LLM, whose linear layers hold >= 90% of the parameters
(as in LLaMA-7B, 96%), measured as the loaded model's footprint.

    .venv/bin/python benchmarks/turn.py            # table + benchmarks/results/turn.json

Targets (issue 3): first audio >= 5x sooner than batch on an answer of >= 5 s of speech;
NF4 <= 0.35x of bf16.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, print_table, write_json

from speechgpt_agent.model import GenerationOptions, SpeechGPTModel
from speechgpt_agent.pipeline import SpeechGPT, time_turn
from speechgpt_agent.testing.llm import make_tiny_speechgpt
from speechgpt_agent.testing.model_set import make_tiny_model_set
from speechgpt_agent.testing.steer import ForceAnswer, answer_ids
from speechgpt_agent.testing.vocoder import make_fairseq_codehifigan
from speechgpt_agent.units import SpeechTokenizer
from speechgpt_agent.vocoder import UnitVocoder

QUESTION = Path(__file__).resolve().parent.parent / "tests" / "data" / "question_22k_stereo.flac"


ANSWER_TEXT = "what is seven plus five; [ta] Seven plus five is twelve.; [ua] "
"""The text part of the steered answer (transcript and text answer)."""

EVERYDAY_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen twenty "
    "what is are was the a an of to in and or for with on at by from this that it you I we "
    "plus minus times how many much where when who why which can could would should say "
    "hello thank please answer question speech text audio speak listen read write hear "
    "today weather time day week year good great yes no"
)
"""Common words, one piece each in LLaMA's vocabulary (space-separated)."""


def english_corpus() -> list[str]:
    """Text the benchmark's tokenizer is trained on (LLaMA's vocabulary covers all of it)."""
    from speechgpt_agent.prompt import META_INSTRUCTION
    from speechgpt_agent.training.builders import ASR_TEMPLATES, TTS_TEMPLATES

    words = EVERYDAY_WORDS.split()
    words += [w.capitalize() for w in words]
    return ([META_INSTRUCTION, *ASR_TEMPLATES, *TTS_TEMPLATES, ANSWER_TEXT] + words) * 4


def build_models(cache: Path) -> tuple[Path, Path, Path]:
    llm = cache / "llm-8x1024-en"
    if not (llm / "config.json").is_file():
        make_tiny_speechgpt(llm, hidden_size=1024, layers=8, heads=16, intermediate_size=2816,
                            dtype=torch.bfloat16, safetensors=True, corpus=english_corpus(),
                            base_vocab_size=1000)
    vocoder = cache / "vocoder-512"
    if not (vocoder / "config.json").is_file():
        make_fairseq_codehifigan(vocoder, upsample_initial_channel=512, embedding_dim=128)
    speech = make_tiny_model_set(cache / "set").speech_tokenizer
    return llm, vocoder, speech


def linear_share(model: SpeechGPTModel) -> float:
    lin = sum(m.weight.numel() for m in model.model.modules() if isinstance(m, torch.nn.Linear))
    emb = model.model.get_input_embeddings().weight.numel()
    norm = sum(p.numel() for n, p in model.model.named_parameters() if "norm" in n)
    return lin / (lin + emb + norm)


def run_turn(runtime: SpeechGPT, lm: SpeechGPTModel, n_units: int) -> list[dict]:
    """Streaming and batch timings of one steered answer with ``n_units`` units."""
    rng = np.random.default_rng(n_units)
    units = rng.integers(0, 1000, size=n_units).tolist()
    answer = ANSWER_TEXT + "<sosp>" + "".join(f"<{u}>" for u in units) + "<eosp><eoa>"
    ids = answer_ids(lm, answer)
    opts = GenerationOptions(max_new_tokens=len(ids) + 8)

    def steer() -> list[ForceAnswer]:
        return [ForceAnswer(ids, end_id=lm.eos_id)]

    # warm-up (allocations, first-call overheads)
    runtime.chat(audio=QUESTION, seed=0, options=opts, logits_processors=steer())

    streaming = time_turn(lambda: runtime.stream(audio=QUESTION, seed=0, options=opts, logits_processors=steer()))
    streamed, first_text, first_audio = streaming.response, streaming.first_text_s, streaming.first_audio_s
    stream_total = streaming.total_s

    t0 = time.perf_counter()
    generating = time_turn(lambda: runtime.stream(audio=QUESTION, seed=0, options=opts, output="text",
                                                  logits_processors=steer()))
    generated, first_text_b = generating.response, generating.first_text_s
    batch_audio = runtime.vocoder.synthesize(list(generated.units))
    batch_total = time.perf_counter() - t0
    assert generated.units == streamed.units
    diff = float(np.max(np.abs(batch_audio - streamed.audio)))
    assert diff <= 1e-4, f"streamed audio differs from batch audio by {diff}"
    return [
        {"answer_units": n_units, "mode": "streaming", "first_text_s": first_text, "first_audio_s": first_audio,
         "total_s": stream_total, "speech_s": streamed.duration, "speedup": batch_total / first_audio,
         "max_abs_diff": diff, "prompt_tokens": streamed.usage.prompt_tokens,
         "answer_text_tokens": len(lm.tokenizer.tokenize(ANSWER_TEXT))},
        {"answer_units": n_units, "mode": "batch (generate, then vocode)", "first_text_s": first_text_b,
         "first_audio_s": batch_total, "total_s": batch_total, "speech_s": len(batch_audio) / 16000, "speedup": 1.0},
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "speechgpt-agent", "bench"))
    parser.add_argument("--answer-units", type=int, nargs="+", default=[140, 220, 440],
                        help="units in the steered answer, one run each (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (bitsandbytes CPU NF4 prefers 1)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "turn.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    llm_dir, voc_dir, speech_dir = build_models(Path(args.cache))
    lm = SpeechGPTModel.from_pretrained(llm_dir, None, quantization="nf4", progress=False)
    runtime = SpeechGPT(lm, SpeechTokenizer.from_pretrained(speech_dir), UnitVocoder.from_pretrained(voc_dir))

    rows = []
    for n_units in args.answer_units:
        rows += run_turn(runtime, lm, n_units)
    print_table(rows, ["answer_units", "mode", "first_text_s", "first_audio_s", "total_s", "speech_s", "speedup"])
    best = [r for r in rows if r["mode"] == "streaming" and r["speech_s"] >= 5]
    speedup = min((r["speedup"] for r in best), default=0.0)

    del runtime
    nf4 = lm.memory_footprint()
    share = linear_share(lm)
    del lm
    bf16_model = SpeechGPTModel.from_pretrained(llm_dir, None, quantization=None, dtype=torch.bfloat16, progress=False)
    bf16 = bf16_model.memory_footprint()
    mem_rows = [{"weights": "bf16", "bytes": bf16, "ratio": 1.0},
                {"weights": "nf4 (double quant)", "bytes": nf4, "ratio": nf4 / bf16}]
    print()
    print_table(mem_rows, ["weights", "bytes", "ratio"])
    print(f"linear layers hold {share:.1%} of the parameters")

    targets = {
        "first_audio_speedup": {"value": speedup, "target": ">= 5 on every answer of >= 5 s of speech",
                                "met": bool(best) and speedup >= 5},
        "nf4_over_bf16": {"value": nf4 / bf16, "target": "<= 0.35 with linear share >= 0.9",
                          "met": nf4 / bf16 <= 0.35 and share >= 0.9},
    }
    print(f"\ntargets: {targets}")
    path = write_json(args.out, {"benchmark": "turn", "environment": environment(), "rows": rows,
                                 "memory": mem_rows, "linear_share": share, "targets": targets})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
