"""Unit embedding: the vocoder's input frames from unit ids and their durations.

The unit HiFi-GAN vocoder looks each unit up in its embedding table, repeats the row
``duration`` times (one repeat per 20 ms frame) and feeds the generator channels-first.
In PyTorch that is three passes and two temporaries (``embedding``,
``repeat_interleave``, ``transpose``); the kernel does it in one pass: for every output
frame it finds its unit (a search in the cumulative durations) and copies the unit's
row into the channels-first output.

The Triton kernel: a tiny pre-pass takes the cumulative durations (``ends[b, n]`` = first
frame after unit ``n``); each program then covers a tile of output frames x channels of
one row, finds every frame's unit by a binary search in ``ends`` (the number of units
that end at or before the frame; zero-duration units are skipped for free), gathers the
units' embedding rows and stores them channels-first; frames past the row's total are
written as zeros.
"""

from __future__ import annotations

import torch

from ._dispatch import use_triton
from ._triton_utils import cdiv, check_out, check_same_device, tl, triton_kernel


def _check_inputs(ids: torch.Tensor, durations: torch.Tensor, weight: torch.Tensor) -> None:
    if ids.dim() != 2 or durations.shape != ids.shape:
        raise ValueError(
            "unit_embedding: expected ids [B, N] and durations of the same shape, got "
            f"{tuple(ids.shape)} and {tuple(durations.shape)}."
        )
    if weight.dim() != 2:
        raise ValueError(f"unit_embedding: expected a weight table [V, C], got {tuple(weight.shape)}.")
    if ids.dtype.is_floating_point or durations.dtype.is_floating_point:
        raise ValueError(
            f"unit_embedding: ids and durations must be integer tensors, got {ids.dtype} and "
            f"{durations.dtype}."
        )
    if ids.numel() == 0:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= weight.shape[0]:
        raise ValueError(
            f"unit_embedding: ids must lie in [0, {weight.shape[0]}), got values in [{low}, {high}]."
        )
    if int(durations.min()) < 0:
        raise ValueError("unit_embedding: durations must be >= 0.")


