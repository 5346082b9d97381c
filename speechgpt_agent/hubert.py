"""mHuBERT without fairseq: convert the fairseq checkpoint once, then load it with transformers.

SpeechGPT encodes speech with fairseq's mHuBERT base (``mhubert_base_vp_en_es_fr_it3.pt``).
The same network exists in transformers as :class:`~transformers.HubertModel`; only the
parameter names and the config format differ. :func:`convert_fairseq_hubert` reads the
fairseq ``.pt`` (a pickle that needs ``trust_pickle=True`` because its ``cfg`` holds
fairseq objects), maps every inference weight onto a ``HubertModel`` and writes a
transformers folder (safetensors + ``config.json`` + ``preprocessor_config.json``) that
:func:`load_hubert` loads with no pickle at all. The hub repo ``voidful/mhubert-base`` is
such a folder, already converted.

What the conversion preserves (fairseq ``HubertModel.extract_features``):

* conv feature encoder (``extractor_mode`` ``default`` -> one GroupNorm in the first block,
  ``layer_norm`` -> a LayerNorm in every block), the feature LayerNorm and projection,
* the weight-normalised positional convolution (``weight_g``/``weight_v`` stored as such),
* the transformer layers, post-LN (``layer_norm_first=False``) or pre-LN (``True``),
* the task's waveform normalisation flag, as ``do_normalize`` of the feature extractor,
  and the task's settings themselves as ``fairseq_task`` (``normalize``, ``sample_rate``) in
  ``config.json``.

Whether the waveform is layer-normed before the model is the fairseq task's ``normalize``
upstream; a transformers folder says it in ``preprocessor_config.json``'s ``do_normalize``
(whose transformers default is ``True``). :func:`load_hubert` checks the two against each
other when both are known (the ``fairseq_task`` record of a folder we converted, or, with
``trust_pickle=True``, the fairseq checkpoint lying in the folder), and when they disagree
warns (:class:`HubertConfigWarning`) and follows the checkpoint's task, the input the model
(and the k-means fitted on its features) was trained on.

Pretraining-only tensors (``label_embs_concat``, ``final_proj``, ``target_glu``) are dropped.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .checkpoints import cfg_get, load_torch_checkpoint
from .errors import CheckpointError, ModelNotFoundError, UnsafeCheckpointError
from .hub import resolve_dir

PathLike = str | os.PathLike

DEFAULT_HUBERT = "voidful/mhubert-base"
"""Hub id of mHuBERT base (vp_en_es_fr_it3) in transformers format."""

UPSTREAM_CHECKPOINT = "mhubert_base_vp_en_es_fr_it3.pt"
"""File name of the fairseq checkpoint that SpeechGPT loads."""

# Defaults of fairseq's HubertConfig / HubertPretrainingConfig, for keys an old cfg omits.
_FAIRSEQ_MODEL_DEFAULTS: dict[str, Any] = {
    "extractor_mode": "default",
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "activation_fn": "gelu",
    "layer_type": "transformer",
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0,
    "dropout_input": 0.0,
    "layer_norm_first": False,
    "conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
    "conv_bias": False,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "conv_pos_batch_norm": False,
    "pos_conv_depth": 1,
    "mask_prob": 0.65,
    "mask_length": 10,
    "mask_channel_prob": 0.0,
    "mask_channel_length": 10,
}
_FAIRSEQ_TASK_DEFAULTS: dict[str, Any] = {"normalize": False, "sample_rate": 16_000}

# fairseq activation name -> transformers ACT2FN name (fairseq "gelu" is the exact erf GELU,
# "gelu_accurate" the tanh approximation).
_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_accurate": "gelu_new",
    "gelu_fast": "gelu_new",
    "relu": "relu",
    "tanh": "tanh",
    "linear": "linear",
    "swish": "silu",
}

# Tensors that only the pretraining loss uses.
_PRETRAINING_ONLY = re.compile(r"^(label_embs_concat|final_proj\..*|target_glu\..*)$")

_HUB_ALLOW_PATTERNS = ("*.json", "*.safetensors", "pytorch_model*.bin")

KNOWN_TASKS: dict[str, dict[str, Any]] = {DEFAULT_HUBERT: {"normalize": False, "sample_rate": 16_000}}
"""The fairseq task of the checkpoint a hub repo was converted from, for repos whose
``config.json`` does not record it: ``voidful/mhubert-base`` is ``mhubert_base_vp_en_es_fr_it3.pt``,
whose task does not normalise the waveform (the original ``speech2unit.py`` layer-norms only
when ``task.cfg.normalize``). So its units match the original's whatever its
``preprocessor_config.json`` says (transformers' default there is ``do_normalize=True``)."""

logger = logging.getLogger(__name__)

TASK_KEY = "fairseq_task"
"""``config.json`` key under which :func:`convert_fairseq_hubert` records the fairseq task."""


class HubertConfigWarning(UserWarning):
    """A HuBERT folder's preprocessing settings disagree with its fairseq checkpoint's task."""


# --------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------


def parse_conv_feature_layers(spec: str) -> list[tuple[int, int, int]]:
    """Parse fairseq's ``conv_feature_layers`` string without ``eval``.

    Accepts list literals of ``(dim, kernel, stride)`` tuples joined with ``+`` and
    repeated with ``* n``, e.g. ``"[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"``.

    Raises:
        CheckpointError: anything else (names, calls, wrong tuple sizes).
    """

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(elt) for elt in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Add) and isinstance(left, list) and isinstance(right, list):
                return left + right
            if isinstance(node.op, ast.Mult) and isinstance(left, list) and isinstance(right, int):
                return left * right
            if isinstance(node.op, ast.Mult) and isinstance(left, int) and isinstance(right, list):
                return right * left
        raise ValueError(ast.dump(node))

    try:
        layers = value(ast.parse(str(spec).strip(), mode="eval").body)
    except (SyntaxError, ValueError, RecursionError) as exc:
        raise CheckpointError(
            f"HuBERT checkpoint: conv_feature_layers {spec!r} is not a list of (dim, kernel, stride) "
            "tuples such as \"[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2\"."
        ) from exc
    if (
        not isinstance(layers, list)
        or not layers
        or not all(
            isinstance(t, tuple) and len(t) == 3 and all(isinstance(v, int) and v > 0 for v in t)
            for t in layers
        )
    ):
        raise CheckpointError(
            f"HuBERT checkpoint: conv_feature_layers {spec!r} must be a non-empty list of "
            "(dim, kernel, stride) tuples of positive integers."
        )
    return layers


