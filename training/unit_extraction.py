"""Audio collection -> speech units (``speechgpt-agent data units``): batched, resumable, sharded.

Each clip becomes one JSON line ``{"id", "audio", "text"?, "units", "durations"}`` (reduced
units, run lengths in 50 Hz frames), the input of the ``build`` step. The work is:

* batched: ``batch_size`` clips are decoded and resampled ahead by worker threads while
  HuBERT encodes the current one (HuBERT itself takes one clip at a time, as the original
  ``speech2unit`` does: padding a batch would change the first conv layer's GroupNorm
  statistics, and so the units);
* resumable: the output is appended line by line; a rerun skips the ids already there;
* sharded: ``--shard i/n`` takes every n-th clip from the i-th, into its own file
  ``units.i-of-n.jsonl``; ``--shard auto`` reads ``RANK``/``WORLD_SIZE`` as set by
  ``torchrun``, so ``torchrun --nproc_per_node 8 -m speechgpt_agent.cli data units ...``
  runs one process per GPU.

Missing or unusable clips are skipped and reported (:class:`~.records.SkipReport`).
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from speechgpt_agent.audio import DEFAULT_MAX_SECONDS, load_audio
from speechgpt_agent.errors import AudioError

from .manifest import AudioItem, manifest_record
from .records import JsonlAppender, SkipReport

if TYPE_CHECKING:
    from speechgpt_agent.units import SpeechTokenizer

__all__ = ["extract_units", "parse_shard", "shard_items", "shard_output"]

PathLike = str | os.PathLike

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(spec: str | None) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)``; ``"auto"`` -> ``(RANK, WORLD_SIZE)`` of torchrun (else ``(0, 1)``); ``None`` -> ``(0, 1)``.

    Raises:
        ValueError: not of the form ``i/n`` with ``0 <= i < n``.
    """
    if spec is None:
        return 0, 1
    if spec.strip() == "auto":
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    match = _SHARD.match(spec)
    if match is None or not int(match.group(1)) < int(match.group(2)):
        raise ValueError(f"--shard must be 'i/n' with 0 <= i < n (e.g. 0/4) or 'auto', got {spec!r}.")
    return int(match.group(1)), int(match.group(2))


def shard_items(items: Sequence[AudioItem], index: int, count: int) -> list[AudioItem]:
    """Items ``index, index + count, ...``: shard ``index`` of ``count``, disjoint and covering all."""
    if not 0 <= index < count:
        raise ValueError(f"shard index must be in 0..{count - 1}, got {index}.")
    return list(items[index::count])


def shard_output(output: PathLike, index: int, count: int) -> Path:
    """Output file of one shard: ``units.jsonl`` -> ``units.3-of-8.jsonl`` (unchanged when ``count == 1``)."""
    output = Path(output)
    if count == 1:
        return output
    width = len(str(count - 1))
    return output.with_name(f"{output.stem}.{index:0{width}d}-of-{count}{output.suffix or '.jsonl'}")


def extract_units(
    items: Sequence[AudioItem],
    tokenizer: SpeechTokenizer,
    output: PathLike,
    *,
    batch_size: int = 8,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    progress: bool = True,
) -> SkipReport:
    """Encode the clips not yet in ``output`` and append their units to it.

    Args:
        items: the clips (see :func:`~.manifest.read_audio_items`); ids must be unique.
        tokenizer: mHuBERT + k-means (:class:`~speechgpt_agent.units.SpeechTokenizer`).
        output: JSON-lines file; created, or resumed when it exists.
        batch_size: clips decoded ahead of the model (>= 1).
        max_seconds: longer clips are skipped (``None``: no limit).
        progress: show a tqdm progress bar (on stderr).

    Returns:
        The skipped clips: ``missing audio`` (no such file), ``unreadable audio`` (cannot be
        decoded, NaN, too long ...), ``unusable audio`` (too short for one HuBERT frame).
    """
    from tqdm.auto import tqdm

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    report = SkipReport("units")
    rate = tokenizer.sampling_rate
    # the tokenizer's own resampler, so a clip gets the units tokenizer.encode(path) gives
    resampler = getattr(tokenizer, "resampler", "soxr")

    def load(item: AudioItem) -> np.ndarray:
        return load_audio(item.audio, target_rate=rate, max_seconds=max_seconds, resampler=resampler)

    with JsonlAppender(output) as out:
        todo = [item for item in items if item.id not in out.done]
        pending: deque[tuple[AudioItem, Future[np.ndarray]]] = deque()
        queue = iter(todo)
        with ThreadPoolExecutor(max_workers=min(batch_size, 4), thread_name_prefix="units-load") as pool, \
                tqdm(total=len(items), initial=len(items) - len(todo), desc="units", unit="clip",
                     disable=not progress, dynamic_ncols=True) as bar:
            while True:
                while len(pending) < batch_size and (item := next(queue, None)) is not None:
                    pending.append((item, pool.submit(load, item)))
                if not pending:
                    break
                item, future = pending.popleft()
                bar.update(1)
                if not item.audio.is_file():
                    report.skip(item.id, "missing audio", f"{item.audio} does not exist")
                    continue
                try:
                    samples = future.result()
                except AudioError as exc:
                    report.skip(item.id, "unreadable audio", str(exc))
                    continue
                try:
                    seq = tokenizer.encode(samples, sample_rate=rate)
                except AudioError as exc:
                    report.skip(item.id, "unusable audio", str(exc))
                    continue
                out.write(manifest_record(item, units=list(seq.units), durations=list(seq.durations)))
    return report
