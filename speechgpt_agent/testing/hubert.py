"""Tiny mHuBERT assets in the exact upstream formats: a fairseq ``.pt`` and a joblib k-means.

:func:`make_fairseq_hubert_checkpoint` writes what ``fairseq.checkpoint_utils.save_state``
writes for a pretrained HuBERT: a ``torch.save`` dict whose ``model`` holds fairseq's
parameter names (weight-normalised ``encoder.pos_conv.0.weight_g``/``weight_v``, the
pretraining-only ``label_embs_concat`` and ``final_proj``) and whose ``cfg`` holds the
``model``/``task`` sections with a fairseq enum member (``extractor_mode`` is a
``fairseq.dataclass.constants.Choices``), so loading it needs ``trust_pickle=True`` just
like the released ``mhubert_base_vp_en_es_fr_it3.pt``. The weights are random tensors
created by their fairseq names and shapes, independently of the converter.

:func:`make_kmeans_joblib` fits a real scikit-learn ``MiniBatchKMeans`` (the estimator of
fairseq's ``examples/hubert/simple_kmeans/learn_kmeans.py``) and ``joblib.dump``-s it, as
``mhubert_base_vp_en_es_fr_it3_L11_km1000.bin`` was made.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

PathLike = str | os.PathLike

# The conv stack of every HuBERT: 320 samples per frame (50 Hz at 16 kHz), a receptive
# field of 400 samples. Tiny models keep kernels and strides and shrink the width.
_CONV_SHAPE = [(10, 5)] + [(3, 2)] * 4 + [(2, 2)] * 2


class _FairseqChoice:
    """A member of fairseq's ``ChoiceEnum`` (``fairseq.dataclass.constants.Choices``).

    Real fairseq checkpoints carry such enum members in ``cfg`` (``extractor_mode``,
    ``activation_fn``, ...). An enum member pickles as ``Choices(value)``; this class
    pickles the same way under fairseq's name (see :class:`_FairseqPickler`), so reading
    the file back needs fairseq or a stand-in for it.
    """

    pickle_as = ("fairseq.dataclass.constants", "Choices")

    def __init__(self, value: str) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (type(self), (self.value,))


class _FairseqPickler(pickle._Pickler):  # the pure-Python pickler lets save_global be overridden
    """Pickler that writes classes carrying ``pickle_as`` under that (module, name)."""

    def save_global(self, obj: Any, name: str | None = None) -> None:
        target = obj.__dict__.get("pickle_as") if isinstance(obj, type) else None
        if target is None:
            super().save_global(obj, name)
            return
        module, qualname = target
        self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode())
        self.memoize(obj)


_fairseq_pickle_module = types.SimpleNamespace(Pickler=_FairseqPickler, __name__="pickle")


def _fairseq_state_dict(
    generator: torch.Generator,
    *,
    conv_dims: list[int],
    extractor_mode: str,
    conv_bias: bool,
    embed_dim: int,
    ffn_dim: int,
    layers: int,
    conv_pos: int,
    conv_pos_groups: int,
    conv_pos_batch_norm: bool,
    final_dim: int,
    num_classes: int,
) -> dict[str, torch.Tensor]:
    """Random weights by fairseq HuBERT names and shapes (``HubertModel.state_dict()``)."""

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * scale

    def norm_params(prefix: str, dim: int) -> dict[str, torch.Tensor]:
        return {prefix + "weight": 1.0 + randn(dim, scale=0.1), prefix + "bias": randn(dim, scale=0.1)}

    def linear(prefix: str, n_out: int, n_in: int) -> dict[str, torch.Tensor]:
        return {prefix + "weight": randn(n_out, n_in, scale=1 / math.sqrt(n_in)),
                prefix + "bias": randn(n_out, scale=0.1)}

    sd: dict[str, torch.Tensor] = {"mask_emb": torch.rand(embed_dim, generator=generator)}
    in_dim = 1
    for i, (dim, (kernel, _)) in enumerate(zip(conv_dims, _CONV_SHAPE)):
        prefix = f"feature_extractor.conv_layers.{i}."
        sd[prefix + "0.weight"] = randn(dim, in_dim, kernel, scale=1 / math.sqrt(in_dim * kernel))
        if conv_bias:
            sd[prefix + "0.bias"] = randn(dim, scale=0.1)
        if extractor_mode == "layer_norm":  # Sequential(conv, dropout, Sequential(T, LN, T), GELU)
            sd.update(norm_params(prefix + "2.1.", dim))
        elif i == 0:  # Sequential(conv, dropout, Fp32GroupNorm, GELU)
            sd.update(norm_params(prefix + "2.", dim))
        in_dim = dim
    if conv_dims[-1] != embed_dim:
        sd.update(linear("post_extract_proj.", embed_dim, conv_dims[-1]))

    per_group = embed_dim // conv_pos_groups
    conv_scale = 1 / math.sqrt(per_group * conv_pos)
    if conv_pos_batch_norm:  # Sequential(BatchNorm1d, Conv1d, SamePad, GELU)
        sd.update(norm_params("encoder.pos_conv.0.", embed_dim))
        sd["encoder.pos_conv.0.running_mean"] = randn(embed_dim, scale=0.1)
        sd["encoder.pos_conv.0.running_var"] = 1.0 + torch.rand(embed_dim, generator=generator)
        sd["encoder.pos_conv.0.num_batches_tracked"] = torch.tensor(1000)
        sd["encoder.pos_conv.1.weight"] = randn(embed_dim, per_group, conv_pos, scale=conv_scale)
        sd["encoder.pos_conv.1.bias"] = randn(embed_dim, scale=0.1)
    else:  # weight_norm(Conv1d, dim=2): g is [1, 1, kernel]
        sd["encoder.pos_conv.0.bias"] = randn(embed_dim, scale=0.1)
        sd["encoder.pos_conv.0.weight_g"] = 0.5 + torch.rand(1, 1, conv_pos, generator=generator)
        sd["encoder.pos_conv.0.weight_v"] = randn(embed_dim, per_group, conv_pos)
    for i in range(layers):
        prefix = f"encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            sd.update(linear(f"{prefix}self_attn.{proj}.", embed_dim, embed_dim))
        sd.update(norm_params(prefix + "self_attn_layer_norm.", embed_dim))
        sd.update(linear(prefix + "fc1.", ffn_dim, embed_dim))
        sd.update(linear(prefix + "fc2.", embed_dim, ffn_dim))
        sd.update(norm_params(prefix + "final_layer_norm.", embed_dim))
    sd.update(norm_params("encoder.layer_norm.", embed_dim))
    sd.update(norm_params("layer_norm.", conv_dims[-1]))
    sd.update(linear("final_proj.", final_dim, embed_dim))
    sd["label_embs_concat"] = torch.rand(num_classes, final_dim, generator=generator)
    return sd


def make_fairseq_hubert_checkpoint(
    path: PathLike,
    *,
    seed: int = 0,
    encoder_layers: int = 2,
    encoder_embed_dim: int = 32,
    encoder_ffn_embed_dim: int = 64,
    encoder_attention_heads: int = 4,
    conv_dim: int = 16,
    extractor_mode: str = "default",
    conv_bias: bool = False,
    conv_pos: int = 8,
    conv_pos_groups: int = 4,
    conv_pos_batch_norm: bool = False,
    layer_norm_first: bool = False,
    activation_fn: str = "gelu",
    normalize: bool = False,
    final_dim: int = 16,
    num_classes: int = 12,
    legacy_args: bool = False,
) -> Path:
    """Write a tiny pretrained fairseq HuBERT checkpoint to ``path``.

    The conv feature encoder has the real kernels and strides (320 samples per frame,
    receptive field 400 samples) with ``conv_dim`` channels; the transformer has
    ``encoder_layers`` layers of width ``encoder_embed_dim``. ``conv_dim !=
    encoder_embed_dim`` gives a ``post_extract_proj`` as in mHuBERT (512 -> 768).

    Args:
        path: file to write (parents created).
        seed: seed of the random weights.
        extractor_mode: ``"default"`` (GroupNorm in the first conv block) or ``"layer_norm"``.
        layer_norm_first: pre-LN transformer layers (``True``) or post-LN (mHuBERT: False).
        normalize: the task's waveform normalisation flag.
        legacy_args: store the settings as an ``argparse.Namespace`` under ``args`` (older
            fairseq) instead of the hydra ``cfg`` dict.
        Other arguments: the fairseq ``HubertConfig`` fields of the same names.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    if extractor_mode not in ("default", "layer_norm"):
        raise ValueError(f"extractor_mode must be 'default' or 'layer_norm', got {extractor_mode!r}")
    conv_layers = [(conv_dim, k, s) for k, s in _CONV_SHAPE]
    conv_spec = f"[({conv_dim},10,5)] + [({conv_dim},3,2)] * 4 + [({conv_dim},2,2)] * 2"
    generator = torch.Generator().manual_seed(seed)
    state_dict = _fairseq_state_dict(
        generator,
        conv_dims=[c for c, _, _ in conv_layers],
        extractor_mode=extractor_mode,
        conv_bias=conv_bias,
        embed_dim=encoder_embed_dim,
        ffn_dim=encoder_ffn_embed_dim,
        layers=encoder_layers,
        conv_pos=conv_pos,
        conv_pos_groups=conv_pos_groups,
        conv_pos_batch_norm=conv_pos_batch_norm,
        final_dim=final_dim,
        num_classes=num_classes,
    )
    model_cfg: dict[str, Any] = {
        "_name": "hubert",
        "label_rate": 50.0,
        "extractor_mode": _FairseqChoice(extractor_mode),
        "encoder_layers": encoder_layers,
        "encoder_embed_dim": encoder_embed_dim,
        "encoder_ffn_embed_dim": encoder_ffn_embed_dim,
        "encoder_attention_heads": encoder_attention_heads,
        "activation_fn": _FairseqChoice(activation_fn),
        "layer_type": _FairseqChoice("transformer"),
        "dropout": 0.1,
        "attention_dropout": 0.1,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.05,
        "dropout_input": 0.1,
        "dropout_features": 0.1,
        "final_dim": final_dim,
        "untie_final_proj": False,
        "layer_norm_first": layer_norm_first,
        "conv_feature_layers": conv_spec,
        "conv_bias": conv_bias,
        "logit_temp": 0.1,
        "target_glu": False,
        "feature_grad_mult": 0.1,
        "mask_length": 10,
        "mask_prob": 0.8,
        "mask_selection": _FairseqChoice("static"),
        "mask_channel_prob": 0.0,
        "mask_channel_length": 10,
        "conv_pos": conv_pos,
        "conv_pos_groups": conv_pos_groups,
        "conv_pos_batch_norm": conv_pos_batch_norm,
        "latent_temp": [2.0, 0.5, 0.999995],
        "skip_masked": False,
        "skip_nomask": False,
        "checkpoint_activations": False,
        "required_seq_len_multiple": 2,
    }
    task_cfg: dict[str, Any] = {
        "_name": "hubert_pretraining",
        "data": "/checkpoint/data/vp_en_es_fr_it",
        "fine_tuning": False,
        "labels": ["km"],
        "label_dir": "/checkpoint/labels",
        "label_rate": 50.0,
        "sample_rate": 16000,
        "normalize": normalize,
        "enable_padding": False,
        "max_keep_size": None,
        "max_sample_size": 250000,
        "min_sample_size": 32000,
        "single_target": False,
        "random_crop": True,
        "pad_audio": False,
    }
    checkpoint: dict[str, Any] = {
        "model": state_dict,
        "optimizer_history": [
            {
                "criterion_name": "HubertCriterion",
                "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": None},
                "num_updates": 400000,
            }
        ],
        "task_state": {},
        "extra_state": {"epoch": 1, "val_loss": None},
        "last_optimizer_state": None,
    }
    if legacy_args:
        plain = {k: (v.value if isinstance(v, _FairseqChoice) else v) for k, v in model_cfg.items()}
        plain.pop("_name")
        task_plain = {k: v for k, v in task_cfg.items() if k != "_name"}
        checkpoint["args"] = argparse.Namespace(
            arch="hubert", task="hubert_pretraining", **{**plain, **task_plain}
        )
        checkpoint["cfg"] = None
    else:
        checkpoint["args"] = None
        checkpoint["cfg"] = {
            "_name": None,
            "common": {"_name": None, "fp16": True, "log_format": _FairseqChoice("json"), "seed": 1337},
            "model": model_cfg,
            "task": task_cfg,
            "criterion": {"_name": "hubert", "pred_masked_weight": 1.0, "pred_nomask_weight": 0.0},
        }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path, pickle_module=_fairseq_pickle_module)
    return path


