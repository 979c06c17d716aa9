"""Data loaders: the embedded set, .amat files (and their download), torchvision MNIST,
user arrays, and the errors bad data gets."""

from __future__ import annotations

import gzip
import shutil
import struct
import zipfile

import numpy as np
import pytest
import torch

from pyro_vae import data as D
from pyro_vae.config import ConfigError, DataConfig, ModelConfig
from pyro_vae.data import pixels as P
from pyro_vae.data.load import check_binarize
from pyro_vae.model import build_vae
from pyro_vae.training import loop as T
from pyro_vae.training.checks import check_data
from tests.helpers import ROOT, run_as_script, small_cfg


@pytest.fixture(scope="module")
def embedded():
    return D.load_embedded()


def test_embedded_set_has_the_canonical_shapes_means_and_labels(embedded):
    for split, rows in D.AMAT_ROWS.items():
        assert embedded[split].shape == (rows, 784)
        assert set(np.unique(embedded[split])) == {0, 1}
        assert abs(embedded[split].mean() - D.AMAT_MEANS[split]) < 5e-5
    labels = embedded["test_labels"]
    assert (np.diff(labels.astype(int)) >= 0).all() and np.bincount(labels).tolist()[:2] == [980, 1135]


def test_embedded_set_equals_the_amat_files(embedded, shared_data):
    for split in D.SPLITS:
        assert np.array_equal(
            D.read_amat(shared_data / "binarized_mnist" / f"binarized_mnist_{split}.amat.gz"), embedded[split]
        ), split


