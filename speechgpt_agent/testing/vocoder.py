"""Tiny fairseq CodeHiFiGAN vocoders, written exactly as fairseq's training saves them.

:func:`make_fairseq_codehifigan` writes a folder with ``config.json`` (with the training
keys the released file carries) and a ``g_<step>`` checkpoint ``{"generator": state_dict}``.
The state dict comes from :func:`build_fairseq_codehifigan`, an independent construction of
fairseq's ``CodeGenerator`` module tree with real ``torch.nn.utils.weight_norm`` layers
(``weight_g`` / ``weight_v`` parameters) - not from this package's model class - so
loaders are checked against PyTorch's own weight norm. Weights are random but scaled so
that the output is ordinary audio-range signal (neither silent nor clipped) and the
predicted durations vary between 1 and a few frames.

The defaults are tiny (32 channels after ``conv_pre``, 16-dim unit embeddings) but keep
the released upsample rates, kernels and dilations, hence the real receptive field.
"""

from __future__ import annotations

import copy
import json
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["build_fairseq_codehifigan", "make_fairseq_codehifigan", "tiny_codehifigan_config"]

_TINY_CONFIG: dict[str, Any] = {
    # architecture (the released vocoder's, with small widths)
    "resblock": "1",
    "upsample_rates": [5, 4, 4, 2, 2],
    "upsample_kernel_sizes": [11, 8, 8, 4, 4],
    "upsample_initial_channel": 32,
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "num_embeddings": 1000,
    "embedding_dim": 16,
    "model_in_dim": 16,
    "dur_predictor_params": {
        "encoder_embed_dim": 16,
        "var_pred_hidden_dim": 16,
        "var_pred_kernel_size": 3,
        "var_pred_dropout": 0.5,
    },
    "sampling_rate": 16000,
    "code_hop_size": 320,
    "f0": False,
    # training-only keys, present in the released config.json
    "num_gpus": 0,
    "batch_size": 16,
    "learning_rate": 0.0002,
    "adam_b1": 0.8,
    "adam_b2": 0.99,
    "lr_decay": 0.999,
    "seed": 1234,
    "segment_size": 8960,
    "num_mels": 80,
    "num_freq": 1025,
    "n_fft": 1024,
    "hop_size": 256,
    "win_size": 1024,
    "dur_prediction_weight": 1.0,
    "fmin": 0,
    "fmax": 8000,
    "fmax_for_loss": None,
    "num_workers": 4,
    "dist_config": {"dist_backend": "nccl", "dist_url": "env://", "world_size": 1},
}


def tiny_codehifigan_config(**overrides: Any) -> dict[str, Any]:
    """A fairseq CodeHiFiGAN ``config.json`` dict: tiny widths, released structure.

    ``overrides`` replace keys (``dur_predictor_params=None`` removes the predictor).
    Unless overridden too, ``model_in_dim`` follows ``embedding_dim`` (doubled with
    ``multispkr``) and the duration predictor's widths follow ``embedding_dim``.
    """
    config = copy.deepcopy(_TINY_CONFIG)
    config.update(copy.deepcopy(overrides))
    dim = int(config["embedding_dim"])
    if "model_in_dim" not in overrides:
        config["model_in_dim"] = dim * (2 if config.get("multispkr") else 1)
    if config.get("dur_predictor_params") is None:
        config.pop("dur_predictor_params", None)
    elif "dur_predictor_params" not in overrides:
        config["dur_predictor_params"].update(encoder_embed_dim=dim, var_pred_hidden_dim=dim)
    return config


def _wn(module: nn.Module) -> nn.Module:
    with warnings.catch_warnings():  # fairseq used the (now deprecated) hook-based weight norm
        warnings.simplefilter("ignore", FutureWarning)
        return torch.nn.utils.weight_norm(module)


def _padding(kernel: int, dilation: int = 1) -> int:
    return (kernel * dilation - dilation) // 2


