"""Image sets: a folder of one's own pictures, and CIFAR-10 from its binary release.

- ``image_folder``: every PNG/JPEG/BMP/GIF/WebP file under ``data.root`` (recursively), resized and
  centre-cropped to ``data.image_folder.image_size`` squared, grey or colour
  (``data.image_folder.channels`` = 1 or 3). Sub-folders ``train/``, ``valid/``, ``test/`` are the
  splits when present (without ``valid/``, a seeded tenth of ``train/`` is held out); otherwise a
  seeded 80/10/10 split. When every file sits in a class sub-folder, the folder names, sorted, are
  the labels (of every split). Held in memory as uint8 levels like every set. Every file is opened by
  :func:`open_image` (PIL's decompression-bomb limit, 16-bit grey scaled to 8 bits, transparent
  pixels composited onto black), as are the files the latent commands read.
- ``cifar10``: 32 x 32 colour, read from the **binary** release (``cifar-10-binary.tar.gz``, or its
  unpacked ``cifar-10-batches-bin/``), records of one label byte and 3,072 pixel bytes. Never the
  pickled "python version": unpickling a downloaded file can run code. ``data.download = true``
  fetches the archive (md5 checked) into ``data.root``. The last ``data.valid_size`` training images
  are the validation split. The labels of the training and test splits are kept.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pyro_vae.config import MAX_DATA_BYTES, MAX_IMAGE_SIZE, DataConfig
from pyro_vae.data.download import fetch
from pyro_vae.data.splits import DATASETS, SPLITS, Splits, make_splits

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"  # of cifar-10-binary.tar.gz, as its authors publish it
CIFAR_ARCHIVE, CIFAR_FOLDER = "cifar-10-binary.tar.gz", "cifar-10-batches-bin"
CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST = "test_batch.bin"
CIFAR_RECORD = 1 + 3 * 32 * 32


@dataclass(frozen=True)
class ImageFolderSettings:
    image_size: int = 28  # images are resized and centre-cropped to image_size x image_size
    channels: int = 1  # 1: grey (luminance), 3: colour (RGB)
    skip_unreadable: bool = False  # skip files that cannot be read (and say how many), instead of stopping

    def __post_init__(self) -> None:
        if not 1 <= self.image_size <= MAX_IMAGE_SIZE:
            raise ValueError(
                f"image_size = {self.image_size} must be between 1 and {MAX_IMAGE_SIZE} "
                "(pyro_vae.config.MAX_IMAGE_SIZE)"
            )
        if self.channels not in (1, 3):
            raise ValueError(f"channels = {self.channels} must be 1 (grey) or 3 (colour)")


def _image_folder(cfg: DataConfig) -> Splits:
    settings = ImageFolderSettings(**cfg.settings.get("image_folder", {}))
    root = Path(cfg.root)
    if not cfg.root or not root.is_dir():
        raise ValueError(f"data.root = {cfg.root!r}: set it to a folder of images for data.name=image_folder")
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if split_dirs and "train" not in split_dirs:
        raise ValueError(f"{root} has {', '.join(f'{s}/' for s in split_dirs)} but no train/ folder")
    files = {s: _image_files(d) for s, d in split_dirs.items()} if split_dirs else {"all": _image_files(root)}
    if not any(files.values()):
        raise ValueError(
            f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) found, recursively; "
            "put your pictures there (in class sub-folders for labels)"
        )
    classes = _classes(root, split_dirs, files)
    rng = np.random.default_rng(cfg.seed)
    if not split_dirs:
        order = rng.permutation(len(files["all"]))
        everything = [files["all"][i] for i in order]
        if len(everything) < 3:
            raise ValueError(f"{root}: {len(everything)} image(s); a train/valid/test split needs at least 3")
        n_hold = max(1, len(everything) // 10)
        files = {
            "train": everything[: -2 * n_hold],
            "valid": everything[-2 * n_hold : -n_hold],
            "test": everything[-n_hold:],
        }
    elif "valid" not in files:
        order = rng.permutation(len(files["train"]))
        n_hold = max(1, len(order) // 10)
        train = [files["train"][i] for i in order]
        files["train"], files["valid"] = train[:-n_hold], train[-n_hold:]
    for split in SPLITS:
        if not files.get(split):
            raise ValueError(f"{root}: the {split} split has no images ({split}/ is empty or too few files)")
    n_files, pixels_each = sum(len(files[s]) for s in SPLITS), settings.channels * settings.image_size**2
    if 4 * n_files * pixels_each > MAX_DATA_BYTES:
        raise ValueError(
            f"{root}: {n_files:,} images of {settings.channels} x {settings.image_size} x "
            f"{settings.image_size} pixels are {4 * n_files * pixels_each:,} bytes as float32, above the "
            f"limit of {MAX_DATA_BYTES:,} bytes (pyro_vae.config.MAX_DATA_BYTES); lower "
            "data.image_folder.image_size, or use fewer files"
        )
    arrays, labels, skipped, transparent = {}, {}, [], []
    for split in SPLITS:
        pixels, kept = _read_all(files[split], settings, skipped, transparent)
        arrays[split] = pixels.reshape(len(pixels), -1).astype(np.float32) / 255
        if classes is not None and split != "valid":
            labels[split] = np.array([classes[_class_of(root, split_dirs, path)] for path in kept])
    if skipped:
        log.warning(
            "image_folder: skipped %d unreadable file(s) under %s, the first %s", len(skipped), root, skipped[0]
        )
    if transparent:
        log.warning(
            "image_folder: %d image(s) under %s have transparent pixels, composited onto black (the "
            "background of MNIST-style data); the first %s",
            len(transparent),
            root,
            transparent[0],
        )
    shape = (settings.channels, settings.image_size, settings.image_size)
    return make_splits(arrays, f"image folder {root}", shape, labels.get("test"), train_labels=labels.get("train"))


_image_folder.Settings = ImageFolderSettings
DATASETS.register("image_folder")(_image_folder)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_of(root: Path, split_dirs: dict, path: Path) -> str | None:
    base = next((d for d in split_dirs.values() if d in path.parents), root)
    parts = path.relative_to(base).parts
    return parts[0] if len(parts) > 1 else None


def _classes(root: Path, split_dirs: dict, files: dict) -> dict[str, int] | None:
    """Class folder name -> label, when every image sits in a class folder; else None."""
    names = [_class_of(root, split_dirs, p) for listed in files.values() for p in listed]
    if not names or any(n is None for n in names):
        return None
    return {name: i for i, name in enumerate(sorted(set(names)))}


def open_image(path: str | Path, channels: int, background: int = 0):
    """The image file ``path`` as a PIL image of mode ``L`` (``channels`` = 1) or ``RGB`` (3), and
    whether it had transparent pixels. The one reader of image files (image folders, the latent
    commands' files):

    - an image larger than PIL's ``Image.MAX_IMAGE_PIXELS`` (its decompression-bomb guard) is refused
      before its pixels are read;
    - 16-bit grey (PIL modes ``I;16*``, ``I``) is scaled to 8-bit levels, round(v / 257), instead of
      PIL's conversion, which clips every value above 255 to white;
    - transparent pixels (``LA``, ``RGBA``, a palette or grey image with a transparent colour) are
      composited onto ``background`` (0 black; 255 white for dark ink on white paper).

    :raises ValueError: naming the file, for a file that is not a readable image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # PIL only warns below twice its limit
            with Image.open(path) as img:
                img.load()
                return _as_mode(img, "L" if channels == 1 else "RGB", background, path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(declared[1]):,} pixels" if declared else "an image"
        raise ValueError(
            f"{path} declares {size}, more than PIL's limit of {Image.MAX_IMAGE_PIXELS:,} "
            "(Image.MAX_IMAGE_PIXELS, its guard against decompression bombs); it was not decoded: "
            "shrink it or remove it"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"{path} cannot be read as an image ({exc})") from None


def _as_mode(img, mode: str, background: int, path) -> tuple:
    from PIL import Image

    if img.mode.startswith("I;16") or img.mode == "I":
        levels = np.asarray(img).astype(np.int64)
        if levels.size and (levels.min() < 0 or levels.max() > 65535):
            raise ValueError(
                f"{img.mode} values from {levels.min()} to {levels.max()}: only 8- and 16-bit images "
                "are read; convert it to 8 bits"
            )
        img = Image.fromarray(((levels + 128) // 257).astype(np.uint8), "L")  # round(v / 257): 65535 -> 255
    alpha = img.mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in img.info
    if alpha:
        rgba = img.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] < 255:
            ground = Image.new("RGBA", rgba.size, (background, background, background, 255))
            return Image.alpha_composite(ground, rgba).convert(mode), True
        img = rgba
    return img.convert(mode), False


def _read_all(
    paths: list[Path], settings: ImageFolderSettings, skipped: list, transparent: list
) -> tuple[np.ndarray, list[Path]]:
    from PIL import Image, ImageOps

    size = settings.image_size
    images, kept = [], []
    for path in paths:
        try:
            img, had_alpha = open_image(path, settings.channels)
        except ValueError as exc:
            if settings.skip_unreadable:
                skipped.append(path)
                continue
            raise ValueError(
                f"{exc}; fix or remove it, or set data.image_folder.skip_unreadable=true to skip such files"
            ) from None
        if had_alpha:
            transparent.append(path)
        fitted = ImageOps.fit(img, (size, size), Image.Resampling.LANCZOS)
        array = np.asarray(fitted, dtype=np.uint8)
        images.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
        kept.append(path)
    if not images:
        raise ValueError(f"none of the {len(paths)} image files could be read (the first: {paths[0]})")
    return np.stack(images), kept


# ---------------------------------------------------------------- CIFAR-10, binary release


def read_cifar_batch(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3072) uint8 in (C, H, W) order and labels (N,) of one binary CIFAR-10 batch."""
    if not raw or len(raw) % CIFAR_RECORD:
        raise ValueError(
            f"{source}: {len(raw)} bytes is not a whole number of {CIFAR_RECORD}-byte CIFAR-10 "
            "records (one label byte, 3,072 pixel bytes): the file is truncated or not a CIFAR-10 "
            "binary batch"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise ValueError(f"{source}: label {labels.max()} is not a CIFAR-10 class (0..9); not a CIFAR-10 batch")
    return records[:, 1:], labels


def _cifar_batches(root: Path) -> dict[str, bytes]:
    folder, archive = root / CIFAR_FOLDER, root / CIFAR_ARCHIVE
    names = (*CIFAR_TRAIN, CIFAR_TEST)
    if folder.is_dir():
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise ValueError(f"{folder} lacks {', '.join(missing)}")
        return {n: (folder / n).read_bytes() for n in names}
    if archive.is_file():
        out = {}
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for member in tar.getmembers():
                    name = Path(member.name).name
                    if name in names and member.isfile():
                        out[name] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ValueError(f"{archive} cannot be read as a .tar.gz ({exc}): delete it and download again") from None
        missing = [n for n in names if n not in out]
        if missing:
            raise ValueError(f"{archive} lacks {', '.join(missing)}: not the CIFAR-10 binary release")
        return out
    raise ValueError(
        f"{root}: neither {CIFAR_FOLDER}/ nor {CIFAR_ARCHIVE}; set data.download=true to fetch "
        f"{CIFAR_URL} (the binary release), or point data.root at the folder holding it"
    )


def download_cifar10(root: str | Path, url: str = CIFAR_URL, md5: str = CIFAR_MD5) -> Path:
    """Fetch the binary release into ``root`` (unless present), checking its md5 before it is kept."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / CIFAR_ARCHIVE
    if target.is_file():
        return target

    def check(path: Path) -> None:
        digest = hashlib.md5(path.read_bytes()).hexdigest()
        if digest != md5:
            raise ValueError(f"{url}: md5 {digest} does not match the published {md5}; not kept")

    return fetch(url, target, check)


@DATASETS.register("cifar10")
def _cifar10(cfg: DataConfig) -> Splits:
    root = Path(cfg.root or Path.home() / ".cache" / "pyro_vae")
    if cfg.download and not (root / CIFAR_FOLDER).is_dir():
        download_cifar10(root)
    batches = _cifar_batches(root)
    train = [read_cifar_batch(batches[n], f"{root}/{n}") for n in CIFAR_TRAIN]
    x_train, y_train = (np.concatenate(parts) for parts in zip(*train))
    x_test, y_test = read_cifar_batch(batches[CIFAR_TEST], f"{root}/{CIFAR_TEST}")
    n_valid = cfg.valid_size
    if not 0 < n_valid < len(x_train):
        raise ValueError(f"data.valid_size = {n_valid} must be between 1 and {len(x_train) - 1} for cifar10")
    arrays = {"train": x_train[:-n_valid], "valid": x_train[-n_valid:], "test": x_test}
    arrays = {s: a.astype(np.float32) / 255 for s, a in arrays.items()}
    return make_splits(arrays, f"CIFAR-10 in {root}", (3, 32, 32), y_test, train_labels=y_train[:-n_valid])