def test_test_labels_match_the_grey_images(embedded, shared_data):
    """Each binarized test image is far likelier under its own grey image than under others."""
    raw = gzip.open(shared_data / "mnist" / "t10k-images-idx3-ubyte.gz").read()
    grey = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 784) / 255
    labels = D._read_idx_labels(shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz")
    order = np.argsort(labels, kind="stable")  # the binarized test split is t10k sorted by label
    p = np.clip(grey[order[:200]], 1e-3, 1 - 1e-3)
    b = embedded["test"][:200]
    own = (b * np.log(p) + (1 - b) * np.log(1 - p)).sum(1)
    other = (b * np.log(np.roll(p, 1, 0)) + (1 - b) * np.log(1 - np.roll(p, 1, 0))).sum(1)
    assert (own > other + 50).all()
    assert np.array_equal(np.sort(labels, kind="stable"), embedded["test_labels"])


def test_pack_script_rebuilds_the_embedded_file(tmp_path, shared_data, monkeypatch, capsys):
    out, script = tmp_path / "packed.npz", ROOT / "scripts" / "pack_binarized_mnist.py"
    code = run_as_script(
        monkeypatch,
        script,
        "--out",
        str(out),
        "--amat-dir",
        str(shared_data / "binarized_mnist"),
        "--labels",
        str(shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz"),
    )
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err
    assert D.EMBEDDED_SHA256 in printed.out
    assert out.stat().st_size < 2.5e6
    rebuilt = D.load_embedded(out)
    assert all(np.array_equal(rebuilt[k], D.load_embedded()[k]) for k in rebuilt)


def test_pack_rejects_a_checksum_mismatch(tmp_path, shared_data):
    for split in D.SPLITS:
        shutil.copy(shared_data / "binarized_mnist" / f"binarized_mnist_{split}.amat.gz", tmp_path)
    lines = gzip.open(tmp_path / "binarized_mnist_valid.amat.gz").read().split(b"\n")
    lines[0] = lines[0].replace(b"0", b"1", 1)
    (tmp_path / "binarized_mnist_valid.amat.gz").unlink()
    (tmp_path / "binarized_mnist_valid.amat").write_bytes(b"\n".join(lines))
    with pytest.raises(ValueError, match="md5 .* does not match"):
        D.pack_binarized_mnist(tmp_path, shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz", tmp_path / "o.npz")


def test_corrupt_embedded_file_is_reported(tmp_path):
    with np.load(D.embedded_path()) as npz:
        arrays = {k: npz[k].copy() for k in npz.files}
    arrays["train"][0, 0] ^= 1
    np.savez_compressed(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="checksum mismatch"):
        D.load_embedded(tmp_path / "bad.npz")
    (tmp_path / "trunc.npz").write_bytes(D.embedded_path().read_bytes()[:1000])
    with pytest.raises(ValueError, match="cannot read"):
        D.load_embedded(tmp_path / "trunc.npz")


def _write_small_amat(folder, shared_data, rows=None):
    """Uncompressed .amat files: the full canonical files (content checks need them)."""
    for split in D.SPLITS:
        raw = gzip.open(shared_data / "binarized_mnist" / f"binarized_mnist_{split}.amat.gz").read()
        (folder / f"binarized_mnist_{split}.amat").write_bytes(raw)


def test_amat_directory_and_download(tmp_path, shared_data):
    server = tmp_path / "server"
    server.mkdir()
    _write_small_amat(server, shared_data)
    target = tmp_path / "downloaded"
    # a file:// URL exercises the same urllib code path as the publisher's http:// one
    D.download_binarized_mnist(target, base_url=server.as_uri())
    assert sorted(p.name for p in target.iterdir()) == [f"binarized_mnist_{s}.amat" for s in ("test", "train", "valid")]
    splits = D.load_data(DataConfig(root=str(target)))
    assert splits.train.shape == (50000, 784) and splits.test_labels.shape == (10000,)
    assert torch.equal(splits.valid, D.load_data(DataConfig()).valid)


def test_download_rejects_wrong_content_and_leaves_nothing(tmp_path):
    server = tmp_path / "server"
    server.mkdir()
    (server / "binarized_mnist_train.amat").write_text(("0 " * 783 + "1\n") * 10)
    with pytest.raises(ValueError, match="expected 50000 images"):
        D.download_binarized_mnist(tmp_path / "dl", base_url=server.as_uri())
    assert list((tmp_path / "dl").iterdir()) == []
    with pytest.raises(ValueError, match="could not download"):
        D.download_binarized_mnist(tmp_path / "dl2", base_url=(tmp_path / "nowhere").as_uri())


def test_missing_amat_files_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="data.download=true"):
        D.load_data(DataConfig(root=str(tmp_path)))


def test_bad_amat_lines_are_reported(tmp_path):
    (tmp_path / "short.amat").write_text("0 1 0\n")
    with pytest.raises(ValueError, match="line 1 has 3 values"):
        D.read_amat(tmp_path / "short.amat")
    (tmp_path / "grey.amat").write_text(" ".join(["0.5"] * 784) + "\n")
    with pytest.raises(ValueError, match="must be 0 or 1"):
        D.read_amat(tmp_path / "grey.amat")


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
@pytest.mark.parametrize("binarize", ["none", "static", "dynamic"])
def test_torchvision_sets(mnist_root, binarize, name):
    cfg = DataConfig(name=name, root=str(mnist_root), binarize=binarize, valid_size=100)
    splits = D.load_data(cfg)
    assert splits.train.shape == (200, 784) and splits.valid.shape == (100, 784) and splits.test.shape == (10000, 784)
    assert splits.test_labels.shape == (10000,)
    assert splits.dynamic_binarization == (binarize == "dynamic")
    assert P.is_binary(splits.test) == (binarize != "none")
    assert P.is_binary(splits.train) == (binarize == "static")
    if binarize == "static":  # seeded: the same binarization every time
        assert torch.equal(splits.train, D.load_data(cfg).train)
    vae = build_vae(ModelConfig(latent_dim=2, hidden=(8,)), 784)
    if binarize == "none":
        with pytest.raises(ValueError, match="binarize grey-level images"):
            check_data(vae, splits)
    else:
        check_data(vae, splits)


@pytest.mark.parametrize("name", ["binarized_mnist", "array", "cifar10", "image_folder"])
def test_binarize_on_a_set_that_does_not_binarize_is_refused_for_a_new_run(name, tmp_path):
    with pytest.raises(
        ConfigError,
        match=f"data.binarize = 'dynamic' does not apply to data.name = '{name}': only "
        r"the grey-level sets \(fashion_mnist, mnist\) are binarized; set data.binarize=none",
    ):
        check_binarize(DataConfig(name=name, root="/nonexistent", binarize="dynamic"))  # before any file is read


def test_a_new_run_is_refused_but_a_run_made_before_the_check_still_resumes(tmp_path, monkeypatch):
    cfg = small_cfg("data.binarize=static")
    with pytest.raises(ConfigError, match="does not apply to data.name = 'binarized_mnist'"):
        T.fit(cfg, tmp_path / "new", progress=False, figures=False)
    assert not (tmp_path / "new").exists()  # refused before the folder was made
    monkeypatch.setattr(T, "check_binarize", lambda cfg: None)  # as a version before the check made it
    T.fit(small_cfg("data.binarize=static", "train.epochs=1"), tmp_path / "old", progress=False, figures=False)
    monkeypatch.undo()
    T.fit(cfg, tmp_path / "old", resume=True, progress=False, figures=False)
    assert len((tmp_path / "old" / "metrics.jsonl").read_text().splitlines()) == 2


def test_torchvision_mnist_missing_names_the_fix(tmp_path):
    with pytest.raises(ValueError, match="data.download=true"):
        D.load_data(DataConfig(name="mnist", root=str(tmp_path)))


def test_user_arrays(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((50, 8, 8)).astype(np.float32)
    np.save(tmp_path / "a.npy", images)
    splits = D.load_data(DataConfig(name="array", root=str(tmp_path / "a.npy")))
    assert splits.image_shape == (8, 8) and splits.data_dim == 64
    assert splits.train.shape[0] + splits.valid.shape[0] + splits.test.shape[0] == 50
    np.savez(
        tmp_path / "b.npz",
        train=images[:30].reshape(30, -1),
        valid=images[30:40].reshape(10, -1),
        test=images[40:].reshape(10, -1),
        test_labels=np.arange(10),
    )
    splits = D.load_data(DataConfig(name="array", root=str(tmp_path / "b.npz")))
    assert splits.train.shape == (30, 64) and splits.test_labels.tolist() == list(range(10))


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((4, 3, 3, 3)), r"shape \(N, D\) or \(N, H, W\)"),
        (np.zeros((10, 0)), "empty"),
        (np.full((10, 5), 2.0), r"values must lie in \[0, 1\].*max 2"),
        (np.full((10, 5), -0.5), r"values must lie in \[0, 1\].*min -0.5"),
        (np.where(np.eye(10, 5) > 0, np.nan, 0.5), "NaN or infinite .*first at image 0, pixel 0"),
    ],
)
def test_bad_arrays_get_clear_errors(tmp_path, array, message):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(ValueError, match=message) as info:
        D.load_data(DataConfig(name="array", root=str(path)))
    assert str(path) in str(info.value)


