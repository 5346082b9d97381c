"""Unit quantization: nearest k-means centroid of each feature frame, then run-length merge.

Reference semantics are those of SpeechGPT's ``ApplyKmeans``: squared Euclidean
distance ``|x|^2 - 2 x.c + |c|^2``, ``argmin`` over centroids (first index on ties).
Then SpeechGPT's ``merge_duplicates``: consecutive equal ids collapse to one unit with
its run length ("reduced units").

The Triton kernel gives each program a tile of ``BLOCK_T`` frames and walks all
centroids in tiles of ``BLOCK_K``, keeping a running minimum and its index, so the
``[T, K]`` distance matrix never exists. ``|x|^2`` is the same for every centroid of a
frame and is dropped (it cannot change the argmin, and leaving it out avoids a large
cancelling term). Dot products accumulate in fp32 at full precision (no TF32). The
run-length merge is a second light pass in PyTorch (:func:`merge_repeats`).
"""

from __future__ import annotations

import torch

from ._dispatch import use_triton
from ._triton_utils import cdiv, check_out, tl, triton_kernel


def _check_inputs(features: torch.Tensor, centroids: torch.Tensor) -> None:
    if features.dim() != 2 or centroids.dim() != 2 or features.shape[1] != centroids.shape[1]:
        raise ValueError(
            f"quantize: expected features [T, D] and centroids [K, D], got {tuple(features.shape)} "
            f"and {tuple(centroids.shape)}."
        )


def quantize_reference(
    features: torch.Tensor,
    centroids: torch.Tensor,
    centroid_sq_norms: torch.Tensor | None = None,
    *,
    block_frames: int = 4096,
) -> torch.Tensor:
    """Nearest-centroid ids in PyTorch.

    Args:
        features: [T, D] frames (fp32/bf16/fp16).
        centroids: [K, D] centroids.
        centroid_sq_norms: [K] precomputed ``|c|^2`` (computed when ``None``).
        block_frames: frames per block, bounding memory to ``block_frames x K``.

    Returns:
        [T] int64 ids in ``[0, K)``.
    """
    _check_inputs(features, centroids)
    c = centroids.to(device=features.device, dtype=torch.float32)
    c_sq = (c * c).sum(1) if centroid_sq_norms is None else centroid_sq_norms.to(c)
    out = torch.empty(features.shape[0], dtype=torch.long, device=features.device)
    for start in range(0, features.shape[0], block_frames):
        x = features[start : start + block_frames].to(torch.float32)
        dist = (x * x).sum(1, keepdim=True) - 2.0 * (x @ c.T) + c_sq
        out[start : start + block_frames] = dist.argmin(dim=1)
    return out


