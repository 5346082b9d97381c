"""Real-time factor of the speech codec on this machine: unit extraction and vocoding,
offline and streaming, with streaming reported as a ratio to offline measured in the
same run (so the noisy shared CPU cancels out).

Models have the real sizes (mHuBERT base: 12 layers x 768; CodeHiFiGAN: 512 channels,
upsampling 5,4,4,2,2) with random weights: speed does not depend on the weights.

    .venv/bin/python benchmarks/codec.py            # table + benchmarks/results/codec.json

Target (issue 2): streaming vocoding costs at most 1.15x offline at a 0.5 s chunk, judged
with one torch thread (the same work on the same core); two threads are reported as well.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, median_time, print_table, write_json

from speechgpt_agent.audio import load_audio
from speechgpt_agent.units import SpeechTokenizer
from speechgpt_agent.vocoder import CodeHiFiGAN, CodeHiFiGANConfig, UnitVocoder

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
FRAME_RATE = 50  # unit frames per second


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def speech_clip(seconds: float) -> np.ndarray:
    """The committed espeak-ng clips at 16 kHz, concatenated and tiled to ``seconds``."""
    clips = [load_audio(p) for p in sorted(DATA.iterdir()) if p.suffix in {".wav", ".flac", ".ogg"}]
    audio = np.concatenate(clips)
    reps = int(np.ceil(seconds * 16000 / len(audio)))
    return np.tile(audio, reps)[: int(seconds * 16000)]


def bench_extraction(audio: np.ndarray, repeats: int) -> list[dict]:
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    model = HubertModel(HubertConfig()).eval()  # mHuBERT base sizes
    fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=False)
    centroids = np.random.default_rng(0).standard_normal((1000, 768)).astype(np.float32)
    seconds = len(audio) / 16000
    rows = []
    offline = SpeechTokenizer(model, fe, centroids, layer=11)
    ref = offline.encode(audio, 16000)
    t_off = median_time(lambda: offline.encode(audio, 16000), repeats)
    rows.append({"stage": "units", "mode": "offline", "chunk_s": seconds, "rtf": t_off / seconds,
                 "ratio_to_offline": 1.0, "frame_agreement": 1.0})
    for chunk_s in (2.0, 5.0):
        tok = SpeechTokenizer(model, fe, centroids, layer=11, max_chunk_samples=int(chunk_s * 16000))
        got = tok.encode(audio, 16000)
        n = min(len(got.frames), len(ref.frames))
        agree = float(np.mean(np.asarray(got.frames[:n]) == np.asarray(ref.frames[:n])))
        t = median_time(lambda tok=tok: tok.encode(audio, 16000), repeats)
        rows.append({"stage": "units", "mode": "chunked", "chunk_s": chunk_s, "rtf": t / seconds,
                     "ratio_to_offline": t / t_off, "frame_agreement": agree})
    return rows


def bench_vocoder(seconds: float, repeats: int, chunks: list[float]) -> list[dict]:
    torch.manual_seed(0)
    model = CodeHiFiGAN(CodeHiFiGANConfig()).eval()  # released config sizes, random weights
    vocoder = UnitVocoder(model)
    rng = np.random.default_rng(0)
    units = rng.integers(0, 1000, size=int(seconds * FRAME_RATE)).tolist()
    durations = np.maximum(1, rng.poisson(1.5, size=len(units))).tolist()
    # fix the audio length: the random duration predictor would otherwise decide it
    n_frames = int(sum(durations))
    audio_s = n_frames / FRAME_RATE
    reference = vocoder.synthesize(units, durations)

    def offline() -> None:
        vocoder.synthesize(units, durations)

    def streaming(units_per_push: int) -> np.ndarray:
        stream = vocoder.stream(predict_durations=False)
        out = []
        for i in range(0, len(units), units_per_push):
            out.append(stream.push(units[i : i + units_per_push], durations[i : i + units_per_push]))
        out.append(stream.flush())
        return np.concatenate(out)

    rows = []
    t_off = median_time(offline, repeats)
    rows.append({"stage": "vocoder", "mode": "offline", "chunk_s": audio_s, "rtf": t_off / audio_s,
                 "ratio_to_offline": 1.0, "max_abs_diff": 0.0})
    mean_dur = n_frames / len(units)
    for chunk_s in chunks:
        per_push = max(1, round(chunk_s * FRAME_RATE / mean_dur))
        diff = float(np.max(np.abs(streaming(per_push) - reference)))
        # alternate offline and streaming runs, so drifts of the shared CPU hit both alike
        t_str, t_offs = [], []
        for _ in range(repeats):
            t_offs.append(timed(offline))
            t_str.append(timed(lambda n=per_push: streaming(n)))
        s, o = statistics.median(t_str), statistics.median(t_offs)
        rows.append({"stage": "vocoder", "mode": "streaming", "chunk_s": chunk_s,
                     "rtf": s / audio_s, "ratio_to_offline": s / o, "max_abs_diff": diff})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunks", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0], help="streaming chunk sizes in seconds")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "codec.json"))
    parser.add_argument("--skip-extraction", action="store_true")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="torch thread counts to measure, one pass each (default: %(default)s)")
    args = parser.parse_args(argv)

    torch.set_grad_enabled(False)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        part = []
        if not args.skip_extraction:
            part += bench_extraction(speech_clip(args.seconds), args.repeats)
        part += bench_vocoder(args.seconds, args.repeats, args.chunks)
        rows += [{"threads": threads, **r} for r in part]
    print_table(rows, ["threads", "stage", "mode", "chunk_s", "rtf", "ratio_to_offline", "frame_agreement",
                       "max_abs_diff"])
    # the cost of streaming: one thread, so both sides do the same work on the same core
    # (with more threads, offline's long convolutions parallelise better than a stream's
    # short ones: that row is reported too, as wall-clock)
    at_half = [r for r in rows if r["stage"] == "vocoder" and r["mode"] == "streaming" and r["chunk_s"] == 0.5
               and r["threads"] == min(args.threads)]
    target = {"name": f"streaming vocoder <= 1.15x offline at 0.5 s chunk ({min(args.threads)} thread(s))",
              "value": at_half[0]["ratio_to_offline"] if at_half else None}
    target["met"] = target["value"] is not None and target["value"] <= 1.15
    print(f"\ntarget: {target['name']}: {target['value']}  met={target['met']}")
    path = write_json(args.out, {"benchmark": "codec", "environment": environment(), "seconds": args.seconds,
                                 "repeats": args.repeats, "rows": rows, "target": target})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
