"""Load a data set by its ``[data]`` config: the set named ``data.name``, then ``data.subset``, then
``data.labels``."""

from __future__ import annotations

from pyro_vae.config import ConfigError, DataConfig
from pyro_vae.data.labels import apply_labels
from pyro_vae.data.splits import DATASETS, Splits


def load_data(cfg: DataConfig) -> Splits:
    """Load the data set named ``cfg.name`` (see :data:`~pyro_vae.data.splits.DATASETS`), apply
    ``cfg.subset``, then ``cfg.labels`` (:func:`~pyro_vae.data.labels.apply_labels`; after the
    subset, so that every labelled image is kept). ``data.binarize`` other than ``none`` is refused
    for a set that does not binarize (one whose loader has no true ``binarizes`` attribute)."""
    loader = DATASETS.get(cfg.name)
    if cfg.binarize != "none" and not getattr(loader, "binarizes", False):
        binarizing = ", ".join(name for name in DATASETS.names() if getattr(DATASETS.get(name), "binarizes", False))
        raise ConfigError(
            f"data.binarize = {cfg.binarize!r} does not apply to data.name = {cfg.name!r}: only the grey-level "
            f"sets ({binarizing}) are binarized; set data.binarize=none"
        )
    return apply_labels(loader(cfg).subset(cfg.subset), cfg.labels, cfg.seed)