def _fairseq_sections(ckpt: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model and task settings of a fairseq checkpoint (hydra ``cfg`` or legacy ``args``)."""
    cfg = ckpt.get("cfg")
    if cfg is not None:
        model_src, task_src = cfg_get(cfg, "model"), cfg_get(cfg, "task")
    elif ckpt.get("args") is not None:
        model_src = task_src = ckpt["args"]
    else:
        raise CheckpointError(
            "HuBERT checkpoint: neither 'cfg' nor 'args' found; this is not a fairseq checkpoint."
        )
    if model_src is None:
        raise CheckpointError("HuBERT checkpoint: its cfg has no 'model' section.")
    model = {k: cfg_get(model_src, k, default=d) for k, d in _FAIRSEQ_MODEL_DEFAULTS.items()}
    task = {k: cfg_get(task_src, k, default=d) for k, d in _FAIRSEQ_TASK_DEFAULTS.items()}
    name = cfg_get(model_src, "_name", default=None) or cfg_get(model_src, "arch", default=None)
    if name is not None and str(name) not in ("hubert", "hubert_base", "hubert_large"):
        raise CheckpointError(
            f"HuBERT checkpoint: the model is a fairseq {str(name)!r}, not a pretrained 'hubert'. "
            "Only pretrained HuBERT checkpoints (such as mhubert_base_vp_en_es_fr_it3.pt) convert."
        )
    return model, task


def hubert_config_from_fairseq(model_cfg: Mapping[str, Any]):
    """A transformers ``HubertConfig`` equivalent to fairseq HuBERT settings ``model_cfg``.

    ``model_cfg`` maps fairseq's ``HubertConfig`` field names (``encoder_layers``,
    ``conv_feature_layers``, ...) to values; enum stand-ins are accepted as strings.

    Raises:
        CheckpointError: settings with no transformers equivalent (conformer layers,
            multi-layer positional convolution, unknown activation or extractor mode).
    """
    from transformers import HubertConfig

    cfg = {**_FAIRSEQ_MODEL_DEFAULTS, **dict(model_cfg)}
    layer_type = str(cfg["layer_type"])
    if layer_type != "transformer":
        raise CheckpointError(f"HuBERT checkpoint: layer_type {layer_type!r} is not supported "
                              "(only 'transformer').")
    if int(cfg["pos_conv_depth"]) != 1:
        raise CheckpointError("HuBERT checkpoint: pos_conv_depth > 1 is not supported.")
    mode = str(cfg["extractor_mode"])
    if mode not in ("default", "layer_norm"):
        raise CheckpointError(f"HuBERT checkpoint: unknown extractor_mode {mode!r} "
                              "(expected 'default' or 'layer_norm').")
    activation = str(cfg["activation_fn"])
    if activation not in _ACTIVATIONS:
        raise CheckpointError(f"HuBERT checkpoint: activation_fn {activation!r} is not supported "
                              f"(one of {sorted(_ACTIVATIONS)}).")
    conv = parse_conv_feature_layers(cfg["conv_feature_layers"])
    return HubertConfig(
        architectures=["HubertModel"],
        hidden_size=int(cfg["encoder_embed_dim"]),
        num_hidden_layers=int(cfg["encoder_layers"]),
        num_attention_heads=int(cfg["encoder_attention_heads"]),
        intermediate_size=int(cfg["encoder_ffn_embed_dim"]),
        hidden_act=_ACTIVATIONS[activation],
        hidden_dropout=float(cfg["dropout"]),
        attention_dropout=float(cfg["attention_dropout"]),
        activation_dropout=float(cfg["activation_dropout"]),
        feat_proj_dropout=float(cfg["dropout_input"]),
        layerdrop=float(cfg["encoder_layerdrop"]),
        layer_norm_eps=1e-5,
        feat_extract_norm="group" if mode == "default" else "layer",
        feat_extract_activation="gelu",  # fairseq's conv blocks always use nn.GELU
        feat_proj_layer_norm=True,
        conv_dim=[c[0] for c in conv],
        conv_kernel=[c[1] for c in conv],
        conv_stride=[c[2] for c in conv],
        conv_bias=bool(cfg["conv_bias"]),
        num_conv_pos_embeddings=int(cfg["conv_pos"]),
        num_conv_pos_embedding_groups=int(cfg["conv_pos_groups"]),
        conv_pos_batch_norm=bool(cfg["conv_pos_batch_norm"]),
        do_stable_layer_norm=bool(cfg["layer_norm_first"]),
        mask_time_prob=float(cfg["mask_prob"]),
        mask_time_length=int(cfg["mask_length"]),
        mask_feature_prob=float(cfg["mask_channel_prob"]),
        mask_feature_length=int(cfg["mask_channel_length"]),
    )


# --------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------


def _weight_norm_names(target_keys: set[str]) -> tuple[str, str]:
    """Names of the positional conv's weight-norm (g, v) in this transformers/torch version."""
    prefix = "encoder.pos_conv_embed.conv."
    if prefix + "parametrizations.weight.original0" in target_keys:
        return prefix + "parametrizations.weight.original0", prefix + "parametrizations.weight.original1"
    return prefix + "weight_g", prefix + "weight_v"


