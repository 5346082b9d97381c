"""Resolve a model reference (local folder, local file or Hugging Face hub id) to local files.

Every loader of the package goes through :func:`resolve_dir` / :func:`resolve_file`, so
that "offline or missing weights" always yields the same actionable
:class:`~speechgpt_agent.errors.ModelNotFoundError` naming the hub id and how to pass a
local path instead.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ModelNotFoundError

PathLike = str | os.PathLike


def _looks_like_hub_id(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not ref.startswith((".", "/", "~"))


_PROBE_TIMEOUT_S = 3.0
_PROBE_TTL_S = 60.0
_probe: tuple[float, str | None] | None = None
"""(time, reason) of the last reachability probe: one probe serves every part of a load."""


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_unreachable_reason() -> str | None:
    """Why the Hugging Face hub cannot be reached now, or ``None`` when it may be.

    Checked before any request, so that an offline machine gets one message at once
    instead of huggingface_hub's five "Retrying in ..." warnings and ~45 s of back-off:
    ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``, then a TCP connection to the hub's
    endpoint (at most 3 s; skipped behind an HTTPS proxy, which only the hub client knows
    how to use). The probe's answer is reused for a minute.
    """
    global _probe
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    now = time.monotonic()
    if _probe is not None and now - _probe[0] < _PROBE_TTL_S:
        return _probe[1]
    url = urlsplit(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    reason = None
    try:
        socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        reason = f"no network: cannot connect to {host}:{port} ({getattr(exc, 'strerror', None) or exc})"
    _probe = (now, reason)
    return reason


def _short(exc: BaseException) -> str:
    """``Type: first line of the message`` (hub errors run to several lines)."""
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


def _not_found(what: str, ref: str, why: str, download: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"{what} {ref!r} is not on this machine and cannot be downloaded ({why}). Fix: "
        f"`{download} --local-dir DIR` on a machine with network, then pass the path DIR "
        f"instead of {ref!r}."
    )


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
    from huggingface_hub import snapshot_download

    patterns = list(allow_patterns) if allow_patterns else None
    try:  # a copy in the local hub cache needs no network
        return Path(snapshot_download(ref, allow_patterns=patterns, revision=revision, local_files_only=True))
    except OSError:  # LocalEntryNotFoundError: not cached, try the hub below
        pass
    download = f"hf download {ref}"
    reason = hub_unreachable_reason()
    if reason is not None:
        raise _not_found(what, ref, reason, download)
    try:
        return Path(snapshot_download(ref, allow_patterns=patterns, revision=revision))
    except Exception as exc:  # network errors, missing repo, gated repo
        raise _not_found(what, ref, _short(exc), download) from exc


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
    from huggingface_hub import hf_hub_download

    try:  # a copy in the local hub cache needs no network
        return Path(hf_hub_download(ref, filename, revision=revision, local_files_only=True))
    except OSError:  # LocalEntryNotFoundError: not cached, try the hub below
        pass
    download = f"hf download {ref} {filename}"
    reason = hub_unreachable_reason()
    if reason is not None:
        raise _not_found(f"{what} {filename!r} of", ref, reason, download)
    try:
        return Path(hf_hub_download(ref, filename, revision=revision))
    except Exception as exc:
        raise _not_found(f"{what} {filename!r} of", ref, _short(exc), download) from exc


def check_available(ref: PathLike, *, what: str) -> None:
    """Fail at once when ``ref`` (a hub id) is neither local nor in the hub cache and the hub
    cannot be reached; download nothing.

    For commands that load several parts: the one the user lacks first (the LLM) is
    named before smaller parts are loaded or refused.

    Raises:
        ModelNotFoundError: as :func:`resolve_dir`, without its download attempt.
    """
    ref = str(ref)
    if Path(os.path.expanduser(ref)).exists() or not _looks_like_hub_id(ref):
        return  # a local path, or something resolve_dir will explain
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(ref, local_files_only=True)
        return
    except OSError:  # LocalEntryNotFoundError: not cached
        pass
    reason = hub_unreachable_reason()
    if reason is not None:
        raise _not_found(what, ref, reason, f"hf download {ref}")


def is_local(ref: PathLike) -> bool:
    """Whether ``ref`` is an existing local path or a hub id with a copy in the local hub
    cache, i.e. loadable with no network. Downloads nothing."""
    if Path(os.path.expanduser(str(ref))).exists():
        return True
    if not _looks_like_hub_id(str(ref)):
        return False
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(str(ref), local_files_only=True)
    except OSError:  # LocalEntryNotFoundError: not cached
        return False
    return True
