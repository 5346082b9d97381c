"""The codec subcommands: ``units`` (audio -> mHuBERT k-means units), ``vocode`` (units -> wav
with the unit HiFi-GAN) and ``convert`` (upstream pickled checkpoints -> safe formats), and
:func:`parse_unit_text`, which reads a unit string typed on the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import SpeechGPTError
from .options import DEFAULT_HUBERT


def add_units(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "units",
        help="audio files -> speech units (JSON lines)",
        description="Encode audio files into mHuBERT k-means units, one JSON object per line: "
        '{"path", "units", "durations", "text", "frames"} (or {"path", "error"}).',
    )
    p.add_argument("audio", nargs="+", help="audio files (wav/flac/ogg/...; any rate, any channels)")
    p.add_argument("--model", default=DEFAULT_HUBERT, help="HuBERT folder or hub id (default: %(default)s)")
    p.add_argument("--kmeans", default=None, help="k-means file or folder (.safetensors/.npy, or the upstream .bin with --trust-pickle)")
    p.add_argument("--trust-pickle", action="store_true", help="allow loading the upstream joblib k-means pickle")
    p.add_argument("--layer", type=int, default=11, help="HuBERT layer (default: %(default)s)")
    p.add_argument("--unmerged", action="store_true", help="also write the unmerged frame ids")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("-o", "--output", default="-", help="output .jsonl (default: stdout)")
    p.set_defaults(func=_cmd_units)


def _cmd_units(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..units import SpeechTokenizer

    tokenizer = SpeechTokenizer.from_pretrained(
        args.model, kmeans=args.kmeans, layer=args.layer, device=args.device, trust_pickle=args.trust_pickle
    )
    out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    failures = 0
    try:
        for path in tqdm(args.audio, desc="units", unit="file", disable=len(args.audio) < 2, file=sys.stderr):
            try:
                seq = tokenizer.encode(path)
            except SpeechGPTError as exc:
                failures += 1
                record = {"path": path, "error": str(exc)}
            else:
                record = {
                    "path": path,
                    "units": list(seq.units),
                    "durations": list(seq.durations),
                    "text": seq.text(),
                    "frames": len(seq.frames),
                }
                if args.unmerged:
                    record["unmerged"] = list(seq.frames)
            out.write(json.dumps(record) + "\n")
            out.flush()
    finally:
        if out is not sys.stdout:
            out.close()
    if failures:
        print(f"speechgpt-agent units: {failures} of {len(args.audio)} file(s) failed (see their 'error').", file=sys.stderr)
    return 1 if failures else 0


def parse_unit_text(text: str) -> list[int]:
    """Units from ``<sosp><1><2><eosp>``, ``1 2 3`` or ``1,2,3`` (spaces ignored)."""
    import re

    text = text.strip()
    if "<" in text:
        ids = re.findall(r"<\s*(-?\d+)\s*>", text)
    else:
        ids = re.split(r"[\s,]+", text) if text else []
    try:
        return [int(x) for x in ids if x != ""]
    except ValueError as exc:
        raise SpeechGPTError(f"cannot read units from {text[:60]!r}: expected '<sosp><12><7><eosp>' or '12 7'.") from exc


def add_vocode(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "vocode",
        help="speech units -> wav",
        description="Synthesize speech from units with the unit HiFi-GAN vocoder. Units come as an "
        "argument ('<sosp><12><7><eosp>' or '12 7 9') or as the JSON lines written by `units`.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("units", nargs="?", help="unit string")
    src.add_argument("--input", help="JSON lines from `speechgpt-agent units` (one wav per line)")
    p.add_argument("-o", "--output", required=True, help="output wav (or folder with --input)")
    p.add_argument("--vocoder", default=None, help="vocoder folder, checkpoint or hub id (default: the released mHuBERT LJ vocoder)")
    p.add_argument("--no-duration-prediction", action="store_true", help="one frame per unit instead of predicted durations")
    p.add_argument("--use-durations", action="store_true", help="with --input: use the recorded durations instead of predicting them")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_cmd_vocode)


def _cmd_vocode(args: argparse.Namespace) -> int:
    from ..audio import write_wav
    from ..vocoder import DEFAULT_VOCODER, UnitVocoder

    vocoder = UnitVocoder.from_pretrained(args.vocoder or DEFAULT_VOCODER, device=args.device)

    def synth(units: list[int], durations: list[int] | None) -> object:
        if durations is None and args.no_duration_prediction:
            durations = [1] * len(units)
        return vocoder.synthesize(units, durations)

    if args.units is not None:
        wav = synth(parse_unit_text(args.units), None)
        path = write_wav(args.output, wav, vocoder.sample_rate)
        print(f"wrote {path} ({len(wav) / vocoder.sample_rate:.2f} s)")  # type: ignore[arg-type]
        return 0
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(args.input, encoding="utf-8") as f:
        for n, line in enumerate(f):
            if not line.strip():
                continue
            record = json.loads(line)
            if "units" not in record:
                continue
            name = Path(record.get("path", f"utt{n}")).stem + ".wav"
            wav = synth(record["units"], record.get("durations") if args.use_durations else None)
            path = write_wav(out_dir / name, wav, vocoder.sample_rate)
            print(f"wrote {path}")
    return 0


def add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="upstream pickled checkpoints -> safe local formats",
        description="Convert an upstream pickled checkpoint once into safetensors/json, so later "
        "loads need no pickle. Running this command is your consent to unpickle SRC: only "
        "convert files from a source you trust.",
    )
    p.add_argument("kind", choices=["hubert", "kmeans", "vocoder"], help="what SRC is")
    p.add_argument("src", help="hubert: fairseq .pt; kmeans: joblib .bin; vocoder: folder or checkpoint + config.json")
    p.add_argument("out", help="output folder (kmeans: folder or .safetensors file)")
    p.set_defaults(func=_cmd_convert)


def _cmd_convert(args: argparse.Namespace) -> int:
    if args.kind == "hubert":
        from ..hubert import convert_fairseq_hubert

        out = convert_fairseq_hubert(args.src, args.out, trust_pickle=True)
    elif args.kind == "kmeans":
        from ..kmeans import convert_kmeans

        out = convert_kmeans(args.src, args.out, trust_pickle=True)
    else:
        from ..vocoder import convert_vocoder

        out = convert_vocoder(args.src, args.out, trust_pickle=True)
    print(f"wrote {out}")
    return 0

