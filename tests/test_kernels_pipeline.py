"""The speech path gives the same result with the Triton kernels on and off.

Audio -> units (:class:`SpeechTokenizer`: ``kernels.quantize``) -> :class:`StreamingVocoder`
(``kernels.unit_embedding``, and ``kernels.lrelu_conv1d`` in every residual-block layer, fed
with the stream's left-context cache), units pushed a few at a time as the pipeline does:
once with ``SPEECHGPT_KERNELS=triton`` and once with ``SPEECHGPT_KERNELS=torch``.

The Triton kernels run in Triton's CPU interpreter, which must be chosen before ``import
triton``; as in ``test_kernels_triton.py``, the comparison therefore runs in a fresh pytest
process started with ``TRITON_INTERPRET=1`` (:func:`test_kernels_on_and_off_in_a_fresh_process`),
and a process started with it runs it directly. Models are tiny: a 2-layer HuBERT and the
tiny CodeHiFiGAN of :mod:`speechgpt_agent.testing.vocoder` with two upsamplings (x2, x2)
instead of five (x320) and two residual-block kernels instead of three: the interpreter
runs one 16 x 16 tile step in milliseconds, and the released 320 samples per frame would
take it about 15 s a frame.
"""

from __future__ import annotations

import functools
import importlib

import numpy as np
import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed (it ships for Linux only)")

from speechgpt_agent.audio import load_audio
from speechgpt_agent.kernels._triton_utils import interpreter_ready
from speechgpt_agent.testing.vocoder import make_fairseq_codehifigan, tiny_codehifigan_config
from speechgpt_agent.units import SpeechTokenizer
from speechgpt_agent.vocoder import CodeHiFiGAN, CodeHiFiGANConfig, UnitVocoder

SAMPLE_TOLERANCE = 1e-4  # fp32 sums in another order (the stream-vs-offline tolerance)
UNITS_PER_PUSH = 3  # small pushes: most residual layers run on a left-context cache
VOCODER = {  # overrides of the tiny config: 4 samples per frame (see the module docstring)
    "upsample_rates": [2, 2],
    "upsample_kernel_sizes": [4, 4],
    "code_hop_size": 4,
    "resblock_kernel_sizes": [3, 7],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
}

INTERPRETER = interpreter_ready()  # this process imported Triton under TRITON_INTERPRET=1
in_interpreter = pytest.mark.skipif(
    not INTERPRETER, reason="runs in a fresh TRITON_INTERPRET=1 process (test_kernels_on_and_off_in_a_fresh_process)"
)
compiled_triton = pytest.mark.skipif(INTERPRETER, reason="Triton was imported in interpreter mode")


@compiled_triton
def test_kernels_on_and_off_in_a_fresh_process(run_interpreted):
    run_interpreted(__file__)


def _tiny_tokenizer(audio: np.ndarray) -> SpeechTokenizer:
    """A random 2-layer HuBERT whose 12 centroids are features of ``audio`` (varied units)."""
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    config = HubertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        conv_dim=(16,) * 7, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4,
    )
    model = HubertModel(config).eval()
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=False)
    probe = SpeechTokenizer(model, extractor, np.zeros((1, 32), np.float32), layer=2)
    features = probe.features(audio)
    centroids = features[torch.randperm(features.shape[0], generator=torch.Generator().manual_seed(0))[:12]]
    return SpeechTokenizer(model, extractor, centroids, layer=2)


def _counting(module, name: str, calls: dict[str, int], monkeypatch) -> None:
    """Count calls of ``module.name`` (the real function still runs)."""
    real = getattr(module, name)

    @functools.wraps(real)
    def counted(*args, **kwargs):
        calls[name] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)


