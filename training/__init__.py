"""Training of SpeechGPT models and adapters: data building and the three stages.

The pipeline, as commands (``speechgpt-agent data ...`` and ``speechgpt-agent train ...``)
or as functions of these modules:

1. ``data label`` (:mod:`.label`): transcribe clips that have no transcript (faster-whisper).
2. ``data units`` (:mod:`.unit_extraction`): audio -> mHuBERT units; batched, resumable,
   sharded over processes (``--shard i/n`` or ``auto`` under ``torchrun``).
3. ``data build`` (:mod:`.builders`): the stage-1 unit corpus and the stage-2/3 SpeechInstruct
   instruction files, in the original README's formats.
4. ``train --stage ma|cm|com`` (:mod:`.trainer`, :mod:`.config`): the original recipe's
   hyper-parameters (``configs/*.json``) on the Hugging Face ``Trainer``; full, LoRA or QLoRA;
   resumable; outputs that ``SpeechGPTModel.from_pretrained`` / ``SpeechGPTChat`` load.
   ``train --stage expand`` (:mod:`.vocab`) turns a plain LLaMA into the stage-1 start point.

Bad records are skipped and reported (:class:`.records.SkipReport`), never dropped silently.

Several GPUs or nodes run the same commands under a launcher, e.g.
``torchrun --nproc_per_node 8 -m speechgpt_agent.cli data units clips/ -o units.jsonl --shard auto``
or ``torchrun --nproc_per_node 8 -m speechgpt_agent.cli train --stage cm ... --trainer-arg
fsdp='"full_shard auto_wrap"'`` (``accelerate launch`` works the same way).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "SkipReport",
    "TrainConfig",
    "TrainOutcome",
    "build_chain_of_modality",
    "build_cross_modal",
    "build_unit_corpus",
    "chain_of_modality_example",
    "cross_modal_example",
    "expand_vocabulary",
    "extract_units",
    "label_items",
    "load_config",
    "read_audio_items",
    "train",
]

_HOMES = {
    "SkipReport": "records",
    "TrainConfig": "config",
    "load_config": "config",
    "TrainOutcome": "trainer",
    "train": "trainer",
    "build_chain_of_modality": "builders",
    "build_cross_modal": "builders",
    "build_unit_corpus": "builders",
    "chain_of_modality_example": "builders",
    "cross_modal_example": "builders",
    "expand_vocabulary": "vocab",
    "extract_units": "unit_extraction",
    "label_items": "label",
    "read_audio_items": "manifest",
}


def __getattr__(name: str) -> Any:
    """Import the public names lazily: ``import speechgpt_agent.training`` stays light."""
    if name in _HOMES:
        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
