"""Image folders and CIFAR-10's binary release, on small files written in the real formats; bits
per dimension; colour figures."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import math
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from pyro_vae.config import ConfigError, load_config
from pyro_vae.data import images, load_data
from pyro_vae.data.images import CIFAR_RECORD, download_cifar10, open_image, read_cifar_batch
from pyro_vae.data.pixels import image_grid
from pyro_vae.evaluation.metrics import Estimate, with_bits_per_dim
from pyro_vae.evaluation.plots import make_figures
from pyro_vae.model import build_vae
from pyro_vae.training.loop import fit
from tests.helpers import png_header_only


def _png(path, size=(30, 40), colour=False, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if colour else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)


def _folder_cfg(root, *extra):
    return load_config(None, ["data.name=image_folder", f"data.root={root}", *extra]).data


def test_a_flat_grey_folder_is_split_80_10_10_and_held_as_levels(tmp_path):
    for i in range(20):
        _png(tmp_path / f"img{i:02d}.png", size=(20 + i, 30), seed=i)  # mixed sizes
    (tmp_path / "notes.txt").write_text("not an image")  # ignored
    data = load_data(_folder_cfg(tmp_path, "data.image_folder.image_size=12"))
    assert data.image_shape == (1, 12, 12) and data.data_dim == 144
    assert [data.stored(s).shape[0] for s in ("train", "valid", "test")] == [16, 2, 2]
    assert data.stored("train").dtype == torch.uint8 and data.test_labels is None
    again = load_data(_folder_cfg(tmp_path, "data.image_folder.image_size=12"))
    assert torch.equal(again.stored("test"), data.stored("test"))  # the seeded split is the same split


def test_colour_class_folders_with_split_folders_give_labels(tmp_path):
    for split, n in (("train", 10), ("test", 3)):
        for label, cls in enumerate(("cats", "dogs")):
            for i in range(n):
                _png(tmp_path / split / cls / f"{i}.jpg", colour=True, seed=100 * label + i)
    cfg = _folder_cfg(tmp_path, "data.image_folder.channels=3", "data.image_folder.image_size=8")
    data = load_data(cfg)
    assert data.image_shape == (3, 8, 8) and data.data_dim == 192
    assert [data.stored(s).shape[0] for s in ("train", "valid", "test")] == [18, 2, 6]  # a tenth of train/ held out
    assert data.test_labels.tolist() == [0, 0, 0, 1, 1, 1] and data.train_labels is None  # data.labels = 0
    raw = images._image_folder(cfg)  # the loader keeps the training labels for data.labels
    assert raw.train_labels.bincount().sum() == 18 and set(raw.train_labels.tolist()) == {0, 1}
    labelled = load_data(dataclasses.replace(cfg, labels=4))
    shown = labelled.train_labels >= 0
    assert labelled.train_labels[shown].tolist() == raw.train_labels[shown].tolist() and shown.sum() == 4
    assert labelled.train_labels[shown].bincount().tolist() == [2, 2] and labelled.label_protocol.startswith("standard")


def test_a_resized_pixel_lands_where_it_should(tmp_path):
    """A white square in the top-left quarter of a colour image stays there after the resize."""
    img = np.zeros((16, 16, 3), np.uint8)
    img[:8, :8, 0] = 255  # red channel only
    for i in range(3):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
    data = load_data(_folder_cfg(tmp_path, "data.image_folder.channels=3", "data.image_folder.image_size=8"))
    x = data.test[0].reshape(3, 8, 8)
    assert x[0, :3, :3].min() > 0.9 and x[0, 5:, 5:].max() < 0.1 and x[1:].max() < 0.1  # (Lanczos rings at the edge)


def test_bad_folders_say_what_is_wrong(tmp_path, caplog):
    with pytest.raises(ValueError, match="no image files .*found, recursively"):
        load_data(_folder_cfg(tmp_path))
    with pytest.raises(ValueError, match="set it to a folder of images"):
        load_data(_folder_cfg(tmp_path / "absent"))
    for i in range(5):
        _png(tmp_path / f"{i}.png", seed=i)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError, match=r"broken.png cannot be read as an image .*skip_unreadable=true"):
        load_data(_folder_cfg(tmp_path))
    with caplog.at_level(logging.WARNING):
        data = load_data(_folder_cfg(tmp_path, "data.image_folder.skip_unreadable=true"))
    assert "skipped 1 unreadable file(s)" in caplog.text and data.stored("train").shape[0] + 2 == 5
    with pytest.raises(ConfigError, match="channels = 2 must be 1 \\(grey\\) or 3 \\(colour\\)"):
        _folder_cfg(tmp_path, "data.image_folder.channels=2")
    (tmp_path / "valid").mkdir()
    with pytest.raises(ValueError, match="has valid/ but no train/ folder"):
        load_data(_folder_cfg(tmp_path))


def _cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    return np.concatenate([labels[:, None], pixels], 1).tobytes(), labels, pixels


def _cifar_files(root, n=4):
    files = {f"data_batch_{i}.bin": _cifar_batch(n, i) for i in range(1, 6)}
    files["test_batch.bin"] = _cifar_batch(n, 9)
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name, (raw, _, _) in files.items():
        (folder / name).write_bytes(raw)
    return files


def test_cifar_binary_batches_read_in_channel_row_column_order(tmp_path):
    files = _cifar_files(tmp_path)
    cfg = load_config(None, ["data.name=cifar10", f"data.root={tmp_path}", "data.valid_size=3"]).data
    data = load_data(cfg)
    assert data.image_shape == (3, 32, 32) and data.data_dim == 3072
    assert [data.stored(s).shape[0] for s in ("train", "valid", "test")] == [17, 3, 4]
    _, labels, pixels = files["test_batch.bin"]
    assert torch.equal(data.stored("test"), torch.from_numpy(pixels)) and data.test_labels.tolist() == labels.tolist()
    _, _, first = files["data_batch_1.bin"]
    assert torch.equal(data.stored("train")[0], torch.from_numpy(first[0]))
    train_labels = np.concatenate([files[f"data_batch_{i}.bin"][1] for i in range(1, 6)])[:-3]
    assert images._cifar10(cfg).train_labels.tolist() == train_labels.tolist()  # kept for data.labels


def test_cifar_archive_truncation_and_download(tmp_path):
    files = _cifar_files(tmp_path / "unpacked")
    archive = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, (raw, _, _) in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    target = download_cifar10(tmp_path / "fetched", url=archive.as_uri(), md5=md5)
    assert target.read_bytes() == archive.read_bytes()
    data = load_data(
        load_config(None, ["data.name=cifar10", f"data.root={tmp_path / 'fetched'}", "data.valid_size=2"]).data
    )
    assert data.stored("test").shape == (4, 3072)
    with pytest.raises(ValueError, match="does not match the published"):
        download_cifar10(tmp_path / "wrong", url=archive.as_uri(), md5="0" * 32)
    assert not list((tmp_path / "wrong").iterdir())  # nothing half-downloaded is kept
    raw = files["test_batch.bin"][0]
    with pytest.raises(ValueError, match=rf"{len(raw) - 5} bytes is not a whole number of {CIFAR_RECORD}-byte"):
        read_cifar_batch(raw[:-5], "test_batch.bin")
    with pytest.raises(ValueError, match="neither cifar-10-batches-bin/ nor cifar-10-binary.tar.gz"):
        load_data(load_config(None, ["data.name=cifar10", f"data.root={tmp_path / 'empty'}"]).data)


def test_bits_per_dimension_against_a_hand_computation():
    grey = torch.tensor([[0.0, 0.5, 1.0, 0.2]])
    out = with_bits_per_dim({"nll": Estimate(100.0, 2.0, 10)}, grey)
    assert out["nll_bits_per_dim"].mean == pytest.approx(100 / (4 * math.log(2)), rel=1e-15)
    assert out["nll_bits_per_dim"].se == pytest.approx(2 / (4 * math.log(2)), rel=1e-15)
    assert "nll_bits_per_dim" not in with_bits_per_dim({"nll": Estimate(1.0, 0.1, 1)}, grey.round())  # binary


def test_a_colour_folder_trains_with_a_conv_net_reports_bits_per_dim_and_draws_in_colour(tmp_path):
    for label, cls in enumerate(("a", "b")):
        for i in range(12):
            _png(tmp_path / "images" / cls / f"{i}.png", colour=True, seed=10 * label + i)
    cfg = load_config(
        None,
        [
            "data.name=image_folder",
            f"data.root={tmp_path / 'images'}",
            "data.image_folder.channels=3",
            "data.image_folder.image_size=8",
            "model.network=conv",
            "model.conv.channels=[4,8]",
            "model.conv.features=16",
            "model.likelihood=discretized_logistic",
            "model.latent_dim=2",
            "train.epochs=1",
            "train.batch_size=8",
            "eval.iwae_k=3",
            "train.device=cpu",
        ],
    )
    summary = fit(cfg, tmp_path / "run", progress=False)
    final = summary["final"]
    assert final["test_nll_bits_per_dim"]["mean"] == pytest.approx(final["test_nll"]["mean"] / (192 * math.log(2)))
    for name in ("reconstructions", "samples", "latents"):
        rgb = np.asarray(Image.open(tmp_path / "run" / "figures" / f"{name}.png").convert("RGB")).astype(int)
        assert rgb.size and (name == "latents" or np.abs(rgb[..., 0] - rgb[..., 2]).max() > 30), name  # not grey
    vae = build_vae(cfg.model, 192, (3, 8, 8))
    assert make_figures(tmp_path / "again", vae, load_data(cfg.data))


def test_image_grid_places_colour_pixels():
    images = torch.zeros(2, 3 * 2 * 2)
    images[1, 0:4] = 1.0  # image 1, red channel
    grid = image_grid(images, (3, 2, 2), nrow=1)
    assert grid.shape == (2, 4, 3) and grid[:, 2:, 0].min() == 1 and grid[:, :2].max() == 0 and grid[..., 1:].max() == 0


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    """PIL's own I;16 -> L conversion clips every value above 255 to white; 16-bit levels v become round(v / 257)."""
    levels = np.arange(36, dtype=np.uint16).reshape(6, 6) * 1872  # 0 .. 65520
    for i in range(3):
        Image.fromarray(levels).save(tmp_path / f"{i}.png")
    assert Image.open(tmp_path / "0.png").mode == "I;16"
    data = load_data(_folder_cfg(tmp_path, "data.image_folder.image_size=6"))
    expected = np.round(levels / 257).astype(np.uint8)
    assert np.array_equal(data.stored("test")[0].reshape(6, 6).numpy(), expected)
    img, _ = open_image(tmp_path / "0.png", channels=3)  # grey to colour: the same levels in every channel
    assert img.mode == "RGB" and np.array_equal(np.asarray(img)[..., 1], expected)


