"""k-means codebooks of the speech tokenizer: load centroids safely, convert the upstream pickle.

SpeechGPT quantises mHuBERT layer-11 features with the k-means model
``mhubert_base_vp_en_es_fr_it3_L11_km1000.bin``: a joblib pickle of a scikit-learn
(MiniBatch)KMeans whose only part used at inference is ``cluster_centers_`` (1000 x 768).
Unpickling can run arbitrary code, so (DESIGN.md section 8) the pickle is read only with
``trust_pickle=True``; :func:`convert_kmeans` turns it once into a safetensors file
(tensor ``cluster_centers``) that :func:`load_centroids` reads with no consent needed.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .errors import CheckpointError, ModelNotFoundError, UnsafeCheckpointError
from .hub import _looks_like_hub_id, resolve_file

PathLike = str | os.PathLike

DEFAULT_KMEANS_REPO = "voidful/mhubert-base"
"""Hub repo that hosts the upstream k-means pickle next to the transformers mHuBERT."""

UPSTREAM_KMEANS = "mhubert_base_vp_en_es_fr_it3_L11_km1000.bin"
"""File name of SpeechGPT's k-means model (1000 centroids of mHuBERT layer 11)."""

SAFETENSORS_NAME = "kmeans.safetensors"
"""File name :func:`convert_kmeans` writes into a folder, and the first one a folder is searched for."""

TENSOR_NAME = "cluster_centers"
"""Name of the ``[K, D]`` centroid tensor inside a k-means safetensors file."""

_PICKLE_SUFFIXES = (".bin", ".pkl", ".pickle", ".joblib")


def load_centroids(ref: PathLike = DEFAULT_KMEANS_REPO, *, trust_pickle: bool = False) -> np.ndarray:
    """Load k-means centroids as float32 ``[K, D]``.

    Args:
        ref: one of
            - a ``.safetensors`` file holding the tensor ``cluster_centers``;
            - a ``.npy`` file with the ``[K, D]`` array;
            - the upstream joblib pickle (``.bin``/``.pkl``), only with ``trust_pickle=True``;
            - a folder, searched for ``kmeans.safetensors``, then a single ``*.npy``, then
              ``mhubert_base_vp_en_es_fr_it3_L11_km1000.bin``;
            - a hub id (default ``voidful/mhubert-base``), whose upstream ``.bin`` is fetched.
        trust_pickle: allow unpickling the joblib file (it can execute code: only for files
            from a source you trust).

    Raises:
        ModelNotFoundError: nothing at ``ref``, or a folder without a k-means file.
        UnsafeCheckpointError: ``ref`` is a pickle and ``trust_pickle`` is False.
        CheckpointError: unreadable file, or centroids that are not a finite 2-D float array.
    """
    local = Path(os.path.expanduser(str(ref)))
    if not trust_pickle and not local.exists() and _looks_like_hub_id(str(ref)):
        # a hub repo only offers the upstream pickle: refuse before downloading it
        raise UnsafeCheckpointError(
            f"k-means: {UPSTREAM_KMEANS} of {str(ref)!r} is a joblib pickle, and loading it could "
            "run arbitrary code. If you trust its source, pass trust_pickle=True, or convert it "
            f"once with `speechgpt-agent convert kmeans {ref} <out-folder>` and pass that folder."
        )
    path = _locate(ref)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        centroids = _read_safetensors(path)
    elif suffix == ".npy":
        try:
            centroids = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise CheckpointError(f"k-means: {path} is not a readable .npy array ({exc}).") from exc
    elif suffix in _PICKLE_SUFFIXES:
        centroids = _read_joblib(path, trust_pickle=trust_pickle)
    else:
        raise CheckpointError(
            f"k-means: do not know how to read {path.name!r}; expected .safetensors (tensor "
            f"{TENSOR_NAME!r}), .npy, or the upstream joblib .bin."
        )
    return _validated(centroids, path)