def make_kmeans_joblib(
    path: PathLike,
    *,
    n_clusters: int = 8,
    dim: int = 32,
    seed: int = 0,
    features: np.ndarray | None = None,
) -> Path:
    """Fit a scikit-learn ``MiniBatchKMeans`` and ``joblib.dump`` it to ``path``.

    Args:
        path: file to write (the upstream name ends in ``.bin``).
        n_clusters: number of centroids ``K``.
        dim: feature dimension ``D`` of the random training data (ignored with ``features``).
        seed: seed of the data and of the estimator.
        features: ``[N, D]`` training frames (e.g. HuBERT features); random Gaussian
            clusters when ``None``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`; ``joblib.load(path).cluster_centers_`` is
        ``[K, D]``.
    """
    import joblib
    from sklearn.cluster import MiniBatchKMeans

    rng = np.random.default_rng(seed)
    if features is None:
        centers = rng.normal(size=(n_clusters, dim)) * 3.0
        labels = rng.integers(0, n_clusters, size=max(20 * n_clusters, 200))
        features = centers[labels] + rng.normal(size=(labels.size, dim))
    features = np.asarray(features, dtype=np.float32)
    km = MiniBatchKMeans(
        n_clusters=n_clusters,
        init="k-means++",
        max_iter=20,
        batch_size=256,
        n_init=1,
        reassignment_ratio=0.0,
        random_state=seed,
    ).fit(features)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(km, path)
    return path
