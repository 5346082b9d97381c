"""Which espeak-ng voices and variants the demo recipe can use: a screen of intelligibility.

``python -m speechgpt_agent.training.recipes.demo.voices`` speaks a few confusable
questions of the closed world in every English voice with every variant and checks that
each clip is (1) synthesized at all, (2) of plausible length and loudness, (3) voiced
(whispers have no pitch, and the demo's MFCC units, fitted on voiced speech, hear noise in
them), and (4) *intelligible* to the demo's own features: its nearest neighbour by dynamic
time warping over the tokenizer's normalised MFCCs (:func:`speechgpt_agent.mel_units.mfcc_features`),
among the plain ``en-us`` recordings of all the questions, is the recording of the same
question. A variant that fails (4) on more than one question in a voice sounds too unlike
speech for a model trained on it to generalise from (it is not a question of accent).

The recipe's lists (:data:`.corpus.TRAIN_VARIANTS`, :data:`.corpus.HELD_OUT_VARIANTS`)
were chosen from this screen's output; rerun it after an espeak-ng upgrade.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["SCREEN_QUESTIONS", "VariantScreen", "dtw_distance", "english_voices", "screen", "variants"]

SCREEN_QUESTIONS: tuple[str, ...] = (
    "what is two plus three", "what is two minus three", "what is seven plus five",
    "what is seven minus one", "what color is the sky", "what is the capital of japan",
)
"""Questions that differ by one word (plus/minus, an operand): the screen's confusable set."""


def _espeak() -> str:
    from .corpus import _espeak as espeak

    return espeak()


def english_voices() -> list[str]:
    """espeak-ng's English language voices (``espeak-ng --voices=en``), mbrola ones left out
    (they need the separate mbrola synthesizer and its voice files)."""
    listing = subprocess.run([_espeak(), "--voices=en"], check=True, capture_output=True, text=True).stdout
    out = []
    for line in listing.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 5 and not cols[4].startswith("mb/") and cols[1] != "variant":
            out.append(cols[1])
    return sorted(set(out))


def variants() -> list[str]:
    """espeak-ng's voice variants (``espeak-ng --voices=variant``), by file name (``m3``, ``klatt``...)."""
    listing = subprocess.run([_espeak(), "--voices=variant"], check=True, capture_output=True, text=True).stdout
    names = set()
    for line in listing.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 5:
            names.add(cols[4].split("/", 1)[1])  # a name with a space keeps its first word: screened out
    return sorted(names)


def dtw_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Length-normalised DTW distance of feature sequences ``a [N, D]`` and ``b [M, D]`` (Euclidean cost)."""
    cost = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, n + 1):
        row = acc[i - 1, :-1].copy()  # diagonal predecessors, then the vertical ones
        best = np.minimum(row, acc[i - 1, 1:]) + cost[i - 1]
        for j in range(m):  # horizontal steps are sequential within the row
            left = acc[i, j] + cost[i - 1, j]
            acc[i, j + 1] = min(left, best[j])
    return float(acc[n, m] / (n + m))


@dataclass(frozen=True)
class VariantScreen:
    """The screen of one voice (``en-us+m3``)."""

    voice: str
    synthesized: bool
    seconds: float
    rms: float
    voiced: float
    """share of frames with a clear pitch (autocorrelation peak > 0.5 in 60..400 Hz)"""
    recognised: int
    """questions whose nearest neighbour is their own en-us recording (of len(SCREEN_QUESTIONS))"""
    distinct: bool = True
    """the clips differ from the plain language voice's (espeak-ng falls back to the plain
    voice, silently, for a variant it cannot load, e.g. one whose file name holds a space)"""

    @property
    def usable(self) -> bool:
        return (self.synthesized and self.distinct and 0.6 < self.seconds < 6 and self.rms > 0.01
                and self.voiced >= 0.25 and self.recognised == len(SCREEN_QUESTIONS))


def _say(voice: str, text: str) -> np.ndarray | None:
    from speechgpt_agent.audio import load_audio

    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        done = subprocess.run([_espeak(), "-v", voice, "-w", tmp.name, text], check=False, capture_output=True)
        if done.returncode != 0:
            return None
        try:
            return load_audio(tmp.name, target_rate=16_000)
        except Exception:  # noqa: BLE001 - an empty or broken file means "not usable"
            return None


def _voiced_share(x: np.ndarray, rate: int = 16_000) -> float:
    frame = 640
    frames = [x[i:i + frame] for i in range(0, len(x) - frame, frame)]
    loud = [f for f in frames if np.sqrt(np.mean(f ** 2)) > 0.02]
    if not loud:
        return 0.0
    lo, hi = rate // 400, rate // 60
    voiced = 0
    for f in loud:
        f = f - f.mean()
        ac = np.correlate(f, f, "full")[frame - 1:]
        voiced += ac[0] > 0 and ac[lo:hi].max() / ac[0] > 0.5
    return voiced / len(loud)


def screen(voices: Sequence[str]) -> list[VariantScreen]:
    """Screen each of ``voices`` (``language+variant``) on :data:`SCREEN_QUESTIONS`."""
    from speechgpt_agent.mel_units import MelFeatureConfig, mfcc_features

    config = MelFeatureConfig()
    refs = [mfcc_features(_say("en-us", q), config).numpy() for q in SCREEN_QUESTIONS]
    plain: dict[str, np.ndarray | None] = {}
    out = []
    for voice in voices:
        clips = [_say(voice, q) for q in SCREEN_QUESTIONS]
        language = voice.split("+", 1)[0]
        if language not in plain:
            plain[language] = _say(language, SCREEN_QUESTIONS[0])
        same = plain[language]
        distinct = "+" not in voice or clips[0] is None or same is None or clips[0].shape != same.shape \
            or not np.array_equal(clips[0], same)
        if any(c is None or len(c) < 4000 for c in clips):
            out.append(VariantScreen(voice, False, 0.0, 0.0, 0.0, 0))
            continue
        recognised = 0
        for k, clip in enumerate(clips):
            feats = mfcc_features(clip, config).numpy()
            distances = [dtw_distance(feats, r) for r in refs]
            recognised += int(np.argmin(distances) == k)
        joined = np.concatenate(clips)
        out.append(VariantScreen(voice, True, round(len(joined) / 16_000 / len(clips), 2),
                                 round(float(np.sqrt(np.mean(joined ** 2))), 3),
                                 round(_voiced_share(joined), 2), recognised, distinct))
    return out


def main() -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--language", default="en-us", help="voice the variants are screened on (default: %(default)s)")
    p.add_argument("--languages", action="store_true", help="screen the English voices (no variant) instead")
    args = p.parse_args()
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed: `apt-get install espeak-ng`")
    names = english_voices() if args.languages else [f"{args.language}+{v}" for v in variants()]
    for s in screen(names):
        print(f"{s.voice:32s} {'ok ' if s.usable else 'NO '} s={s.seconds:4.2f} rms={s.rms:.3f} "
              f"voiced={s.voiced:.2f} recognised={s.recognised}/{len(SCREEN_QUESTIONS)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
