"""Unit quantization: nearest k-means centroid of each feature frame, then run-length merge.

Reference semantics are those of SpeechGPT's ``ApplyKmeans``: squared Euclidean
distance ``|x|^2 - 2 x.c + |c|^2``, ``argmin`` over centroids (first index on ties).
Then SpeechGPT's ``merge_duplicates``: consecutive equal ids collapse to one unit with
its run length ("reduced units").

The Triton kernel (tiles of frames against all centroids with a running argmin, never
materialising the [T, K] distance matrix) is added with the kernels issue; until then
:func:`quantize` dispatches to the reference everywhere.
"""

from __future__ import annotations

import torch

from ._dispatch import use_triton


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
    if features.dim() != 2 or centroids.dim() != 2 or features.shape[1] != centroids.shape[1]:
        raise ValueError(
            f"quantize: expected features [T, D] and centroids [K, D], got {tuple(features.shape)} "
            f"and {tuple(centroids.shape)}."
        )
    c = centroids.to(device=features.device, dtype=torch.float32)
    c_sq = (c * c).sum(1) if centroid_sq_norms is None else centroid_sq_norms.to(c)
    out = torch.empty(features.shape[0], dtype=torch.long, device=features.device)
    for start in range(0, features.shape[0], block_frames):
        x = features[start : start + block_frames].to(torch.float32)
        dist = (x * x).sum(1, keepdim=True) - 2.0 * (x @ c.T) + c_sq
        out[start : start + block_frames] = dist.argmin(dim=1)
    return out


def quantize(
    features: torch.Tensor,
    centroids: torch.Tensor,
    centroid_sq_norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Nearest-centroid ids [T] (int64) of ``features`` [T, D] against ``centroids`` [K, D].

    Dispatches per ``SPEECHGPT_KERNELS`` (see :mod:`speechgpt_agent.kernels._dispatch`).
    """
    use_triton(features, centroids, has_triton_impl=False)
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