class _FairseqResBlock(nn.Module):
    def __init__(self, channels: int, kernel: int, dilations: list[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            _wn(nn.Conv1d(channels, channels, kernel, 1, dilation=d, padding=_padding(kernel, d)))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            _wn(nn.Conv1d(channels, channels, kernel, 1, dilation=1, padding=_padding(kernel)))
            for _ in dilations
        )


class _FairseqVariancePredictor(nn.Module):
    def __init__(self, params: Mapping[str, Any]) -> None:
        super().__init__()
        c_in, hidden = params["encoder_embed_dim"], params["var_pred_hidden_dim"]
        kernel = params["var_pred_kernel_size"]
        self.conv1 = nn.Sequential(
            nn.Conv1d(c_in, hidden, kernel, padding=(kernel - 1) // 2), nn.ReLU()
        )
        self.ln1 = nn.LayerNorm(hidden)
        self.conv2 = nn.Sequential(nn.Conv1d(hidden, hidden, kernel, padding=1), nn.ReLU())
        self.ln2 = nn.LayerNorm(hidden)
        self.proj = nn.Linear(hidden, 1)


class _FairseqCodeGenerator(nn.Module):
    """fairseq's ``CodeGenerator`` module tree (parameters and their names only)."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        channels = cfg["upsample_initial_channel"]
        self.conv_pre = _wn(nn.Conv1d(cfg.get("model_in_dim", 80), channels, 7, 1, padding=3))
        self.ups = nn.ModuleList(
            _wn(
                nn.ConvTranspose1d(
                    channels // 2**i, channels // 2 ** (i + 1), k, u, padding=(k - u) // 2
                )
            )
            for i, (u, k) in enumerate(zip(cfg["upsample_rates"], cfg["upsample_kernel_sizes"]))
        )
        self.resblocks = nn.ModuleList(
            _FairseqResBlock(channels // 2 ** (i + 1), k, d)
            for i in range(len(self.ups))
            for k, d in zip(cfg["resblock_kernel_sizes"], cfg["resblock_dilation_sizes"])
        )
        self.conv_post = _wn(nn.Conv1d(channels // 2 ** len(self.ups), 1, 7, 1, padding=3))
        self.dict = nn.Embedding(cfg["num_embeddings"], cfg["embedding_dim"])
        if cfg.get("embedder_params"):
            self.spkr: nn.Module = nn.Linear(cfg.get("embedder_dim", 256), cfg["embedding_dim"])
        elif cfg.get("multispkr"):
            self.spkr = nn.Embedding(cfg.get("num_speakers", 200), cfg["embedding_dim"])
        if cfg.get("dur_predictor_params"):
            self.dur_predictor = _FairseqVariancePredictor(cfg["dur_predictor_params"])


def _randomize(model: _FairseqCodeGenerator, cfg: Mapping[str, Any], gen: torch.Generator) -> None:
    """Random weights that keep activations near unit scale through the whole generator."""

    def weight_norm_pair(module: nn.Module, row_norm: float) -> None:
        v = module.weight_v
        v.copy_(torch.randn(v.shape, generator=gen))
        # magnitudes deliberately differ from |v| so that folding the weight norm matters
        jitter = 0.5 + torch.rand(module.weight_g.shape, generator=gen)
        module.weight_g.copy_(jitter * row_norm)
        if module.bias is not None:
            module.bias.copy_(0.05 * torch.randn(module.bias.shape, generator=gen))

    weight_norm_pair(model.conv_pre, 1.0)
    for up, rate in zip(model.ups, cfg["upsample_rates"]):
        weight_norm_pair(up, math.sqrt(rate / 2))
    for block in model.resblocks:
        for conv in block.convs1:
            weight_norm_pair(conv, 1.0)
        for conv in block.convs2:
            weight_norm_pair(conv, 0.4)
    weight_norm_pair(model.conv_post, 3.0)
    model.dict.weight.copy_(torch.randn(model.dict.weight.shape, generator=gen))
    for name, param in model.named_parameters():
        if name.startswith("spkr."):
            param.copy_(torch.randn(param.shape, generator=gen) / math.sqrt(param.shape[-1]))
    predictor = getattr(model, "dur_predictor", None)
    if predictor is not None:
        for conv in (predictor.conv1[0], predictor.conv2[0]):
            fan_in = conv.weight.shape[1] * conv.weight.shape[2]
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * math.sqrt(2 / fan_in))
            conv.bias.copy_(0.1 * torch.randn(conv.bias.shape, generator=gen))
        for ln in (predictor.ln1, predictor.ln2):
            ln.weight.copy_(1 + 0.1 * torch.randn(ln.weight.shape, generator=gen))
            ln.bias.copy_(0.1 * torch.randn(ln.bias.shape, generator=gen))
        hidden = predictor.proj.weight.shape[1]
        # log-durations around log(2.5): exp(.) - 1 spans roughly 0.3 .. 4 frames
        predictor.proj.weight.copy_(
            0.5 / math.sqrt(hidden) * torch.randn(predictor.proj.weight.shape, generator=gen)
        )
        predictor.proj.bias.fill_(math.log(2.5))


def build_fairseq_codehifigan(config: Mapping[str, Any], *, seed: int = 0) -> nn.Module:
    """fairseq's ``CodeGenerator`` modules for ``config`` with seeded random weights.

    Convolutions are wrapped by ``torch.nn.utils.weight_norm`` (``weight_g``/``weight_v``),
    as in fairseq; the global RNG is left untouched. Returns the module in eval mode.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _FairseqCodeGenerator(config)
    with torch.no_grad():
        _randomize(model, config, torch.Generator().manual_seed(seed))
    return model.eval()


def make_fairseq_codehifigan(
    folder: str | os.PathLike,
    *,
    seed: int = 0,
    checkpoint_name: str = "g_00000100",
    **config_overrides: Any,
) -> Path:
    """Write a random fairseq CodeHiFiGAN into ``folder`` and return the folder.

    Files: ``config.json`` (:func:`tiny_codehifigan_config` with ``config_overrides``)
    and ``checkpoint_name`` holding ``{"generator": state_dict}`` with weight-norm
    parameter names, as fairseq / speech-resynthesis training writes ``g_<step>`` files.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = tiny_codehifigan_config(**config_overrides)
    model = build_fairseq_codehifigan(config, seed=seed)
    (folder / "config.json").write_text(json.dumps(config, indent=4), encoding="utf-8")
    torch.save({"generator": model.state_dict()}, folder / checkpoint_name)
    return folder


def batched_against_lone_steps(vocoder: Any, plan: list[list[int]], seed: int = 0) -> tuple[float, int]:
    """Generator steps of several streams run by :class:`StreamBatcher` in one thread, round
    by round, against the same steps of each stream alone.

    ``plan``: per stream, the frames of each round's step (``0``: no step that round; a
    stream's first step must hold its first run's frames). Returns (max difference, batches).
    """
    import numpy as np

    from speechgpt_agent.vocoder_batch import StreamBatcher, _Request

    channels = vocoder.model.conv_pre.in_channels
    gen = torch.Generator().manual_seed(seed)
    chunks = [[torch.randn(1, channels, n, generator=gen) if n else None for n in sizes] for sizes in plan]
    with torch.inference_mode():
        lone = []
        for cs in chunks:
            stream = vocoder.stream(predict_durations=False)
            out = [stream._generator.step(c, False)[0, 0].numpy() for c in cs if c is not None]
            out.append(stream._generator.step(torch.zeros(1, channels, 0), True)[0, 0].numpy())
            lone.append(np.concatenate(out))
        streams = [vocoder.stream(predict_durations=False) for _ in chunks]
        batcher = StreamBatcher()
        outs = [[] for _ in chunks]
        for r in range(max(len(cs) for cs in chunks)):
            requests = [(k, _Request(streams[k], cs[r])) for k, cs in enumerate(chunks)
                        if r < len(cs) and cs[r] is not None]
            batcher._run([req for _, req in requests])
            for k, req in requests:
                if req.error is not None:
                    raise req.error
                outs[k].append(req.audio)
        for k, stream in enumerate(streams):
            outs[k].append(stream._generator.step(torch.zeros(1, channels, 0), True)[0, 0].numpy())
    worst = 0.0
    for got, expected in zip(outs, lone):
        got = np.concatenate(got)
        if got.shape != expected.shape:
            raise AssertionError(f"batched audio {got.shape} != lone audio {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst, batcher.batches

