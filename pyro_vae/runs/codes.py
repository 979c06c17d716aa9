"""The latent codes of a trained model as a data set (``data.name = "codes"``): Kingma et al.'s
M1 + M2, a semi-supervised model (M2) trained on the codes of an unsupervised one (M1).

``data.root`` names a run folder (its best checkpoint) or an exported model (:func:`open_model`).
Each split of that model's data becomes the means of q for every image, every latent layer's
concatenated (top first, as :meth:`~pyro_vae.model.Structure.encode` gives them), and each
dimension is mapped into (0, 1) by the normal CDF of its standardisation on the training split,
Phi((m - mean) / std): the :class:`~pyro_vae.data.splits.Splits` contract holds values in [0, 1],
and the map is monotone per dimension, so nothing a classifier could use is lost. The labels are
the set's own (all of them: ``data.labels`` of the new run chooses which it sees, under the protocol
they allow, :mod:`pyro_vae.data.labels`), and the model's ``data.subset`` is kept. Figures draw rows
of codes (data, reconstructions, samples) as the model's pictures of them: the map undone, each
layer's part decoded by the model (:meth:`~pyro_vae.data.splits.Splits.draw`).

The model must have been trained without labels (``data.labels = 0``): the labels it saw would
reach the new model through its codes. Reference: Kingma, Rezende, Mohamed & Welling,
*Semi-supervised learning with deep generative models*, NeurIPS 2014 (M1 + M2: 3.33% test error
with 100 MNIST labels).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from pyro_vae.config import ConfigError, DataConfig
from pyro_vae.data.pixels import blocks
from pyro_vae.data.splits import DATASETS, SPLITS, Splits
from pyro_vae.runs.folder import offline
from pyro_vae.runs.trained import open_model

_OPENING: set[Path] = set()  # folders whose codes are being computed (a cycle of codes sets is an error)


@DATASETS.register("codes")
def codes(cfg: DataConfig) -> Splits:
    """The codes of the trained model in ``cfg.root`` (see the module's docstring)."""
    if not cfg.root or not Path(cfg.root).is_dir():
        raise ValueError(
            f"data.root = {cfg.root!r}: the codes data set needs a trained model, a run folder or an "
            "exported model folder (for M1 + M2: a model trained without labels, e.g. "
            "pyro-vae train --out runs/m1; then --set data.name=codes --set data.root=runs/m1)"
        )
    folder = Path(cfg.root).resolve()
    if folder in _OPENING:
        raise ValueError(f"data.root = {cfg.root!r}: the model's own data are the codes of itself (a cycle)")
    _OPENING.add(folder)
    try:
        trained = open_model(folder, device="cpu")
        m1 = trained.config.data
        if m1.labels:
            raise ConfigError(
                f"data.root = {cfg.root!r} was trained with data.labels = {m1.labels}: the labels it saw would "
                "reach this model through its codes. Use the codes of a model trained without labels "
                "(data.labels = 0)"
            )
        images = DATASETS.get(m1.name)(offline(m1)).subset(m1.subset)  # every label the set has
    finally:
        _OPENING.discard(folder)
    vae = trained.vae
    with torch.random.fork_rng(devices=[]):  # guides without a closed-form mean are sampled: seeded
        torch.manual_seed(cfg.seed)
        parts = {s: _means(vae, getattr(images, s)) for s in SPLITS}
    means = {s: m for s, (m, _) in parts.items()}
    layers = parts["test"][1]
    centre, spread = means["train"].mean(0), means["train"].std(0).clamp_min(1e-8)
    split = {s: (0.5 * torch.erfc(-(m - centre) / (spread * math.sqrt(2)))).float() for s, m in means.items()}

    @torch.no_grad()
    def render(rows: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """Rows of codes as the model's pictures: the normal CDF undone, each layer decoded."""
        u = rows.detach().cpu().double().clamp(1e-7, 1 - 1e-7)
        m = (centre + spread * math.sqrt(2) * torch.erfinv(2 * u - 1)).float()
        return vae.decode(dict(zip(layers, m.split(list(layers.values()), dim=1)))), images.image_shape

    return Splits(
        *(split[s] for s in SPLITS),
        (1, split["train"].shape[1]),
        images.test_labels,
        source=f"codes of {folder} ({trained.which or 'exported'} weights; its data: {images.source})",
        train_labels=images.train_labels,
        render=render,
    )


@torch.no_grad()
def _means(vae, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, int]]:
    """Every layer's mean of q, concatenated (top first), for the images ``x``, in float64; and the
    size of each layer, by name."""
    parts, layers = [], {}
    for batch in blocks(x, 1000, torch.device("cpu")):
        codes = vae.encode(batch)
        layers = {name: loc.shape[1] for name, (loc, _) in codes.items()}
        parts.append(torch.cat([loc.double() for loc, _ in codes.values()], dim=1))
    return torch.cat(parts), layers
