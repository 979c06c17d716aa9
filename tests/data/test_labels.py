"""Labels as data (data.labels, pyro_vae/data/labels.py): the standard and the offline protocol."""

from __future__ import annotations

import pytest
import torch

from pyro_vae import data as D
from pyro_vae.config import ConfigError, DataConfig, load_config
from pyro_vae.data.labels import apply_labels
from pyro_vae.data.pixels import evenly_spaced

CLASSES = 4


def _toy(n_train=60, n_valid=20, n_test=40, train_labels=True) -> D.Splits:
    """Splits whose images spell their number (base 256, one pixel a digit), unique across the
    splits, and whose true class is that number modulo CLASSES."""
    ids = torch.arange(n_train + n_valid + n_test)
    images = torch.stack([ids // 65536, ids // 256 % 256, ids % 256], 1).to(torch.uint8)
    labels = ids % CLASSES
    train, valid, test = images.split([n_train, n_valid, n_test])
    return D.Splits(
        train,
        valid,
        test,
        (1, 3),
        labels[-n_test:],
        source="toy",
        train_labels=labels[:n_train] if train_labels else None,
    )


def _ids(stored: torch.Tensor) -> torch.Tensor:
    return (stored.long() * torch.tensor([65536, 256, 1])).sum(1)


def _shown(labels: torch.Tensor) -> torch.Tensor:
    return (labels >= 0).nonzero().squeeze(1)


def test_standard_protocol_shows_a_balanced_choice_of_true_labels_and_keeps_the_images():
    toy = _toy()
    out = apply_labels(toy, 20, seed=0)
    shown = _shown(out.train_labels)
    assert len(shown) == 20 and out.train_labels[shown].bincount().tolist() == [5] * CLASSES
    assert torch.equal(out.train_labels[shown], _ids(out.stored("train"))[shown] % CLASSES)  # their true labels
    assert out.train_labels.dtype == torch.long and len(out.train_labels) == 60
    assert all(out.stored(s) is toy.stored(s) for s in D.SPLITS) and out.test_labels is toy.test_labels
    assert out.label_protocol == (
        "standard (Kingma et al. 2014): 20 labels of the 60 training images (5 per class, seed 0), the rest unlabelled"
    )


@pytest.mark.parametrize("train_labels", [True, False], ids=["standard", "offline"])
def test_the_choice_is_seeded_and_leaves_the_global_rng_alone(train_labels):
    state = torch.get_rng_state()
    first, again, other = (apply_labels(_toy(train_labels=train_labels), 8, seed) for seed in (0, 0, 1))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first.train_labels, again.train_labels)
    assert torch.equal(first.stored("test"), again.stored("test"))
    assert not torch.equal(first.train_labels, other.train_labels)


def test_offline_protocol_keeps_the_evaluation_half_out_of_training():
    toy = _toy(train_labels=False)
    out = apply_labels(toy, 8, seed=3)
    train, test, original_test = _ids(out.stored("train")), _ids(out.stored("test")), _ids(toy.stored("test"))
    assert torch.equal(train[:60], _ids(toy.stored("train"))) and out.stored("valid") is toy.stored("valid")
    first = train[60:]
    assert not set(test.tolist()) & set(train.tolist())  # the evaluation half never appears in training
    assert sorted(first.tolist() + test.tolist()) == original_test.tolist()  # the halves cover the test split
    assert (first % CLASSES).bincount().tolist() == (test % CLASSES).bincount().tolist() == [5] * CLASSES
    assert torch.equal(out.test_labels, test % CLASSES)
    shown = _shown(out.train_labels)
    assert (shown >= 60).all() and len(shown) == 8  # labels only for images of the first half
    assert torch.equal(out.train_labels[shown], train[shown] % CLASSES)
    assert out.train_labels[shown].bincount().tolist() == [2] * CLASSES
    assert out.label_protocol == (
        "offline (toy has test labels only): its test split halved (seed 3, balanced); 8 labels (2 per class) "
        "from the first half, its other 12 images unlabelled in training; the second half (20 images) is the test set"
    )


def test_odd_classes_are_halved_give_or_take_one():
    toy = _toy(n_test=42, train_labels=False)  # classes of 11, 11, 10, 10 test images
    out = apply_labels(toy, 4, seed=0)
    first, second = _ids(out.stored("train"))[60:] % CLASSES, _ids(out.stored("test")) % CLASSES
    assert len(first) == len(second) == 21
    assert (first.bincount() - second.bincount()).abs().max() <= 1


def test_float_training_images_and_uint8_test_images_join_as_images():
    toy = _toy(train_labels=False)
    grey = torch.full((60, 3), 0.5 + 2**-20)  # not 8-bit: held as float32
    mixed = D.Splits(grey, toy.stored("valid"), toy.stored("test"), (1, 3), toy.test_labels, source="toy")
    out = apply_labels(mixed, 4, seed=0)
    assert out.stored("train").dtype == torch.float32 and torch.equal(out.train[:60], grey)
    first = _ids((out.train[60:] * 255).round().to(torch.uint8))
    assert sorted(first.tolist() + _ids(out.stored("test")).tolist()) == _ids(toy.stored("test")).tolist()


def test_labels_zero_uses_no_labels():
    toy = _toy()
    out = apply_labels(toy, 0, seed=0)
    assert out.train_labels is None and out.label_protocol == ""
    assert all(out.stored(s) is toy.stored(s) for s in D.SPLITS) and out.test_labels is toy.test_labels


@pytest.mark.parametrize(
    "splits, labels, message",
    [
        (_toy(train_labels=False), 6, r"multiple of 4 \(4, 8, \.\.\. up to 20\), or 0 for no labels"),
        (_toy(), 6, r"data.labels = 6 cannot be balanced across the 4 classes of the training split of toy"),
        (_toy(), -4, r"data.labels = -4 cannot be balanced"),
        (_toy(), 64, r"asks for 16 labels of each of the 4 classes, but class 0 has only 15 images .* at most 60"),
        (_toy(train_labels=False), 24, r"class 0 has only 5 images in the first half of the test split of toy"),
    ],
)
def test_labels_that_cannot_be_balanced_are_config_errors(splits, labels, message):
    with pytest.raises(ConfigError, match=message):
        apply_labels(splits, labels, seed=0)


def test_a_set_without_labels_is_a_config_error_naming_the_fix():
    toy = _toy(train_labels=False)
    unlabelled = D.Splits(*(toy.stored(s) for s in D.SPLITS), (1, 3), source="toy.npy")
    with pytest.raises(ConfigError, match=r"data.labels = 10, but toy.npy has no labels") as error:
        apply_labels(unlabelled, 10, seed=0)
    assert "mnist" in str(error.value) and "data.labels=0" in str(error.value)


@pytest.mark.parametrize(
    "value, message", [("-1", r"data.labels = -1 must be 0 or more"), ("ten", "data.labels: expected an integer")]
)
def test_config_rejects_bad_label_counts(value, message):
    assert load_config(None, ["data.labels=100"]).data.labels == 100 and DataConfig().labels == 0
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"data.labels={value}"])


