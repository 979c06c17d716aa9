"""Grey-level sets and a user's own arrays.

- ``mnist`` and ``fashion_mnist``: grey-level images and their labels (training and test) through
  :mod:`torchvision.datasets`, with ``data.binarize`` = ``none`` | ``static`` | ``dynamic``.
- ``array``: a user's ``.npy`` / ``.npz`` file (``data.root`` is its path) of shape (N, D) or
  (N, H, W); an ``.npz`` may hold ``train`` / ``valid`` / ``test`` (and ``test_labels``) arrays,
  anything else is split 80/10/10 with a seeded permutation. The headers are checked before
  numpy allocates what they declare (:func:`check_array_file`): numbers only, no more bytes than
  the file holds, within :data:`~pyro_vae.config.MAX_DATA_BYTES`.
"""

from __future__ import annotations

import math
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch

from pyro_vae.config import MAX_DATA_BYTES, DataConfig
from pyro_vae.data.splits import DATASETS, SPLITS, Splits, check_images, make_splits


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
    source = f"{cls_name} in {root}"
    return make_splits(arrays, source, (28, 28), test.targets, cfg.binarize == "dynamic", train.targets[:-n_valid])


@DATASETS.register("mnist")
def _mnist(cfg: DataConfig) -> Splits:
    return _torchvision_set("MNIST", cfg)


@DATASETS.register("fashion_mnist")
def _fashion_mnist(cfg: DataConfig) -> Splits:
    return _torchvision_set("FashionMNIST", cfg)


_mnist.binarizes = _fashion_mnist.binarizes = True  # data.binarize applies (pyro_vae.data.load)


@DATASETS.register("array")
def _array(cfg: DataConfig) -> Splits:
    path = Path(cfg.root)
    if not cfg.root or not path.is_file():
        raise ValueError(f"data.root = {cfg.root!r}: set it to the path of an existing .npy or .npz file")
    check_array_file(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
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
    return make_splits(arrays, str(path), image_shape, labels)


NPY_MAX_HEADER = 10_000  # bytes of an .npy header numpy reads without allow_pickle (its max_header_size)
_KINDS = {
    "c": "complex numbers",
    "U": "text",
    "S": "bytes",
    "O": "Python objects",
    "V": "records or raw bytes",
    "M": "dates",
    "m": "time spans",
}


def check_array_file(path: Path) -> None:
    """Check the header of an ``.npy`` file, or of every array in an ``.npz``, before numpy reads
    it: an array of numbers (bool, integer or floating point: no text, objects or complex numbers),
    no larger than the file that holds it, within :data:`~pyro_vae.config.MAX_DATA_BYTES` as
    float32. ``ValueError`` naming the file (and the array) otherwise."""
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path} is empty (0 bytes); data.root must be an .npy or .npz file of images")
    with open(path, "rb") as f:
        is_zip = f.read(2) == b"PK"
    values = 0
    if is_zip:
        try:
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if not info.filename.endswith(".npy"):
                        raise ValueError(
                            f"{path} holds {info.filename!r}, which is not an .npy array; an .npz for "
                            "data.name=array holds arrays only"
                        )
                    with archive.open(info) as member:
                        values += _check_npy_header(member, info.file_size, f"{path} [{info.filename[:-4]}]")
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ValueError(f"{path}: cannot read as .npz ({exc})") from None
    else:
        with open(path, "rb") as f:
            values = _check_npy_header(f, size, str(path))
    if 4 * values > MAX_DATA_BYTES:
        raise ValueError(
            f"{path} holds {values:,} values, {4 * values:,} bytes as float32, above the limit of "
            f"{MAX_DATA_BYTES:,} bytes (pyro_vae.config.MAX_DATA_BYTES)"
        )


def _check_npy_header(f, size: int, where: str) -> int:
    """The number of values the ``.npy`` header at ``f`` declares (``size`` bytes in all), checked."""
    try:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"format version {version[0]}.{version[1]} (structured arrays only)")
        start, length_format = f.tell(), "<H" if version == (1, 0) else "<I"
        (length,) = struct.unpack(length_format, f.read(struct.calcsize(length_format)))
        if length > NPY_MAX_HEADER:
            raise ValueError(f"a header of {length:,} bytes, more than numpy reads safely ({NPY_MAX_HEADER:,})")
        f.seek(start)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    except (ValueError, struct.error, EOFError) as exc:
        raise ValueError(f"{where} is not a readable .npy array ({exc})") from None
    if dtype.kind not in "biuf":
        raise ValueError(
            f"{where} holds {_KINDS.get(dtype.kind, dtype.kind)} (dtype {dtype}); images must be "
            "numbers: bool, integer or floating point values in [0, 1]"
        )
    values, held = math.prod(shape), size - f.tell()
    if values * dtype.itemsize > held:
        raise ValueError(
            f"{where}: its header declares shape {tuple(shape)} of {dtype} "
            f"({values * dtype.itemsize:,} bytes), but the file holds {held:,} bytes after the header: "
            "it is truncated or damaged"
        )
    return values
