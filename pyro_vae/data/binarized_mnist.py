"""Statically binarized MNIST (Larochelle & Murray, 2011), 50k/10k/10k: ``data.name = binarized_mnist``.

With ``data.root = ""`` the bit-packed copy shipped inside the package is used (no network);
otherwise the canonical ``binarized_mnist_{train,valid,test}.amat[.gz]`` files in ``root``
(fetched there first when ``data.download = true``). Every file is checked (rows, values,
checksums) before use.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np

from pyro_vae.config import DataConfig
from pyro_vae.data.download import fetch
from pyro_vae.data.splits import DATASETS, SPLITS, Splits, make_splits

log = logging.getLogger(__name__)

AMAT_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
AMAT_ROWS = {"train": 50000, "valid": 10000, "test": 10000}
AMAT_MEANS = {"train": 0.1306, "valid": 0.1311, "test": 0.1325}  # from shared/data/README.md
# md5 of the unzipped .amat files as distributed with this project's data folder
AMAT_MD5 = {
    "train": "db28b1a6ae0fe70cbd3da91acf46e477",
    "valid": "bf37822a04e94123630de6a7dfd9c9ef",
    "test": "14e41ae11040adba6ab8cb291eda0dd8",
}
EMBEDDED_FILE = "binarized_mnist.npz"
# sha256 of the embedded arrays' bytes (train, valid, test bit-packed, then test_labels); it does
# not depend on the zip container, so rebuilding with scripts/pack_binarized_mnist.py reproduces it
EMBEDDED_SHA256 = "60212a411eb66b5a1e6d2c27001a738133135267975f9ea83411bfcc631f1a3b"


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_sha256(arrays: dict[str, np.ndarray]) -> str:
    """sha256 of the packed arrays of the embedded file, in a fixed order."""
    digest = hashlib.sha256()
    for key in (*SPLITS, "test_labels"):
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    return digest.hexdigest()


def read_amat(path: str | Path) -> np.ndarray:
    """Read a canonical binarized-MNIST ``.amat`` (or ``.amat.gz``) file into uint8 (N, 784)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            lines = f.read().split(b"\n")
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read the .amat file ({exc})") from None
    lines = [line.strip() for line in lines if line.strip()]
    if not lines:
        raise ValueError(f"{path}: the file holds no images")
    if all(len(line) == 2 * 784 - 1 for line in lines):  # the canonical layout: single digits, single spaces
        digits = b"".join(lines).replace(b" ", b"")
        if len(digits) == 784 * len(lines):
            array = np.frombuffer(digits, dtype=np.uint8) - ord("0")
            if (array > 1).any():
                raise ValueError(f"{path}: values must be 0 or 1 in a binarized-MNIST .amat file")
            return array.reshape(len(lines), 784)
    rows = [line.split() for line in lines]  # any other spacing or number format
    bad = next((i for i, row in enumerate(rows) if len(row) != 784), None)
    if bad is not None:
        raise ValueError(f"{path}: line {bad + 1} has {len(rows[bad])} values; every line needs 784 (28x28)")
    try:
        array = np.array(rows, dtype=np.float32)
    except ValueError:
        raise ValueError(f"{path}: values must be 0 or 1 in a binarized-MNIST .amat file") from None
    if not np.isin(array, (0.0, 1.0)).all():
        raise ValueError(f"{path}: values must be 0 or 1 in a binarized-MNIST .amat file")
    return array.astype(np.uint8)


def _check_amat_content(array: np.ndarray, split: str, path: Path) -> None:
    """Content check for downloads, whose bytes need not match our checksums."""
    expect = AMAT_ROWS[split]
    if array.shape != (expect, 784):
        raise ValueError(f"{path}: expected {expect} images of 784 pixels, got shape {array.shape}")
    mean = float(array.mean())
    if abs(mean - AMAT_MEANS[split]) > 5e-4:
        raise ValueError(f"{path}: mean pixel {mean:.4f} differs from the known {AMAT_MEANS[split]:.4f}")


def find_amat(root: str | Path, split: str) -> Path | None:
    for name in (f"binarized_mnist_{split}.amat", f"binarized_mnist_{split}.amat.gz"):
        if (Path(root) / name).is_file():
            return Path(root) / name
    return None


