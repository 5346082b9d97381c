"""The quantize reference and its dispatcher (the Triton kernel is tested in its own issue)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speechgpt_agent.kernels import merge_repeats, quantize, quantize_reference
from speechgpt_agent.kernels._dispatch import backend_setting, use_triton


@pytest.mark.parametrize("T,K,D", [(1, 1, 3), (37, 1000, 16), (513, 50, 768)])
def test_quantize_reference_is_nearest_centroid(T, K, D):
    g = torch.Generator().manual_seed(T * K)
    x = torch.randn(T, D, generator=g)
    c = torch.randn(K, D, generator=g)
    brute = torch.cdist(x.double(), c.double()).argmin(1)
    ids = quantize_reference(x, c, block_frames=64)
    # ties or fp32 rounding may pick an equally near centroid; compare distances
    d_ours = ((x.double() - c.double()[ids]) ** 2).sum(1)
    d_best = ((x.double() - c.double()[brute]) ** 2).sum(1)
    assert torch.allclose(d_ours, d_best, rtol=1e-5, atol=1e-5)
    assert ids.dtype == torch.long and ids.shape == (T,)


def test_quantize_blocking_does_not_change_result():
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(1000, 32, generator=g), torch.randn(100, 32, generator=g)
    assert torch.equal(quantize_reference(x, c, block_frames=7), quantize_reference(x, c, block_frames=4096))


def test_quantize_bf16_features():
    g = torch.Generator().manual_seed(1)
    x, c = torch.randn(65, 24, generator=g), torch.randn(10, 24, generator=g)
    ids = quantize(x.bfloat16(), c)
    assert torch.equal(ids, quantize(x.bfloat16().float(), c))


def test_quantize_rejects_bad_shapes():
    with pytest.raises(ValueError, match="features"):
        quantize(torch.zeros(3, 4), torch.zeros(5, 3))


@given(st.lists(st.integers(0, 4), max_size=60))
@settings(max_examples=100, deadline=None)
def test_merge_repeats_matches_run_lengths(ids):
    units, durations = merge_repeats(torch.tensor(ids, dtype=torch.long))
    expected_units, expected_durations = [], []
    for v in ids:  # the original merge_duplicates, written plainly
        if expected_units and expected_units[-1] == v:
            expected_durations[-1] += 1
        else:
            expected_units.append(v)
            expected_durations.append(1)
    assert units.tolist() == expected_units
    assert durations.tolist() == expected_durations
    assert int(durations.sum()) == len(ids)


def test_merge_repeats_rejects_2d():
    with pytest.raises(ValueError, match="1-D"):
        merge_repeats(torch.zeros(2, 2, dtype=torch.long))


def test_dispatch_setting(monkeypatch):
    monkeypatch.setenv("SPEECHGPT_KERNELS", "torch")
    assert backend_setting() == "torch"
    assert use_triton(torch.zeros(1)) is False
    monkeypatch.setenv("SPEECHGPT_KERNELS", "bogus")
    with pytest.raises(ValueError, match="SPEECHGPT_KERNELS"):
        backend_setting()
    monkeypatch.setenv("SPEECHGPT_KERNELS", "auto")
    # CPU tensors always take the reference under auto
    assert use_triton(torch.zeros(1)) is False
    monkeypatch.setenv("SPEECHGPT_KERNELS", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        use_triton(torch.zeros(1))


def test_quantize_agrees_with_numpy_formula_of_original():
    # SpeechGPT's ApplyKmeans numpy branch: |x|^2 - 2 x C + |C|^2, argmin
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 12)).astype(np.float32)
    c = rng.standard_normal((40, 12)).astype(np.float32)
    C = c.T
    dist = (x**2).sum(1, keepdims=True) - 2 * x @ C + (C**2).sum(0, keepdims=True)
    assert quantize(torch.from_numpy(x), torch.from_numpy(c)).numpy().tolist() == dist.argmin(1).tolist()
