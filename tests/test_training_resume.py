"""A training process really killed mid-run (os._exit from a callback) resumes from its last
checkpoint: the step counter continues, and the result equals that of an uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from speechgpt_agent.testing.llm import make_tiny_speechgpt
from speechgpt_agent.training.builders import chain_of_modality_example
from speechgpt_agent.training.config import load_config
from speechgpt_agent.training.trainer import train

pytestmark = pytest.mark.slow  # two training subprocesses

# Run in a fresh interpreter: train with a callback that records every finished step and
# kills the process (no cleanup, like SIGKILL) when it reaches KILL_AT.
SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch
    from transformers import TrainerCallback
    from speechgpt_agent.training.config import load_config
    from speechgpt_agent.training.trainer import train

    torch.set_num_threads(1)
    settings, kill_at, steps_file = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

    class Recorder(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            with open(steps_file, "a") as f:
                f.write(f"{state.global_step}\\n")
            if state.global_step == kill_at:
                os._exit(3)

    train(load_config("com", **settings), callbacks=[Recorder()], progress=False)
""")


def _settings(model, data, out):
    return {"model": str(model), "train_file": str(data), "output_dir": str(out), "max_steps": 6,
            "save_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 1e-2, "bf16": False,
            "val_set_size": 0, "warmup_ratio": 0.0, "lr_scheduler_type": "cosine", "seed": 7}


def _run(settings, kill_at, steps_file):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(settings), str(kill_at), str(steps_file)],
                          check=False, capture_output=True, text=True, timeout=300, env=env)


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    model = make_tiny_speechgpt(tmp_path / "cm", dtype=torch.float32)
    samples = [chain_of_modality_example("t2t", question=f"Question {i}?", answer=f"Answer {i}.")
               for i in range(8)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(s) + "\n" for s in samples))
    out = tmp_path / "run"
    settings = _settings(model, data, out)

    first = _run(settings, kill_at=3, steps_file=tmp_path / "steps1.txt")
    assert first.returncode == 3, first.stderr[-2000:]
    # killed after step 3, before anything else was written: checkpoint-2 is the last one
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2"]
    assert not (out / "adapter").exists()
    assert (tmp_path / "steps1.txt").read_text().split() == ["1", "2", "3"]

    second = _run(settings, kill_at=-1, steps_file=tmp_path / "steps2.txt")
    assert second.returncode == 0, second.stderr[-2000:]
    assert (tmp_path / "steps2.txt").read_text().split() == ["3", "4", "5", "6"]  # from step 2 on
    state = json.loads((out / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    results = json.loads((out / "train_results.json").read_text())
    assert results["global_step"] == 6 and results["kind"] == "adapter"

    # the same run without a kill ends in the same adapter (data order, RNG and optimizer restored)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = train(load_config("com", **_settings(model, data, tmp_path / "reference")), progress=False)
    finally:
        torch.set_num_threads(threads)
    resumed = load_file(out / "adapter" / "adapter_model.safetensors")
    straight = load_file(reference.output / "adapter_model.safetensors")
    assert resumed.keys() == straight.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-4, atol=1e-5)


# Killed at the end of training, after the last checkpoint and before the export (kill_at 0).
END_SCRIPT = SCRIPT.replace("train(load_config", textwrap.dedent("""
    class KillAtEnd(TrainerCallback):
        def on_train_end(self, args, state, control, **kwargs):
            os._exit(4)

    extra = [KillAtEnd()] if kill_at == 0 else []
    train(load_config""")).replace("callbacks=[Recorder()]", "callbacks=[Recorder(), *extra]")


def test_run_killed_during_the_final_export_resumes_without_training_past_max_steps(tmp_path):
    model = make_tiny_speechgpt(tmp_path / "cm", dtype=torch.float32)
    samples = [chain_of_modality_example("t2t", question=f"Question {i}?", answer=f"Answer {i}.")
               for i in range(8)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(s) + "\n" for s in samples))
    out = tmp_path / "run"
    # 2 optimizer steps per epoch (4 batches, 2 accumulated): step 3 ends inside epoch 2, where
    # a resumed Trainer skips the trained batches and would take one more step
    settings = {**_settings(model, data, out), "max_steps": 3, "gradient_accumulation_steps": 2}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(kill_at, steps_file):
        return subprocess.run([sys.executable, "-c", END_SCRIPT, json.dumps(settings), str(kill_at),
                               str(steps_file)], check=False, capture_output=True, text=True,
                              timeout=300, env=env)

    first = run(0, tmp_path / "steps1.txt")
    assert first.returncode == 4, first.stderr[-2000:]
    assert (tmp_path / "steps1.txt").read_text().split() == ["1", "2", "3"]
    assert not (out / "adapter").exists()
    with_checkpoint = load_file(out / "checkpoints" / "checkpoint-3" / "adapter_model.safetensors")

    second = run(-1, tmp_path / "steps2.txt")
    assert second.returncode == 0, second.stderr[-2000:]
    steps2 = tmp_path / "steps2.txt"
    assert not steps2.exists() or steps2.read_text().split() == []  # no step past max_steps
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-3"]
    results = json.loads((out / "train_results.json").read_text())
    assert results["global_step"] == 3 and results["kind"] == "adapter"
    exported = load_file(out / "adapter" / "adapter_model.safetensors")
    assert exported.keys() == with_checkpoint.keys()
    for key in exported:  # the weights of the last step, exported as they were
        torch.testing.assert_close(exported[key], with_checkpoint[key], rtol=0, atol=0)
