"""HiFi-GAN residual-block layer, fused: leaky ReLU -> dilated conv1d -> + bias (+ residual).

Upstream's ``ResBlock`` (fairseq ``hifigan.py``, type 1) runs, for each dilation ``d``::

    xt = c2(lrelu(c1_d(lrelu(x))))    # lrelu slope 0.1, 'same' padding
    x = x + xt

Each ``lrelu -> conv`` pair (and the final ``+ x``) is one :func:`lrelu_conv1d` here: the
kernel applies the leaky ReLU while loading its input tile, so the activated tensor is
never written, and adds bias and residual before its single store.

The convolution is stride 1, ungrouped, and *valid* over a virtual input
``zeros(padding) ++ left_context ++ x ++ zeros(padding)``: offline synthesis passes
``padding`` (the conv's 'same' padding) and a streaming vocoder passes its left-context
cache as ``left_context`` (pre-activation samples that precede ``x``) with ``padding=0``,
without concatenating either. ``T_out = padding + L + T + padding - (k - 1) * dilation``.

Precision: products accumulate in fp32. fp32 inputs on CUDA use TF32 tensor cores exactly
when ``torch.backends.cudnn.allow_tf32`` lets ``F.conv1d`` do so (PyTorch's default);
elsewhere they are exact fp32. bf16/fp16 inputs feed tensor cores in their own dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._dispatch import interpreting, use_triton
from ._triton_utils import cdiv, check_out, check_same_device, tl, triton_kernel

LRELU_SLOPE = 0.1  # HiFi-GAN's leaky ReLU slope inside residual blocks


def _output_length(x: torch.Tensor, weight: torch.Tensor, dilation: int, padding: int, context: int) -> int:
    return 2 * padding + context + x.shape[2] - (weight.shape[2] - 1) * dilation


def _check_inputs(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    dilation: int,
    padding: int,
    residual: torch.Tensor | None,
    left_context: torch.Tensor | None,
) -> int:
    """Validate shapes; return ``T_out``."""
    if x.dim() != 3 or weight.dim() != 3 or weight.shape[1] != x.shape[1]:
        raise ValueError(
            "lrelu_conv1d: expected x [B, C_in, T] and weight [C_out, C_in, k] (ungrouped), got "
            f"{tuple(x.shape)} and {tuple(weight.shape)}."
        )
    for name, t in (("x", x), ("weight", weight), ("bias", bias), ("residual", residual),
                    ("left_context", left_context)):
        if t is not None and not t.dtype.is_floating_point:
            raise ValueError(f"lrelu_conv1d: {name} must be floating point, got {t.dtype}.")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"lrelu_conv1d: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}.")
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"lrelu_conv1d: dilation must be an integer >= 1, got {dilation!r}.")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"lrelu_conv1d: padding must be an integer >= 0, got {padding!r}.")
    context = 0
    if left_context is not None:
        if left_context.dim() != 3 or left_context.shape[:2] != x.shape[:2]:
            raise ValueError(
                f"lrelu_conv1d: left_context must be [B, C_in, L] = [{x.shape[0]}, {x.shape[1]}, L], "
                f"got {tuple(left_context.shape)}."
            )
        context = left_context.shape[2]
    t_out = _output_length(x, weight, dilation, padding, context)
    if t_out < 0:
        raise ValueError(
            f"lrelu_conv1d: the input spans {2 * padding + context + x.shape[2]} samples (with padding "
            f"and left context), fewer than the kernel's reach (k - 1) * dilation + 1 = "
            f"{(weight.shape[2] - 1) * dilation + 1}."
        )
    if residual is not None and tuple(residual.shape) != (x.shape[0], weight.shape[0], t_out):
        raise ValueError(
            f"lrelu_conv1d: residual must have the output's shape {(x.shape[0], weight.shape[0], t_out)}, "
            f"got {tuple(residual.shape)}."
        )
    return t_out


def lrelu_conv1d_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    dilation: int = 1,
    *,
    padding: int = 0,
    slope: float = LRELU_SLOPE,
    residual: torch.Tensor | None = None,
    left_context: torch.Tensor | None = None,
) -> torch.Tensor:
    """``conv1d(leaky_relu(pad(cat(left_context, x))), weight, bias, dilation) (+ residual)`` in PyTorch.

    Args:
        x: [B, C_in, T] samples (pre-activation).
        weight: [C_out, C_in, k] convolution weight (stride 1, one group).
        bias: [C_out] or ``None``.
        dilation: tap spacing in samples, ``>= 1``.
        padding: zeros added on both ends of the input (the conv's 'same' padding
            ``(k - 1) * dilation // 2`` for offline synthesis; 0 when streaming).
        slope: negative slope of the leaky ReLU.
        residual: [B, C_out, T_out] added to the output (the residual block's skip).
        left_context: [B, C_in, L] pre-activation samples that precede ``x`` (a stream's cache).

    Returns:
        [B, C_out, T_out] in ``x``'s dtype, ``T_out = 2 * padding + L + T - (k - 1) * dilation``;
        computed in fp32 and rounded once (the kernel also accumulates in fp32, but rounds
        bf16/fp16 activations to their dtype before its tensor-core products).

    Raises:
        ValueError: mismatched shapes, bad dilation/padding, or an input shorter than the kernel.
    """
    _check_inputs(x, weight, bias, dilation, padding, residual, left_context)
    if left_context is None:
        h = F.leaky_relu(_fp32(x), slope)
    else:  # the concatenation is a new tensor: activated in place (no second buffer)
        if left_context.dtype != x.dtype:
            left_context = left_context.to(x.dtype)
        h = _fp32(torch.cat([left_context, x], dim=2))
        h = F.leaky_relu(h, slope, inplace=not h.requires_grad)
    y = F.conv1d(h, _fp32(weight), None if bias is None else _fp32(bias), dilation=dilation, padding=padding)
    if residual is not None:
        y += _fp32(residual)  # y is a new tensor: added in place
    return y if y.dtype == x.dtype else y.to(x.dtype)


def _fp32(t: torch.Tensor) -> torch.Tensor:
    """``t.float()``, without the call for fp32 tensors: a stream runs the reference for
    every residual-block layer at every step, where per-call overhead counts."""
    return t if t.dtype == torch.float32 else t.float()


def _dot_config(x: torch.Tensor) -> tuple[str, object]:
    """(``tl.dot`` input precision, operand dtype) matching what ``F.conv1d`` would use."""
    if x.dtype == torch.bfloat16:
        return "ieee", tl.bfloat16
    if x.dtype == torch.float16:
        return "ieee", tl.float16
    tf32 = x.is_cuda and torch.backends.cudnn.allow_tf32
    return ("tf32" if tf32 else "ieee"), tl.float32


@triton_kernel(
    configs=[
        {"BLOCK_CO": 64, "BLOCK_T": 64, "BLOCK_CI": 32, "num_warps": 4, "num_stages": 3},
        {"BLOCK_CO": 64, "BLOCK_T": 128, "BLOCK_CI": 32, "num_warps": 4, "num_stages": 3},
        {"BLOCK_CO": 128, "BLOCK_T": 64, "BLOCK_CI": 32, "num_warps": 8, "num_stages": 3},
        {"BLOCK_CO": 32, "BLOCK_T": 128, "BLOCK_CI": 32, "num_warps": 4, "num_stages": 3},
    ],
    key=["C_in", "C_out", "ksize"],
    interpret_config={"BLOCK_CO": 16, "BLOCK_T": 16, "BLOCK_CI": 16},
)
def _lrelu_conv1d_kernel(
    x_ptr,  # [B, C_in, T_x]
    ctx_ptr,  # [B, C_in, L] left context (unused when not HAS_CTX)
    w_ptr,  # [C_out, C_in, ksize] contiguous
    bias_ptr,  # [C_out] (unused when not HAS_BIAS)
    res_ptr,  # [B, C_out, T_out] (unused when not HAS_RES)
    out_ptr,  # [B, C_out, T_out]
    C_in,
    C_out,
    T_x,
    L,
    T_out,
    dilation,
    padding,
    slope,
    stride_xb,
    stride_xc,
    stride_xt,
    stride_cb,
    stride_cc,
    stride_ct,
    stride_rb,
    stride_rc,
    stride_rt,
    stride_ob,
    stride_oc,
    stride_ot,
    ksize,
    HAS_CTX: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_RES: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    BLOCK_CO: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_CI: tl.constexpr,
):
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    b = tl.program_id(2).to(tl.int64)
    t_ok = t < T_out
    co_ok = co < C_out
    x_batch = x_ptr + b * stride_xb
    ctx_batch = ctx_ptr + b * stride_cb
    acc = tl.zeros([BLOCK_CO, BLOCK_T], tl.float32)
    # one flat loop over (input-channel tile, tap) pairs, so that the compiler pipelines
    # the loads of consecutive steps (nested loops would unroll the taps and multiply the
    # shared memory the pipeline needs by the kernel size)
    for step in range(tl.cdiv(C_in, BLOCK_CI) * ksize):
        k = step % ksize
        ci = (step // ksize) * BLOCK_CI + tl.arange(0, BLOCK_CI)
        ci_ok = ci < C_in
        w = tl.load(
            w_ptr + (co[:, None] * C_in + ci[None, :]) * ksize + k,
            mask=co_ok[:, None] & ci_ok[None, :],
            other=0.0,
        )
        # position of this tap's input in left_context ++ x (padding reads as zero)
        s = t + k * dilation - padding
        in_x = (s >= L) & (s < L + T_x) & t_ok
        h = tl.load(
            x_batch + ci[:, None] * stride_xc + (s - L)[None, :] * stride_xt,
            mask=ci_ok[:, None] & in_x[None, :],
            other=0.0,
        ).to(tl.float32)
        if HAS_CTX:
            in_ctx = (s >= 0) & (s < L) & t_ok
            h += tl.load(
                ctx_batch + ci[:, None] * stride_cc + s[None, :] * stride_ct,
                mask=ci_ok[:, None] & in_ctx[None, :],
                other=0.0,
            ).to(tl.float32)
        h = tl.where(h >= 0, h, h * slope)
        w = w.to(DOT_DTYPE)
        h = h.to(DOT_DTYPE)
        if UPCAST_DOT:  # the interpreter cannot multiply bf16 tiles; same products in fp32
            w = w.to(tl.float32)
            h = h.to(tl.float32)
        acc = tl.dot(w, h, acc, input_precision=INPUT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + co, mask=co_ok, other=0.0).to(tl.float32)[:, None]
    ok = co_ok[:, None] & t_ok[None, :]
    if HAS_RES:
        acc += tl.load(
            res_ptr + b * stride_rb + co[:, None] * stride_rc + t[None, :] * stride_rt, mask=ok, other=0.0
        ).to(tl.float32)
    out = out_ptr + b * stride_ob + co[:, None] * stride_oc + t[None, :] * stride_ot
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=ok)


def lrelu_conv1d_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    dilation: int = 1,
    *,
    padding: int = 0,
    slope: float = LRELU_SLOPE,
    residual: torch.Tensor | None = None,
    left_context: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`lrelu_conv1d_reference` with the Triton kernel (CUDA, or CPU under ``TRITON_INTERPRET=1``).

    ``out``, when given, is a contiguous [B, C_out, T_out] tensor of ``x``'s dtype and device
    that receives the result (and is returned); it must not overlap any input.
    """
    t_out = _check_inputs(x, weight, bias, dilation, padding, residual, left_context)
    check_same_device("lrelu_conv1d", x, weight, bias, residual, left_context)
    (batch, c_in, t_x), (c_out, _, ksize) = x.shape, weight.shape
    if out is None:
        out = torch.empty(batch, c_out, t_out, dtype=x.dtype, device=x.device)
    check_out("lrelu_conv1d", out, (batch, c_out, t_out), x.dtype, x.device)
    if out.numel() == 0:
        return out
    weight = weight.contiguous()
    ctx = left_context if left_context is not None else x  # a placeholder pointer when absent
    res = residual if residual is not None else out
    precision, dot_dtype = _dot_config(x)
    grid = lambda meta: (cdiv(t_out, meta["BLOCK_T"]), cdiv(c_out, meta["BLOCK_CO"]), batch)
    _lrelu_conv1d_kernel[grid](
        x, ctx, weight, weight if bias is None else bias, res, out,
        c_in, c_out, t_x, 0 if left_context is None else left_context.shape[2], t_out,
        dilation, padding, float(slope),
        *x.stride(), *ctx.stride(), *res.stride(), *out.stride(), ksize,
        HAS_CTX=left_context is not None,
        HAS_BIAS=bias is not None,
        HAS_RES=residual is not None,
        DOT_DTYPE=dot_dtype,
        INPUT_PRECISION=precision,
        UPCAST_DOT=interpreting() and dot_dtype != tl.float32,
    )
    return out


def lrelu_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    dilation: int = 1,
    *,
    padding: int = 0,
    slope: float = LRELU_SLOPE,
    residual: torch.Tensor | None = None,
    left_context: torch.Tensor | None = None,
) -> torch.Tensor:
    """``conv1d(leaky_relu(input)) + bias (+ residual)``, fused; see :func:`lrelu_conv1d_reference`.

    Dispatches per ``SPEECHGPT_KERNELS`` (see :mod:`speechgpt_agent.kernels._dispatch`),
    except that the reference runs whenever autograd records (an input requires grad):
    the Triton kernel has no backward, and training the vocoder must get its gradients.
    """
    tensors = [t for t in (x, weight, bias, residual, left_context) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        impl = lrelu_conv1d_reference
    elif use_triton(*tensors):
        impl = lrelu_conv1d_triton
    else:
        impl = lrelu_conv1d_reference
    return impl(x, weight, bias, dilation, padding=padding, slope=slope, residual=residual, left_context=left_context)


def _check_block(x: torch.Tensor, convs1: Sequence[nn.Conv1d], convs2: Sequence[nn.Conv1d]) -> None:
    if len(convs1) != len(convs2):
        raise ValueError(f"resblock: convs1 and convs2 must pair up, got {len(convs1)} and {len(convs2)}.")
    for conv in (*convs1, *convs2):
        if conv.stride != (1,) or conv.groups != 1 or conv.padding_mode != "zeros":
            raise ValueError("resblock: convolutions must be stride 1, ungrouped, zero-padded.")
        reach = (conv.kernel_size[0] - 1) * conv.dilation[0]
        if not isinstance(conv.padding, tuple) or 2 * conv.padding[0] != reach:
            raise ValueError(
                f"resblock: convolutions must be 'same'-padded, with integer padding "
                f"(k - 1) * dilation / 2 = {reach / 2:g}; got padding {conv.padding!r}."
            )
    if x.dim() != 3:
        raise ValueError(f"resblock: expected x [B, C, T], got {tuple(x.shape)}.")


def resblock_reference(
    x: torch.Tensor, convs1: Sequence[nn.Conv1d], convs2: Sequence[nn.Conv1d], *, slope: float = LRELU_SLOPE
) -> torch.Tensor:
    """Upstream's HiFi-GAN ``ResBlock`` forward, op by op: per pair,
    ``x = x + c2(lrelu(c1(lrelu(x))))``.

    Args:
        x: [B, C, T].
        convs1, convs2: paired 'same'-padded ``nn.Conv1d`` (C -> C), weight norm folded or not.
        slope: leaky ReLU slope.

    Returns:
        [B, C, T].
    """
    _check_block(x, convs1, convs2)
    for c1, c2 in zip(convs1, convs2):
        x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, slope)), slope))
    return x


def resblock(
    x: torch.Tensor, convs1: Sequence[nn.Conv1d], convs2: Sequence[nn.Conv1d], *, slope: float = LRELU_SLOPE
) -> torch.Tensor:
    """:func:`resblock_reference` with two fused :func:`lrelu_conv1d` launches per pair
    (the second one adds the skip), instead of five ops and four temporaries."""
    _check_block(x, convs1, convs2)
    for c1, c2 in zip(convs1, convs2):
        h = lrelu_conv1d(x, c1.weight, c1.bias, c1.dilation[0], padding=c1.padding[0], slope=slope)
        x = lrelu_conv1d(h, c2.weight, c2.bias, c2.dilation[0], padding=c2.padding[0], slope=slope, residual=x)
    return x
