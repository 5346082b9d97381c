"""Speech for the demo recipe, synthesized with espeak-ng: many voices, speeds and pitches.

Second edition: a training clip's voice is drawn per clip from every usable English
espeak-ng voice (:data:`TRAIN_LANGUAGES`) with every usable variant (:data:`TRAIN_VARIANTS`,
or none), screened by :mod:`.voices`; :data:`HELD_OUT_LANGUAGES` and :data:`HELD_OUT_VARIANTS`
are never used in training, and the benchmark's voices (:data:`HELD_OUT_VOICES`) are made of
them. Each text of the closed world is spoken in :data:`VOICES_PER_TEXT` distinct voices
(drawn per text), with a speed and a pitch drawn per clip from a seeded generator, plus
extra recordings; as many clips as the first edition (which drew from ten fixed voices),
so training takes as long. SpeechGPT's own voice (:data:`ANSWER_VOICE`, a training language
with no variant, at a fixed speed and pitch) speaks every answer once, the target of the
model's spoken answers; it is the same as in the first edition.

Non-speech for "i do not know" (:func:`plan_nonspeech`, :func:`write_nonspeech`): silence,
white and pink noise at several levels, and clips too short to hold a question
(:data:`SHORT_CLIP_MS`: cuts of speech or noise), generated with numpy from the seed and
written as 16 kHz wavs next to the espeak-ng clips.

Clips are 16 kHz mono PCM_16 wav files (espeak-ng's 22.05 kHz output resampled with soxr),
listed in ``manifest.jsonl`` as the ``data units`` command reads it:
``{"id", "audio", "text", "voice", "speed", "pitch", "split"}`` (non-speech rows have the
text ``""``, their kind as voice, and ``kind``, ``level_db``, ``seconds``).
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

import numpy as np

from speechgpt_agent.audio import load_audio, write_wav
from speechgpt_agent.errors import SpeechGPTError

__all__ = [
    "ANSWER_VOICE", "HELD_OUT_LANGUAGES", "HELD_OUT_VARIANTS", "HELD_OUT_VOICE", "HELD_OUT_VOICES",
    "NONSPEECH_KINDS", "SHORT_CLIP_MS", "TRAIN_LANGUAGES", "TRAIN_VARIANTS", "Clip", "NonSpeechClip",
    "is_held_out_voice", "plan_clips", "plan_nonspeech", "synthesize_corpus", "train_voice", "write_nonspeech",
]

TRAIN_LANGUAGES: tuple[str, ...] = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-029")
"""English espeak-ng voices of the training clips (``espeak-ng --voices=en``, mbrola ones aside)."""

HELD_OUT_LANGUAGES: tuple[str, ...] = ("en-us-nyc", "en-gb-x-gbcwmd")
"""English voices never used in training: accents only the benchmark speaks."""

USABLE_VARIANTS: tuple[str, ...] = (
    "Alex", "Andrea", "Andy", "Annie", "AnxiousAndy", "Denis", "Diogo", "Gene", "Gene2", "Henrique",
    "Hugo", "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike", "Nguyen", "RicishayMax", "RicishayMax2",
    "RicishayMax3", "Storm", "Tweaky", "UniRobot", "adam", "anika", "anikaRobot", "antonio", "aunty",
    "belinda", "benjamin", "boris", "caleb", "croak", "david", "ed", "edward", "edward2", "f1", "f2",
    "f3", "f4", "f5", "grandma", "grandpa", "gustave", "iven", "iven2", "iven3", "iven4", "john",
    "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6", "linda", "m1", "m2", "m3", "m4", "m5",
    "m6", "m7", "m8", "marcelo", "max", "michel", "miguel", "norbert", "pablo", "paul", "pedro",
    "quincy", "rob", "robert", "robosoft", "robosoft2", "robosoft3", "robosoft4", "robosoft5",
    "robosoft6", "robosoft7", "robosoft8", "sandro", "shelby", "steph", "steph2", "steph3", "travis",
    "victor",
)
"""The 92 of espeak-ng 1.51's 101 variants that pass :mod:`.voices`'s screen (on ``en-us``).
Left out: ``whisper`` and ``whisperf`` (unvoiced), ``announcer`` (24% voiced), ``Alicia`` and
``zac`` (3 and 4 of 6 confusable questions matched), ``Demonic`` and ``kaukovalta`` (5 of 6),
``Mr serious`` (its file name holds a space: espeak-ng falls back to the plain voice) and
``fast`` (a test variant, identical to the plain voice)."""

HELD_OUT_VARIANTS: tuple[str, ...] = ("f4", "m2", "Annie", "Andy", "klatt3", "steph2")
"""Variants never used in training (none of them was in the first edition's training voices)."""

TRAIN_VARIANTS: tuple[str, ...] = ("",) + tuple(v for v in USABLE_VARIANTS if v not in HELD_OUT_VARIANTS)
"""Variants of the training clips; ``""`` is the language voice itself."""

HELD_OUT_VOICES: tuple[str, ...] = (
    "en-us+f4", "en-us-nyc+m2", "en-gb-x-gbcwmd+Annie", "en-gb+Andy", "en-us-nyc+klatt3",
    "en-gb-scotland+steph2",
)
"""The benchmark's voices: each is a held-out language, a held-out variant, or both. The
first (the first edition's held-out voice) speaks the bundled question."""

HELD_OUT_VOICE = HELD_OUT_VOICES[0]
"""The first benchmark voice: the recipe's own evaluation and the bundled question."""

VOICES_PER_TEXT = 6
"""Distinct training voices that speak each text (drawn per text): more voices than
recordings per text, so that the model hears many voices without more data."""

ANSWER_VOICE: tuple[str, int, int] = ("en-us", 160, 50)
"""The model's own voice (espeak-ng voice, words per minute, pitch): every spoken answer of
stage 3 is this voice's recording of the answer. With the question's voice instead, a
question in an unheard voice left greedy decoding to blend many voices' units, and half the
spoken answers were not understood even as units (session 5's note)."""


def train_voice(rng: random.Random) -> str:
    """A training voice drawn from ``rng``: ``language`` or ``language+variant``."""
    language, variant = rng.choice(TRAIN_LANGUAGES), rng.choice(TRAIN_VARIANTS)
    return f"{language}+{variant}" if variant else language


def is_held_out_voice(voice: str) -> bool:
    """Whether ``voice`` (``language[+variant]``) has a held-out language or variant."""
    language, _, variant = voice.partition("+")
    return language in HELD_OUT_LANGUAGES or variant in HELD_OUT_VARIANTS

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
    """``"train"``, ``"heldout_voice"``, ``"train_extra"``, ``"answer_voice"``, ``"idk_train"``,
    ``"heldout_idk"`` or ``"idk_varied"`` (see :func:`plan_clips`)"""


def _espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SpeechGPTError("espeak-ng is not installed: `apt-get install espeak-ng` (it synthesizes "
                             "the demo corpus).")
    return exe


def plan_clips(train_texts: Sequence[str], eval_texts: Sequence[str], seed: int, *,
               extra_texts: Sequence[str] = (), extra_per_text: int = 0,
               answer_texts: Sequence[str] = (), idk_texts: Sequence[str] = (), idk_per_text: int = 0,
               idk_eval_texts: Sequence[str] = (), varied_idk_texts: Sequence[str] = (),
               varied_idk_per_text: int = 1) -> list[Clip]:
    """The clips of the corpus.

    * ``train``: each of ``train_texts`` in :data:`VOICES_PER_TEXT` distinct training voices
      (:func:`train_voice`);
    * ``heldout_voice``: each of ``eval_texts`` in :data:`HELD_OUT_VOICE` (speed 160, pitch 50);
    * ``train_extra``: ``extra_per_text`` more recordings of each of ``extra_texts``, in
      training voices drawn with repetition (speeds and pitches differ). Only stage 3 uses them:
      more recordings of the spoken questions teach the model to hear words, not to learn
      recordings by heart. Drawn from their own generator, so the other clips do not change.
    * ``answer_voice``: each of ``answer_texts`` once in :data:`ANSWER_VOICE` (no draws);
    * ``idk_train``: ``idk_per_text`` recordings of each of ``idk_texts`` (out-of-world
      questions), in training voices, from a generator of their own;
    * ``heldout_idk``: each of ``idk_eval_texts`` once, in the :data:`HELD_OUT_VOICES` in turn;
    * ``idk_varied``: ``varied_idk_per_text`` recordings of each of ``varied_idk_texts`` (more
      out-of-world questions) in training voices: the first of each from a generator of its
      own, the others (ids ``g0000_01`` ...) from another, so that adding recordings leaves
      the first ones as they were.
    """
    rng = random.Random(seed)
    clips = []
    for t, text in enumerate(train_texts):
        voices: list[str] = []
        while len(voices) < VOICES_PER_TEXT:
            voice = train_voice(rng)
            if voice not in voices:
                voices.append(voice)
        for k, voice in enumerate(voices):
            clips.append(Clip(f"t{t:04d}_v{k}", text, voice, rng.randint(135, 185), rng.randint(30, 70), "train"))
    for t, text in enumerate(eval_texts):
        clips.append(Clip(f"h{t:04d}", text, HELD_OUT_VOICE, 160, 50, "heldout_voice"))
    extra = random.Random(seed + 1)
    for t, text in enumerate(extra_texts):
        for k in range(extra_per_text):
            clips.append(Clip(f"x{t:04d}_{k:02d}", text, train_voice(extra), extra.randint(125, 195),
                              extra.randint(20, 80), "train_extra"))
    voice, speed, pitch = ANSWER_VOICE
    for t, text in enumerate(answer_texts):
        clips.append(Clip(f"a{t:04d}", text, voice, speed, pitch, "answer_voice"))
    idk = random.Random(seed + 2)
    for t, text in enumerate(idk_texts):
        for k in range(idk_per_text):
            clips.append(Clip(f"o{t:04d}_{k:02d}", text, train_voice(idk), idk.randint(125, 195),
                              idk.randint(20, 80), "idk_train"))
    for t, text in enumerate(idk_eval_texts):
        clips.append(Clip(f"ho{t:04d}", text, HELD_OUT_VOICES[t % len(HELD_OUT_VOICES)], 160, 50, "heldout_idk"))
    varied = random.Random(seed + 3)
    for t, text in enumerate(varied_idk_texts):
        clips.append(Clip(f"g{t:04d}", text, train_voice(varied), varied.randint(125, 195),
                          varied.randint(20, 80), "idk_varied"))
    more = random.Random(seed + 4)
    for t, text in enumerate(varied_idk_texts):
        for k in range(1, varied_idk_per_text):
            clips.append(Clip(f"g{t:04d}_{k:02d}", text, train_voice(more), more.randint(125, 195),
                              more.randint(20, 80), "idk_varied"))
    return clips


NONSPEECH_KINDS: tuple[str, ...] = ("silence", "white", "pink", "short")
"""Non-speech inputs answered "i do not know": digital silence (or a -80 dBFS hiss), white
and pink noise at :data:`NOISE_LEVELS_DB`, and clips of :data:`SHORT_CLIP_MS`."""

NOISE_LEVELS_DB: tuple[float, ...] = (-60.0, -45.0, -35.0, -25.0, -15.0)
"""RMS levels of the noise clips, dBFS (full scale = 1.0)."""

SHORT_CLIP_MS: tuple[int, int] = (30, 200)
"""Lengths of the too-short clips, milliseconds (30 ms: the tokenizer's 25 ms window plus
a hop; 200 ms is shorter than any question's first word and a half)."""


@dataclass(frozen=True)
class NonSpeechClip:
    """One non-speech clip: generated with numpy, not synthesized."""

    id: str
    kind: str
    """one of :data:`NONSPEECH_KINDS`"""
    seconds: float
    level_db: float | None
    """RMS level, dBFS; ``None`` for digital silence and for ``short`` cuts of speech (their own level)"""
    split: str
    """``"idk_noise"`` (training) or ``"heldout_noise"`` (evaluation)"""
    source: str = ""
    """for a ``short`` clip: ``"noise"`` or ``"speech"`` (a cut of a speech clip)"""


def plan_nonspeech(n: int, seed: int, split: str = "idk_noise") -> list[NonSpeechClip]:
    """``n`` non-speech clips, the kinds of :data:`NONSPEECH_KINDS` in turn, drawn from ``seed``.

    Silence and noise last 0.3 to 3 s; short clips :data:`SHORT_CLIP_MS`, half cuts of speech
    (taken by :func:`write_nonspeech` from the speech clips it is given) and half noise.
    """
    rng = random.Random(seed)
    prefix = "n" if split == "idk_noise" else "hn"
    out = []
    for i in range(n):
        kind = NONSPEECH_KINDS[i % len(NONSPEECH_KINDS)]
        if kind == "short":
            seconds = rng.randint(*SHORT_CLIP_MS) / 1000
            source = rng.choice(("speech", "noise"))
            level = rng.choice(NOISE_LEVELS_DB) if source == "noise" else None
            out.append(NonSpeechClip(f"{prefix}{i:04d}_short", kind, seconds, level, split, source))
            continue
        seconds = round(rng.uniform(0.3, 3.0), 3)
        level = (None if rng.random() < 0.5 else -80.0) if kind == "silence" else rng.choice(NOISE_LEVELS_DB)
        out.append(NonSpeechClip(f"{prefix}{i:04d}_{kind}", kind, seconds, level, split))
    return out


def _noise(kind: str, n: int, gen: np.random.Generator) -> np.ndarray:
    white = gen.standard_normal(n)
    if kind != "pink":
        return white
    spectrum = np.fft.rfft(white)
    f = np.fft.rfftfreq(n)
    f[0] = f[1] if n > 1 else 1.0
    return np.fft.irfft(spectrum / np.sqrt(f), n)  # 1/f power


def nonspeech_samples(clip: NonSpeechClip, seed: int, speech: Sequence[np.ndarray] = ()) -> np.ndarray:
    """The float32 samples ``[T]`` at 16 kHz of ``clip``, the same for the same ``seed`` and ``speech``.

    A ``short`` cut of speech is taken from one of ``speech`` (16 kHz float arrays), around
    its loudest frame; without ``speech`` it is noise.
    """
    gen = np.random.default_rng([seed, int.from_bytes(clip.id.encode(), "little") % (2 ** 63)])
    n = max(1, round(clip.seconds * SAMPLE_RATE))
    if clip.kind == "short" and clip.source == "speech" and speech:
        source = np.asarray(speech[int(gen.integers(len(speech)))], dtype=np.float32)
        if len(source) <= n:
            return source.copy()
        energy = np.convolve(source ** 2, np.ones(320), "same")
        centre = int(np.argmax(energy))
        start = int(np.clip(centre - n // 2 + gen.integers(-n // 4, n // 4 + 1), 0, len(source) - n))
        return source[start:start + n].copy()
    if clip.level_db is None and clip.kind == "silence":
        return np.zeros(n, dtype=np.float32)
    level = clip.level_db if clip.level_db is not None else -35.0  # a short cut of speech without speech
    x = _noise("white" if clip.kind in ("silence", "short") else clip.kind, n, gen)
    x = x / (np.sqrt(np.mean(x ** 2)) + 1e-12) * 10 ** (level / 20)
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def write_nonspeech(clips: Sequence[NonSpeechClip], folder: str | Path, seed: int, *,
                    speech_audio: Sequence[str | Path] = ()) -> list[dict[str, object]]:
    """Write ``clips`` into ``folder/wavs`` (kept if there) and return their manifest rows.

    ``speech_audio``: speech clips that ``short`` cuts of speech are taken from.
    """
    wavs = Path(folder) / "wavs"
    wavs.mkdir(parents=True, exist_ok=True)
    speech = [load_audio(p, target_rate=SAMPLE_RATE) for p in speech_audio]
    rows = []
    for clip in clips:
        path = wavs / f"{clip.id}.wav"
        if not path.is_file():
            write_wav(path, nonspeech_samples(clip, seed, speech), SAMPLE_RATE)
        rows.append({"id": clip.id, "audio": str(path), "text": "", "voice": clip.kind, "speed": 0, "pitch": 0,
                     "split": clip.split, "kind": clip.kind, "level_db": clip.level_db, "seconds": clip.seconds,
                     "source": clip.source})
    return rows


def _synthesize(exe: str, clip: Clip, out: Path) -> None:
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        subprocess.run([exe, "-v", clip.voice, "-s", str(clip.speed), "-p", str(clip.pitch),
                        "-w", tmp.name, clip.text], check=True, capture_output=True)
        samples = load_audio(tmp.name, target_rate=SAMPLE_RATE)
    write_wav(out, samples, SAMPLE_RATE)


def synthesize_corpus(clips: Sequence[Clip], folder: str | Path, *, workers: int = 2,
                      progress: bool = True, extra_rows: Sequence[dict[str, object]] = ()) -> Path:
    """Synthesize ``clips`` into ``folder/wavs`` and write ``folder/manifest.jsonl``.

    Clips already on disk are kept (a rerun resumes). ``extra_rows`` (non-speech clips'
    rows, :func:`write_nonspeech`) are listed after the clips. Returns the manifest path.
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
        f.writelines(json.dumps(r) + "\n" for r in extra_rows)
    return manifest