def test_bad_npz_layout_and_empty_split(tmp_path):
    np.savez(tmp_path / "two.npz", a=np.zeros((5, 4)), b=np.zeros((5, 4)))
    with pytest.raises(ValueError, match="either one array or the arrays train, valid and test"):
        D.load_data(DataConfig(name="array", root=str(tmp_path / "two.npz")))
    np.savez(tmp_path / "e.npz", train=np.zeros((5, 4)), valid=np.zeros((0, 4)), test=np.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"\[valid\]: the split is empty"):
        D.load_data(DataConfig(name="array", root=str(tmp_path / "e.npz")))
    with pytest.raises(ValueError, match="existing .npy or .npz"):
        D.load_data(DataConfig(name="array", root=str(tmp_path / "missing.npy")))


def test_non_binary_data_under_bernoulli_is_rejected():
    splits = D.Splits(*(torch.full((4, 6), 0.5) for _ in range(3)), image_shape=(2, 3), source="grey.npy")
    vae = build_vae(ModelConfig(latent_dim=2, hidden=(4,)), 6)
    with pytest.raises(ValueError, match=r"grey.npy \[train\]: the bernoulli likelihood needs binary pixels"):
        check_data(vae, splits)


def test_subset_is_evenly_spaced_so_sorted_test_labels_stay_mixed():
    splits = D.load_data(DataConfig(subset=100))
    assert splits.train.shape == (100, 784) and splits.test.shape == (100, 784)
    assert sorted(set(splits.test_labels.tolist())) == list(range(10))


def test_eight_bit_images_are_stored_as_levels_and_decode_bit_for_bit():
    levels = torch.arange(256, dtype=torch.uint8).repeat(40, 1)  # every grey level, 40 rows
    grey = levels.float() / 255  # how the torchvision loaders scale 8-bit images
    binary = torch.bernoulli(torch.full((5000, 7), 0.3), generator=torch.Generator().manual_seed(0))
    for x in (grey, binary, grey.double()):
        stored = P.encode(x, rows=7)  # several blocks
        assert stored.dtype == torch.uint8, x.dtype
        assert torch.equal(P.decode(stored), x.float()) and P.decode(stored).dtype == torch.float32
    assert torch.equal(P.encode(grey), levels)
    assert P.encode(levels) is levels  # levels pass through


@pytest.mark.parametrize("where", [0, 4999])  # in the first block, in the last
def test_images_that_are_not_8_bit_stay_float32(where):
    x = torch.bernoulli(torch.full((5000, 7), 0.3), generator=torch.Generator().manual_seed(1))
    x[where, 3] = 0.5 + 2**-20  # one value between two grey levels
    stored = P.encode(x, rows=1000)
    assert stored.dtype == torch.float32 and torch.equal(stored, x) and P.decode(stored) is stored


