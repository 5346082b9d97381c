"""Loading of pickled upstream checkpoints, safely by default.

Upstream assets come as pickles: fairseq ``.pt`` files (HuBERT, CodeHiFiGAN) and a
joblib-pickled scikit-learn KMeans. Unpickling can execute arbitrary code, so
(DESIGN.md section 8):

* :func:`load_torch_checkpoint` first tries ``torch.load(weights_only=True)``, which
  only rebuilds tensors and plain containers. Vocoder checkpoints load this way.
* Checkpoints that hold other objects (fairseq's ``cfg``/``args``) are loaded only
  with explicit consent (``trust_pickle=True``) and then through an unpickler that
  replaces every fairseq/omegaconf class by an inert attribute bag, so fairseq need
  not be installed. The one-time ``speechgpt-agent convert`` command does exactly
  this and writes safetensors/json that later loads need no consent for.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, UnsafeCheckpointError

# Modules whose classes may appear in upstream pickles and are safe to stand in for.
_STANDIN_PREFIXES = ("fairseq", "omegaconf", "hydra", "argparse", "enum", "dataclasses")


class _Standin:
    """Inert replacement for a class that is not installed (fairseq, omegaconf...).

    Keeps whatever state the pickle gives it, as attributes or as a dict, so that
    ``cfg["model"]["encoder_layers"]`` and ``args.encoder_layers`` both remain readable.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args
        self.__dict__.update(kwargs)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)
        elif isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            self.__dict__.update(state[0] or {})
            self.__dict__.update(state[1])
        else:
            self.__dict__["_state"] = state

    # enums are pickled as Cls(value): keep the value readable
    def __str__(self) -> str:
        if self._args and len(self._args) == 1:
            return str(self._args[0])
        return super().__str__()

    def __eq__(self, other: object) -> bool:
        if self._args and len(self._args) == 1:
            return self._args[0] == other or str(self._args[0]) == other
        return self is other

    def __hash__(self) -> int:
        return hash(self._args) if self._args else id(self)


def _standin_class(module: str, name: str) -> type:
    return type(name, (_Standin,), {"__module__": f"speechgpt_agent.standin.{module}"})


class _PermissiveUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "argparse" and name == "Namespace":
            import argparse

            return argparse.Namespace
        if module.split(".")[0] in _STANDIN_PREFIXES:
            return _standin_class(module, name)
        return super().find_class(module, name)


class _PermissivePickleModule:
    """A ``pickle_module`` for ``torch.load`` that tolerates missing fairseq classes."""

    Unpickler = _PermissiveUnpickler
    __name__ = "speechgpt_agent_pickle"

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return _PermissiveUnpickler(file, **kwargs).load()


def load_torch_checkpoint(
    path: str | os.PathLike, *, trust_pickle: bool = False, what: str = "checkpoint"
) -> Any:
    """Load a ``torch.save`` file onto the CPU.

    Args:
        path: the file.
        trust_pickle: allow full unpickling (with inert stand-ins for fairseq classes)
            when the file is not loadable with ``weights_only=True``.
        what: what the file is, for error messages.

    Raises:
        CheckpointError: not a torch checkpoint, or truncated.
        UnsafeCheckpointError: needs full unpickling and ``trust_pickle`` is False.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses pickles with non-allow-listed globals ("Unsupported global");
        # anything else (garbage bytes, bad opcodes) is simply not a checkpoint
        if "Unsupported global" not in str(exc) and "allowed global" not in str(exc):
            raise CheckpointError(f"{what}: {path} is not a readable torch checkpoint ({exc}).") from exc
        if not trust_pickle:
            raise UnsafeCheckpointError(
                f"{what}: {path} is a pickle that holds more than tensors (e.g. a fairseq config), "
                "and loading it could run arbitrary code. If you trust its source, pass "
                "trust_pickle=True, or convert it once with `speechgpt-agent convert` to a safe "
                "format."
            ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{what}: {path} is not a readable torch checkpoint (truncated or another format: {exc})."
        ) from exc
    try:
        return torch.load(
            path, map_location="cpu", weights_only=False, pickle_module=_PermissivePickleModule
        )
    except Exception as exc:
        raise CheckpointError(f"{what}: could not unpickle {path}: {exc}") from exc


def cfg_get(obj: Any, *keys: str, default: Any = None) -> Any:
    """Read a nested key from a dict / Namespace / stand-in mix (fairseq ``cfg`` or ``args``)."""
    cur = obj
    for key in keys:
        if cur is None:
            return default
        if isinstance(cur, dict):
            cur = cur.get(key)
        else:
            cur = getattr(cur, key, None)
    if cur is None:
        return default
    if isinstance(cur, _Standin) and cur._args and len(cur._args) == 1:
        return cur._args[0]
    return cur
