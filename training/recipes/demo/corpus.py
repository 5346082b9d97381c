"""Speech for the demo recipe, synthesized with espeak-ng: several voices, speeds and pitches.

Each text of the closed world is spoken by six of the ten training voices (drawn per text),
with a speed and a pitch drawn per clip from a seeded generator; the held-out voice speaks every question and
answer once, for evaluation only; SpeechGPT's own voice (:data:`ANSWER_VOICE`, one of the
training voices at a fixed speed and pitch) speaks every answer once, the target of the
model's spoken answers. Clips are 16 kHz mono PCM_16 wav files (espeak-ng's 22.05
kHz output resampled with soxr), listed in ``manifest.jsonl`` as the ``data units`` command
reads it: ``{"id", "audio", "text", "voice", "split"}``.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from speechgpt_agent.audio import load_audio, write_wav
from speechgpt_agent.errors import SpeechGPTError

__all__ = ["ANSWER_VOICE", "HELD_OUT_VOICE", "TRAIN_VOICES", "Clip", "plan_clips", "synthesize_corpus"]

TRAIN_VOICES: tuple[str, ...] = (
    "en-us", "en-us+m3", "en-us+f2", "en-gb+m1", "en-gb-x-rp+f3", "en-029+m5",
    "en-us+m1", "en-gb+f1", "en-gb-scotland+m4", "en-us+f5",
)
"""espeak-ng voices (language + variant) of the training clips."""

VOICES_PER_TEXT = 6
"""Training voices that speak each text (drawn per text): more voices than recordings per
text, so that the model hears many voices without more data."""

HELD_OUT_VOICE = "en-us+f4"
"""A voice never heard in training: the quality benchmark's."""

ANSWER_VOICE: tuple[str, int, int] = ("en-us", 160, 50)
"""The model's own voice (espeak-ng voice, words per minute, pitch): every spoken answer of
stage 3 is this voice's recording of the answer. With the question's voice instead, a
question in an unheard voice left greedy decoding to blend many voices' units, and half the
spoken answers were not understood even as units (session 5's note)."""

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class Clip:
    """One clip to synthesize."""

    id: str
    text: str
    voice: str
    speed: int
    """words per minute"""
    pitch: int
    """espeak-ng pitch, 0..99"""
    split: str
    """``"train"`` or ``"heldout_voice"``"""


def _espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SpeechGPTError("espeak-ng is not installed: `apt-get install espeak-ng` (it synthesizes "
                             "the demo corpus).")
    return exe


def plan_clips(train_texts: Sequence[str], eval_texts: Sequence[str], seed: int, *,
               extra_texts: Sequence[str] = (), extra_per_text: int = 0,
               answer_texts: Sequence[str] = ()) -> list[Clip]:
    """The clips of the corpus.

    * ``train``: each of ``train_texts`` in :data:`VOICES_PER_TEXT` train voices;
    * ``heldout_voice``: each of ``eval_texts`` in :data:`HELD_OUT_VOICE`;
    * ``train_extra``: ``extra_per_text`` more recordings of each of ``extra_texts``, in
      train voices drawn with repetition (speeds and pitches differ). Only stage 3 uses them:
      more recordings of the spoken questions teach the model to hear words, not to learn
      recordings by heart. Drawn from their own generator, so the other clips do not change.
    * ``answer_voice``: each of ``answer_texts`` once in :data:`ANSWER_VOICE` (no draws).
    """
    rng = random.Random(seed)
    clips = []
    for t, text in enumerate(train_texts):
        for v in sorted(rng.sample(range(len(TRAIN_VOICES)), VOICES_PER_TEXT)):
            clips.append(Clip(f"t{t:04d}_v{v}", text, TRAIN_VOICES[v], rng.randint(135, 185),
                              rng.randint(30, 70), "train"))
    for t, text in enumerate(eval_texts):
        clips.append(Clip(f"h{t:04d}", text, HELD_OUT_VOICE, 160, 50, "heldout_voice"))
    extra = random.Random(seed + 1)
    for t, text in enumerate(extra_texts):
        for k in range(extra_per_text):
            clips.append(Clip(f"x{t:04d}_{k:02d}", text, extra.choice(TRAIN_VOICES), extra.randint(125, 195),
                              extra.randint(20, 80), "train_extra"))
    voice, speed, pitch = ANSWER_VOICE
    for t, text in enumerate(answer_texts):
        clips.append(Clip(f"a{t:04d}", text, voice, speed, pitch, "answer_voice"))
    return clips


def _synthesize(exe: str, clip: Clip, out: Path) -> None:
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        subprocess.run([exe, "-v", clip.voice, "-s", str(clip.speed), "-p", str(clip.pitch),
                        "-w", tmp.name, clip.text], check=True, capture_output=True)
        samples = load_audio(tmp.name, target_rate=SAMPLE_RATE)
    write_wav(out, samples, SAMPLE_RATE)


def synthesize_corpus(clips: Sequence[Clip], folder: str | Path, *, workers: int = 2,
                      progress: bool = True) -> Path:
    """Synthesize ``clips`` into ``folder/wavs`` and write ``folder/manifest.jsonl``.

    Clips already on disk are kept (a rerun resumes). Returns the manifest path.
    """
    from tqdm.auto import tqdm

    exe = _espeak()
    folder = Path(folder)
    wavs = folder / "wavs"
    wavs.mkdir(parents=True, exist_ok=True)
    todo = [c for c in clips if not (wavs / f"{c.id}.wav").is_file()]
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(todo), desc="espeak-ng", unit="clip", disable=not progress) as bar:
        for _ in pool.map(lambda c: _synthesize(exe, c, wavs / f"{c.id}.wav"), todo):
            bar.update(1)
    manifest = folder / "manifest.jsonl"
    with open(manifest, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"id": c.id, "audio": str(wavs / f"{c.id}.wav"), "text": c.text,
                                "voice": c.voice, "speed": c.speed, "pitch": c.pitch,
                                "split": c.split}) + "\n" for c in clips)
    return manifest
