"""The SpeechGPT language model: loading (4-bit by default), its tokenizer and vocabulary.

``SpeechGPTModel.from_pretrained()`` reads the released folders (``fnlp/SpeechGPT-7B-cm``:
transformers LLaMA + sentencepiece ``tokenizer.model`` + ``added_tokens.json``; optionally the
peft LoRA ``fnlp/SpeechGPT-7B-com``), checks that the vocabulary really is SpeechGPT's (1000
contiguous unit tokens, ``<sosp>``, ``<eosp>``), and quantizes the linear layers with
bitsandbytes NF4 (double quantization, bf16 compute): about 4 GB for the 7B model.

The tokenizer is configured to tokenize exactly as the one the model was trained with
(transformers 4.33's slow ``LlamaTokenizer``, legacy mode): every piece of text between added
tokens is encoded by sentencepiece on its own (with its dummy-prefix space), and whitespace
next to an added token is dropped. transformers 5 would otherwise encode
``"[SpeechGPT]: "`` differently from the training data.

Generation lives in the engines (:mod:`speechgpt_agent.engines`, DESIGN.md section 10):
this room loads weights, tokenizer and vocabulary, and never imports an engine.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import torch

from .errors import CheckpointError, UnsafeCheckpointError
from .hub import PathLike, resolve_dir
from .parse import FirstSegment, StreamParser
from .prompt import CONTROL_TOKENS, EOSP, HUMAN, NUM_UNITS, SOSP

__all__ = [
    "DEFAULT_ADAPTER",
    "DEFAULT_MODEL",
    "GenerationOptions",
    "Quantization",
    "SpeechGPTModel",
    "SpeechVocab",
    "load_speech_tokenizer",
]

DEFAULT_MODEL = "fnlp/SpeechGPT-7B-cm"
DEFAULT_ADAPTER = "fnlp/SpeechGPT-7B-com"

Quantization = Literal["nf4", "int8"] | None

_SURROGATE = re.compile("[\ud800-\udfff]")
_MODEL_FILES = ("*.json", "tokenizer.model", "*.bin", "*.safetensors")
_ADAPTER_FILES = ("adapter_config.json", "adapter_model.*")


# --- generation options ------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationOptions:
    """Sampling settings of one generation.

    The defaults are the ``GenerationConfig`` that the original ``cli_infer.py`` passes to
    ``generate`` (temperature 0.7, top-p 0.8, top-k 50, 10 to 2048 new tokens). Its
    ``DEFAULT_GEN_PARAMS`` dict (0.8 / 60 / 1024) is stored but never used by ``forward``.
    """

    max_new_tokens: int = 2048
    min_new_tokens: int = 10
    do_sample: bool = True
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 50
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}.")
        if self.min_new_tokens < 0:
            raise ValueError(f"min_new_tokens must be >= 0, got {self.min_new_tokens}.")
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}.")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}.")


def top_k_top_p_warpers(opts: GenerationOptions) -> list[Any]:
    """transformers' top-k / top-p warpers of ``opts`` (none of either when it is off).

    The engine runs them last, and after a grammar's mask when there is one (as vLLM does)."""
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    warpers: list[Any] = []
    if opts.top_k:
        warpers.append(TopKLogitsWarper(opts.top_k))
    if opts.top_p < 1.0:
        warpers.append(TopPLogitsWarper(opts.top_p))
    return warpers


# --- tokenizer -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeechVocab:
    """Where SpeechGPT's tokens sit in the vocabulary. Unit ``n`` is token ``unit_token_offset + n``."""

    unit_token_offset: int
    sosp_id: int
    eosp_id: int
    bos_id: int
    eos_id: int
    control_ids: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    """Ids of ``[Human]``, ``[SpeechGPT]``, ``<eoh>``, ``<eos>`` (those present)."""
    num_units: int = NUM_UNITS

    @property
    def max_token_id(self) -> int:
        return max(self.unit_token_offset + self.num_units - 1, self.sosp_id, self.eosp_id,
                   *self.control_ids.values())


def _not_speechgpt(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a SpeechGPT checkpoint: {reason}. A SpeechGPT model (such as "
        f"{DEFAULT_MODEL}) extends LLaMA's tokenizer with the speech-unit tokens <0>..<999>, "
        "<sosp> and <eosp> (contiguous ids, listed in added_tokens.json)."
    )


def _read_added_tokens(path: Path) -> dict[str, int]:
    file = path / "added_tokens.json"
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{file} is not readable json: {exc}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in data.items()
    ):
        raise CheckpointError(f"{file} must map token strings to integer ids.")
    return data


