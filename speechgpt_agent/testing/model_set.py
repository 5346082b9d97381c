"""A whole tiny SpeechGPT model set, every part in its released format.

Used by the tests, the ``selfcheck`` command and examples: an LLM folder in the
``fnlp/SpeechGPT-7B-cm`` layout, a peft LoRA adapter like ``fnlp/SpeechGPT-7B-com``, a
fairseq mHuBERT checkpoint converted to transformers with its joblib k-means converted to
safetensors (the ``voidful/mhubert-base`` layout), and a fairseq CodeHiFiGAN folder.
Weights are random: the parts fit together and run, but say nothing meaningful.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

NUM_UNITS = 1000


@dataclass(frozen=True)
class TinyModelSet:
    """Folders of a tiny model set (pass them wherever a hub id is accepted)."""

    model: Path
    adapter: Path
    speech_tokenizer: Path
    vocoder: Path


def make_tiny_model_set(folder: str | os.PathLike, *, seed: int = 0) -> TinyModelSet:
    """Build (or reuse, when already complete) a tiny model set under ``folder``."""
    from ..hubert import convert_fairseq_hubert
    from ..kmeans import convert_kmeans
    from .hubert import make_fairseq_hubert_checkpoint, make_kmeans_joblib
    from .llm import make_tiny_lora_adapter, make_tiny_speechgpt
    from .vocoder import make_fairseq_codehifigan

    root = Path(folder)
    marker = root / "model_set.json"
    paths = TinyModelSet(root / "llm", root / "adapter", root / "mhubert", root / "vocoder")
    if marker.is_file() and json.loads(marker.read_text()).get("seed") == seed:
        return paths
    root.mkdir(parents=True, exist_ok=True)
    make_tiny_speechgpt(paths.model, seed=seed)
    make_tiny_lora_adapter(paths.model, paths.adapter, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        # 12 layers like mHuBERT base, so the default layer 11 applies; tiny widths.
        # Pre-LN layers: a random post-LN stack (mHuBERT's kind) collapses its features to
        # nearly one point by layer 11, and every clip would become a single unit.
        ckpt = make_fairseq_hubert_checkpoint(
            Path(tmp) / "mhubert_base_vp_en_es_fr_it3.pt", seed=seed, encoder_layers=12,
            layer_norm_first=True,
        )
        convert_fairseq_hubert(ckpt, paths.speech_tokenizer, trust_pickle=True)
        # fit the k-means on the tiny HuBERT's own features, as the real one was fitted on
        # mHuBERT's: then different sounds map to different units
        km = make_kmeans_joblib(Path(tmp) / "km.bin", n_clusters=NUM_UNITS, seed=seed,
                                features=_layer_features(paths.speech_tokenizer, seed))
        convert_kmeans(km, paths.speech_tokenizer, trust_pickle=True)
    make_fairseq_codehifigan(paths.vocoder, seed=seed, num_embeddings=NUM_UNITS)
    marker.write_text(json.dumps({"seed": seed}))
    return paths


def _layer_features(hubert_dir: Path, seed: int, seconds: float = 24.0) -> np.ndarray:
    """Layer-11 features [frames, D] of a varied synthetic signal (chirps, tones, noise)."""
    import numpy as np

    from ..hubert import load_hubert
    from ..units import SpeechTokenizer

    model, fe = load_hubert(hubert_dir)
    dim = model.config.hidden_size
    tok = SpeechTokenizer(model, fe, np.zeros((1, dim), dtype=np.float32), layer=11)
    rng = np.random.default_rng(seed)
    sr = 16000
    pieces = []
    for _ in range(int(seconds / 0.5)):
        t = np.arange(sr // 2) / sr
        f0, f1 = rng.uniform(80, 4000, size=2)
        chirp = np.sin(2 * np.pi * (f0 + (f1 - f0) * t / t[-1] / 2) * t)
        pieces.append(rng.uniform(0.05, 0.8) * chirp + rng.uniform(0, 0.3) * rng.standard_normal(t.size))
    audio = np.concatenate(pieces).astype(np.float32)
    return tok.features(audio).float().numpy()
