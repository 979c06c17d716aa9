"""The contract every data set is delivered under, and the registry of sets by name.

Every loader returns :class:`Splits`: float32 tensors of shape ``(N, D)`` with values in
``[0, 1]`` for ``train``, ``valid`` and ``test`` (plus training and test labels where the set has
them; ``data.labels`` decides which training labels a run sees, :mod:`pyro_vae.data.labels`).
Images whose values are all multiples of 1/255 (binary ones included) are held as uint8 levels,
a quarter of float32's memory, and decoded on access (:mod:`pyro_vae.data.pixels`).
Bad data raises ``ValueError`` naming the file and the problem. A loader is one function
registered in :data:`DATASETS` (``data.name``) that takes the ``[data]`` config.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from pyro_vae.data.pixels import decode, encode, evenly_spaced
from pyro_vae.registry import Registry

DATASETS: Registry = Registry("data set", config_key="data.name")

SPLITS = ("train", "valid", "test")


class Splits:
    """The three splits of one data set. ``train``, ``valid`` and ``test`` are float32 tensors
    (N, D) with values in [0, 1], decoded on each access from the stored form (:func:`encode`);
    the training loop takes :meth:`stored` tensors and decodes one batch at a time.

    :param train, valid, test: float32 images in [0, 1], or uint8 levels (value x 255).
    :param train_labels: long (N_train,): the class of each training image where known, -1 where
        hidden, or None. A loader gives every training label its set has; :func:`load_data` keeps
        ``data.labels`` of them, or none (None) when ``data.labels = 0``.
    :param label_protocol: how the training labels were chosen, one line for reports ("" = no labels
        used), set by :func:`pyro_vae.data.labels.apply_labels`.
    :param render: for rows that are not pictures themselves (the ``codes`` set), a function from rows
        (N, D) to the pictures they stand for and their shape; :meth:`draw` applies it.
    """

    def __init__(
        self,
        train: torch.Tensor,
        valid: torch.Tensor,
        test: torch.Tensor,
        image_shape: tuple[int, int],
        test_labels: torch.Tensor | None = None,
        dynamic_binarization: bool = False,
        source: str = "",
        train_labels: torch.Tensor | None = None,
        label_protocol: str = "",
        render: Callable[[torch.Tensor], tuple[torch.Tensor, tuple]] | None = None,
    ) -> None:
        self._stored = {s: encode(x) for s, x in zip(SPLITS, (train, valid, test))}
        self.image_shape = image_shape
        self.test_labels = test_labels
        self.dynamic_binarization = dynamic_binarization  # resample x ~ Bernoulli(pixels) for every training batch
        self.source = source
        self.train_labels = train_labels
        self.label_protocol = label_protocol
        self.render = render

    def draw(self, rows: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """Rows of this set (data, reconstructions, samples: (N, D)) as pictures and their shape, for
        figures: the rows themselves in :attr:`image_shape`, or what :attr:`render` makes of them."""
        return (rows, self.image_shape) if self.render is None else self.render(rows)

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
        """``n`` evenly spaced images of every split (``n = 0``: all), with their labels. Evenly
        spaced rather than the first ``n``, because the binarized-MNIST test split is sorted by
        digit. :func:`load_data` takes the subset before it applies ``data.labels``, so that every
        labelled image stays."""
        if n <= 0:
            return self
        pick = {s: evenly_spaced(x.shape[0], n) for s, x in self._stored.items()}
        return Splits(
            *(self._stored[s][pick[s]] for s in SPLITS),
            self.image_shape,
            _pick(self.test_labels, pick["test"]),
            self.dynamic_binarization,
            self.source,
            _pick(self.train_labels, pick["train"]),
            self.label_protocol,
            self.render,
        )


def _pick(labels: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
    return labels[index] if labels is not None else None


def check_images(array: np.ndarray | torch.Tensor, source: str) -> torch.Tensor:
    """Validate one split and return it (N, D) in its stored form (:func:`encode`: uint8 levels
    for 8-bit images, else float32); raise ``ValueError`` naming ``source``. Values must be numbers
    (bool, integer or floating point); integer input must hold 0s and 1s."""
    if not torch.is_tensor(array):
        array = np.asarray(array)
        if array.dtype.kind not in "biuf":
            raise ValueError(
                f"{source}: images must be numbers (bool, integer or floating point), got an array of "
                f"dtype {array.dtype}"
            )
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))
    elif array.is_complex():
        raise ValueError(f"{source}: images must be real numbers, got a tensor of dtype {array.dtype}")
    x = torch.as_tensor(array)
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


def make_splits(
    arrays: dict[str, np.ndarray], source: str, image_shape, labels=None, dynamic=False, train_labels=None
) -> Splits:
    """Check every split of ``arrays`` (:func:`check_images`) and the test (``labels``) and training
    labels; hold them as :class:`Splits`."""
    tensors = {s: check_images(arrays[s], f"{source} [{s}]") for s in SPLITS}
    dims = {s: t.shape[1] for s, t in tensors.items()}
    if len(set(dims.values())) != 1:
        raise ValueError(f"{source}: the splits have different image sizes {dims}")
    return Splits(
        tensors["train"],
        tensors["valid"],
        tensors["test"],
        tuple(image_shape),
        _labels(labels, tensors["test"], source, "test"),
        dynamic,
        source,
        _labels(train_labels, tensors["train"], source, "training"),
    )


def _labels(labels, images: torch.Tensor, source: str, split: str) -> torch.Tensor | None:
    """``labels`` as a long tensor, one per image of ``images``; ``ValueError`` otherwise."""
    if labels is None:
        return None
    labels = torch.as_tensor(np.asarray(labels)).long()
    if labels.shape != (images.shape[0],):
        raise ValueError(
            f"{source}: {split} labels of shape {tuple(labels.shape)} for {images.shape[0]} {split} images; "
            "it needs one label per image"
        )
    return labels