def load_speech_tokenizer(path: PathLike) -> tuple[Any, SpeechVocab]:
    """Load and validate the tokenizer of a local SpeechGPT folder.

    Reads the release layout: sentencepiece ``tokenizer.model`` plus ``added_tokens.json``
    (ids are taken from that file, whatever ``tokenizer_config.json`` says).

    Returns:
        ``(tokenizer, vocab)``: a transformers ``LlamaTokenizer`` that tokenizes like the one
        the model was trained with, and the positions of the speech tokens.

    Raises:
        CheckpointError: no sentencepiece model, or not a SpeechGPT vocabulary.
    """
    from transformers import AddedToken, LlamaTokenizer

    path = Path(path)
    if not (path / "tokenizer.model").is_file():
        raise CheckpointError(
            f"{path} has no tokenizer.model. SpeechGPT folders carry LLaMA's sentencepiece model "
            "and added_tokens.json (as fnlp/SpeechGPT-7B-cm does); copy both from the base model "
            "when saving a fine-tuned one."
        )
    added = _read_added_tokens(path)
    if "<0>" not in added:
        raise _not_speechgpt(path, "its tokenizer has no speech-unit tokens")
    # Non-special added tokens that strip the whitespace around them and match raw text:
    # the behaviour of transformers 4.33's slow tokenizer that the model was trained with.
    decoder = {
        i: AddedToken(t, lstrip=True, rstrip=True, normalized=False, special=False)
        for t, i in added.items()
    }
    try:
        tok = LlamaTokenizer.from_pretrained(
            path, legacy=True, add_prefix_space=True, tokenizer_file=None,
            added_tokens_decoder=decoder,
        )
    except (OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"cannot load the tokenizer of {path}: {exc}") from exc
    # sentencepiece's dummy prefix on every piece of text, also one that starts with a space
    # (the Metaspace pre-tokenizer would not add it there): how the released LLaMA fast
    # tokenizers were built, and what the slow tokenizer does.
    from tokenizers import normalizers

    tok.backend_tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.backend_tokenizer.pre_tokenizer = None
    tok.pad_token_id = 0  # as the original: unk, distinct from eos; left padding
    tok.padding_side = "left"

    vocab = tok.get_vocab()
    offset = vocab.get("<0>")
    for name in (SOSP, EOSP):
        if name not in vocab:
            raise _not_speechgpt(path, f"its tokenizer has no {name} token")
    for n in range(NUM_UNITS):
        if vocab.get(f"<{n}>") != offset + n:
            raise _not_speechgpt(
                path, f"unit token <{n}> is missing or not at id {offset} + {n} (contiguous ids)")
    probe = f"{SOSP}<0><{NUM_UNITS - 1}>{EOSP}"
    expected = [vocab[SOSP], offset, offset + NUM_UNITS - 1, vocab[EOSP]]
    if tok.encode(probe, add_special_tokens=False) != expected:
        raise _not_speechgpt(path, "its speech tokens are not single tokens")
    if tok.eos_token_id is None or tok.bos_token_id is None:
        raise CheckpointError(f"the tokenizer of {path} has no bos/eos token.")
    speech_vocab = SpeechVocab(
        unit_token_offset=offset,
        sosp_id=vocab[SOSP],
        eosp_id=vocab[EOSP],
        bos_id=tok.bos_token_id,
        eos_id=tok.eos_token_id,
        control_ids=MappingProxyType({t: vocab[t] for t in CONTROL_TOKENS[2:] if t in vocab}),
    )
    missing = [t for t in CONTROL_TOKENS[2:] if t not in vocab]
    if missing:
        warnings.warn(
            f"{path}: tokens {missing} are missing; this looks like a stage-1 (modality "
            "adaptation) model, which was not trained on the chat template.",
            stacklevel=3,
        )
    return tok, speech_vocab


def _generation_eos_ids(path: Path) -> list[int]:
    """The eos ids of ``generation_config.json`` (none if absent or unreadable)."""
    try:
        eos = json.loads((path / "generation_config.json").read_text(encoding="utf-8")).get("eos_token_id")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return []
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


# --- the model -------------------------------------------------------------------------------


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Hide transformers' and the hub's progress bars while loading (a process-wide switch)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if was_enabled and not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled and not enabled:
            hf_logging.enable_progress_bar()


def _default_device_map() -> str | dict[str, int]:
    return {"": torch.cuda.current_device()} if torch.cuda.is_available() else "cpu"


