"""Write resample_reference.npz: torchaudio's own resample of speech excerpts (see README.md).

torchaudio cannot be installed beside the torch this project uses, but its ``resample`` is
plain torch code: this script downloads the torchaudio wheel (``pip download --no-deps``,
2 MB), reads ``torchaudio/functional/functional.py`` out of it and runs its
``resample``, ``_get_sinc_resample_kernel`` and ``_apply_sinc_resample_kernel`` as they
are, with their defaults, on excerpts of the committed clips. The test
(``tests/test_sinc_resample.py``) compares :func:`speechgpt_agent.audio.resample` with
``resampler="torchaudio"`` against the stored outputs, so CI needs no torchaudio.

Run from the repository root:  .venv/bin/python tests/data/make_resample_reference.py
"""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
import tempfile
import typing
import warnings
import zipfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

TORCHAUDIO = "torchaudio==2.9.1"
DATA = Path(__file__).parent
OUT = DATA / "resample_reference.npz"

# name: (clip, rate the samples are read as, decimation, excerpt start (s), target rate)
CASES = {
    "8k": ("weather_8k_mono.wav", 8000, 1, 0.25, 16000),
    "22k": ("question_22k_stereo.flac", 22050, 1, 0.25, 16000),
    # every other sample of the 48 kHz clip: espeak-ng speech has nothing above 11 kHz
    "24k": ("sentence_48k_float.wav", 24000, 2, 0.25, 16000),
    "44k": ("numbers_44k_mono.ogg", 44100, 1, 0.25, 16000),
    "48k": ("sentence_48k_float.wav", 48000, 1, 0.25, 16000),
    # a rate whose reduced ratio is large (8001:16000): 16000 filter phases
    "8001": ("weather_8k_mono.wav", 8001, 1, 0.25, 16000),
    # upsampling
    "16k_to_22k": ("hello_16k_mono.wav", 16000, 1, 0.25, 22050),
}
EXCERPT_SECONDS = 0.5


def torchaudio_resample() -> typing.Callable[..., torch.Tensor]:
    """torchaudio's resample, run from the source in its wheel."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
                        TORCHAUDIO], check=True)
        wheel = next(Path(tmp).glob("torchaudio-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            source = zf.read("torchaudio/functional/functional.py").decode()
    tree = ast.parse(source)
    names = {"resample", "_get_sinc_resample_kernel", "_apply_sinc_resample_kernel"}
    body = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    assert {node.name for node in body} == names, "torchaudio's functional.py has changed"
    for node in body:
        node.decorator_list = []
    namespace = {"math": math, "warnings": warnings, "torch": torch, "Tensor": torch.Tensor,
                 "Optional": typing.Optional, "_CPU": torch.device("cpu")}
    code = compile(ast.Module(body=body, type_ignores=[]), "torchaudio/functional/functional.py", "exec")
    exec(code, namespace)  # noqa: S102 - torchaudio's own source, from its wheel
    return namespace["resample"]


def excerpt(clip: str, rate: int, step: int, start_s: float) -> np.ndarray:
    """float32 mono samples of the excerpt, decoded and mixed as load_audio does."""
    frames, _ = sf.read(DATA / clip, dtype="float32", always_2d=True)
    mono = frames[:, 0] if frames.shape[1] == 1 else frames.mean(axis=1, dtype=np.float32)
    mono = np.ascontiguousarray(mono[::step])
    start = round(start_s * rate)
    return mono[start:start + round(EXCERPT_SECONDS * rate)]


def main() -> None:
    resample = torchaudio_resample()
    arrays, meta = {}, {}
    for name, (clip, rate, step, start_s, target) in CASES.items():
        x = excerpt(clip, rate, step, start_s)
        y = resample(torch.from_numpy(x)[None], rate, target)[0].numpy()
        arrays[name] = y.astype(np.float32)
        meta[name] = {"clip": clip, "rate": rate, "step": step, "start": round(start_s * rate),
                      "frames": int(x.shape[0]), "target": target}
        print(f"{name}: {x.shape[0]} samples at {rate} Hz -> {y.shape[0]} at {target} Hz")
    meta["_source"] = f"{TORCHAUDIO} functional.resample, defaults, torch {torch.__version__}"
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