def test_subset_carries_the_training_labels():
    toy = _toy()
    sub = toy.subset(10)
    assert torch.equal(sub.train_labels, toy.train_labels[evenly_spaced(60, 10)])
    assert torch.equal(sub.train_labels, _ids(sub.stored("train")) % CLASSES)


def test_labels_zero_leaves_load_data_as_the_loader_gives_it():
    cfg = DataConfig(subset=300)
    out, raw = D.load_data(cfg), D.DATASETS.get(cfg.name)(cfg).subset(cfg.subset)
    assert all(torch.equal(out.stored(s), raw.stored(s)) for s in D.SPLITS)
    assert torch.equal(out.test_labels, raw.test_labels) and out.train_labels is None and out.label_protocol == ""


def test_embedded_binarized_mnist_runs_the_offline_protocol_after_the_subset():
    base = D.load_data(DataConfig(subset=1000))
    out = D.load_data(DataConfig(subset=1000, labels=100, seed=7))
    rows = {bytes(row.numpy()): i for i, row in enumerate(base.stored("test"))}
    assert len(rows) == 1000  # every test image differs, so rows identify them
    assert torch.equal(out.stored("train")[:1000], base.stored("train"))
    first = [rows[bytes(row.numpy())] for row in out.stored("train")[1000:]]
    second = [rows[bytes(row.numpy())] for row in out.stored("test")]
    assert len(first) == len(second) == 500 and sorted(first + second) == list(range(1000))
    assert torch.equal(out.test_labels, base.test_labels[second])
    shown = _shown(out.train_labels)
    assert len(shown) == 100 and (shown >= 1000).all()
    assert torch.equal(out.train_labels[shown], base.test_labels[torch.tensor(first)[shown - 1000]])
    assert out.train_labels[shown].bincount().tolist() == [10] * 10
    assert out.stored("train").dtype == torch.uint8 and torch.equal(out.stored("valid"), base.stored("valid"))
    assert out.label_protocol.startswith("offline (embedded binarized_mnist.npz has test labels only)")


def test_torchvision_mnist_runs_the_standard_protocol(mnist_root):
    cfg = DataConfig(name="mnist", root=str(mnist_root), valid_size=100)
    raw = D.DATASETS.get("mnist")(cfg)
    assert raw.train_labels.shape == (200,) and len(raw.train_labels.unique()) == 10
    assert D.load_data(cfg).train_labels is None
    out = D.load_data(DataConfig(name="mnist", root=str(mnist_root), valid_size=100, labels=20))
    shown = _shown(out.train_labels)
    assert torch.equal(out.train_labels[shown], raw.train_labels[shown])
    assert out.train_labels[shown].bincount().tolist() == [2] * 10
    assert all(torch.equal(out.stored(s), raw.stored(s)) for s in D.SPLITS)
    assert out.label_protocol.startswith("standard (Kingma et al. 2014): 20 labels of the 200 training images")
