"""Training examples of the three stages: text files -> token ids and loss labels.

Stage 1 (``ma``) as the original ``ma_pretrain.py``: every line of the corpus is tokenized
(``<s>`` first, no ``</s>``), the token lists are concatenated and cut into blocks of
``block_size`` tokens (the remainder dropped, unless the corpus is shorter than one block);
the labels are the inputs.

Stages 2 and 3 as the original ``cm_sft.py`` / ``com_sft.py``: a sample is
``tokenize(prefix + plain_text)`` with ``</s>`` appended, and the first
``len(tokenize(prefix))`` labels are ``-100``. (Tokenized alone, the prefix keeps its final
newline, which the ``[Human]`` token strips from the full text, so the original masks one
token more than the prefix: ``[Human]`` itself. This is reproduced.) ``loss_on="response"``
also masks the question: everything up to and including ``[SpeechGPT]:``. Samples longer
than ``model_max_length`` tokens are skipped and reported (the original truncated them,
cutting off the ``<eosp><eoa>`` the model must learn to produce).
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from speechgpt_agent.prompt import SPEECHGPT

from .records import DataError, SkipReport, read_jsonl

__all__ = [
    "IGNORE_INDEX",
    "Example",
    "instruction_examples",
    "lm_blocks",
    "prompt_length",
    "read_instruction_file",
    "read_unit_corpus",
    "split_validation",
]

PathLike = str | os.PathLike
IGNORE_INDEX = -100
"""Label of positions that do not count in the loss (PyTorch's cross-entropy default)."""

Example = dict[str, list[int]]
"""``{"input_ids": [...], "attention_mask": [...], "labels": [...]}``."""


# --- reading -----------------------------------------------------------------------------


def read_unit_corpus(path: PathLike) -> list[str]:
    """Non-blank lines of a stage-1 ``train.txt`` / ``dev.txt``, stripped.

    Raises:
        DataError: the file cannot be read or holds no line.
    """
    path = Path(path)
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}.") from exc
    lines = [line for line in lines if line]
    if not lines:
        raise DataError(f"{path} holds no unit sequence.")
    return lines


def read_instruction_file(path: PathLike, report: SkipReport) -> list[tuple[str, str]]:
    """``(prefix, plain_text)`` pairs of a SpeechInstruct JSON-lines file.

    Lines without string ``prefix`` and ``plain_text`` fields are skipped into ``report``.
    """
    pairs = []
    path = Path(path)
    for number, obj in enumerate(read_jsonl(path, report), start=1):
        prefix, text = obj.get("prefix"), obj.get("plain_text")
        if isinstance(prefix, str) and isinstance(text, str) and text.strip():
            pairs.append((prefix, text))
        else:
            report.skip(f"{path.name}:{number}", "invalid record",
                        "needs string 'prefix' and non-empty 'plain_text' fields")
    return pairs


def split_validation(items: Sequence[Any], size: float, seed: int = 42) -> tuple[list[Any], list[Any]]:
    """Hold out ``size`` items (a fraction of them when ``size < 1``), drawn with ``seed``.

    At least one item stays for training: asking for all of them raises.

    Raises:
        DataError: ``size`` leaves nothing to train on.
    """
    n = len(items)
    count = round(n * size) if 0 < size < 1 else int(size)
    if count == 0:
        return list(items), []
    if count >= n:
        raise DataError(
            f"val_set_size {size} would hold out {count} of the {n} training samples; give a "
            "smaller --val-set-size, 0 for no evaluation, or a --dev-file.")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    return [items[i] for i in range(n) if i not in held], [items[i] for i in order[:count]]


# --- stage 1 -----------------------------------------------------------------------------


def lm_blocks(lines: Sequence[str], tokenizer: Any, block_size: int) -> list[Example]:
    """Concatenated tokenized lines cut into ``block_size`` blocks; labels = inputs."""
    ids: list[int] = []
    for tokens in tokenizer(list(lines), add_special_tokens=True)["input_ids"]:
        ids.extend(tokens)
    total = len(ids) if len(ids) < block_size else len(ids) // block_size * block_size
    return [
        {"input_ids": ids[i:i + block_size], "attention_mask": [1] * len(ids[i:i + block_size]),
         "labels": ids[i:i + block_size]}
        for i in range(0, total, block_size)
    ]


# --- stages 2 and 3 ----------------------------------------------------------------------


def prompt_length(tokenizer: Any, prefix: str, plain_text: str, full: Sequence[int]) -> int | None:
    """Tokens of ``full`` (the tokenized ``prefix + plain_text``) up to and including the last
    ``[SpeechGPT]:``, i.e. the prompt before the response; ``None`` when there is none."""
    marker = plain_text.rfind(f"{SPEECHGPT}:")
    if marker < 0:
        return None
    prompt = tokenizer.encode(prefix + plain_text[:marker + len(SPEECHGPT) + 1])
    n = min(len(prompt), len(full))
    while n and list(full[:n]) != prompt[:n]:  # a piece merged across the cut stays trained
        n -= 1
    return n


def instruction_examples(
    pairs: Sequence[tuple[str, str]],
    tokenizer: Any,
    *,
    max_length: int,
    loss_on: Literal["plain_text", "response"] = "plain_text",
    report: SkipReport,
    ids: Sequence[str] | None = None,
) -> list[Example]:
    """Tokenized, label-masked samples of ``(prefix, plain_text)`` pairs.

    Samples longer than ``max_length`` tokens (with ``</s>``) and, for
    ``loss_on="response"``, samples without ``[SpeechGPT]:`` are skipped into ``report``.
    """
    eos = tokenizer.eos_token_id
    prefix_lengths: dict[str, int] = {}  # one system prefix for all samples, as a rule
    fulls = tokenizer([prefix + text for prefix, text in pairs])["input_ids"] if pairs else []
    examples = []
    for i, ((prefix, text), full) in enumerate(zip(pairs, fulls)):
        name = ids[i] if ids is not None else f"sample {i}"
        full = list(full)
        if not full or full[-1] != eos:
            full.append(eos)
        if len(full) > max_length:
            report.skip(name, "too long", f"{len(full)} tokens > model_max_length {max_length}")
            continue
        if loss_on == "plain_text":
            if prefix not in prefix_lengths:  # the original's count (see the module doc)
                prefix_lengths[prefix] = len(tokenizer.encode(prefix))
            n: int | None = prefix_lengths[prefix]
        else:
            n = prompt_length(tokenizer, prefix, text, full)
        if n is None:
            report.skip(name, "no response", f"no '{SPEECHGPT}:' to start the response after")
            continue
        labels = [IGNORE_INDEX] * n + full[n:]
        if all(label == IGNORE_INDEX for label in labels):
            report.skip(name, "no response", "every token is masked")
            continue
        examples.append({"input_ids": full, "attention_mask": [1] * len(full), "labels": labels})
    return examples
