"""Query loaders on tiny files made here: numpy, IDX (plain and gzip), image folders, and the dispatcher."""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from parm.export.data import Dataset, load_digits_splits, load_idx, load_queries, split_dataset
from parm.export.errors import DataFormatError


def _write_idx(path: Path, array: np.ndarray, type_code: int) -> None:
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as file:
        file.write(payload)


def test_digits_splits_are_disjoint_stratified_and_scaled() -> None:
    splits = load_digits_splits(seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1257, 180, 360)
    assert splits.train.x.shape[1:] == (1, 8, 8) and splits.train.x.dtype == np.float32
    assert splits.train.x.min() >= 0.0 and splits.train.x.max() == 1.0
    together = np.concatenate([splits.train.x, splits.val.x, splits.test.x]).reshape(-1, 64)
    original = load_digits().images.reshape(-1, 64).astype(np.float32) / 16.0
    # the three splits partition digits: the same rows, each as often as in the original
    np.testing.assert_array_equal(together[np.lexsort(together.T)], original[np.lexsort(original.T)])
    for part in (splits.val, splits.test):
        assert set(np.unique(part.y)) == set(range(10))
    again = load_digits_splits(seed=0)
    np.testing.assert_array_equal(again.test.x, splits.test.x)
    assert not np.array_equal(load_digits_splits(seed=1).test.y, splits.test.y)


def test_split_without_labels() -> None:
    data = Dataset(np.arange(100, dtype=np.float32).reshape(50, 2))
    splits = split_dataset(data, val_fraction=0.2, test_fraction=0.2, seed=3)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 10)
    together = np.concatenate([splits.train.x, splits.val.x, splits.test.x])
    assert sorted(together[:, 0]) == sorted(data.x[:, 0])


def test_dataset_rejects_bad_arrays() -> None:
    with pytest.raises(DataFormatError, match="float32"):
        Dataset(np.zeros((3, 2), dtype=np.float64))
    with pytest.raises(DataFormatError, match="int64"):
        Dataset(np.zeros((3, 2), dtype=np.float32), np.zeros(2, dtype=np.int64))


def test_npy_and_npz(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((4, 1, 3, 3))
    np.save(tmp_path / "q.npy", x)
    loaded = load_queries(tmp_path / "q.npy")
    assert loaded.y is None and loaded.x.dtype == np.float32
    np.testing.assert_allclose(loaded.x, x, rtol=1e-6)

    np.savez(tmp_path / "q.npz", x=x, y=np.array([0, 1, 2, 1], dtype=np.int32))
    labelled = load_queries(tmp_path / "q.npz")
    assert labelled.y.dtype == np.int64 and labelled.y.tolist() == [0, 1, 2, 1]

    np.savez(tmp_path / "unlabelled.npz", x=x)
    assert load_queries(tmp_path / "unlabelled.npz").y is None

    np.savez(tmp_path / "bad.npz", images=x)
    with pytest.raises(DataFormatError, match="named 'x'"):
        load_queries(tmp_path / "bad.npz")


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_images_and_labels(tmp_path: Path, suffix: str) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 10
    labels = np.array([7, 3], dtype=np.uint8)
    _write_idx(tmp_path / f"images-idx3-ubyte{suffix}", images, 0x08)
    _write_idx(tmp_path / f"labels-idx1-ubyte{suffix}", labels, 0x08)
    data = load_queries(tmp_path / f"images-idx3-ubyte{suffix}", labels=tmp_path / f"labels-idx1-ubyte{suffix}")
    assert data.x.shape == (2, 1, 3, 4)
    np.testing.assert_allclose(data.x[:, 0], images / 255.0, rtol=1e-6)
    assert data.y.tolist() == [7, 3]


def test_idx_big_endian_floats_and_bad_files(tmp_path: Path) -> None:
    values = np.array([[1.5, -2.0], [3.25, 0.5]], dtype=np.float32)
    _write_idx(tmp_path / "floats.idx", values, 0x0D)
    np.testing.assert_array_equal(load_idx(tmp_path / "floats.idx").x, values)

    (tmp_path / "truncated.idx").write_bytes((tmp_path / "floats.idx").read_bytes()[:-1])
    with pytest.raises(DataFormatError, match="header says shape"):
        load_idx(tmp_path / "truncated.idx")

    _write_idx(tmp_path / "images.idx", np.zeros((3, 2, 2), dtype=np.uint8), 0x08)
    _write_idx(tmp_path / "labels.idx", np.zeros(2, dtype=np.uint8), 0x08)
    with pytest.raises(DataFormatError, match="expected 3 labels"):
        load_idx(tmp_path / "images.idx", tmp_path / "labels.idx")


def test_dispatcher_refuses_unknown_and_missing(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataFormatError, match="unknown query format"):
        load_queries(tmp_path / "notes.txt")
    with pytest.raises(DataFormatError, match="no such file"):
        load_queries(tmp_path / "absent.npy")
    np.save(tmp_path / "q.npy", np.zeros((2, 2)))
    with pytest.raises(DataFormatError, match="only read for IDX"):
        load_queries(tmp_path / "q.npy", labels=tmp_path / "q.npy")


def test_image_folder_without_pillow_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cat").mkdir()
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `import PIL` fail, installed or not
    with pytest.raises(DataFormatError, match="needs Pillow"):
        load_queries(tmp_path)


def test_image_folder(tmp_path: Path) -> None:
    image_module = pytest.importorskip("PIL.Image")
    for label, (name, value) in enumerate([("a_zero", 0), ("b_full", 255)]):
        (tmp_path / name).mkdir()
        for i in range(2 + label):
            image_module.fromarray(np.full((5, 4), value, dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    data = load_queries(tmp_path)
    assert data.x.shape == (5, 1, 5, 4)
    assert data.y.tolist() == [0, 0, 1, 1, 1]
    assert data.x[:2].max() == 0.0 and data.x[2:].min() == 1.0