def _target_name(key: str, config: Any, target_keys: set[str]) -> str | None:
    """transformers name of fairseq tensor ``key`` (``None``: not an inference weight)."""
    if _PRETRAINING_ONLY.match(key):
        return None
    m = re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.(.+)", key)
    if m:
        i, rest = m.groups()
        sub = {"0.weight": "conv.weight", "0.bias": "conv.bias"}
        if config.feat_extract_norm == "group" and i == "0":
            sub.update({"2.weight": "layer_norm.weight", "2.bias": "layer_norm.bias"})
        if config.feat_extract_norm == "layer":
            sub.update({"2.1.weight": "layer_norm.weight", "2.1.bias": "layer_norm.bias"})
        return f"feature_extractor.conv_layers.{i}.{sub[rest]}" if rest in sub else key
    m = re.fullmatch(r"(layer_norm|post_extract_proj)\.(weight|bias)", key)
    if m:
        module = "layer_norm" if m.group(1) == "layer_norm" else "projection"
        return f"feature_projection.{module}.{m.group(2)}"
    if key == "mask_emb":
        # transformers only creates the embedding when masking probabilities are > 0
        return "masked_spec_embed" if "masked_spec_embed" in target_keys else None
    if key.startswith("encoder.pos_conv."):
        g_name, v_name = _weight_norm_names(target_keys)
        rest = key[len("encoder.pos_conv."):]
        if config.conv_pos_batch_norm:  # Sequential(BatchNorm1d, Conv1d, SamePad, GELU)
            if rest.startswith("0."):
                return "encoder.pos_conv_embed.batch_norm." + rest[2:]
            if rest.startswith("1."):
                return "encoder.pos_conv_embed.conv." + rest[2:]
            return key
        return {"0.weight_g": g_name, "0.weight_v": v_name,
                "0.bias": "encoder.pos_conv_embed.conv.bias"}.get(rest, key)
    if key in ("encoder.layer_norm.weight", "encoder.layer_norm.bias"):
        return key
    m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
    if m:
        i, module, kind = m.groups()
        module_map = {
            "self_attn.q_proj": "attention.q_proj",
            "self_attn.k_proj": "attention.k_proj",
            "self_attn.v_proj": "attention.v_proj",
            "self_attn.out_proj": "attention.out_proj",
            "self_attn_layer_norm": "layer_norm",
            "fc1": "feed_forward.intermediate_dense",
            "fc2": "feed_forward.output_dense",
            "final_layer_norm": "final_layer_norm",
        }
        if module in module_map:
            return f"encoder.layers.{i}.{module_map[module]}.{kind}"
    return key  # unknown: reported as unmapped


