"""Grey-level sets and a user's own arrays.

- ``mnist`` and ``fashion_mnist``: grey-level images through :mod:`torchvision.datasets`,
  with ``data.binarize`` = ``none`` | ``static`` | ``dynamic``.
- ``array``: a user's ``.npy`` / ``.npz`` file (``data.root`` is its path) of shape (N, D) or
  (N, H, W); an ``.npz`` may hold ``train`` / ``valid`` / ``test`` (and ``test_labels``) arrays,
  anything else is split 80/10/10 with a seeded permutation.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from pyro_vae.config import DataConfig
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
    return make_splits(arrays, f"{cls_name} in {root}", (28, 28), test.targets, cfg.binarize == "dynamic")


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
    return make_splits(arrays, str(path), image_shape, labels)
