"""Load a data set by its ``[data]`` config: the set named ``data.name``, then ``data.subset``, then
``data.labels``."""

from __future__ import annotations

from pyro_vae.config import DataConfig
from pyro_vae.data.labels import apply_labels
from pyro_vae.data.splits import DATASETS, Splits


def load_data(cfg: DataConfig) -> Splits:
    """Load the data set named ``cfg.name`` (see :data:`~pyro_vae.data.splits.DATASETS`), apply
    ``cfg.subset``, then ``cfg.labels`` (:func:`~pyro_vae.data.labels.apply_labels`; after the
    subset, so that every labelled image is kept)."""
    return apply_labels(DATASETS.get(cfg.name)(cfg).subset(cfg.subset), cfg.labels, cfg.seed)