@in_interpreter
def test_speech_path_is_the_same_with_kernels_on_and_off(clips, tmp_path, monkeypatch):
    audio = load_audio(clips["hello_16k_mono.wav"]["path"])
    audio = audio[np.flatnonzero(np.abs(audio) > 0.05)[0] :][:3200]  # 0.2 s of speech
    tokenizer = _tiny_tokenizer(audio)
    vocoder = UnitVocoder.from_pretrained(make_fairseq_codehifigan(tmp_path / "vocoder", **VOCODER), device="cpu")

    # the Triton entry points, by kernel module
    entry_points = {"quantize": "quantize_triton", "unit_embedding": "unit_embedding_triton",
                    "vocoder": "lrelu_conv1d_triton"}
    triton_calls = dict.fromkeys(entry_points.values(), 0)
    for module, name in entry_points.items():
        _counting(importlib.import_module(f"speechgpt_agent.kernels.{module}"), name, triton_calls, monkeypatch)

    def speech_path(backend: str) -> tuple[tuple[int, ...], tuple[int, ...], np.ndarray, np.ndarray]:
        """(unit frames, merged units, streamed samples, offline samples) with ``backend``'s kernels."""
        monkeypatch.setenv("SPEECHGPT_KERNELS", backend)
        encoded = tokenizer.encode(audio, 16000)
        units = encoded.units
        stream = vocoder.stream()
        pieces = [stream.push(units[i : i + UNITS_PER_PUSH]) for i in range(0, len(units), UNITS_PER_PUSH)]
        return encoded.frames, units, np.concatenate([*pieces, stream.flush()]), vocoder.synthesize(units)

    frames_ref, units_ref, streamed_ref, offline_ref = speech_path("torch")
    assert not any(triton_calls.values()), triton_calls  # the references ran
    frames, units, streamed, offline = speech_path("triton")
    assert all(triton_calls.values()), triton_calls  # every kernel of the speech path ran in Triton

    assert len(set(units_ref)) >= 3 and len(units_ref) > UNITS_PER_PUSH  # a meaningful input
    assert frames == frames_ref and units == units_ref
    assert streamed_ref.size >= len(units) * vocoder.hop_length
    assert np.abs(streamed_ref).max() > 0.01  # audible signal, not silence compared with silence
    for got, expected in ((streamed, streamed_ref), (offline, offline_ref), (streamed_ref, offline_ref)):
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= SAMPLE_TOLERANCE


def test_training_gets_the_same_gradients_with_kernels_forced_on(monkeypatch):
    """The Triton kernels have no backward: under autograd the references run whatever
    ``SPEECHGPT_KERNELS`` says, so the vocoder trains the same with kernels on and off
    (forced Triton on CPU without the interpreter would raise; in the interpreter it would
    return outputs detached from the graph)."""
    torch.manual_seed(0)
    model = CodeHiFiGAN(CodeHiFiGANConfig.from_dict(tiny_codehifigan_config(**VOCODER))).train()
    frames = torch.randn(2, model.config.model_in_dim, 5)
    grads = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("SPEECHGPT_KERNELS", backend)
        model.zero_grad(set_to_none=True)
        model.generate(frames).square().sum().backward()
        grads[backend] = [p.grad for p in model.resblocks.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads["torch"])
    assert all(torch.equal(a, b) for a, b in zip(grads["torch"], grads["triton"], strict=True))


@in_interpreter
def test_batched_vocoder_steps_with_kernels_on(tmp_path, monkeypatch):
    """Several streams' generator steps batched (speechgpt_agent.vocoder_batch) with the Triton
    ``lrelu_conv1d`` on a [B, C, T] input and its left-context caches: equal to lone steps."""
    from speechgpt_agent.testing.vocoder import batched_against_lone_steps

    vocoder = UnitVocoder.from_pretrained(make_fairseq_codehifigan(tmp_path / "vocoder", **VOCODER), device="cpu")
    calls = {"lrelu_conv1d_triton": 0}
    _counting(importlib.import_module("speechgpt_agent.kernels.vocoder"), "lrelu_conv1d_triton", calls, monkeypatch)
    monkeypatch.setenv("SPEECHGPT_KERNELS", "triton")
    first = vocoder.stream()._first_frames
    worst, batches = batched_against_lone_steps(vocoder, [[first, 3, 5], [first + 2, 1], [0, first, 2]])
    assert calls["lrelu_conv1d_triton"] > 0 and batches >= 2
    assert worst <= SAMPLE_TOLERANCE