def test_transparent_pixels_are_composited_onto_black_with_one_warning(tmp_path, caplog):
    alpha = np.tile(np.array([0, 85, 170, 255], np.uint8), (4, 1))
    grey = np.full((4, 4), 200, np.uint8)
    Image.fromarray(np.stack([grey, alpha], -1), "LA").save(tmp_path / "la.png")
    Image.fromarray(np.stack([grey, grey, grey, alpha], -1), "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.stack([grey, grey, grey, np.full_like(grey, 255)], -1), "RGBA").save(tmp_path / "opaque.png")
    palette = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    palette.putpalette([255, 255, 255, 0, 0, 0])
    palette.save(tmp_path / "p.png", transparency=0)  # white, but transparent
    for name in ("la", "rgba"):
        img, had_alpha = open_image(tmp_path / f"{name}.png", channels=1)
        assert had_alpha and np.asarray(img)[0].tolist() == [0, 67, 133, 200], name  # 200 * alpha / 255
    img, had_alpha = open_image(tmp_path / "la.png", channels=1, background=255)  # white paper
    assert np.asarray(img)[0].tolist() == [255, 237, 218, 200]
    img, had_alpha = open_image(tmp_path / "p.png", channels=3)
    assert had_alpha and np.asarray(img).max() == 0
    assert open_image(tmp_path / "opaque.png", channels=1)[1] is False  # an alpha channel with nothing transparent
    with caplog.at_level(logging.WARNING):
        load_data(_folder_cfg(tmp_path, "data.image_folder.image_size=4"))
    warnings = [r.getMessage() for r in caplog.records if "transparent" in r.getMessage()]
    assert len(warnings) == 1 and "3 image(s) under" in warnings[0] and "composited onto black" in warnings[0]


def test_a_decompression_bomb_is_refused_by_name_or_skipped_and_counted(tmp_path, caplog):
    for i in range(4):
        _png(tmp_path / f"{i}.png", seed=i)
    bomb = png_header_only(tmp_path / "bomb.png", 50_000, 50_000)
    assert bomb.stat().st_size < 200
    with pytest.raises(Image.DecompressionBombError):  # what PIL alone does: not an OSError
        Image.open(bomb)
    with pytest.raises(ValueError) as info:
        load_data(_folder_cfg(tmp_path))
    message = str(info.value)
    assert f"{bomb} declares 2,500,000,000 pixels, more than PIL's limit of {Image.MAX_IMAGE_PIXELS:,}" in message
    assert "skip_unreadable=true" in message
    with caplog.at_level(logging.WARNING):
        data = load_data(_folder_cfg(tmp_path, "data.image_folder.skip_unreadable=true"))
    assert "skipped 1 unreadable file(s)" in caplog.text and "bomb.png" in caplog.text
    assert sum(data.stored(s).shape[0] for s in ("train", "valid", "test")) == 4


def test_image_sizes_are_checked_before_anything_is_read(tmp_path, monkeypatch):
    with pytest.raises(
        ConfigError,
        match=r"data.image_folder: image_size = 20000 must be between 1 and 1024 "
        r"\(pyro_vae.config.MAX_IMAGE_SIZE\)",
    ):
        _folder_cfg(tmp_path, "data.image_folder.image_size=20000")
    for i in range(3):
        _png(tmp_path / f"{i}.png", seed=i)
    monkeypatch.setattr(images, "MAX_DATA_BYTES", 4 * 3 * 3 * 1000**2 - 1)  # three 1000 x 1000 colour images: too many
    monkeypatch.setattr(images, "_read_all", None)  # nothing may be read
    with pytest.raises(
        ValueError,
        match=r"3 images of 3 x 1000 x 1000 pixels are 36,000,000 bytes as float32, "
        r"above the limit of 35,999,999 bytes",
    ):
        load_data(_folder_cfg(tmp_path, "data.image_folder.image_size=1000", "data.image_folder.channels=3"))