@triton_kernel(
    configs=[
        {"BLOCK_T": 16, "BLOCK_K": 128, "BLOCK_D": 64, "num_warps": 4, "num_stages": 3},
        {"BLOCK_T": 32, "BLOCK_K": 64, "BLOCK_D": 64, "num_warps": 4, "num_stages": 3},
        {"BLOCK_T": 32, "BLOCK_K": 128, "BLOCK_D": 32, "num_warps": 4, "num_stages": 3},
        {"BLOCK_T": 64, "BLOCK_K": 128, "BLOCK_D": 32, "num_warps": 8, "num_stages": 3},
    ],
    key=["K", "D"],  # not T: every utterance has its own length, and tuning is slow
    interpret_config={"BLOCK_T": 16, "BLOCK_K": 64, "BLOCK_D": 16},
)
def _nearest_centroid_kernel(
    x_ptr,  # [T, D] features, any float dtype, strides (stride_xt, stride_xd)
    c_ptr,  # [K, D] fp32 centroids, contiguous
    c_sq_ptr,  # [K] fp32 |c|^2
    out_ptr,  # [T] int64 ids
    T,
    K,
    D,
    stride_xt,
    stride_xd,
    BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < T
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xt
    best = tl.full([BLOCK_T], float("inf"), tl.float32)
    best_idx = tl.zeros([BLOCK_T], tl.int32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        col_ok = cols < K
        dots = tl.zeros([BLOCK_T, BLOCK_K], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dims = d0 + tl.arange(0, BLOCK_D)
            dim_ok = dims < D
            x = tl.load(x_rows + dims[None, :] * stride_xd, mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
            c = tl.load(
                c_ptr + cols.to(tl.int64)[:, None] * D + dims[None, :],
                mask=col_ok[:, None] & dim_ok[None, :],
                other=0.0,
            )
            dots = tl.dot(x.to(tl.float32), tl.trans(c), dots, input_precision="ieee")
        c_sq = tl.load(c_sq_ptr + cols, mask=col_ok, other=0.0)
        dist = tl.where(col_ok[None, :], c_sq[None, :] - 2.0 * dots, float("inf"))
        # first index of the tile minimum, as torch.argmin
        tile_best, tile_idx = tl.min(dist, axis=1, return_indices=True, return_indices_tie_break_left=True)
        # strict '<': on a tie across tiles the earlier (smaller) index stays
        better = tile_best < best
        best = tl.where(better, tile_best, best)
        best_idx = tl.where(better, k0 + tile_idx, best_idx)
    tl.store(out_ptr + rows, best_idx.to(tl.int64), mask=row_ok)


def quantize_triton(
    features: torch.Tensor,
    centroids: torch.Tensor,
    centroid_sq_norms: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Nearest-centroid ids with the Triton kernel (CUDA, or CPU under ``TRITON_INTERPRET=1``).

    Same contract as :func:`quantize_reference` (centroids are moved to the features'
    device). ``out``, when given, is a contiguous [T]
    int64 tensor on the features' device that receives the ids (and is returned).
    Ties between equally near centroids go to the lower index; features must be finite.
    """
    _check_inputs(features, centroids)
    if not features.dtype.is_floating_point:
        raise ValueError(f"quantize: features must be floating point, got {features.dtype}.")
    (T, D), K = features.shape, centroids.shape[0]
    if K == 0:
        raise ValueError("quantize: centroids is empty (K = 0).")
    if out is None:
        out = torch.empty(T, dtype=torch.long, device=features.device)
    check_out("quantize", out, (T,), torch.long, features.device)
    if T == 0:
        return out
    c = centroids.to(device=features.device, dtype=torch.float32).contiguous()
    c_sq = (c * c).sum(1) if centroid_sq_norms is None else centroid_sq_norms.to(c).contiguous()
    if c_sq.shape != (K,):
        raise ValueError(f"quantize: centroid_sq_norms must have shape ({K},), got {tuple(c_sq.shape)}.")
    grid = lambda meta: (cdiv(T, meta["BLOCK_T"]),)
    _nearest_centroid_kernel[grid](features, c, c_sq, out, T, K, D, features.stride(0), features.stride(1))
    return out


def quantize(
    features: torch.Tensor,
    centroids: torch.Tensor,
    centroid_sq_norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Nearest-centroid ids [T] (int64) of ``features`` [T, D] against ``centroids`` [K, D].

    Dispatches per ``SPEECHGPT_KERNELS`` (see :mod:`speechgpt_agent.kernels._dispatch`):
    :func:`quantize_triton` on CUDA, :func:`quantize_reference` elsewhere.
    """
    if use_triton(features):  # centroids follow the features, as in the reference
        return quantize_triton(features, centroids, centroid_sq_norms)
    return quantize_reference(features, centroids, centroid_sq_norms)


def merge_repeats(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Collapse runs of equal ids: ``[5,5,7,5] -> units [5,7,5], durations [2,1,1]``.

    Args:
        ids: [T] integer ids.

    Returns:
        ``(units [N], durations [N])``, both int64, ``durations.sum() == T``.
    """
    if ids.dim() != 1:
        raise ValueError(f"merge_repeats: expected a 1-D tensor of ids, got shape {tuple(ids.shape)}.")
    if ids.numel() == 0:
        empty = torch.empty(0, dtype=torch.long, device=ids.device)
        return empty, empty.clone()
    units, durations = torch.unique_consecutive(ids, return_counts=True)
    return units.long(), durations.long()
