"""A tiny random Whisper in the CTranslate2 format that faster-whisper loads.

:func:`make_tiny_whisper` builds what ``Systran/faster-whisper-*`` repos hold, the way they
were made: a transformers ``WhisperForConditionalGeneration`` (random, tiny widths, but the
real multilingual vocabulary layout of 51865 ids and 80 mel bins) and its tokenizer, saved
and converted with ``ctranslate2.converters.TransformersConverter``, which writes
``model.bin``, ``config.json`` and ``vocabulary.json``; ``tokenizer.json`` and
``preprocessor_config.json`` are copied beside them, as in the released repos.

The tokenizer is a byte-level BPE with the 256 byte symbols, filler pieces up to id 50256,
and Whisper's special tokens at their real ids (``<|endoftext|>`` 50257,
``<|startoftranscript|>`` 50258, 99 language tokens, ``<|transcribe|>`` 50359,
``<|notimestamps|>`` 50363; timestamps follow). A random model transcribes garbage;
``always_predict`` makes its output predictable instead (``"<|endoftext|>"``: a model that
never hears anything; ``"a"``: one that always says ``a``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

__all__ = ["make_tiny_whisper"]

PathLike = str | os.PathLike

VOCAB_SIZE = 51865
"""Ids of multilingual Whisper v1/v2: 50257 text pieces, specials, 1501 timestamps."""
_TEXT_PIECES = 50257
_SPECIALS_AFTER_LANGUAGES = (
    "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>",
    "<|notimestamps|>",
)


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values (the byte-level BPE alphabet)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _special_tokens() -> list[str]:
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    languages = [f"<|{code}|>" for code in list(LANGUAGES)[:99]]  # v1/v2: all but "yue"
    return ["<|endoftext|>", "<|startoftranscript|>", *languages, *_SPECIALS_AFTER_LANGUAGES]


def _tokenizer(folder: Path):
    """Save a Whisper-layout fast tokenizer in ``folder`` and return it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import WhisperTokenizerFast

    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols)}
    # filler pieces standing for the real BPE merges (text never maps to them: there are
    # no merges), then the empty piece that multilingual Whisper vocabularies hold at the
    # last text id: CTranslate2 tells multilingual models by it.
    for i in range(len(vocab), _TEXT_PIECES - 1):
        vocab[f"w{i}"] = i
    vocab[""] = _TEXT_PIECES - 1
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = _special_tokens()
    tok = WhisperTokenizerFast(
        tokenizer_object=backend, unk_token="<|endoftext|>", bos_token="<|endoftext|>",
        eos_token="<|endoftext|>", pad_token="<|endoftext|>",
    )
    tok.add_special_tokens({"additional_special_tokens": specials[1:]})
    assert tok.convert_tokens_to_ids("<|notimestamps|>") == 50363
    tok.save_pretrained(folder)
    return tok


def make_tiny_whisper(
    folder: PathLike,
    *,
    seed: int = 0,
    d_model: int = 16,
    layers: int = 1,
    heads: int = 2,
    always_predict: str | None = None,
) -> Path:
    """Write a random tiny multilingual Whisper as a faster-whisper (CTranslate2) model folder.

    Args:
        folder: where the CTranslate2 model goes.
        seed: seeds the weights.
        d_model, layers, heads: widths and depth of encoder and decoder.
        always_predict: a token the decoder then predicts at every step where it is free to
            (e.g. ``"<|endoftext|>"`` for empty transcripts).

    Returns:
        ``folder``, ready for ``faster_whisper.WhisperModel(str(folder))``.
    """
    import ctranslate2

    folder = Path(folder)
    with tempfile.TemporaryDirectory(prefix="tiny-whisper-hf-") as tmp:
        _write_transformers_whisper(Path(tmp), seed, d_model, layers, heads, always_predict)
        converter = ctranslate2.converters.TransformersConverter(
            tmp, copy_files=["tokenizer.json", "preprocessor_config.json"])
        converter.convert(str(folder), quantization="float32", force=True)
    meta = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if len(meta.get("lang_ids", [])) != 99:
        raise RuntimeError("the converted tiny Whisper lost its language ids; ctranslate2 changed?")
    return folder


def _write_transformers_whisper(
    hf: Path, seed: int, d_model: int, layers: int, heads: int, always_predict: str | None
) -> None:
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    tok = _tokenizer(hf)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(hf)

    config = WhisperConfig(
        vocab_size=VOCAB_SIZE, num_mel_bins=80, d_model=d_model,
        encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads,
        encoder_ffn_dim=2 * d_model, decoder_ffn_dim=2 * d_model,
        max_source_positions=1500, max_target_positions=448,
        pad_token_id=50257, bos_token_id=50257, eos_token_id=50257,
        decoder_start_token_id=50258,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    if always_predict is not None:
        token = tok.convert_tokens_to_ids(always_predict)
        if token is None or token == tok.unk_token_id and always_predict != tok.unk_token:
            raise ValueError(f"always_predict: {always_predict!r} is not a token of the vocabulary.")
        with torch.no_grad():
            emb = model.model.decoder.embed_tokens.weight  # tied to proj_out
            row = torch.randn(d_model)
            emb[token] = 10.0 * row / row.norm()  # (the eot row is the zero padding row)
            norm = model.model.decoder.layer_norm
            norm.weight.zero_()
            norm.bias.copy_(emb[token])  # every output is that row: its logit is 100, others ~1
    lang_to_id = {t: tok.convert_tokens_to_ids(t) for t in _special_tokens()[2:101]}
    model.generation_config = GenerationConfig(
        decoder_start_token_id=50258, eos_token_id=50257, pad_token_id=50257,
        suppress_tokens=[], begin_suppress_tokens=[220, 50257], no_timestamps_token_id=50363,
        lang_to_id=lang_to_id, task_to_id={"translate": 50358, "transcribe": 50359},
        is_multilingual=True, max_length=448,
        alignment_heads=[[layers - 1, h] for h in range(heads)],
    )
    model.save_pretrained(hf)
