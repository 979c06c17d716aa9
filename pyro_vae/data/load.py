"""Load a data set by its ``[data]`` config: the set named ``data.name``, then ``data.subset``, then
``data.labels``."""

from __future__ import annotations

from pyro_vae.config import ConfigError, DataConfig
from pyro_vae.data.labels import apply_labels
from pyro_vae.data.splits import DATASETS, Splits


def load_data(cfg: DataConfig) -> Splits:
    """Load the data set named ``cfg.name`` (see :data:`~pyro_vae.data.splits.DATASETS`), apply
    ``cfg.subset``, then ``cfg.labels`` (:func:`~pyro_vae.data.labels.apply_labels`; after the
    subset, so that every labelled image is kept)."""
    return apply_labels(DATASETS.get(cfg.name)(cfg).subset(cfg.subset), cfg.labels, cfg.seed)


def check_binarize(cfg: DataConfig) -> None:
    """``ConfigError`` for ``data.binarize`` other than ``none`` on a set that does not binarize
    (one whose loader has no true ``binarizes`` attribute, as ``mnist`` and ``fashion_mnist`` have;
    a plugin's data set sets it to say it honours the setting). Checked where a new run starts:
    runs made before the check, with the setting ignored, still open and resume."""
    if cfg.binarize != "none" and not getattr(DATASETS.get(cfg.name), "binarizes", False):
        binarizing = ", ".join(name for name in DATASETS.names() if getattr(DATASETS.get(name), "binarizes", False))
        raise ConfigError(
            f"data.binarize = {cfg.binarize!r} does not apply to data.name = {cfg.name!r}: only the grey-level "
            f"sets ({binarizing}) are binarized; set data.binarize=none"
        )