def test_binarized_mnist_is_held_as_uint8_levels():
    splits = D.load_data(DataConfig())
    for split, rows in D.AMAT_ROWS.items():
        stored = splits.stored(split)
        assert stored.dtype == torch.uint8 and stored.shape == (rows, 784), split
        assert set(stored.unique().tolist()) == {0, 255}
    assert splits.train.dtype == torch.float32 and abs(splits.train.mean().item() - D.AMAT_MEANS["train"]) < 5e-5
    sub = splits.subset(10)
    assert sub.stored("test").dtype == torch.uint8 and torch.equal(sub.test, splits.test[P.evenly_spaced(10000, 10)])


def _npy_with_header(path, header: str, data: bytes = b"", version: int = 1):
    """An .npy file with the given header text (padded as numpy pads it) and ``data`` after it."""
    text = header.encode("latin1")
    prefix = 10 if version == 1 else 12
    text += b" " * (-(prefix + len(text) + 1) % 64) + b"\n"
    length = struct.pack("<H" if version == 1 else "<I", len(text))
    path.write_bytes(b"\x93NUMPY" + bytes([version, 0]) + length + text + data)
    return path


def _text_member_npz(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not an array")
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda p: np.save(p, np.zeros((10, 5), np.complex64)),
            r"holds complex numbers \(dtype complex64\); images must "
            "be numbers: bool, integer or floating point",
        ),
        (lambda p: np.save(p, np.array([["0.5"] * 5] * 10)), r"holds text \(dtype <U3\)"),
        (lambda p: np.save(p, np.array([[None] * 5] * 10, dtype=object), allow_pickle=True), "holds Python objects"),
        (lambda p: p.write_bytes(b""), r"is empty \(0 bytes\); data.root must be an .npy or .npz file"),
        (
            lambda p: _npy_with_header(
                p, "{'descr': '<f4', 'fortran_order': False, 'shape': (10, 5), }" + " " * 60_000, bytes(200), version=2
            ),
            r"is not a readable .npy array \(a header of 60,\d+ bytes, more than numpy reads safely \(10,000\)\)",
        ),
        (
            lambda p: _npy_with_header(
                p, "{'descr': '<f4', 'fortran_order': False, 'shape': (10000000000, 784), }", bytes(200)
            ),
            r"its header declares shape \(10000000000, 784\) of float32 \(31,360,000,000,000 bytes\), "
            "but the file holds 200 bytes after the header: it is truncated or damaged",
        ),
        (
            lambda p: np.savez(p, train=np.zeros((3, 4)), valid=np.array([["x"] * 4] * 3), test=np.zeros((3, 4))),
            r"bad.npz \[valid\] holds text \(dtype <U1\)",
        ),
        (_text_member_npz, "holds 'notes.txt', which is not an .npy array"),
    ],
)
def test_array_files_are_checked_before_numpy_reads_them(tmp_path, monkeypatch, make, message):
    """Text, objects, complex numbers, an empty file, a huge header, a header declaring more than the
    file holds: each refused with the file named, before numpy allocates or parses anything."""
    path = tmp_path / ("bad.npz" if "npz" in message or "notes" in message else "bad.npy")
    make(path)
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("numpy read a file the checks should have refused"))
    with pytest.raises(ValueError, match=message) as info:
        D.load_data(DataConfig(name="array", root=str(path)))
    assert str(path) in str(info.value) and "Traceback" not in str(info.value)


def test_arrays_of_another_byte_order_load_and_non_numbers_are_refused_from_python(tmp_path):
    images = np.random.default_rng(0).random((20, 6)).astype(">f4")  # big-endian: torch takes native order only
    np.save(tmp_path / "be.npy", images)
    splits = D.load_data(DataConfig(name="array", root=str(tmp_path / "be.npy")))
    assert splits.data_dim == 6 and splits.train.dtype == torch.float32
    with pytest.raises(
        ValueError,
        match=r"mine: images must be numbers \(bool, integer or floating point\), got an "
        "array of dtype <U1",
    ):
        D.check_images(np.array([["a", "b"]]), "mine")
    with pytest.raises(ValueError, match="mine: images must be real numbers, got a tensor of dtype torch.complex64"):
        D.check_images(torch.zeros(2, 3, dtype=torch.complex64), "mine")


def test_arrays_above_the_data_limit_are_refused_from_their_headers(tmp_path, monkeypatch):
    np.save(tmp_path / "a.npy", np.zeros((100, 10), np.uint8))  # 1,000 values: 4,000 bytes as float32
    monkeypatch.setattr(D.sets, "MAX_DATA_BYTES", 3999)
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("numpy read a file the checks should have refused"))
    with pytest.raises(
        ValueError,
        match=r"a.npy holds 1,000 values, 4,000 bytes as float32, above the limit of 3,999 "
        r"bytes \(pyro_vae.config.MAX_DATA_BYTES\)",
    ):
        D.load_data(DataConfig(name="array", root=str(tmp_path / "a.npy")))
