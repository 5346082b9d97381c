"""The embedded demo model: a small SpeechGPT that ships inside the package.

``SpeechGPT.from_pretrained("demo")``, ``SpeechGPTChat(model="demo")`` and
``speechgpt-agent demo`` load it from ``speechgpt_agent/assets/demo`` with no download
(this room only names the parts; :mod:`speechgpt_agent.demo_run` runs the demo, above the
pipeline):

* ``llm/``: a small LLaMA in the ``fnlp/SpeechGPT-7B-cm`` layout (sentencepiece tokenizer with
  the 1000 unit tokens and SpeechGPT's added tokens);
* ``adapter/``: its chain-of-modality LoRA adapter (peft), as ``fnlp/SpeechGPT-7B-com``;
* ``speech_tokenizer/``: MFCC + k-means units at 50 Hz (:mod:`speechgpt_agent.mel_units`);
* ``vocoder/``: a small unit HiFi-GAN with a duration predictor;
* ``card.json``: how it was trained (the recipe, its seed) and its measured quality.

All of it is trained by ``python -m speechgpt_agent.training.recipes.demo`` from speech
synthesized with espeak-ng. It knows a closed world: spoken arithmetic on numbers up to
twenty, a few facts, ASR and TTS of those words, and calling the calculator tool
(:data:`speechgpt_agent.integrations.langchain.calculator`) for numbers beyond that.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ModelNotFoundError

__all__ = ["DEMO_DIR", "DEMO_NAME", "DEMO_QUESTION", "DEMO_TOOL_QUESTION", "DemoParts", "demo_parts"]

DEMO_NAME = "demo"
"""The name that selects the embedded model wherever a model id or path is taken."""

DEMO_DIR = Path(__file__).resolve().parent / "assets" / "demo"


@dataclass(frozen=True)
class DemoParts:
    """Folders of the embedded model set."""

    model: Path
    adapter: Path
    speech_tokenizer: Path
    vocoder: Path


def demo_parts(folder: str | Path | None = None) -> DemoParts:
    """The folders of the embedded demo model (or of an export of the recipe in ``folder``).

    Raises:
        ModelNotFoundError: a part is missing (a source checkout without the exported
            artifacts: run the recipe, see the module docstring).
    """
    root = Path(folder) if folder is not None else DEMO_DIR
    parts = DemoParts(root / "llm", root / "adapter", root / "speech_tokenizer", root / "vocoder")
    missing = [p.name for p in (parts.model, parts.adapter, parts.speech_tokenizer, parts.vocoder)
               if not p.is_dir()]
    if missing:
        raise ModelNotFoundError(
            f"the demo model is incomplete in {root} (missing {', '.join(missing)}). Reinstall "
            "speechgpt-agent, or rebuild it with `python -m speechgpt_agent.training.recipes.demo "
            "--output-dir runs/demo --export`.")
    return parts


DEMO_QUESTION = DEMO_DIR / "question.wav"
"""A spoken question bundled with the demo, in a voice and wording never heard in training."""

DEMO_TOOL_QUESTION = "what is 4725 times 1609"
"""The tool-calling turn's question. Neither number occurs anywhere in the calculator's
description (whose example is ``1234 * 5678``) or in any training stage's data, not even as
digits inside another number (tests/test_demo_recipe.py checks it): the call cannot be copied."""
