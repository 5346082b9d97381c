"""Writing model folders atomically, in the layout the runtime loader reads.

A folder is written under a temporary name beside its destination and renamed into place
when complete (:func:`atomic_directory`), so a kill leaves either the previous folder or the
new one, never a half-written one. Model folders get the release's tokenizer files
(:func:`copy_tokenizer_files`): transformers 5 saves tokenizers as ``tokenizer.json`` only,
while :func:`speechgpt_agent.model.load_speech_tokenizer` reads LLaMA's sentencepiece
``tokenizer.model`` and ``added_tokens.json``, as in ``fnlp/SpeechGPT-7B-cm``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

__all__ = [
    "TOKENIZER_FILES",
    "atomic_directory",
    "copy_tokenizer_files",
    "publish_directory",
    "write_added_tokens",
]

PathLike = str | os.PathLike

TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
"""Files of a SpeechGPT release folder that describe its tokenizer."""


@contextlib.contextmanager
def atomic_directory(target: PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces ``target`` when the block succeeds.

    The temporary folder sits beside ``target`` (same file system, so the rename is
    atomic); if the block raises, it is removed and ``target`` is left as it was. An
    existing ``target`` is moved aside, the new folder renamed in, and the old one deleted.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        publish_directory(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_directory(source: PathLike, target: PathLike) -> Path:
    """Flush ``source`` to disk and rename it to ``target``, replacing any folder there.

    ``source`` must be on the same file system as ``target`` (beside it). The old
    ``target`` is renamed aside first and deleted last, so at every moment ``target`` is
    either the complete old folder, absent for an instant, or the complete new one.
    """
    source, target = Path(source), Path(target)
    _fsync_tree(source)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.{os.getpid()}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(source, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _fsync_tree(folder: Path) -> None:
    """Flush every file of ``folder`` to disk before it is renamed into place."""
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


def write_added_tokens(folder: PathLike, added: Mapping[str, int]) -> Path:
    """Write ``added_tokens.json`` (token -> id, ids ascending), as the release has it."""
    path = Path(folder) / "added_tokens.json"
    ordered = dict(sorted(added.items(), key=lambda item: item[1]))
    path.write_text(json.dumps(ordered, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def copy_tokenizer_files(source: PathLike, destination: PathLike) -> None:
    """Copy the sentencepiece tokenizer files of a SpeechGPT folder and drop ``tokenizer.json``.

    A ``tokenizer.json`` written by ``save_pretrained`` is removed: it would disagree with the
    legacy sentencepiece tokenization that the model was trained with.
    """
    source, destination = Path(source), Path(destination)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, destination / name)
    (destination / "tokenizer.json").unlink(missing_ok=True)
