"""Query data for training and evaluating codes: the built-in digits set, named data sets (``datasets``) and loaders
for users' own queries.

ParM trains a parity model from query samples and F's own outputs alone, so every loader returns queries ``x`` and,
where the source has them, labels ``y`` (used only to measure accuracy). Images are returned as float32
``[N, C, H, W]`` scaled to [0, 1], the layout F is exported with.
"""

from __future__ import annotations

import gzip
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from parm.errors import ConfigError

from .datasets import DATASETS, IDX_IMAGES, IDX_LABELS, resolve_named
from .errors import DataFormatError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".pgm"})

# IDX type codes (the MNIST file format) and the big-endian numpy dtypes they stand for.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass(frozen=True)
class Dataset:
    """Queries ``x`` [N, *query_shape] (float32) and optional integer labels ``y`` [N] (int64)."""

    x: np.ndarray
    y: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.x.dtype != np.float32:
            raise DataFormatError(f"Dataset.x must be float32, got {self.x.dtype}")
        if self.x.ndim < 2:
            raise DataFormatError(f"Dataset.x must be [N, *query_shape], got shape {self.x.shape}")
        if self.y is not None and (self.y.dtype != np.int64 or self.y.shape != (len(self.x),)):
            raise DataFormatError(
                f"Dataset.y must be int64 of shape ({len(self.x)},), got {self.y.dtype} {self.y.shape}"
            )

    def __len__(self) -> int:
        return len(self.x)

    @property
    def query_shape(self) -> tuple[int, ...]:
        """Shape of one query, without the leading sample axis."""
        return tuple(self.x.shape[1:])

    def subset(self, indices: np.ndarray) -> Dataset:
        """The samples at ``indices``, labels included."""
        return Dataset(self.x[indices], None if self.y is None else self.y[indices])


@dataclass(frozen=True)
class DataSplits:
    """Train (fit), validation (model selection) and test (final report only) splits."""

    train: Dataset
    val: Dataset
    test: Dataset


def split_dataset(data: Dataset, val_fraction: float, test_fraction: float, seed: int) -> DataSplits:
    """Split into train/val/test, stratified by label when labels exist, reproducibly for ``seed``."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError(f"fractions must be in (0, 1) and sum below 1, got {val_fraction}, {test_fraction}")
    indices = np.arange(len(data))
    rest, test = train_test_split(indices, test_size=test_fraction, random_state=seed, stratify=data.y)
    rest_labels = None if data.y is None else data.y[rest]
    train, val = train_test_split(
        rest, test_size=val_fraction / (1 - test_fraction), random_state=seed, stratify=rest_labels
    )
    return DataSplits(data.subset(train), data.subset(val), data.subset(test))


def load_digits_splits(seed: int = 0) -> DataSplits:
    """scikit-learn's 8x8 digits as [N, 1, 8, 8] float32 in [0, 1], split 70/10/20 (stratified, seeded)."""
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    return split_dataset(Dataset(x, digits.target.astype(np.int64)), val_fraction=0.1, test_fraction=0.2, seed=seed)


def load_numpy(path: Path) -> Dataset:
    """A ``.npy`` array of queries, or a ``.npz`` archive with array ``x`` and optional labels ``y``.

    Values are kept as they are (only cast to float32): numpy inputs are assumed to be already in F's input scale.
    """
    path = Path(path)
    if path.suffix == ".npy":
        return Dataset(np.load(path, allow_pickle=False).astype(np.float32))
    with np.load(path, allow_pickle=False) as archive:
        if "x" not in archive:
            raise DataFormatError(f"{path}: expected an array named 'x', found {sorted(archive.files)}")
        x = archive["x"].astype(np.float32)
        y = archive.get("y")
    if y is not None and not np.issubdtype(y.dtype, np.integer):
        raise DataFormatError(f"{path}: labels 'y' must be integers, got {y.dtype}")
    return Dataset(x, None if y is None else y.astype(np.int64))


