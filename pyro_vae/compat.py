"""Build-time checks: a combination of components that cannot work fails before training,
with a message naming the choice and the fix. Every rejection, and where it is raised:

=====================================================  ==============================================
choice                                                 error (:class:`~pyro_vae.config.ConfigError`)
=====================================================  ==============================================
``model.prior=vamp`` with a guide lacking a Gaussian   raised by :func:`~pyro_vae.model.build_vae`:
density at the pseudo-inputs (``iaf``)                 use ``model.guide=diag_normal``
``train.elbo=iwae`` with ``num_particles < 2``         :func:`~pyro_vae.elbos.build_elbo`: set
                                                       ``train.num_particles`` >= 2
an analytic-KL ELBO (``mean_field``,                   :func:`check_compatible`: no closed-form KL for
``jit_mean_field``) with ``train.kl_fallback=false``   the pair; allow the fallback or use ``trace``
and a prior/guide pair without a registered KL
a JIT ELBO with a model whose sites change between     :func:`check_compatible`: use the non-JIT ELBO
calls
data outside the likelihood's support                  :func:`check_data`: binarize, rescale or choose
                                                       another likelihood
=====================================================  ==============================================

``tests/test_components.py`` runs one SVI step for every prior x likelihood x guide x ELBO
combination these checks accept and asserts that each one they reject raises this error.
"""

from __future__ import annotations

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence

from .config import ConfigError, ExperimentConfig
from .data import Splits
from .elbos import ELBOS
from .model import VAE


def check_data(vae: VAE, data: Splits) -> None:
    """Reject data outside the likelihood's support (every split, before training starts)."""
    for split in ("train", "valid", "test"):
        if split == "train" and data.dynamic_binarization:
            continue  # binarized per batch
        try:
            vae.likelihood.validate(data.stored(split), f"{data.source} [{split}]")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def _structure(vae: VAE, x: torch.Tensor) -> list[tuple]:
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    return [
        (which, name, site["is_observed"], tuple(site["fn"].batch_shape), tuple(site["fn"].event_shape))
        for which, tr in (("guide", guide_tr), ("model", model_tr))
        for name, site in tr.nodes.items()
        if site["type"] == "sample" and not site_is_subsample(site)
    ]


def check_compatible(vae: VAE, cfg: ExperimentConfig, x: torch.Tensor) -> None:
    """Checks that need the built VAE and a batch ``x`` of training data (RNG left alone)."""
    elbo_cls = ELBOS.get(cfg.train.elbo)
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), torch.no_grad():
        if elbo_cls.analytic_kl and not cfg.train.kl_fallback:
            q, p = vae.encoder(x), vae.prior(x.shape[0])
            try:
                kl_divergence(q, p)
            except NotImplementedError:
                raise ConfigError(
                    f"train.elbo={cfg.train.elbo} with train.kl_fallback=false needs a closed-form KL, but none is "
                    f"registered between the {cfg.model.guide} guide ({type(q).__name__}) and the {cfg.model.prior} "
                    f"prior ({type(p).__name__}); set train.kl_fallback=true (Monte-Carlo KL for this pair) or "
                    "train.elbo=trace"
                ) from None
        if elbo_cls.jit:
            with pyro.validation_enabled(False):
                torch.manual_seed(0)
                first = _structure(vae, x)
                torch.manual_seed(1)
                second = _structure(vae, x)
            if first != second:
                changed = sorted(set(first) ^ set(second))
                raise ConfigError(
                    f"train.elbo={cfg.train.elbo} compiles the model once, but its sample sites change between "
                    f"calls ({changed}); use train.elbo={cfg.train.elbo.removeprefix('jit_')}"
                )