def _quantization_config(quantization: Quantization, dtype: torch.dtype) -> Any:
    from transformers import BitsAndBytesConfig

    if quantization is None:
        return None
    if quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"quantization must be 'nf4', 'int8' or None, got {quantization!r}.")


class SpeechGPTModel:
    """A loaded SpeechGPT language model with its tokenizer. Build it with :meth:`from_pretrained`.

    Generation runs in an engine (:func:`speechgpt_agent.engines.load_engine`); the embedded
    transformers engine reads :attr:`model` (the weights). Loaded with ``weights=False``
    (for an engine that loads the weights itself, such as vLLM), :attr:`model` is ``None`` and
    only the tokenizer, vocabulary and config are here.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        vocab: SpeechVocab,
        *,
        model_ref: str,
        adapter_ref: str | None,
        adapter_merged: bool,
        quantization: Quantization,
        dtype: torch.dtype,
        config: Mapping[str, Any] | None = None,
        path: Path | None = None,
        adapter_path: Path | None = None,
        eos_ids: Sequence[int] = (),
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.vocab = vocab
        self.config: Mapping[str, Any] = MappingProxyType(dict(config)) if config is not None \
            else MappingProxyType(model.config.to_dict())
        self.path = path
        """Local folder of the model (``None`` when built from objects)."""
        self.adapter_path = adapter_path
        """Local folder of the adapter, or ``None``."""
        self._model_ref = model_ref
        self._adapter_ref = adapter_ref
        self._adapter_merged = adapter_merged
        self._quantization = quantization
        self._dtype = dtype
        if model is not None:
            eos = model.generation_config.eos_token_id
            eos_ids = [*(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []),
                       *eos_ids]
        self.eos_ids: frozenset[int] = frozenset({*eos_ids, vocab.eos_id})

    # -- loading --

    @classmethod
    def from_pretrained(
        cls,
        model: PathLike = DEFAULT_MODEL,
        adapter: PathLike | None = DEFAULT_ADAPTER,
        *,
        quantization: Quantization = "nf4",
        device_map: str | dict[str, Any] | None = None,
        dtype: torch.dtype | None = None,
        merge_adapter: bool | None = None,
        progress: bool = True,
        revision: str | None = None,
        weights: bool = True,
    ) -> SpeechGPTModel:
        """Load a SpeechGPT model (and its chain-of-modality adapter) from the hub or a folder.

        Args:
            model: hub id or local folder of the stage-2 model (release layout).
            adapter: hub id or local folder of a peft LoRA adapter; ``None`` for none.
            quantization: ``"nf4"`` (bitsandbytes 4-bit NF4, double quantization, about 4 GB
                for 7B), ``"int8"`` (LLM.int8, about 7 GB) or ``None`` (``dtype`` weights).
            device_map: as in transformers; default the current CUDA device, else ``"cpu"``
                (bitsandbytes 0.50 runs NF4 and int8 on the CPU too). ``"auto"`` spreads over
                devices.
            dtype: compute dtype and dtype of the unquantized weights; default bfloat16,
                float16 for ``"int8"`` (LLM.int8 computes in float16).
            merge_adapter: fold the LoRA weights into the base weights. Default: merge when
                unquantized. Merging into 4/8-bit weights would re-quantize them (rounding
                away much of the low-rank update), so it is refused for ``"nf4"``/``"int8"``;
                the adapter then runs beside the quantized layers.
            progress: show download/loading progress bars.
            revision: hub revision of ``model``.
            weights: ``False`` reads only the config, tokenizer and vocabulary (and checks
                the adapter folder): for an engine that loads the weights itself (vLLM).

        Raises:
            ModelNotFoundError: the model or adapter is neither a folder nor downloadable.
            CheckpointError: the folder is not a SpeechGPT model or a peft adapter.
            ValueError: invalid option combination.
        """
        qc_dtype = dtype or (torch.float16 if quantization == "int8" else torch.bfloat16)
        qconfig = _quantization_config(quantization, qc_dtype)
        if merge_adapter and quantization is not None:
            raise ValueError(
                f"cannot merge the adapter into {quantization} weights: merging re-quantizes "
                "them and loses most of the low-rank update. Load with quantization=None to "
                "merge, or keep the adapter separate (merge_adapter=None)."
            )
        with _progress_bars(progress):
            path = resolve_dir(model, what="SpeechGPT language model",
                               allow_patterns=_MODEL_FILES, revision=revision)
            config = cls._read_config(path)
            tokenizer, vocab = load_speech_tokenizer(path)
            if config.get("vocab_size", 0) <= vocab.max_token_id:
                raise _not_speechgpt(
                    path, f"config.json has vocab_size {config.get('vocab_size')}, too small for "
                    f"the token ids up to {vocab.max_token_id} of its tokenizer")
            adapter_path = None
            if adapter is not None:
                adapter_path = resolve_dir(adapter, what="SpeechGPT adapter",
                                           allow_patterns=_ADAPTER_FILES)
                if not (adapter_path / "adapter_config.json").is_file():
                    raise CheckpointError(
                        f"{adapter_path} has no adapter_config.json: not a peft adapter folder "
                        "(SpeechGPT-7B-com holds adapter_config.json and adapter_model.bin)."
                    )
            if not weights:
                return cls(None, tokenizer, vocab, model_ref=str(model),
                           adapter_ref=None if adapter is None else str(adapter),
                           adapter_merged=False, quantization=quantization, dtype=qc_dtype,
                           config=config, path=path, adapter_path=adapter_path,
                           eos_ids=_generation_eos_ids(path))
            lm = cls._load_weights(path, qconfig, qc_dtype, device_map)
            merged = False
            adapter_ref = None
            if adapter_path is not None:
                lm = cls._attach_adapter(lm, adapter_path)
                adapter_ref = str(adapter)
                if merge_adapter or (merge_adapter is None and quantization is None):
                    lm = lm.merge_and_unload()
                    merged = True
        lm.eval()
        return cls(lm, tokenizer, vocab, model_ref=str(model), adapter_ref=adapter_ref,
                   adapter_merged=merged, quantization=quantization, dtype=qc_dtype,
                   path=path, adapter_path=adapter_path)

    @staticmethod
    def _read_config(path: Path) -> dict[str, Any]:
        file = path / "config.json"
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise CheckpointError(f"{path} has no config.json: not a transformers model folder.") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{file} is not readable json: {exc}") from exc
        if config.get("model_type") != "llama":
            raise _not_speechgpt(path, f"its model_type is {config.get('model_type')!r}, not 'llama'")
        return config

    @staticmethod
    def _load_weights(path: Path, qconfig: Any, dtype: torch.dtype, device_map: Any) -> Any:
        from safetensors import SafetensorError
        from transformers import LlamaForCausalLM

        try:
            return LlamaForCausalLM.from_pretrained(
                path,
                dtype=dtype,
                quantization_config=qconfig,
                device_map=device_map if device_map is not None else _default_device_map(),
            )
        except torch.cuda.OutOfMemoryError:
            raise
        except (OSError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError,
                SafetensorError) as exc:
            raise CheckpointError(f"cannot load the weights of {path}: {exc}") from exc

    @staticmethod
    def _attach_adapter(lm: Any, adapter_path: Path) -> Any:
        from peft import PeftModel

        if not (adapter_path / "adapter_config.json").is_file():
            raise CheckpointError(
                f"{adapter_path} has no adapter_config.json: not a peft adapter folder "
                "(SpeechGPT-7B-com holds adapter_config.json and adapter_model.bin)."
            )
        try:
            with warnings.catch_warnings():
                # peft 0.3 configs (the release) carry fields current peft no longer has.
                warnings.filterwarnings("ignore", message="Unexpected keyword arguments")
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing",
                                        category=FutureWarning)
                return PeftModel.from_pretrained(lm, adapter_path, is_trainable=False)
        except torch.cuda.OutOfMemoryError:
            raise
        except pickle.UnpicklingError:  # torch's weights_only refused the pickle
            raise UnsafeCheckpointError(
                f"the adapter {adapter_path} is a pickle (adapter_model.bin) that torch will not "
                "load safely: it holds more than tensors. If you trust its source, convert it once "
                "to safetensors and pass that folder: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 python -c "
                "\"import sys, torch, safetensors.torch as st; st.save_file({k: v for k, v in "
                "torch.load(sys.argv[1]).items() if isinstance(v, torch.Tensor)}, sys.argv[2])\" "
                f"{adapter_path / 'adapter_model.bin'} <copy of the folder>/adapter_model.safetensors"
            ) from None
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"cannot apply the adapter {adapter_path}: {exc}") from exc

    # -- vocabulary --

    @property
    def unit_token_offset(self) -> int:
        """Token id of unit 0; unit ``n`` is ``unit_token_offset + n``."""
        return self.vocab.unit_token_offset

    @property
    def sosp_id(self) -> int:
        return self.vocab.sosp_id

    @property
    def eosp_id(self) -> int:
        return self.vocab.eosp_id

    @property
    def eos_id(self) -> int:
        return self.vocab.eos_id

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])

    @property
    def context_length(self) -> int:
        """Positions the model was built for (2048 for SpeechGPT-7B)."""
        return int(self.config["max_position_embeddings"])

    @property
    def adapter_merged(self) -> bool:
        """The LoRA adapter is folded into the weights (the base model alone is gone)."""
        return self._adapter_merged

    @property
    def device(self) -> torch.device:
        """Device of the input embeddings, where prompts go (CPU without loaded weights)."""
        if self.model is None:
            return torch.device("cpu")
        return self.model.get_input_embeddings().weight.device

    def unit_id(self, unit: int) -> int:
        """Token id of speech unit ``unit`` (``0..999``)."""
        if not 0 <= unit < self.vocab.num_units:
            raise ValueError(f"unit {unit} outside 0..{self.vocab.num_units - 1}.")
        return self.vocab.unit_token_offset + unit

    def token_to_unit(self, token_id: int) -> int | None:
        """The speech unit a token id stands for, or ``None`` for any other token."""
        n = token_id - self.vocab.unit_token_offset
        return n if 0 <= n < self.vocab.num_units else None

    # -- text --

    def encode(self, prompt: str) -> list[int]:
        """Token ids of a prompt, with the leading ``<s>`` (as the original ``tokenizer(prompt)``).

        Raises:
            ValueError: the prompt holds lone surrogates (``escape_user_text`` replaces them).
        """
        if _SURROGATE.search(prompt):
            raise ValueError("the prompt is not valid Unicode: it holds lone surrogates.")
        return self.tokenizer.encode(prompt, add_special_tokens=True)

    def encode_prompt(self, prompt: str) -> list[int]:
        """:meth:`encode` for a prompt that the model continues, with token healing.

        The chat template ends in a space (``[SpeechGPT]: ``), which sentencepiece turns into
        a lone ``▁`` piece; in the training texts that space always belongs to the answer's
        first word (``▁what``), so a prompt ending in a lone ``▁`` asks the model to continue
        from a token it never saw there. The lone ``▁`` is dropped here and the model writes
        it back as part of its first word (small models depend on this; the 7B model copes
        either way).
        """
        ids = self.encode(prompt)
        if prompt.endswith(" ") and len(ids) > 1 and \
                self.tokenizer.convert_ids_to_tokens(ids[-1]) == "\u2581":
            ids = ids[:-1]
        return ids

    def count_tokens(self, prompt: str) -> int:
        """Length of :meth:`encode`; pass it to ``build_prompt(count_tokens=...)``."""
        return len(self.encode(prompt))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids (added tokens spelled out, ``<s>``/``</s>`` dropped)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def stream_parser(self, first_segment: FirstSegment = "auto", *, single_part: bool = False) -> StreamParser:
        """A :class:`~speechgpt_agent.parse.StreamParser` wired to this model's vocabulary."""
        v = self.vocab
        ends = {v.eos_id, *self.eos_ids}
        if HUMAN in v.control_ids:
            ends.add(v.control_ids[HUMAN])
        ignore = {v.bos_id, *(i for t, i in v.control_ids.items() if t != HUMAN)}
        return StreamParser(
            self.decode,
            unit_token_offset=v.unit_token_offset,
            sosp_id=v.sosp_id,
            eosp_id=v.eosp_id,
            num_units=v.num_units,
            vocab_size=self.vocab_size,
            end_ids=ends,
            ignore_ids=ignore - ends,
            first_segment=first_segment,
            single_part=single_part,
        )

    # -- description --

    def num_parameters(self) -> int:
        """Number of weights, counting each 4-bit weight once (bitsandbytes packs two per byte)."""
        if self.model is None:
            return 0
        total = 0
        for p in self.model.parameters():
            state = getattr(p, "quant_state", None)
            total += state.shape.numel() if state is not None else p.numel()
        return total

    def memory_footprint(self) -> int:
        """Bytes taken by the weights and buffers in this process (0 without weights)."""
        return 0 if self.model is None else int(self.model.get_memory_footprint())

    def describe(self) -> dict[str, Any]:
        """What is loaded, for ``speechgpt-agent info``."""
        return {
            "model": self._model_ref,
            "adapter": self._adapter_ref,
            "adapter_merged": self._adapter_merged,
            "quantization": self._quantization or "none",
            "dtype": str(self._dtype).removeprefix("torch."),
            "device": str(self.device),
            "parameters": self.num_parameters(),
            "memory_footprint": self.memory_footprint(),
            "vocab_size": self.vocab_size,
            "context_length": self.context_length,
        }