def load_image_folder(root: Path) -> Dataset:
    """A folder with one subfolder per class of grayscale-convertible images, all the same size.

    Labels are the subfolders' indices in sorted name order. Needs Pillow.
    """
    try:
        from PIL import Image
    except ImportError as err:
        raise DataFormatError(
            f"{root}: reading an image folder needs Pillow, which is not installed (pip install pillow)"
        ) from err
    root = Path(root)
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    images: list[np.ndarray] = []
    labels: list[int] = []
    for label, folder in enumerate(classes):
        for file in sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES):
            with Image.open(file) as image:
                images.append(np.asarray(image.convert("L"), dtype=np.float32) / 255.0)
            labels.append(label)
    if not images:
        raise DataFormatError(f"{root}: expected class subfolders holding images ({sorted(IMAGE_SUFFIXES)})")
    shapes = {image.shape for image in images}
    if len(shapes) != 1:
        raise DataFormatError(f"{root}: all images must have one size, found {sorted(shapes)}")
    return Dataset(np.stack(images)[:, None, :, :], np.asarray(labels, dtype=np.int64))


def _read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (optionally gzip-compressed): 2 zero bytes, type code, rank, big-endian int32 dims."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as file:
        raw = file.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataFormatError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    dtype, rank = _IDX_DTYPES[raw[2]], raw[3]
    header_size = 4 + 4 * rank
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=rank, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header_size != expected:
        raise DataFormatError(
            f"{path}: header says shape {shape} ({expected} bytes), file holds {len(raw) - header_size}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)


def load_idx(images: Path, labels: Path | None = None) -> Dataset:
    """MNIST-style IDX images [N, H, W] (and optional labels [N]) as [N, 1, H, W]; unsigned bytes scaled to [0, 1]."""
    array = _read_idx(Path(images))
    x = array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
    if x.ndim == 3:
        x = x[:, None, :, :]
    y = None
    if labels is not None:
        y = _read_idx(Path(labels)).astype(np.int64)
        if y.shape != (len(x),):
            raise DataFormatError(f"{labels}: expected {len(x)} labels for {images}, got shape {y.shape}")
    return Dataset(x, y)


def _is_idx(path: Path) -> bool:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            magic = file.read(4)
    except OSError:
        return False
    return len(magic) == 4 and magic[0] == 0 and magic[1] == 0 and magic[2] in _IDX_DTYPES


def idx_folder_files(folder: Path) -> tuple[Path, Path] | None:
    """A data set folder's IDX images and labels (``images-idx3-ubyte``, ``labels-idx1-ubyte``, each plain or
    gzipped), or None when it holds neither; one without the other is refused rather than read as an image folder."""
    images, labels = _idx_file(folder, IDX_IMAGES), _idx_file(folder, IDX_LABELS)
    if images is None and labels is None:
        return None
    if images is None or labels is None:
        present, missing = (labels, IDX_IMAGES) if images is None else (images, IDX_LABELS)
        raise DataFormatError(f"{folder}: holds {present.name} but no {missing} (plain or .gz)")
    return images, labels


def _idx_file(folder: Path, name: str) -> Path | None:
    return next((path for path in (folder / name, folder / f"{name}.gz") if path.is_file()), None)


def load_queries(path: Path | str, labels: Path | None = None) -> Dataset:
    """Load queries from a named data set (``datasets.DATASETS``, fetched into a cache the first time), a folder with
    IDX images and labels, a folder of class subfolders, a ``.npy``/``.npz`` file, or IDX files (``labels``: IDX
    files only). An existing file or folder wins over a data set of the same name."""
    path = Path(path)
    named = not path.exists() and str(path) in DATASETS
    if not path.exists() and not named:
        known = ", ".join(sorted(DATASETS))
        raise DataFormatError(f"{path}: no such file or folder, nor a named data set (known: {known})")
    if labels is not None and (named or path.is_dir() or path.suffix in {".npy", ".npz"}):
        raise DataFormatError(f"{path}: a separate labels file is only read for IDX images")
    if named:
        return load_idx(*resolve_named(str(path)))
    if path.is_dir():
        files = idx_folder_files(path)
        return load_idx(*files) if files else load_image_folder(path)
    if path.suffix == ".npy" or (path.suffix == ".npz" and zipfile.is_zipfile(path)):
        return load_numpy(path)
    if _is_idx(path):
        return load_idx(path, labels)
    raise DataFormatError(
        f"{path}: unknown query format; expected a folder of IDX files or of class subfolders, a .npy/.npz file or an "
        "IDX file"
    )