def convert_kmeans(src: PathLike, out: PathLike, *, trust_pickle: bool = True) -> Path:
    """Convert a k-means model (usually the upstream joblib pickle) to safetensors.

    Args:
        src: anything :func:`load_centroids` accepts (file, folder or hub id).
        out: a ``.safetensors`` file path, or a folder that receives ``kmeans.safetensors``.
        trust_pickle: consent to unpickle ``src``. Calling convert is that consent, hence
            the default; pass False to refuse pickles.

    Returns:
        The path of the written file; ``load_centroids`` of it equals ``load_centroids(src)``.

    Raises:
        The errors of :func:`load_centroids`.
    """
    from safetensors.numpy import save_file

    centroids = load_centroids(src, trust_pickle=trust_pickle)
    target = Path(os.path.expanduser(str(out)))
    if target.suffix.lower() != ".safetensors":
        target = target / SAFETENSORS_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format": "np",
        "n_clusters": str(centroids.shape[0]),
        "dim": str(centroids.shape[1]),
        "source": Path(str(src)).name,
    }
    # write next to the target, then rename: readers never see a partial file
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({TENSOR_NAME: centroids}, tmp, metadata=metadata)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


# --------------------------------------------------------------------------------------


def _locate(ref: PathLike) -> Path:
    path = Path(os.path.expanduser(str(ref)))
    if path.is_file():
        return path
    if path.is_dir():
        if (path / SAFETENSORS_NAME).is_file():
            return path / SAFETENSORS_NAME
        npys = sorted(path.glob("*.npy"))
        if len(npys) > 1:
            raise CheckpointError(
                f"k-means: {path} holds several .npy files ({', '.join(p.name for p in npys)}); "
                "pass the one to use."
            )
        if npys:
            return npys[0]
        if (path / UPSTREAM_KMEANS).is_file():
            return path / UPSTREAM_KMEANS
        raise ModelNotFoundError(
            f"k-means: {path} has none of {SAFETENSORS_NAME}, *.npy or {UPSTREAM_KMEANS}. "
            "Pass the k-means file itself."
        )
    # not local: a hub id hosting the upstream file (resolve_file raises for anything else)
    return resolve_file(ref, UPSTREAM_KMEANS, what="k-means")


def _read_safetensors(path: Path) -> np.ndarray:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"k-means: {path} is not a readable safetensors file ({exc}).") from exc
    if TENSOR_NAME not in tensors:
        raise CheckpointError(
            f"k-means: {path} has no tensor {TENSOR_NAME!r} (found: {sorted(tensors) or 'none'})."
        )
    return tensors[TENSOR_NAME]


def _read_joblib(path: Path, *, trust_pickle: bool) -> np.ndarray:
    if not trust_pickle:
        raise UnsafeCheckpointError(
            f"k-means: {path} is a joblib pickle, and loading it could run arbitrary code. If you "
            "trust its source, pass trust_pickle=True, or convert it once with "
            f"`speechgpt-agent convert kmeans {path} <out-folder>` and load the safetensors file."
        )
    import joblib

    try:
        with warnings.catch_warnings():
            # pickles from older scikit-learn releases warn on load; only the centroids are used
            warnings.simplefilter("ignore")
            model = joblib.load(path)
    except Exception as exc:  # unpickling raises anything: EOFError, KeyError, UnpicklingError...
        raise CheckpointError(f"k-means: could not unpickle {path} ({type(exc).__name__}: {exc}).") from exc
    centroids = getattr(model, "cluster_centers_", None)
    if centroids is None:
        if isinstance(model, np.ndarray):
            return model
        raise CheckpointError(
            f"k-means: {path} holds a {type(model).__name__}, not a fitted scikit-learn KMeans "
            "(no cluster_centers_)."
        )
    return np.asarray(centroids)


def _validated(centroids: np.ndarray, path: Path) -> np.ndarray:
    array = np.asarray(centroids)
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise CheckpointError(
            f"k-means: centroids in {path} have shape {array.shape}; expected [n_clusters, dim]."
        )
    if array.dtype.kind != "f":
        raise CheckpointError(f"k-means: centroids in {path} have dtype {array.dtype}, not float.")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise CheckpointError(f"k-means: centroids in {path} contain NaN or infinite values.")
    return array