def unit_embedding_reference(
    ids: torch.Tensor, durations: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Embed, repeat by duration and go channels-first, in PyTorch.

    Args:
        ids: [B, N] integer unit ids in ``[0, V)``.
        durations: [B, N] integer frame counts, ``>= 0`` (a unit with duration 0 is skipped).
        weight: [V, C] embedding table.

    Returns:
        [B, C, T] contiguous, dtype of ``weight``, with ``T = max_b sum(durations[b])``.
        Row ``b`` holds ``weight[ids[b, n]]`` repeated ``durations[b, n]`` times, in order;
        rows whose total is shorter than ``T`` are padded with zeros at the end.

    Raises:
        ValueError: mismatched shapes, non-integer inputs, ids out of range, negative durations.
    """
    _check_inputs(ids, durations, weight)
    batch, channels = ids.shape[0], weight.shape[1]
    durations = durations.to(device=ids.device, dtype=torch.long)
    lengths = durations.sum(dim=1)  # [B] frames per row
    total = int(lengths.max()) if batch else 0
    out = weight.new_zeros(batch, total, channels)  # [B, T, C]
    if total == 0:
        return out.transpose(1, 2).contiguous()
    frame_ids = ids.reshape(-1).repeat_interleave(durations.reshape(-1))  # [sum(lengths)]
    row = torch.arange(batch, device=ids.device).repeat_interleave(lengths)  # row of every frame
    row_start = torch.cumsum(lengths, 0) - lengths  # first flat frame of every row
    position = torch.arange(frame_ids.numel(), device=ids.device) - row_start[row]
    out[row, position] = weight[frame_ids]
    return out.transpose(1, 2).contiguous()


@triton_kernel(
    configs=[
        {"BLOCK_T": 64, "BLOCK_C": 64, "num_warps": 4},
        {"BLOCK_T": 128, "BLOCK_C": 32, "num_warps": 4},
        {"BLOCK_T": 128, "BLOCK_C": 128, "num_warps": 8},
    ],
    key=["C"],
    interpret_config={"BLOCK_T": 16, "BLOCK_C": 4},
)
def _unit_embedding_kernel(
    ids_ptr,  # [B, N] integer ids, strides (stride_ib, stride_in)
    ends_ptr,  # [B, N] int32 cumulative durations, contiguous
    weight_ptr,  # [V, C] table, strides (stride_wv, stride_wc)
    out_ptr,  # [B, C, T] contiguous, weight's dtype
    N,
    C,
    T,
    search_steps,  # ceil(log2(N + 1)): halvings that narrow [0, N] to one index
    stride_ib,
    stride_in,
    stride_wv,
    stride_wc,
    BLOCK_T: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    b = tl.program_id(2).to(tl.int64)
    ends = ends_ptr + b * N
    # unit of frame t = #{n : ends[n] <= t} (searchsorted right); lanes search independently
    lo = tl.zeros([BLOCK_T], tl.int32)
    hi = tl.zeros([BLOCK_T], tl.int32) + N
    for _ in range(search_steps):
        active = lo < hi
        mid = (lo + hi) // 2
        right = tl.load(ends + mid, mask=active, other=0) <= t
        lo = tl.where(active & right, mid + 1, lo)
        hi = tl.where(active & ~right, mid, hi)
    t_ok = t < T
    in_row = (lo < N) & t_ok  # frames past the row's total stay zero
    unit = tl.load(ids_ptr + b * stride_ib + lo * stride_in, mask=in_row, other=0).to(tl.int64)
    ch_ok = ch < C
    rows = tl.load(
        weight_ptr + unit[None, :] * stride_wv + ch[:, None] * stride_wc,
        mask=ch_ok[:, None] & in_row[None, :],
        other=0.0,
    )  # [BLOCK_C, BLOCK_T]: channels-first
    out = out_ptr + (b * C + ch[:, None]) * T + t[None, :]
    tl.store(out, rows, mask=ch_ok[:, None] & t_ok[None, :])


def unit_embedding_triton(
    ids: torch.Tensor,
    durations: torch.Tensor,
    weight: torch.Tensor,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`unit_embedding_reference` with the Triton kernel (CUDA, or CPU under ``TRITON_INTERPRET=1``).

    ``out``, when given, is a contiguous [B, C, T] tensor of the weight's dtype and device
    that receives the frames (and is returned). Inputs are validated as in the reference
    (which reads ids and durations back to the host once), and the output length needs one
    more read (``T = max_b sum(durations[b])``).
    """
    _check_inputs(ids, durations, weight)
    check_same_device("unit_embedding", ids, durations, weight)
    (batch, n_units), channels = ids.shape, weight.shape[1]
    ends = torch.cumsum(durations, dim=1, dtype=torch.long)
    total = int(ends[:, -1].max()) if ids.numel() else 0
    if total >= 2**31:
        raise ValueError(f"unit_embedding: {total} frames per row is beyond the kernel's int32 range.")
    if out is None:
        out = torch.empty(batch, channels, total, dtype=weight.dtype, device=weight.device)
    check_out("unit_embedding", out, (batch, channels, total), weight.dtype, weight.device)
    if out.numel() == 0:
        return out
    ends = ends.to(torch.int32).contiguous()
    grid = lambda meta: (cdiv(total, meta["BLOCK_T"]), cdiv(channels, meta["BLOCK_C"]), batch)
    _unit_embedding_kernel[grid](
        ids, ends, weight, out, n_units, channels, total, n_units.bit_length(),
        ids.stride(0), ids.stride(1), weight.stride(0), weight.stride(1),
    )
    return out


def unit_embedding(ids: torch.Tensor, durations: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Vocoder input frames [B, C, T] from ids [B, N], durations [B, N] and weight [V, C].

    Same contract as :func:`unit_embedding_reference` (zero padding of shorter rows);
    dispatches per ``SPEECHGPT_KERNELS`` (see :mod:`speechgpt_agent.kernels._dispatch`):
    :func:`unit_embedding_triton` on CUDA, :func:`unit_embedding_reference` elsewhere.
    """
    if use_triton(ids, durations, weight):
        return unit_embedding_triton(ids, durations, weight)
    return unit_embedding_reference(ids, durations, weight)
