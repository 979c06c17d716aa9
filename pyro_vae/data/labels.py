"""Labels as data (``data.labels = N``), for semi-supervised models (Kingma et al. 2014, M2): N
training labels are shown, balanced across the classes, the rest hidden (-1 in
:attr:`~pyro_vae.data.splits.Splits.train_labels`). The protocol depends on the labels a set has:

- **standard** (Kingma et al. 2014), for sets with training labels (``mnist``, ``fashion_mnist``,
  ``cifar10``, an ``image_folder`` with class sub-folders): N labels of the training split.
- **offline**, for sets with test labels only (``binarized_mnist``, an ``array`` ``.npz`` with
  ``test_labels``): the test split is halved, balanced; the N labelled images are drawn from the
  first half, whose other images join the training split without their labels; the second half is
  the test split, never seen in training. The validation split is unchanged.

:func:`~pyro_vae.data.load.load_data` applies ``data.subset`` first, so every labelled image is
kept. Every draw comes from a private generator seeded with ``data.seed``: deterministic, and the
global RNG is untouched. :attr:`~pyro_vae.data.splits.Splits.label_protocol` says which protocol ran.
"""

from __future__ import annotations

import torch

from pyro_vae.config import ConfigError
from pyro_vae.data.pixels import decode
from pyro_vae.data.splits import SPLITS, Splits

LABELLED_SETS = (
    "mnist, fashion_mnist, cifar10 and image_folder with every image in a class sub-folder (training "
    "labels: the standard protocol); binarized_mnist and array .npz files with test_labels (test labels "
    "only: the offline protocol)"
)


def apply_labels(splits: Splits, labels: int, seed: int) -> Splits:
    """``splits`` (as a loader gives it: every label of the set known) with ``labels`` training
    labels shown, balanced and seeded with ``seed``, under the protocol its labels allow;
    ``labels = 0``: no labels used (``train_labels`` None).

    :raises ConfigError: the set has no labels, or ``labels`` is not a multiple of its number of
        classes, or asks for more images of a class than there are.
    """
    if labels == 0:
        return _with_train_labels(splits, None, "")
    generator = torch.Generator().manual_seed(seed)
    if splits.train_labels is not None:
        return _standard(splits, labels, seed, generator)
    if splits.test_labels is not None:
        return _offline(splits, labels, seed, generator)
    raise ConfigError(
        f"data.labels = {labels}, but {splits.source} has no labels, neither for its training nor for its "
        f"test split. Sets with labels: {LABELLED_SETS}. Set data.labels=0 to train without labels, or "
        "choose one of those sets"
    )


def _standard(splits: Splits, labels: int, seed: int, generator: torch.Generator) -> Splits:
    shown, per_class = _show(splits.train_labels, labels, generator, f"the training split of {splits.source}")
    protocol = (
        f"standard (Kingma et al. 2014): {labels:,} labels of the {len(shown):,} training images "
        f"({per_class} per class, seed {seed}), the rest unlabelled"
    )
    return _with_train_labels(splits, shown, protocol)


def _offline(splits: Splits, labels: int, seed: int, generator: torch.Generator) -> Splits:
    first, second = _halves(splits.test_labels, generator)
    where = f"the first half of the test split of {splits.source}"
    shown, per_class = _show(splits.test_labels[first], labels, generator, where)
    train, test = splits.stored("train"), splits.stored("test")
    protocol = (
        f"offline ({splits.source} has test labels only): its test split halved (seed {seed}, balanced); "
        f"{labels:,} labels ({per_class} per class) from the first half, its other {len(first) - labels:,} images "
        f"unlabelled in training; the second half ({len(second):,} images) is the test set"
    )
    return Splits(
        _join(train, test[first]),
        splits.stored("valid"),
        test[second],
        splits.image_shape,
        splits.test_labels[second],
        splits.dynamic_binarization,
        splits.source,
        torch.cat([torch.full((len(train),), -1, dtype=torch.long), shown]),
        protocol,
        splits.render,
    )


def _show(pool: torch.Tensor, labels: int, generator: torch.Generator, where: str) -> tuple[torch.Tensor, int]:
    """``pool`` (the labels of the images to draw from) with ``labels // classes`` random labels of
    every class kept and the rest -1; and that number per class."""
    classes, counts = pool.unique(return_counts=True)
    k, fewest = len(classes), int(counts.min())
    if labels < 0 or labels % k:
        raise ConfigError(
            f"data.labels = {labels} cannot be balanced across the {k} classes of {where}: it must be a "
            f"multiple of {k} ({k}, {2 * k}, ... up to {k * fewest:,}), or 0 for no labels"
        )
    per_class = labels // k
    if per_class > fewest:
        raise ConfigError(
            f"data.labels = {labels} asks for {per_class:,} labels of each of the {k} classes, but class "
            f"{int(classes[counts.argmin()])} has only {fewest:,} images in {where}: set data.labels to at most "
            f"{k * fewest:,} (with data.subset, a larger subset leaves more images)"
        )
    shown = torch.full_like(pool, -1)
    for c, count in zip(classes, counts):
        members = (pool == c).nonzero().squeeze(1)
        chosen = members[torch.randperm(int(count), generator=generator)[:per_class]]
        shown[chosen] = c
    return shown, per_class


def _halves(labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint halves of the indices of ``labels`` that cover them, each holding half of every
    class (give or take one): the indices shuffled, grouped by class, then dealt alternately."""
    shuffled = torch.randperm(len(labels), generator=generator)
    grouped = shuffled[labels[shuffled].sort(stable=True).indices]
    return grouped[0::2].sort().values, grouped[1::2].sort().values


def _join(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two stored splits as one; decoded first when one holds uint8 levels and the other float32."""
    if a.dtype != b.dtype:
        a, b = decode(a), decode(b)
    return torch.cat([a, b])


def _with_train_labels(splits: Splits, train_labels: torch.Tensor | None, protocol: str) -> Splits:
    return Splits(
        *(splits.stored(s) for s in SPLITS),
        splits.image_shape,
        splits.test_labels,
        splits.dynamic_binarization,
        splits.source,
        train_labels,
        protocol,
        splits.render,
    )