def download_binarized_mnist(root: str | Path, base_url: str = AMAT_URL) -> None:
    """Fetch the three ``.amat`` files into ``root`` (skipping those present), checking content.

    Each file is written to a temporary name and moved into place only once it has been read
    back and checked, so an interrupted download never leaves a partial file behind.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        if find_amat(root, split) is not None:
            continue
        target = root / f"binarized_mnist_{split}.amat"
        url = f"{base_url.rstrip('/')}/{target.name}"
        fetch(url, target, lambda tmp, split=split, url=url: _check_amat_content(read_amat(tmp), split, Path(url)))


def embedded_path() -> Path:
    return Path(str(resources.files("pyro_vae") / "_data" / EMBEDDED_FILE))


def load_embedded(path: str | Path | None = None) -> dict[str, np.ndarray]:
    """Unpack the shipped binarized MNIST: uint8 arrays ``train``, ``valid``, ``test``, ``test_labels``."""
    path = Path(path) if path is not None else embedded_path()
    if not path.is_file():
        raise ValueError(
            f"{path}: the embedded binarized MNIST is missing; rebuild it with scripts/pack_binarized_mnist.py"
        )
    try:
        with np.load(path) as npz:
            packed = {key: npz[key] for key in (*SPLITS, "test_labels")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise ValueError(
            f"{path}: cannot read the embedded binarized MNIST ({exc}); reinstall the "
            "package or rebuild it with scripts/pack_binarized_mnist.py"
        ) from None
    digest = content_sha256(packed)
    if digest != EMBEDDED_SHA256:
        raise ValueError(
            f"{path}: checksum mismatch (sha256 {digest}, expected {EMBEDDED_SHA256}); the file is "
            "corrupt or from another version: reinstall the package or run scripts/pack_binarized_mnist.py"
        )
    out = {s: np.unpackbits(packed[s], axis=1)[:, :784] for s in SPLITS}
    out["test_labels"] = packed["test_labels"]
    return out


def pack_binarized_mnist(amat_dir: str | Path, labels_file: str | Path, out: str | Path) -> str:
    """Build the embedded ``.npz`` from the canonical ``.amat`` files; return its sha256.

    Checks the md5 of every ``.amat`` (after unzipping) against :data:`AMAT_MD5`. The test
    labels are the MNIST test labels sorted stably, which is the order of the test split.
    """
    arrays = {}
    for split in SPLITS:
        path = find_amat(amat_dir, split)
        if path is None:
            raise ValueError(f"{amat_dir}: binarized_mnist_{split}.amat[.gz] not found")
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
        digest = hashlib.md5(raw).hexdigest()
        if digest != AMAT_MD5[split]:
            raise ValueError(f"{path}: md5 {digest} does not match the expected {AMAT_MD5[split]}")
        arrays[split] = np.packbits(read_amat(path), axis=1)
    labels = _read_idx_labels(labels_file)
    if labels.shape != (AMAT_ROWS["test"],):
        raise ValueError(f"{labels_file}: expected 10000 labels, got {labels.shape}")
    arrays["test_labels"] = np.sort(labels, kind="stable")
    np.savez_compressed(out, **arrays)
    return content_sha256(arrays)


def _read_idx_labels(path: str | Path) -> np.ndarray:
    raw = gzip.open(path).read() if str(path).endswith(".gz") else Path(path).read_bytes()
    if int.from_bytes(raw[:4], "big") != 2049:
        raise ValueError(f"{path}: not an IDX label file (magic number {int.from_bytes(raw[:4], 'big')})")
    return np.frombuffer(raw, dtype=np.uint8, offset=8).copy()


@DATASETS.register("binarized_mnist")
def _binarized_mnist(cfg: DataConfig) -> Splits:
    embedded = load_embedded()
    if not cfg.root:
        return make_splits(embedded, f"embedded {EMBEDDED_FILE}", (28, 28), embedded["test_labels"])
    if cfg.download:
        download_binarized_mnist(cfg.root)
    arrays = {}
    for split in SPLITS:
        path = find_amat(cfg.root, split)
        if path is None:
            raise ValueError(
                f"{cfg.root}: binarized_mnist_{split}.amat[.gz] not found; set data.download=true to "
                'fetch the files, or data.root="" to use the copy shipped in the package'
            )
        arrays[split] = read_amat(path)
    # The test split is always the canonical one, whose labels the package carries.
    return make_splits(arrays, str(cfg.root), (28, 28), embedded["test_labels"])