def map_fairseq_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: Any, target: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename a fairseq HuBERT state dict to ``HubertModel`` names.

    Args:
        state_dict: fairseq ``model`` state dict.
        config: the ``HubertConfig`` the weights are for.
        target: ``HubertModel(config).state_dict()`` (names and shapes to fill).

    Returns:
        a state dict with exactly the keys of ``target``.

    Raises:
        CheckpointError: fairseq tensors with no place in the model, model tensors that the
            checkpoint does not provide, or shape mismatches; all of them listed.
    """
    target_keys = set(target)
    out: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    mismatched: list[str] = []
    for key, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            unmapped.append(key)
            continue
        name = _target_name(key, config, target_keys)
        if name is None:
            continue
        if name not in target_keys:
            unmapped.append(key)
            continue
        if tuple(tensor.shape) != tuple(target[name].shape):
            mismatched.append(f"{key} {tuple(tensor.shape)} -> {name} {tuple(target[name].shape)}")
            continue
        out[name] = tensor.detach().to(target[name].dtype).contiguous()

    # fairseq omits post_extract_proj when the conv output already has the encoder width;
    # transformers always has the projection, so it becomes the identity.
    proj_w, proj_b = "feature_projection.projection.weight", "feature_projection.projection.bias"
    if proj_w not in out and "post_extract_proj.weight" not in state_dict:
        shape = tuple(target[proj_w].shape)
        if shape[0] == shape[1]:
            out[proj_w] = torch.eye(shape[0], dtype=target[proj_w].dtype)
            out[proj_b] = torch.zeros(shape[0], dtype=target[proj_b].dtype)

    missing = sorted(target_keys - set(out))
    if unmapped or missing or mismatched:
        parts = []
        if unmapped:
            parts.append(f"unmapped checkpoint tensors: {', '.join(sorted(unmapped))}")
        if missing:
            parts.append(f"model tensors missing from the checkpoint: {', '.join(missing)}")
        if mismatched:
            parts.append(f"shape mismatches: {'; '.join(mismatched)}")
        raise CheckpointError(
            "HuBERT checkpoint does not match a fairseq pretrained HuBERT of its own config ("
            + " | ".join(parts) + ")."
        )
    return out


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------


def convert_fairseq_hubert(
    checkpoint: PathLike, out_dir: PathLike, *, trust_pickle: bool = False
) -> Path:
    """Convert a fairseq HuBERT checkpoint into a transformers folder.

    Args:
        checkpoint: fairseq ``.pt`` (e.g. ``mhubert_base_vp_en_es_fr_it3.pt``): a dict with
            the ``model`` state dict and ``cfg`` (``model``/``task`` sections) or legacy ``args``.
        out_dir: folder to write (created): ``config.json``, ``model.safetensors`` and
            ``preprocessor_config.json`` (``do_normalize`` = the fairseq task's ``normalize``,
            ``sampling_rate`` = its ``sample_rate``, 16 kHz for mHuBERT).
        trust_pickle: required for real fairseq checkpoints, whose ``cfg`` holds fairseq
            objects; they are unpickled as inert stand-ins, fairseq is never imported.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`, loadable with :func:`load_hubert`.

    Raises:
        ModelNotFoundError: ``checkpoint`` does not exist.
        UnsafeCheckpointError: the file needs unpickling and ``trust_pickle`` is False.
        CheckpointError: unreadable file, or weights/config that do not form a HuBERT.
    """
    from transformers import HubertModel, Wav2Vec2FeatureExtractor

    path = Path(os.path.expanduser(str(checkpoint)))
    if not path.is_file():
        raise ModelNotFoundError(f"HuBERT checkpoint: {path} does not exist.")
    ckpt = load_torch_checkpoint(path, trust_pickle=trust_pickle, what="HuBERT checkpoint")
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("model"), Mapping):
        raise CheckpointError(
            f"HuBERT checkpoint: {path} is not a fairseq checkpoint (no 'model' state dict)."
        )
    model_cfg, task_cfg = _fairseq_sections(ckpt)
    config = hubert_config_from_fairseq(model_cfg)
    model = HubertModel(config)
    state = map_fairseq_state_dict(ckpt["model"], config, model.state_dict())
    model.load_state_dict(state, strict=True)
    model.eval()
    # the task's input settings, kept for load_hubert's check of preprocessor_config.json
    setattr(model.config, TASK_KEY, {"normalize": bool(task_cfg["normalize"]),
                                     "sample_rate": int(task_cfg["sample_rate"]),
                                     "checkpoint": path.name})

    out = Path(os.path.expanduser(str(out_dir)))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=int(task_cfg["sample_rate"]),
        padding_value=0.0,
        do_normalize=bool(task_cfg["normalize"]),
        return_attention_mask=config.feat_extract_norm == "layer",
    ).save_pretrained(out)
    return out


def load_hubert(
    ref: PathLike = DEFAULT_HUBERT,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    trust_pickle: bool = False,
):
    """Load a transformers HuBERT folder (local path or hub id) for inference.

    Args:
        ref: folder with ``config.json`` + weights (+ ``preprocessor_config.json``), or a
            hub id such as ``"voidful/mhubert-base"``.
        device: where to put the model (default: CUDA when available, else CPU).
        dtype: parameter dtype.
        trust_pickle: when ``config.json`` has no ``fairseq_task`` record but the folder
            holds the fairseq checkpoint (``mhubert_base_vp_en_es_fr_it3.pt``), unpickle it
            (inert stand-ins, as in :func:`convert_fairseq_hubert`) to read its task's
            ``normalize`` for the check below. Without it such a folder is not checked,
            except the default hub id, whose upstream task is known (:data:`KNOWN_TASKS`).

    Returns:
        ``(model, feature_extractor)``: a ``HubertModel`` in eval mode and the
        ``Wav2Vec2FeatureExtractor`` whose ``do_normalize``/``sampling_rate`` describe the
        input the model expects. A folder without ``preprocessor_config.json`` gets the
        checkpoint task's settings when known, else a plain 16 kHz unnormalised input.

    Warns:
        HubertConfigWarning: ``preprocessor_config.json``'s ``do_normalize`` or
            ``sampling_rate`` disagrees with the fairseq checkpoint's task; the task's value
            is used (it is what the original fed the model).

    Raises:
        ModelNotFoundError: no such folder / hub id, or a folder without a transformers
            model (e.g. only the fairseq ``.pt``, with instructions to convert it).
        CheckpointError: the folder's model is not a HuBERT.
    """
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    folder = resolve_dir(ref, what="HuBERT speech encoder", allow_patterns=_HUB_ALLOW_PATTERNS)
    if not (folder / "config.json").is_file():
        fairseq_pts = sorted(p.name for p in folder.glob("*.pt"))
        hint = (
            f" It holds the fairseq checkpoint(s) {', '.join(fairseq_pts)}: convert one once with "
            f"`speechgpt-agent convert hubert {folder / fairseq_pts[0]} <out-folder>` and pass "
            "<out-folder>."
            if fairseq_pts
            else ""
        )
        raise ModelNotFoundError(f"HuBERT speech encoder: {folder} has no config.json.{hint}")
    try:
        config = HubertConfig.from_pretrained(folder)
    except Exception as exc:
        raise CheckpointError(f"HuBERT speech encoder: {folder}/config.json is not a HuBERT "
                              f"config ({exc}).") from exc
    if getattr(config, "model_type", None) != "hubert":
        raise CheckpointError(f"HuBERT speech encoder: {folder} holds a {config.model_type!r} "
                              "model, not 'hubert'.")
    try:
        model, info = HubertModel.from_pretrained(folder, config=config, output_loading_info=True)
    except pickle.UnpicklingError:  # torch's weights_only refused a pytorch_model.bin
        raise UnsafeCheckpointError(
            f"HuBERT speech encoder: the weights in {folder} are a pickle that torch will not load "
            "safely (it holds more than tensors). If you trust its source, convert the folder once "
            "to safetensors and pass the copy: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 python -c "
            "\"import sys; from transformers import HubertModel; "
            "HubertModel.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])\" "
            f"{folder} <out-folder> (then copy preprocessor_config.json and the k-means file)."
        ) from None
    except OSError as exc:
        raise ModelNotFoundError(f"HuBERT speech encoder: no weights in {folder} ({exc}).") from exc
    # transformers fills absent weights with random values and only logs it: refuse instead
    # (the masking embedding is used in training only).
    missing = [k for k in info.get("missing_keys", ()) if k != "masked_spec_embed"]
    if missing:
        raise CheckpointError(
            f"HuBERT speech encoder: the weights in {folder} lack {len(missing)} tensor(s) of "
            f"the model ({', '.join(sorted(missing)[:8])}{', ...' if len(missing) > 8 else ''})."
        )
    task, task_source = _checkpoint_task(folder, config, trust_pickle)
    known = task is None and isinstance(ref, str) and ref in KNOWN_TASKS
    if known:
        task, task_source = KNOWN_TASKS[str(ref)], f"the task of {UPSTREAM_CHECKPOINT}, which {ref} was converted from"
    if (folder / "preprocessor_config.json").is_file():
        feature_extractor = Wav2Vec2FeatureExtractor.from_pretrained(folder)
        if task is not None:
            _reconcile_with_task(feature_extractor, task, task_source, folder, warn=not known)
    else:
        feature_extractor = Wav2Vec2FeatureExtractor(
            feature_size=1,
            sampling_rate=int(task["sample_rate"]) if task else 16_000,
            padding_value=0.0,
            do_normalize=bool(task["normalize"]) if task else False,
        )
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device=device, dtype=dtype).eval()
    return model, feature_extractor


def _checkpoint_task(folder: Path, config: Any, trust_pickle: bool) -> tuple[dict[str, Any] | None, str]:
    """The fairseq task's ``normalize``/``sample_rate`` behind a folder, and where they come from.

    From ``config.json``'s ``fairseq_task`` record (written by :func:`convert_fairseq_hubert`);
    else, with ``trust_pickle``, from the upstream fairseq checkpoint in the folder; else
    ``(None, "")``.
    """
    record = getattr(config, TASK_KEY, None)
    if isinstance(record, Mapping) and isinstance(record.get("normalize"), bool):
        source = record.get("checkpoint") or "the fairseq checkpoint"
        return {"normalize": record["normalize"],
                "sample_rate": int(record.get("sample_rate", 16_000))}, \
            f"{folder / 'config.json'} ({TASK_KEY} of {source})"
    pt = folder / UPSTREAM_CHECKPOINT
    if trust_pickle and pt.is_file():
        ckpt = load_torch_checkpoint(pt, trust_pickle=True, what="HuBERT checkpoint")
        if isinstance(ckpt, Mapping) and (ckpt.get("cfg") is not None or ckpt.get("args") is not None):
            _, task = _fairseq_sections(ckpt)
            return {"normalize": bool(task["normalize"]), "sample_rate": int(task["sample_rate"])}, \
                f"the task of {pt}"
    return None, ""


def _reconcile_with_task(feature_extractor: Any, task: Mapping[str, Any], source: str,
                         folder: Path, *, warn: bool = True) -> None:
    """Warn about, and follow the task on, settings of preprocessor_config.json that differ.

    ``warn=False`` (a task known for the hub repo, :data:`KNOWN_TASKS`): the user cannot fix
    the repo's file, so it is only logged."""
    problems = []
    if bool(feature_extractor.do_normalize) != task["normalize"]:
        problems.append(
            f"do_normalize={json.dumps(bool(feature_extractor.do_normalize))} but the task has "
            f"normalize={json.dumps(task['normalize'])}")
        feature_extractor.do_normalize = task["normalize"]
    if int(feature_extractor.sampling_rate) != task["sample_rate"]:
        problems.append(
            f"sampling_rate={feature_extractor.sampling_rate} but the task has "
            f"sample_rate={task['sample_rate']}")
        feature_extractor.sampling_rate = task["sample_rate"]
    if problems and not warn:
        logger.info("HuBERT speech encoder: %s: %s; using %s", folder / "preprocessor_config.json",
                    "; ".join(problems), source)
    elif problems:
        warnings.warn(
            f"HuBERT speech encoder: {folder / 'preprocessor_config.json'} disagrees with "
            f"{source}: {'; '.join(problems)}. Using the task's settings, the input the model "
            "and its k-means were trained on (with normalize, the whole waveform is "
            "layer-normed first); set them in preprocessor_config.json to silence this.",
            HubertConfigWarning,
            stacklevel=3,
        )
