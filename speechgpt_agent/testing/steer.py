"""Steering a random tiny model's decoding in tests (never used by the library itself).

A tiny random model cannot choose a sensible answer; tests that check what happens to an
answer (parsing, streaming audio, tool calls) force the model to emit a chosen one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class ForceAnswer:
    """A transformers-style logits processor forcing ``token_ids``, then ``end_id``.

    Args:
        token_ids: the answer's token ids, in order.
        end_id: forced after the answer (eos), or ``None`` to stop steering.

    The prompt length is taken from the first call. Use one instance per generation.
    """

    def __init__(self, token_ids: Sequence[int], end_id: int | None) -> None:
        self.token_ids = list(token_ids)
        self.end_id = end_id
        self.prompt_length: int | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[-1]
        step = input_ids.shape[-1] - self.prompt_length
        if step < len(self.token_ids):
            target = self.token_ids[step]
        elif self.end_id is not None:
            target = self.end_id
        else:
            return scores
        forced = torch.full_like(scores, float("-inf"))
        forced[..., target] = 0.0
        return forced


def answer_ids(model, text: str) -> list[int]:
    """Token ids of ``text`` as a continuation (no bos), through ``model``'s tokenizer."""
    ids = model.encode(text)
    bos = model.tokenizer.bos_token_id
    return ids[1:] if ids and ids[0] == bos else ids
