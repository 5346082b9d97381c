"""Vocabulary expansion: a plain LLaMA checkpoint -> a SpeechGPT-format one (the start of stage 1).

The 1006 SpeechGPT tokens (``<0>``..``<999>``, ``<sosp>``, ``<eosp>``, ``[Human]``,
``[SpeechGPT]``, ``<eoh>``, ``<eos>``) are appended after the base tokenizer's tokens, in the
order of :data:`speechgpt_agent.prompt.ADDED_TOKENS`, which gives LLaMA-7B the released ids
32000..33005. (The original added the first 1002 in stage 1 and the last four in stage 2;
the ids are the same.) The embedding matrix and the LM head get one new row per token,
initialised to the mean of the existing rows, so the new tokens start out as an "average"
token instead of random noise that would dominate the first updates.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from speechgpt_agent.errors import CheckpointError
from speechgpt_agent.hub import resolve_dir
from speechgpt_agent.prompt import ADDED_TOKENS

from .checkpointing import atomic_directory, copy_tokenizer_files, write_added_tokens

__all__ = ["expand_vocabulary", "has_speech_vocabulary"]

PathLike = str | os.PathLike


def has_speech_vocabulary(folder: PathLike) -> bool:
    """Whether a local model folder already has the SpeechGPT unit tokens (``added_tokens.json``)."""
    file = Path(folder) / "added_tokens.json"
    try:
        return "<0>" in json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def _base_tokens(folder: Path) -> tuple[int, dict[str, int]]:
    """Size of the sentencepiece vocabulary and the tokens already added after it."""
    import sentencepiece as spm

    model_file = folder / "tokenizer.model"
    if not model_file.is_file():
        raise CheckpointError(
            f"{folder} has no tokenizer.model: SpeechGPT extends LLaMA's sentencepiece "
            "tokenizer; give a LLaMA folder in the transformers layout (config.json, weights, "
            "tokenizer.model).")
    size = spm.SentencePieceProcessor(model_file=str(model_file)).get_piece_size()
    added_file = folder / "added_tokens.json"
    added: dict[str, int] = {}
    if added_file.is_file():
        added = json.loads(added_file.read_text(encoding="utf-8"))
    if sorted(added.values()) != list(range(size, size + len(added))):
        raise CheckpointError(f"{added_file}: the added token ids do not follow the sentencepiece "
                              f"vocabulary ({size} pieces) contiguously.")
    return size, added


def expand_vocabulary(base: PathLike, output: PathLike, *, dtype: torch.dtype | None = None) -> Path:
    """Add the SpeechGPT tokens to a LLaMA checkpoint and save it in the release layout.

    Args:
        base: folder or hub id of a transformers LLaMA (``config.json``, weights,
            sentencepiece ``tokenizer.model``).
        output: folder written (atomically): ``config.json`` with the new ``vocab_size``,
            ``model.safetensors``, ``tokenizer.model``, ``added_tokens.json`` and the
            tokenizer json files; it loads in ``SpeechGPTModel.from_pretrained``.
        dtype: dtype of the saved weights (default: the base's).

    Returns:
        ``output``.

    Raises:
        CheckpointError: not a LLaMA with a sentencepiece tokenizer, or already expanded.
        ModelNotFoundError: ``base`` cannot be found.
    """
    from transformers import LlamaForCausalLM

    from speechgpt_agent.model import load_speech_tokenizer

    folder = resolve_dir(base, what="LLaMA base model",
                         allow_patterns=("*.json", "tokenizer.model", "*.safetensors", "*.bin"))
    if has_speech_vocabulary(folder):
        raise CheckpointError(f"{folder} already has the SpeechGPT tokens; train it directly.")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") != "llama":
        raise CheckpointError(f"{folder} is a {config.get('model_type')!r} model; SpeechGPT "
                              "extends LLaMA (model_type 'llama').")
    pieces, existing = _base_tokens(folder)
    start = pieces + len(existing)
    added = {**existing, **{t: start + i for i, t in enumerate(ADDED_TOKENS)}}

    model = LlamaForCausalLM.from_pretrained(folder, dtype=dtype or "auto", device_map="cpu")
    rows = model.get_input_embeddings().weight.shape[0]
    if rows < start:
        raise CheckpointError(f"{folder}: the embedding has {rows} rows but the tokenizer "
                              f"{start} tokens.")
    # rows beyond the tokenizer (padding some checkpoints carry) are never looked up: dropped
    model.resize_token_embeddings(start + len(ADDED_TOKENS), mean_resizing=False)
    with torch.no_grad():
        matrices = [model.get_input_embeddings().weight]
        head = model.get_output_embeddings()
        if head is not None and head.weight is not matrices[0]:
            matrices.append(head.weight)
        for weight in matrices:
            weight[start:] = weight[:start].float().mean(dim=0).to(weight.dtype)

    with atomic_directory(output) as tmp:
        model.save_pretrained(tmp)
        copy_tokenizer_files(folder, tmp)
        write_added_tokens(tmp, added)
        load_speech_tokenizer(tmp)  # the runtime accepts it, or this raises before the rename
    return Path(output)
