"""Resolve a model reference (local folder, local file or Hugging Face hub id) to local files.

Every loader of the package goes through :func:`resolve_dir` / :func:`resolve_file`, so
that "offline or missing weights" always yields the same actionable
:class:`~speechgpt_agent.errors.ModelNotFoundError` naming the hub id and how to pass a
local path instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .errors import ModelNotFoundError

PathLike = str | os.PathLike


def _looks_like_hub_id(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not ref.startswith((".", "/", "~"))


def resolve_dir(
    ref: PathLike,
    *,
    what: str,
    allow_patterns: Sequence[str] | None = None,
    revision: str | None = None,
) -> Path:
    """Return a local folder for ``ref``.

    Args:
        ref: a local folder, or a hub id such as ``"fnlp/SpeechGPT-7B-cm"``.
        what: what the folder holds, for error messages (``"vocoder"``).
        allow_patterns: files to download from the hub (all when ``None``).
        revision: hub revision.

    Raises:
        ModelNotFoundError: neither a local folder nor a reachable hub id.
    """
    path = Path(os.path.expanduser(str(ref)))
    if path.is_dir():
        return path
    if path.exists():
        raise ModelNotFoundError(f"{what}: expected a folder, got the file {path}.")
    ref = str(ref)
    if not _looks_like_hub_id(ref):
        raise ModelNotFoundError(
            f"{what}: {ref!r} is neither an existing local folder nor a hub id of the form "
            "'owner/name'. Pass the path of a folder that holds the files."
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(ref, allow_patterns=list(allow_patterns) if allow_patterns else None,
                              revision=revision)
        )
    except Exception as exc:  # network errors, offline mode, missing repo, gated repo
        raise ModelNotFoundError(
            f"{what}: could not find {ref!r} locally nor download it from the Hugging Face hub "
            f"({type(exc).__name__}: {exc}). Download it on a machine with network access "
            f"(`huggingface-cli download {ref} --local-dir <folder>`) and pass that folder's path "
            "instead of the hub id."
        ) from exc


def resolve_file(
    ref: PathLike,
    filename: str | None = None,
    *,
    what: str,
    revision: str | None = None,
) -> Path:
    """Return a local file: ``ref`` itself, ``ref/filename``, or ``filename`` from hub repo ``ref``."""
    path = Path(os.path.expanduser(str(ref)))
    if path.is_file():
        return path
    if path.is_dir():
        if filename is None:
            raise ModelNotFoundError(f"{what}: {path} is a folder; pass the file itself.")
        candidate = path / filename
        if candidate.is_file():
            return candidate
        raise ModelNotFoundError(f"{what}: {filename} not found in {path}.")
    ref = str(ref)
    if filename is None or not _looks_like_hub_id(ref):
        raise ModelNotFoundError(f"{what}: file {ref!r} does not exist.")
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(ref, filename, revision=revision))
    except Exception as exc:
        raise ModelNotFoundError(
            f"{what}: could not find {filename!r} of {ref!r} locally nor download it from the "
            f"Hugging Face hub ({type(exc).__name__}: {exc}). Download it where there is network "
            f"access (`huggingface-cli download {ref} {filename} --local-dir <folder>`) and pass "
            "the local path instead."
        ) from exc
