"""Shared fixtures: the committed speech clips and a tiny model set in the released formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def clips() -> dict[str, dict]:
    """``{file name: {"path", "text", "sample_rate", ...}}`` of the espeak-ng clips."""
    meta = json.loads((DATA / "clips.json").read_text())
    return {name: {**info, "path": DATA / name} for name, info in meta.items()}


@pytest.fixture(scope="session")
def tiny_model_set(tmp_path_factory):
    """LLM + LoRA adapter + mHuBERT/k-means + CodeHiFiGAN, tiny and random, released layouts."""
    from speechgpt_agent.testing.model_set import make_tiny_model_set

    return make_tiny_model_set(tmp_path_factory.mktemp("model_set"))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (restored after it).

    bitsandbytes' CPU kernels and tiny matmuls are far slower with 2 OpenMP threads on a
    shared 2-core box: spin-waiting between threads costs 10x, not 2x.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def run_interpreted(tmp_path):
    """Run the tests of one file again in a fresh ``TRITON_INTERPRET=1`` pytest process.

    Triton reads ``TRITON_INTERPRET`` only when it is imported, so interpreted kernel tests
    need their own process. The child's working folder is outside the repository: our
    ``kernels/`` folder must never be importable as a top-level module. Asserts that the
    child passed and really interpreted (its interpreter-only tests were not skipped).
    """
    import os
    import subprocess
    import sys

    def run(test_file: str) -> None:
        root = Path(__file__).resolve().parents[1]
        env = {k: v for k, v in os.environ.items() if k != "SPEECHGPT_KERNELS"}
        env["TRITON_INTERPRET"] = "1"
        config = ["-c", str(root / "pyproject.toml"), "--rootdir", str(root)] \
            if (root / "pyproject.toml").is_file() else []
        child = subprocess.run(
            [sys.executable, "-c", "import sys, pytest; sys.exit(pytest.main())", test_file, *config, "-rs"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False,
        )
        report = child.stdout[-6000:] + child.stderr[-3000:]
        assert child.returncode == 0, report
        assert " passed" in report and " failed" not in report, report
        assert "fresh TRITON_INTERPRET=1 process" not in report, report  # the child did interpret

    return run
