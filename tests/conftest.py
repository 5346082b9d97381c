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
