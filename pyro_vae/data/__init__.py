"""Data: pixels in their stored form (:mod:`~pyro_vae.data.pixels`), the :class:`Splits` contract
and the registry of sets (:mod:`~pyro_vae.data.splits`), binarized MNIST's files
(:mod:`~pyro_vae.data.binarized_mnist`), the other sets (:mod:`~pyro_vae.data.sets`) and labels as
data (:mod:`~pyro_vae.data.labels`).
Importing this package registers every set but ``codes`` (the latent codes of a trained model,
:mod:`pyro_vae.runs.codes`, registered when :mod:`pyro_vae` is imported)."""

from pyro_vae.data import images, sets  # noqa: F401  (register mnist, fashion_mnist, array, image_folder, cifar10)
from pyro_vae.data.binarized_mnist import (  # noqa: F401
    AMAT_MD5,
    AMAT_MEANS,
    AMAT_ROWS,
    AMAT_URL,
    EMBEDDED_FILE,
    EMBEDDED_SHA256,
    _read_idx_labels,
    content_sha256,
    download_binarized_mnist,
    embedded_path,
    find_amat,
    load_embedded,
    pack_binarized_mnist,
    read_amat,
)
from pyro_vae.data.labels import apply_labels  # noqa: F401
from pyro_vae.data.load import load_data  # noqa: F401
from pyro_vae.data.splits import DATASETS, SPLITS, Splits, check_images, make_splits  # noqa: F401
