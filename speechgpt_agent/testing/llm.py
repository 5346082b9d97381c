"""Tiny SpeechGPT language models in the released folder layouts.

:func:`make_tiny_speechgpt` writes what ``fnlp/SpeechGPT-7B-cm`` holds, with random weights
and a tiny vocabulary: a transformers-4.33-era LLaMA ``config.json``, a ``torch.save``'d
``pytorch_model.bin``, a sentencepiece ``tokenizer.model`` (BPE with byte fallback, like
LLaMA's), ``added_tokens.json`` with the 1006 SpeechGPT tokens right after the base
vocabulary, and the small json files beside them. :func:`make_tiny_lora_adapter` writes what
``fnlp/SpeechGPT-7B-com`` holds: a peft LoRA adapter on ``q_proj``/``v_proj``.

Both take well under a second once torch and transformers are imported.
"""

from __future__ import annotations

import io
import json
import string
from collections.abc import Sequence
from pathlib import Path

import torch

from ..prompt import ADDED_TOKENS, META_INSTRUCTION

__all__ = ["make_tiny_lora_adapter", "make_tiny_speechgpt"]

# Training text of the tiny sentencepiece model: enough to have real merges, plus every
# printable ASCII character so that punctuation and digits are pieces as in LLaMA.
_CORPUS = (
    META_INSTRUCTION,
    "[Human]: What are the main causes of climate change? <eoh>. [SpeechGPT]: ",
    "Can you transcribe the speech into a written format? This is input:",
    "Try to speak out this sentence, please. This is input: Today is a sunny day.",
    "The alchemist rode in front, with the falcon on his shoulder.",
    "What is a bad term for poop?; [ta] A bad term for poop is excrement.; [ua] <eoa>",
    "Lebron James is an American professional basketball player for the Los Angeles Lakers.",
    " ".join(string.printable.strip()),
)

_SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def _added_token_json(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False,
            "single_word": False}


def _train_sentencepiece(vocab_size: int, corpus: Sequence[str] | None = None) -> bytes:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(corpus) if corpus is not None else _CORPUS * 4),
        model_writer=buf,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    return buf.getvalue()


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def make_tiny_speechgpt(
    folder: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    intermediate_size: int | None = None,
    base_vocab_size: int = 400,
    max_position_embeddings: int = 2048,
    dtype: torch.dtype = torch.float16,
    safetensors: bool = False,
    with_speech_tokens: bool = True,
    corpus: Sequence[str] | None = None,
    lm_head_std: float | None = 0.5,
) -> Path:
    """Write a random tiny SpeechGPT-7B-cm look-alike into ``folder`` and return its path.

    Args:
        seed: seeds the weights; the tokenizer is deterministic.
        hidden_size, layers, heads, intermediate_size: LLaMA dimensions
            (``intermediate_size`` defaults to ``2 * hidden_size``).
        base_vocab_size: size of the sentencepiece vocabulary (LLaMA: 32000); the model's
            vocabulary is this plus the 1006 SpeechGPT tokens.
        dtype: storage dtype of the weights.
        safetensors: write ``model.safetensors`` instead of ``pytorch_model.bin``.
        with_speech_tokens: ``False`` writes a plain LLaMA folder (no ``added_tokens.json``,
            no unit rows), which SpeechGPT loaders must refuse.
        corpus: sentences the sentencepiece model is trained on (default: a few fixed
            sentences); the demo recipe passes the texts of its closed world.
        lm_head_std: standard deviation of the LM head's random rows; ``None`` keeps
            LLaMA's initialisation (for a model that is going to be trained).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spm_bytes = _train_sentencepiece(base_vocab_size, corpus)
    (folder / "tokenizer.model").write_bytes(spm_bytes)

    import sentencepiece as spm

    base = spm.SentencePieceProcessor(model_proto=spm_bytes).get_piece_size()
    vocab_size = base + (len(ADDED_TOKENS) if with_speech_tokens else 0)
    if with_speech_tokens:
        _write_json(folder / "added_tokens.json", {t: base + i for i, t in enumerate(ADDED_TOKENS)})
    _write_json(folder / "special_tokens_map.json",
                {k: _added_token_json(v) for k, v in _SPECIAL.items()})
    _write_json(folder / "tokenizer_config.json", {
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "legacy": None,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": None,
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        **{k: {"__type": "AddedToken", **_added_token_json(v)} for k, v in _SPECIAL.items()},
    })
    # config.json as transformers 4.33 wrote it for LLaMA
    intermediate = intermediate_size or 2 * hidden_size
    config = {
        "architectures": ["LlamaForCausalLM"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "max_position_embeddings": max_position_embeddings,
        "model_type": "llama",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": heads,
        "pad_token_id": 0,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "transformers_version": "4.33.1",
        "use_cache": True,
        "vocab_size": vocab_size,
    }
    _write_json(folder / "config.json", config)
    _write_json(folder / "generation_config.json", {
        "_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
        "transformers_version": "4.33.1",
    })

    cfg = LlamaConfig.from_pretrained(folder)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    # Larger than LLaMA's init so that the random model's next-token distribution is not
    # flat: sampling and stopping then behave like a trained model's.
    if lm_head_std is not None:
        with torch.no_grad():
            model.lm_head.weight.normal_(0.0, lm_head_std)
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    if safetensors:
        from safetensors.torch import save_file

        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return folder


def make_tiny_lora_adapter(
    base_folder: str | Path,
    out_folder: str | Path,
    *,
    seed: int = 0,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
    safetensors: bool = False,
    scale: float = 0.5,
) -> Path:
    """Write a random LoRA adapter for the model in ``base_folder``, as SpeechGPT-7B-com is.

    The released adapter was saved by peft 0.3: ``adapter_config.json`` with that version's
    fields and ``adapter_model.bin`` whose keys carry no adapter name
    (``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``). Current peft saves
    the same keys, so ``safetensors=True`` writes ``adapter_model.safetensors`` instead.
    ``lora_B`` is nonzero (peft initializes it to zero) so that the adapter changes outputs.
    """
    base_folder, out = Path(base_folder), Path(out_folder)
    cfg = json.loads((base_folder / "config.json").read_text(encoding="utf-8"))
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = hidden // heads
    shapes = {  # (in_features, out_features)
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, cfg.get("num_key_value_heads", heads) * head_dim),
        "v_proj": (hidden, cfg.get("num_key_value_heads", heads) * head_dim),
        "o_proj": (heads * head_dim, hidden),
    }
    unknown = set(target_modules) - set(shapes)
    if unknown:
        raise ValueError(f"target_modules {sorted(unknown)} not among {sorted(shapes)}.")
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for layer in range(cfg["num_hidden_layers"]):
        for name in target_modules:
            fan_in, fan_out = shapes[name]
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{name}"
            state[f"{prefix}.lora_A.weight"] = torch.randn(r, fan_in, generator=gen) * scale
            state[f"{prefix}.lora_B.weight"] = torch.randn(fan_out, r, generator=gen) * scale
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "adapter_config.json", {  # the fields peft 0.3.0 wrote
        "base_model_name_or_path": str(base_folder),
        "bias": "none",
        "enable_lora": None,
        "fan_in_fan_out": False,
        "inference_mode": True,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "merge_weights": False,
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": r,
        "target_modules": list(target_modules),
        "task_type": "CAUSAL_LM",
    })
    if safetensors:
        from safetensors.torch import save_file

        save_file(state, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(state, out / "adapter_model.bin")
    return out
