"""Loading the unit vocoder's files: fairseq checkpoints (weight norm folded), converted
safetensors folders, hub ids; and ``speechgpt-agent convert vocoder``. Returns configs and state
dicts; the network classes never import this module back."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from .checkpoints import load_torch_checkpoint
from .errors import CheckpointError, ModelNotFoundError
from .hub import resolve_dir
from .vocoder_config import CodeHiFiGANConfig
from .vocoder_modules import CodeHiFiGAN

DEFAULT_VOCODER = "facebook/unit_hifigan_mhubert_vp_en_es_fr_it3_400k_layer11_km1000_lj_dur"
"""Hub id of the vocoder SpeechGPT uses (mHuBERT layer 11, 1000 units, LJSpeech voice)."""

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
TORCH_CHECKPOINT_NAMES = ("model.pt", "vocoder.pt")
"""Pickled checkpoint names looked for in a folder, in order, after ``model.safetensors``
and before the newest training checkpoint ``g_<step>``."""


# --------------------------------------------------------------------------- checkpoints


def _weight_norm_fold(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``g * v / ||v||`` with the norm over every dim but 0 (``torch.nn.utils.weight_norm``'s
    default ``dim=0``; for a ConvTranspose1d weight [in, out, k] that is one norm per input channel)."""
    norm = v.norm(p=2, dim=tuple(range(1, v.dim())), keepdim=True)
    return v * (g / norm)


def fold_weight_norm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace weight-norm pairs by plain weights, keeping every other entry.

    Reads both layouts: ``x.weight_g`` / ``x.weight_v`` (``torch.nn.utils.weight_norm``,
    what fairseq saved) and ``x.parametrizations.weight.original0`` / ``original1``
    (``torch.nn.utils.parametrizations.weight_norm``).

    Raises:
        CheckpointError: a pair with one half missing or a magnitude not shaped [out, 1, ...].
    """
    out: dict[str, torch.Tensor] = {}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        match = re.fullmatch(
            r"(.+\.)?(?:weight_(g|v)|parametrizations\.weight\.original([01]))", key
        )
        if match is None:
            out[key] = value
            continue
        part = match.group(2) or ("g" if match.group(3) == "0" else "v")
        pairs.setdefault(match.group(1) or "", {})[part] = value
    for prefix, pair in pairs.items():
        if set(pair) != {"g", "v"}:
            half = "magnitude (weight_g)" if "g" not in pair else "direction (weight_v)"
            raise CheckpointError(
                f"vocoder checkpoint: the weight norm of {prefix}weight lacks its {half}."
            )
        g, v = pair["g"], pair["v"]
        if g.shape != (v.shape[0],) + (1,) * (v.dim() - 1):
            raise CheckpointError(
                f"vocoder checkpoint: {prefix}weight_g has shape {tuple(g.shape)}, expected "
                f"{(v.shape[0],) + (1,) * (v.dim() - 1)} (weight norm over dim 0)."
            )
        out[prefix + "weight"] = _weight_norm_fold(g, v)
    return out


def _newest_training_checkpoint(folder: Path) -> Path | None:
    steps = [
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if (m := re.fullmatch(r"g_(\d+)", p.name)) and p.is_file()
    ]
    return max(steps)[1] if steps else None


def find_vocoder_files(folder: Path) -> tuple[Path, Path]:
    """``(config.json, checkpoint)`` of a vocoder folder.

    The checkpoint is the first present of ``model.safetensors`` (converted, preferred),
    ``model.pt``, ``vocoder.pt`` and the newest ``g_<step>``.

    Raises:
        ModelNotFoundError: no config or no checkpoint in ``folder``.
    """
    config = folder / CONFIG_NAME
    candidates = [folder / SAFETENSORS_NAME] + [folder / name for name in TORCH_CHECKPOINT_NAMES]
    checkpoint = next((p for p in candidates if p.is_file()), None) or _newest_training_checkpoint(
        folder
    )
    if checkpoint is None:
        raise ModelNotFoundError(
            f"vocoder: no checkpoint in {folder}; expected {SAFETENSORS_NAME}, "
            f"{', '.join(TORCH_CHECKPOINT_NAMES)} or a training checkpoint g_<step>."
        )
    if not config.is_file():
        raise ModelNotFoundError(
            f"vocoder: {folder} has the checkpoint {checkpoint.name} but no {CONFIG_NAME}; put the "
            "vocoder's config.json next to it."
        )
    return config, checkpoint


def read_vocoder_config(path: Path) -> CodeHiFiGANConfig:
    """Parse a vocoder ``config.json``; :class:`CheckpointError` when unreadable or invalid."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"vocoder: {path} is not a readable JSON config ({exc}).") from exc
    return CodeHiFiGANConfig.from_dict(raw)


def read_vocoder_state_dict(path: Path, *, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The folded generator state dict of a checkpoint file.

    Reads ``model.safetensors`` (already folded) or a torch pickle holding
    ``{"generator": state_dict, ...}`` (a bare state dict is accepted too).

    Raises:
        CheckpointError: unreadable file or no generator weights in it.
    """
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"vocoder: {path} is not a readable safetensors file ({exc})."
            ) from exc
    else:
        checkpoint = load_torch_checkpoint(path, trust_pickle=trust_pickle, what="vocoder")
        state = checkpoint.get("generator") if isinstance(checkpoint, Mapping) else None
        if (
            state is None
            and isinstance(checkpoint, Mapping)
            and any(str(k).startswith("conv_pre.") for k in checkpoint)
        ):
            state = checkpoint
        if not isinstance(state, Mapping):
            keys = (
                list(checkpoint)[:8]
                if isinstance(checkpoint, Mapping)
                else type(checkpoint).__name__
            )
            raise CheckpointError(
                f"vocoder: {path} holds no CodeHiFiGAN generator weights (expected a dict with a "
                f"'generator' state dict; found {keys})."
            )
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"vocoder: the generator state dict in {path} holds non-tensor values."
        )
    return fold_weight_norm(state)


def _load_weights(model: CodeHiFiGAN, state: Mapping[str, torch.Tensor], source: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {tuple(state[k].shape)} (config expects {tuple(expected[k].shape)})"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(
                f"missing {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")
            )
        if unexpected:
            details.append(
                f"unexpected {', '.join(unexpected[:5])}" + (" ..." if len(unexpected) > 5 else "")
            )
        if wrong:
            details.append(
                f"shape mismatch {', '.join(wrong[:3])}" + (" ..." if len(wrong) > 3 else "")
            )
        raise CheckpointError(
            f"vocoder: the weights in {source} do not match its config.json ({'; '.join(details)})."
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def _locate(ref: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(os.path.expanduser(str(ref)))
    if path.is_file():
        config = path.parent / CONFIG_NAME
        if not config.is_file():
            raise ModelNotFoundError(
                f"vocoder: no {CONFIG_NAME} beside the checkpoint {path}; put the vocoder's "
                "config.json in the same folder."
            )
        return config, path
    folder = resolve_dir(
        ref,
        what="vocoder",
        allow_patterns=[CONFIG_NAME, SAFETENSORS_NAME, *TORCH_CHECKPOINT_NAMES, "g_*"],
    )
    return find_vocoder_files(folder)
