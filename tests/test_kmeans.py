"""k-means centroids: the upstream joblib pickle, its safetensors conversion, .npy, folders."""

from __future__ import annotations

import joblib
import numpy as np
import pytest
from safetensors.numpy import save_file

from speechgpt_agent.errors import CheckpointError, ModelNotFoundError, UnsafeCheckpointError
from speechgpt_agent.kmeans import UPSTREAM_KMEANS, convert_kmeans, load_centroids
from speechgpt_agent.testing.hubert import make_kmeans_joblib


@pytest.fixture(scope="module")
def joblib_km(tmp_path_factory):
    path = make_kmeans_joblib(tmp_path_factory.mktemp("km") / UPSTREAM_KMEANS, n_clusters=10, dim=6)
    return path, joblib.load(path)


def test_joblib_and_converted_safetensors_give_the_same_centroids(joblib_km, tmp_path):
    path, km = joblib_km
    from_pickle = load_centroids(path, trust_pickle=True)
    assert from_pickle.dtype == np.float32 and from_pickle.shape == (10, 6)
    np.testing.assert_array_equal(from_pickle, km.cluster_centers_.astype(np.float32))

    into_folder = convert_kmeans(path, tmp_path / "converted")
    assert into_folder == tmp_path / "converted" / "kmeans.safetensors"
    into_file = convert_kmeans(path, tmp_path / "elsewhere" / "km.safetensors")
    assert into_file.name == "km.safetensors"
    for converted in (into_folder, into_file, into_folder.parent):
        np.testing.assert_array_equal(load_centroids(converted), from_pickle)
    assert not [p for p in into_folder.parent.iterdir() if p.name.endswith(".tmp")]


def test_pickle_needs_consent(joblib_km, tmp_path):
    path, _ = joblib_km
    with pytest.raises(UnsafeCheckpointError, match="trust_pickle=True") as info:
        load_centroids(path)
    assert "speechgpt-agent convert kmeans" in str(info.value)
    with pytest.raises(UnsafeCheckpointError):
        convert_kmeans(path, tmp_path, trust_pickle=False)
    with pytest.raises(UnsafeCheckpointError):  # the upstream name inside a folder, too
        load_centroids(path.parent)
    with pytest.raises(UnsafeCheckpointError, match="voidful/mhubert-base"):  # before any download
        load_centroids()


def test_npy_and_folder_search_order(joblib_km, tmp_path):
    path, km = joblib_km
    centers = km.cluster_centers_.astype(np.float32)
    folder = tmp_path / "speech2unit"
    folder.mkdir()
    (folder / UPSTREAM_KMEANS).write_bytes(path.read_bytes())
    np.testing.assert_array_equal(load_centroids(folder, trust_pickle=True), centers)

    np.save(folder / "centroids.npy", centers[:4].astype(np.float64))  # .npy before the .bin
    npy = load_centroids(folder)
    assert npy.dtype == np.float32 and npy.shape == (4, 6)

    save_file({"cluster_centers": centers[:2]}, str(folder / "kmeans.safetensors"))  # first
    assert load_centroids(folder).shape == (2, 6)

    (folder / "kmeans.safetensors").unlink()
    np.save(folder / "other.npy", centers)
    with pytest.raises(CheckpointError, match="several .npy"):
        load_centroids(folder)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros(6, np.float32), "shape"),
        (np.zeros((0, 6), np.float32), "shape"),
        (np.array([[1.0, np.nan]], np.float32), "NaN"),
        (np.ones((3, 2), np.int64), "dtype"),
    ],
)
def test_bad_centroids_are_refused(tmp_path, array, message):
    np.save(tmp_path / "c.npy", array)
    with pytest.raises(CheckpointError, match=message):
        load_centroids(tmp_path / "c.npy")
    save_file({"cluster_centers": array}, str(tmp_path / "c.safetensors"))
    with pytest.raises(CheckpointError, match=message):
        load_centroids(tmp_path / "c.safetensors")


def test_unreadable_files_raise_checkpoint_error(tmp_path):
    save_file({"centers": np.zeros((2, 2), np.float32)}, str(tmp_path / "named.safetensors"))
    with pytest.raises(CheckpointError, match="cluster_centers"):
        load_centroids(tmp_path / "named.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(CheckpointError):
        load_centroids(tmp_path / "bad.safetensors")
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(CheckpointError):
        load_centroids(tmp_path / "bad.npy")
    (tmp_path / "bad.bin").write_bytes(b"\x80\x04garbage")
    with pytest.raises(CheckpointError):
        load_centroids(tmp_path / "bad.bin", trust_pickle=True)
    joblib.dump({"not": "a kmeans"}, tmp_path / "dict.bin")
    with pytest.raises(CheckpointError, match="cluster_centers_"):
        load_centroids(tmp_path / "dict.bin", trust_pickle=True)
    (tmp_path / "km.txt").write_text("1 2 3")
    with pytest.raises(CheckpointError, match="do not know how to read"):
        load_centroids(tmp_path / "km.txt")


def test_missing_files_raise_model_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError):
        load_centroids(tmp_path / "absent.safetensors")
    with pytest.raises(ModelNotFoundError, match="kmeans.safetensors"):
        load_centroids(tmp_path)  # an empty folder
