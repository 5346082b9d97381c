"""`speechgpt-agent train` under torchrun: two CPU processes with DDP (gloo)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from speechgpt_agent.training.builders import chain_of_modality_example


@pytest.mark.slow
def test_torchrun_two_processes_train_one_adapter(tiny_model_set, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        torchrun = shutil.which("torchrun")
    assert torchrun, "torchrun (installed with torch) not found"
    sample = chain_of_modality_example("s2s", question="What is a bad term for poop?", answer="Excrement.",
                                       question_units=list(range(10, 18)), answer_units=list(range(20, 40)))
    data = tmp_path / "train.jsonl"
    data.write_text((json.dumps(sample) + "\n") * 8)
    out = tmp_path / "run"
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", "29517", "-m", "speechgpt_agent.cli", "train",
         "--stage", "com", "--model", str(tiny_model_set.model), "--train-file", str(data),
         "--output-dir", str(out), "--max-steps", "3", "--no-bf16", "--val-set-size", "0",
         "--per-device-train-batch-size", "2", "--sample-max-new-tokens", "0", "--no-progress",
         "--trainer-arg", "save_steps=3"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # a real DDP run: both ranks joined one run, reported once, wrote one set of checkpoints
    assert proc.stdout.count("wrote ") == 1
    # the Trainer logs on the main process only when it really runs distributed
    assert proc.stdout.count("'loss'") == 3, proc.stdout
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint-3"]
    state = json.loads((out / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert (out / "adapter" / "adapter_config.json").is_file()
