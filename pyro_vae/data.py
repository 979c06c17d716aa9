"""Data sets by name, all delivered under one contract.

Every loader returns :class:`Splits`: float32 tensors of shape ``(N, D)`` with values in
``[0, 1]`` for ``train``, ``valid`` and ``test`` (plus test labels where the set has them).
Images whose values are all multiples of 1/255 (binary ones included) are held as uint8 levels,
a quarter of float32's memory, and decoded on access (:mod:`pyro_vae.pixels`).
Bad data raises ``ValueError`` naming the file and the problem.

Registered sets (``data.name``):

- ``binarized_mnist``: statically binarized MNIST (Larochelle & Murray, 2011), 50k/10k/10k.
  With ``data.root = ""`` the bit-packed copy shipped inside the package is used (no network);
  otherwise the canonical ``binarized_mnist_{train,valid,test}.amat[.gz]`` files in ``root``
  (fetched there first when ``data.download = true``).
- ``mnist`` and ``fashion_mnist``: grey-level images through :mod:`torchvision.datasets`,
  with ``data.binarize`` = ``none`` | ``static`` | ``dynamic``.
- ``array``: a user's ``.npy`` / ``.npz`` file (``data.root`` is its path) of shape (N, D) or
  (N, H, W); an ``.npz`` may hold ``train`` / ``valid`` / ``test`` (and ``test_labels``) arrays,
  anything else is split 80/10/10 with a seeded permutation.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .config import DataConfig
from .pixels import decode, encode, evenly_spaced
from .registry import Registry

log = logging.getLogger(__name__)

DATASETS: Registry = Registry("data set", config_key="data.name")

SPLITS = ("train", "valid", "test")
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


class Splits:
    """The three splits of one data set. ``train``, ``valid`` and ``test`` are float32 tensors
    (N, D) with values in [0, 1], decoded on each access from the stored form (:func:`encode`);
    the training loop takes :meth:`stored` tensors and decodes one batch at a time.

    :param train, valid, test: float32 images in [0, 1], or uint8 levels (value x 255).
    """

    def __init__(self, train: torch.Tensor, valid: torch.Tensor, test: torch.Tensor, image_shape: tuple[int, int],
                 test_labels: torch.Tensor | None = None, dynamic_binarization: bool = False,
                 source: str = "") -> None:  # fmt: skip
        self._stored = {s: encode(x) for s, x in zip(SPLITS, (train, valid, test))}
        self.image_shape = image_shape
        self.test_labels = test_labels
        self.dynamic_binarization = dynamic_binarization  # resample x ~ Bernoulli(pixels) for every training batch
        self.source = source

    def stored(self, split: str) -> torch.Tensor:
        """The split as held in memory: uint8 levels or float32 (pass batches through :func:`decode`)."""
        return self._stored[split]

    @property
    def train(self) -> torch.Tensor:
        return decode(self._stored["train"])

    @property
    def valid(self) -> torch.Tensor:
        return decode(self._stored["valid"])

    @property
    def test(self) -> torch.Tensor:
        return decode(self._stored["test"])

    @property
    def data_dim(self) -> int:
        return self._stored["train"].shape[1]

    def subset(self, n: int) -> Splits:
        """``n`` evenly spaced images of every split (``n = 0``: all). Evenly spaced rather than
        the first ``n``, because the binarized-MNIST test split is sorted by digit."""
        if n <= 0:
            return self
        pick = {s: evenly_spaced(x.shape[0], n) for s, x in self._stored.items()}
        labels = self.test_labels[pick["test"]] if self.test_labels is not None else None
        return Splits(*(self._stored[s][pick[s]] for s in SPLITS), self.image_shape, labels,
                      self.dynamic_binarization, self.source)  # fmt: skip


def check_images(array: np.ndarray | torch.Tensor, source: str) -> torch.Tensor:
    """Validate one split and return it (N, D) in its stored form (:func:`encode`: uint8 levels
    for 8-bit images, else float32); raise ``ValueError`` naming ``source``. Integer input must
    hold 0s and 1s."""
    x = torch.as_tensor(np.asarray(array) if not torch.is_tensor(array) else array)
    if x.ndim not in (2, 3):
        raise ValueError(f"{source}: images must have shape (N, D) or (N, H, W), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x[0].numel() == 0:
        raise ValueError(f"{source}: the split is empty (shape {tuple(x.shape)}); it needs at least one image")
    if x.dtype == torch.bool:
        x = x.to(torch.uint8)
    x = x.reshape(x.shape[0], -1)
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = ~torch.isfinite(x)
        n, d = divmod(int(bad.flatten().nonzero()[0]), x.shape[1])
        raise ValueError(f"{source}: {int(bad.sum())} values are NaN or infinite (first at image {n}, pixel {d})")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise ValueError(
            f"{source}: values must lie in [0, 1], found min {lo:g} and max {hi:g}; divide 8-bit images by 255"
        )
    return encode(x) if x.is_floating_point() else x.to(torch.uint8) * 255  # 0/1 integers as levels


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
        log.info("downloading %s", url)
        fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                shutil.copyfileobj(response, out)
            _check_amat_content(read_amat(tmp), split, Path(url))
            os.replace(tmp, target)
        except OSError as exc:
            raise ValueError(f"could not download {url}: {exc}") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def embedded_path() -> Path:
    return Path(str(resources.files("pyro_vae") / "_data" / EMBEDDED_FILE))


def load_embedded(path: str | Path | None = None) -> dict[str, np.ndarray]:
    """Unpack the shipped binarized MNIST: uint8 arrays ``train``, ``valid``, ``test``, ``test_labels``."""
    path = Path(path) if path is not None else embedded_path()
    if not path.is_file():
        raise ValueError(f"{path}: the embedded binarized MNIST is missing; rebuild it with "
                         "scripts/pack_binarized_mnist.py")  # fmt: skip
    try:
        with np.load(path) as npz:
            packed = {key: npz[key] for key in (*SPLITS, "test_labels")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: cannot read the embedded binarized MNIST ({exc}); reinstall the "
                         "package or rebuild it with scripts/pack_binarized_mnist.py") from None  # fmt: skip
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


def _splits(arrays: dict[str, np.ndarray], source: str, image_shape, labels=None, dynamic=False) -> Splits:
    tensors = {s: check_images(arrays[s], f"{source} [{s}]") for s in SPLITS}
    dims = {s: t.shape[1] for s, t in tensors.items()}
    if len(set(dims.values())) != 1:
        raise ValueError(f"{source}: the splits have different image sizes {dims}")
    if labels is not None:
        labels = torch.as_tensor(np.asarray(labels)).long()
        if labels.shape != (tensors["test"].shape[0],):
            raise ValueError(f"{source}: {labels.shape[0]} test labels for {tensors['test'].shape[0]} test images")
    return Splits(tensors["train"], tensors["valid"], tensors["test"], tuple(image_shape), labels, dynamic, source)


@DATASETS.register("binarized_mnist")
def _binarized_mnist(cfg: DataConfig) -> Splits:
    embedded = load_embedded()
    if not cfg.root:
        return _splits(embedded, f"embedded {EMBEDDED_FILE}", (28, 28), embedded["test_labels"])
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
    return _splits(arrays, str(cfg.root), (28, 28), embedded["test_labels"])


def _binarize(x: torch.Tensor, mode: str, seed: int) -> torch.Tensor:
    if mode == "static":
        return torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))
    return x


def _torchvision_set(cls_name: str, cfg: DataConfig) -> Splits:
    import torchvision.datasets

    cls = getattr(torchvision.datasets, cls_name)
    root = cfg.root or str(Path.home() / ".cache" / "pyro_vae")
    try:
        train = cls(root, train=True, download=cfg.download)
        test = cls(root, train=False, download=cfg.download)
    except RuntimeError as exc:
        raise ValueError(f"{root}: {cls_name} not found ({exc}); set data.download=true to fetch it") from None
    full = train.data.reshape(len(train.data), -1).float() / 255
    n_valid = cfg.valid_size
    if not 0 < n_valid < len(full):
        raise ValueError(f"data.valid_size = {n_valid} must be between 1 and {len(full) - 1} for {cls_name}")
    x_test = test.data.reshape(len(test.data), -1).float() / 255
    # Evaluation splits get one fixed binarization, also when training binarizes dynamically.
    fixed = "none" if cfg.binarize == "none" else "static"
    arrays = {
        "train": _binarize(full[:-n_valid], cfg.binarize, cfg.seed),
        "valid": _binarize(full[-n_valid:], fixed, cfg.seed + 1),
        "test": _binarize(x_test, fixed, cfg.seed + 2),
    }
    return _splits(arrays, f"{cls_name} in {root}", (28, 28), test.targets, cfg.binarize == "dynamic")


@DATASETS.register("mnist")
def _mnist(cfg: DataConfig) -> Splits:
    return _torchvision_set("MNIST", cfg)


@DATASETS.register("fashion_mnist")
def _fashion_mnist(cfg: DataConfig) -> Splits:
    return _torchvision_set("FashionMNIST", cfg)


@DATASETS.register("array")
def _array(cfg: DataConfig) -> Splits:
    path = Path(cfg.root)
    if not cfg.root or not path.is_file():
        raise ValueError(f"data.root = {cfg.root!r}: set it to the path of an existing .npy or .npz file")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: cannot read as .npy/.npz ({exc})") from None
    if isinstance(loaded, np.ndarray):
        arrays = {"all": loaded}
    else:
        with loaded:
            arrays = {k: loaded[k] for k in loaded.files}
    labels = arrays.pop("test_labels", None)
    if set(SPLITS) <= set(arrays):
        shape = arrays["train"].shape
    elif len(arrays) == 1:
        (full,) = arrays.values()
        shape = full.shape
        check_images(full, str(path))
        if full.shape[0] < 3:
            raise ValueError(f"{path}: needs at least 3 images to split into train/valid/test, got {full.shape[0]}")
        order = np.random.default_rng(cfg.seed).permutation(full.shape[0])
        n_valid = n_test = max(1, full.shape[0] // 10)
        parts = np.split(full[order], [full.shape[0] - n_valid - n_test, full.shape[0] - n_test])
        arrays = dict(zip(SPLITS, parts))
        labels = None
    else:
        raise ValueError(
            f"{path}: an .npz needs either one array or the arrays train, valid and test "
            f"(optionally test_labels); found {sorted(arrays)}"
        )
    image_shape = shape[1:] if len(shape) == 3 else (1, shape[1])
    return _splits(arrays, str(path), image_shape, labels)


def load_data(cfg: DataConfig) -> Splits:
    """Load the data set named ``cfg.name`` (see :data:`DATASETS`) and apply ``cfg.subset``."""
    return DATASETS.get(cfg.name)(cfg).subset(cfg.subset)
