"""The speech path's Triton kernels against their eager PyTorch references and
``torch.compile`` of those references, on a CUDA device, at the sizes of one minute of audio.

    .venv/bin/python benchmarks/kernels.py      # table + benchmarks/results/kernels-<device>.json

Cases (random inputs; speed does not depend on the values):

* ``quantize``: 3000 HuBERT frames x 768 against 1000 centroids (fp32 and bf16 features).
  Compute-bound; reported against the device's measured fp32 (non-tensor-core) peak,
  because the kernel multiplies in full fp32 like the reference.
* ``unit_embedding``: batch 8, about 1200 reduced units of 1..5 frames per row, 128
  channels. Memory-bound; reported against the measured copy bandwidth.
* ``lrelu_conv1d``: a residual-block conv at 512 channels x 15000 samples (3000 frames after
  the first x5 upsampling) for kernel sizes 3/7/11 at dilations 1/3/5, fp32 and bf16, and
  the whole residual block (k=3, dilations 1,3,5). Reported against the measured matmul
  peak of the precision the kernel uses (TF32 for fp32 when PyTorch allows TF32 convs).

Times are medians of ``triton.testing.do_bench`` (CUDA events, L2 flushed between runs).

Exit status: 0 when the table was measured and written; 3 (``NOT_MEASURED``) when nothing
was measured because there is no CUDA device or no Triton (a message on stderr says which),
so that a script or CI step cannot take a run without a GPU for a measurement.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, print_table, write_json
from torch import nn

from speechgpt_agent.kernels.quantize import quantize_reference, quantize_triton
from speechgpt_agent.kernels.unit_embedding import unit_embedding_reference, unit_embedding_triton
from speechgpt_agent.kernels.vocoder import (
    lrelu_conv1d_reference,
    lrelu_conv1d_triton,
    resblock_reference,
)
from speechgpt_agent.kernels.vocoder import resblock as resblock_fused

FRAME_RATE = 50  # unit frames per second
COLUMNS = ["kernel", "case", "impl", "ms", "speedup", "rate", "unit", "of_peak", "max_err"]


def bench(fn: Callable[[], Any]) -> float:
    """Median milliseconds of ``fn()`` (after one call that compiles / autotunes)."""
    import triton.testing

    fn()
    torch.cuda.synchronize()
    return float(triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median"))


def measure_peaks() -> dict[str, float]:
    """Measured peaks of this device: copy GB/s and matmul TFLOP/s per precision."""
    n = 1 << 28  # 1 GiB of fp32
    src = torch.empty(n, device="cuda")
    ms = bench(partial(torch.empty_like(src).copy_, src))
    peaks = {"copy_GBps": 2 * 4 * n / ms / 1e6}  # read + write
    del src
    size = 8192
    flop = 2 * size**3
    precision = torch.get_float32_matmul_precision()
    try:
        for name, dtype, fp32_precision in (("fp32", torch.float32, "highest"), ("tf32", torch.float32, "high"),
                                            ("bf16", torch.bfloat16, "highest")):
            torch.set_float32_matmul_precision(fp32_precision)
            a = torch.randn(size, size, device="cuda", dtype=dtype)
            b = torch.randn(size, size, device="cuda", dtype=dtype)
            peaks[f"{name}_TFLOPs"] = flop / bench(partial(torch.mm, a, b)) / 1e9
    finally:
        torch.set_float32_matmul_precision(precision)
    return peaks


def compare(
    kernel: str,
    case: str,
    impls: dict[str, Callable[[], torch.Tensor]],
    *,
    work: float,
    unit: str,
    peak: float,
    error: Callable[[torch.Tensor, torch.Tensor], float],
) -> list[dict[str, Any]]:
    """Time each implementation; rate = ``work`` (FLOP or bytes) per second in ``unit``s."""
    scale = {"TFLOP/s": 1e12, "GB/s": 1e9}[unit]
    reference = impls["eager"]()
    rows = []
    for impl, fn in impls.items():
        row: dict[str, Any] = {"kernel": kernel, "case": case, "impl": impl, "unit": unit}
        try:
            row["max_err"] = error(fn(), reference)
            row["ms"] = bench(fn)
        except (RuntimeError, ValueError, TypeError) as exc:  # e.g. torch.compile giving up
            row["failed"] = f"{type(exc).__name__}: {exc}"[:300]
            print(f"{kernel} {case} {impl}: {row['failed']}", file=sys.stderr)
            rows.append(row)
            continue
        row["rate"] = work / (row["ms"] / 1e3) / scale
        row["of_peak"] = row["rate"] / peak
        rows.append(row)
    eager = rows[0].get("ms")
    for row in rows:
        if eager and row.get("ms"):
            row["speedup"] = eager / row["ms"]
    return rows


def implementations(
    eager: Callable[..., torch.Tensor], compiled: Callable[..., torch.Tensor], triton_fn: Callable[..., torch.Tensor],
    *args: Any, **kwargs: Any,
) -> dict[str, Callable[[], torch.Tensor]]:
    """The three contenders bound to the same arguments; ``eager`` is the baseline."""
    return {name: partial(fn, *args, **kwargs)
            for name, fn in (("eager", eager), ("compile", compiled), ("triton", triton_fn))}


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def bench_quantize(seconds: float, peaks: dict[str, float]) -> list[dict[str, Any]]:
    T, K, D = int(seconds * FRAME_RATE), 1000, 768
    g = torch.Generator(device="cuda").manual_seed(0)
    centroids = torch.randn(K, D, device="cuda", generator=g)
    c_sq = (centroids * centroids).sum(1)
    compiled = torch.compile(quantize_reference)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(T, D, device="cuda", generator=g).to(dtype)

        def disagreement(ids: torch.Tensor, ref: torch.Tensor) -> float:
            return float((ids != ref).float().mean())  # fraction of frames (near-ties may differ)

        rows += compare(
            "quantize", f"{T}x{D} vs {K} {str(dtype)[6:]}",
            implementations(quantize_reference, compiled, quantize_triton, x, centroids, c_sq),
            work=2.0 * T * K * D, unit="TFLOP/s", peak=peaks["fp32_TFLOPs"], error=disagreement,
        )
    return rows


def bench_unit_embedding(seconds: float, peaks: dict[str, float]) -> list[dict[str, Any]]:
    B, C, V = 8, 128, 1000
    frames = int(seconds * FRAME_RATE)
    g = torch.Generator(device="cuda").manual_seed(0)
    n_units = frames // 3 + 200
    durations = torch.randint(1, 6, (B, n_units), device="cuda", generator=g)  # mean 3 frames
    ids = torch.randint(0, V, (B, n_units), device="cuda", generator=g)
    weight = torch.randn(V, C, device="cuda", generator=g)
    T = int(durations.sum(1).max())
    compiled = torch.compile(unit_embedding_reference)
    # bytes that must move: the output once, the ids and durations once
    work = B * C * T * weight.element_size() + 2 * ids.numel() * 8
    return compare(
        "unit_embedding", f"B={B} N={n_units} C={C} T={T}",
        implementations(unit_embedding_reference, compiled, unit_embedding_triton, ids, durations, weight),
        work=work, unit="GB/s", peak=peaks["copy_GBps"], error=max_abs,
    )


def bench_conv(seconds: float, peaks: dict[str, float]) -> list[dict[str, Any]]:
    C, T = 512, int(seconds * FRAME_RATE) * 5
    g = torch.Generator(device="cuda").manual_seed(0)
    compiled = torch.compile(lrelu_conv1d_reference)
    tf32 = torch.backends.cudnn.allow_tf32
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        peak = peaks["bf16_TFLOPs"] if dtype == torch.bfloat16 else peaks["tf32_TFLOPs" if tf32 else "fp32_TFLOPs"]
        x = torch.randn(1, C, T, device="cuda", generator=g).to(dtype)
        for k, d in ((3, 1), (3, 5), (7, 3), (11, 5)):
            w = (torch.randn(C, C, k, device="cuda", generator=g) / (C * k) ** 0.5).to(dtype)
            b = torch.randn(C, device="cuda", generator=g).to(dtype)
            p = (k - 1) * d // 2
            rows += compare(
                "lrelu_conv1d", f"{C}ch x {T} k{k} d{d} {str(dtype)[6:]}",
                implementations(lrelu_conv1d_reference, compiled, lrelu_conv1d_triton, x, w, b, d,
                                padding=p, residual=x),
                work=2.0 * C * C * k * T, unit="TFLOP/s", peak=peak, error=max_abs,
            )
    # the whole residual block (k=3, dilations 1,3,5), fp32, as the vocoder runs it
    convs1 = nn.ModuleList(nn.Conv1d(C, C, 3, dilation=d, padding=d) for d in (1, 3, 5)).cuda()
    convs2 = nn.ModuleList(nn.Conv1d(C, C, 3, padding=1) for _ in range(3)).cuda()
    x = torch.randn(1, C, T, device="cuda", generator=g)
    compiled_block = torch.compile(resblock_reference)
    rows += compare(
        "resblock", f"{C}ch x {T} k3 d1,3,5 float32",
        implementations(resblock_reference, compiled_block, resblock_fused, x, convs1, convs2),
        work=6 * 2.0 * C * C * 3 * T, unit="TFLOP/s",
        peak=peaks["tf32_TFLOPs" if tf32 else "fp32_TFLOPs"], error=max_abs,
    )
    return rows


def device_slug() -> str:
    return torch.cuda.get_device_name(0).lower().replace(" ", "-").replace("/", "-")


NOT_MEASURED = 3
"""Exit status when nothing could be measured (no CUDA device, or no Triton)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="audio length (default: %(default)s)")
    parser.add_argument("--only", choices=["quantize", "unit_embedding", "conv"], nargs="+",
                        help="benchmark only these kernels")
    parser.add_argument("--out", help="JSON path (default: benchmarks/results/kernels-<device>.json)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/kernels.py: nothing measured: it needs a CUDA device (the kernels are Triton "
              f"GPU kernels) and none was found; exit status {NOT_MEASURED}.", file=sys.stderr)
        return NOT_MEASURED
    try:
        import triton  # noqa: F401
    except ImportError:
        print("benchmarks/kernels.py: nothing measured: it needs Triton, which is not installed; "
              f"exit status {NOT_MEASURED}.", file=sys.stderr)
        return NOT_MEASURED
    torch.set_grad_enabled(False)
    peaks = measure_peaks()
    print("measured peaks: " + ", ".join(f"{k} {v:.1f}" for k, v in peaks.items()))
    benches = {"quantize": bench_quantize, "unit_embedding": bench_unit_embedding, "conv": bench_conv}
    rows = []
    for name, fn in benches.items():
        if args.only is None or name in args.only:
            rows += fn(args.seconds, peaks)
    print_table(rows, COLUMNS)
    out = args.out or Path(__file__).resolve().parent / "results" / f"kernels-{device_slug()}.json"
    path = write_json(out, {"benchmark": "kernels", "environment": environment(), "device": torch.cuda.get_device_name(0),
                            "seconds": args.seconds, "peaks": peaks, "rows": rows,
                            "notes": {"of_peak": "rate / measured peak (quantize: fp32 FMA; unit_embedding: copy "
                                                 "bandwidth; convs: the matmul peak of the kernel's precision)",
                                      "quantize max_err": "fraction of frames whose id differs from eager"}})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
