"""The unit-embedding reference (embed + repeat by duration + channels-first) and its dispatcher."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speechgpt_agent.kernels import unit_embedding, unit_embedding_reference


def _naive(ids: torch.Tensor, durations: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    rows = [
        torch.repeat_interleave(weight[ids[b]], durations[b], dim=0).T for b in range(ids.shape[0])
    ]  # [C, T_b]
    total = max((r.shape[1] for r in rows), default=0)
    out = torch.zeros(ids.shape[0], weight.shape[1], total, dtype=weight.dtype)
    for b, row in enumerate(rows):
        out[b, :, : row.shape[1]] = row
    return out


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 4),
    length=st.integers(0, 13),
    channels=st.integers(1, 9),
    vocab=st.integers(1, 50),
    seed=st.integers(0, 2**16),
)
def test_reference_equals_embedding_repeat_transpose(batch, length, channels, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    durations = torch.randint(0, 5, (batch, length), generator=g)  # zeros skip a unit
    weight = torch.randn(vocab, channels, generator=g)
    out = unit_embedding_reference(ids, durations, weight)
    assert out.shape == (batch, channels, int(durations.sum(1).max()) if length else 0)
    assert out.is_contiguous()
    assert torch.equal(out, _naive(ids, durations, weight))


def test_shorter_rows_are_zero_padded():
    weight = torch.arange(1.0, 7.0).reshape(3, 2)  # rows [1,2], [3,4], [5,6]
    ids = torch.tensor([[0, 2], [1, 1]])
    durations = torch.tensor([[1, 2], [1, 0]])
    out = unit_embedding_reference(ids, durations, weight)
    expected = torch.tensor(
        [[[1.0, 5.0, 5.0], [2.0, 6.0, 6.0]], [[3.0, 0.0, 0.0], [4.0, 0.0, 0.0]]]
    )
    assert torch.equal(out, expected)


def test_keeps_weight_dtype():
    weight = torch.randn(5, 3).bfloat16()
    out = unit_embedding(torch.tensor([[1, 4]]), torch.tensor([[2, 1]]), weight)
    assert out.dtype == torch.bfloat16 and torch.equal(out[0, :, 0], weight[1])


@pytest.mark.parametrize(
    "ids,durations,message",
    [
        (torch.tensor([[0, 5]]), torch.tensor([[1, 1]]), "ids must lie in"),
        (torch.tensor([[-1, 0]]), torch.tensor([[1, 1]]), "ids must lie in"),
        (torch.tensor([[0, 1]]), torch.tensor([[1, -1]]), ">= 0"),
        (torch.tensor([[0, 1]]), torch.tensor([[1, 1, 1]]), "same shape"),
        (torch.tensor([0, 1]), torch.tensor([1, 1]), "same shape"),
        (torch.tensor([[0.0, 1.0]]), torch.tensor([[1, 1]]), "integer"),
    ],
)
def test_rejects_bad_input(ids, durations, message):
    with pytest.raises(ValueError, match=message):
        unit_embedding_reference(ids, durations, torch.randn(5, 2))


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_dispatcher_on_cpu_matches_reference(monkeypatch, backend):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 20, (2, 7), generator=g)
    durations = torch.randint(0, 4, (2, 7), generator=g)
    weight = torch.randn(20, 6, generator=g)
    monkeypatch.setenv("SPEECHGPT_KERNELS", backend)
    expected = unit_embedding_reference(ids, durations, weight)
    assert torch.equal(unit_embedding(ids, durations, weight), expected)
