"""Build-time checks: a combination of components that cannot work fails before training,
with a message naming the choice and the fix. Every rejection, and where it is raised:

=====================================================  ==============================================
choice                                                 error (:class:`~pyro_vae.config.ConfigError`)
=====================================================  ==============================================
``model.prior=vamp`` with a guide lacking a Gaussian   raised by :func:`~pyro_vae.model.build_vae`:
density at the pseudo-inputs (``iaf``)                 use ``model.guide=diag_normal``
``train.elbo=iwae`` with ``num_particles < 2``         :func:`~pyro_vae.objectives.elbos.build_elbo`: set
                                                       ``train.num_particles`` >= 2
an analytic-KL ELBO (``mean_field``,                   :func:`check_compatible`: no closed-form KL for
``jit_mean_field``) with ``train.kl_fallback=false``   the pair; allow the fallback or use ``trace``
and a prior/guide pair without a registered KL
a JIT ELBO with a model whose sites change between     :func:`check_compatible`: use the non-JIT ELBO
calls
data outside the likelihood's support                  :func:`check_data`: binarize, rescale or choose
                                                       another likelihood
=====================================================  ==============================================

``tests/components/test_components.py`` runs one SVI step for every prior x likelihood x guide x ELBO
combination these checks accept and asserts that each one they reject raises this error.
"""

from __future__ import annotations

import pyro
import torch
from pyro.infer import ELBO
from pyro.poutine.util import site_is_subsample

from pyro_vae.config import ConfigError, ExperimentConfig
from pyro_vae.data import Splits
from pyro_vae.model import Structure
from pyro_vae.objectives.sites import PyroSource, draw, without_analytic_kl
from pyro_vae.seeding import fork_rng


def check_data(vae: Structure, data: Splits) -> None:
    """Reject data outside the likelihood's support (every split, before training starts)."""
    for split in ("train", "valid", "test"):
        if split == "train" and data.dynamic_binarization:
            continue  # binarized per batch
        try:
            vae.likelihood.validate(data.stored(split), f"{data.source} [{split}]")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def _structure(vae: Structure, x: torch.Tensor) -> list[tuple]:
    guide_tr, model_tr = vae.traces(x)
    return [
        (which, name, site["is_observed"], tuple(site["fn"].batch_shape), tuple(site["fn"].event_shape))
        for which, tr in (("guide", guide_tr), ("model", model_tr))
        for name, site in tr.nodes.items()
        if site["type"] == "sample" and not site_is_subsample(site)
    ]


def check_compatible(vae: Structure, cfg: ExperimentConfig, elbo: ELBO, x: torch.Tensor) -> None:
    """Checks that need the built structure (a VAE), the built ELBO (``cfg.train.elbo``) and a batch
    ``x`` of training data (RNG left alone)."""
    if vae.has_score_baseline and not getattr(elbo, "uses_baseline", False):
        raise ConfigError(
            f"model.{cfg.model.structure}.baseline=true learns b(x) for train.elbo=tracegraph; with "
            f"train.elbo={cfg.train.elbo} it would get no gradient: set model.{cfg.model.structure}.baseline=false"
        )
    with fork_rng(x.device), torch.no_grad():
        if elbo.analytic_kl and not cfg.train.kl_fallback:
            missing = without_analytic_kl(vae, x)
            if missing is not None:
                name, q, p, several = missing
                where = f" at site '{name}'" if several else ""
                raise ConfigError(
                    f"train.elbo={cfg.train.elbo} with train.kl_fallback=false needs a closed-form KL{where}, but "
                    f"none is registered between the {cfg.model.guide} guide ({type(q).__name__}) and the "
                    f"{cfg.model.prior} prior ({type(p).__name__}); set train.kl_fallback=true (Monte-Carlo KL "
                    "for this pair) or train.elbo=trace"
                )
        if elbo.jit:
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


@torch.no_grad()
def diagnose(vae: Structure, x: torch.Tensor) -> str:
    """Which term of the negative ELBO is not finite on the batch ``x``: non-finite parameters,
    or the log-densities of the guide's and the model's sites at one draw."""
    bad = [name for name, p in vae.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        return "non-finite parameters: " + ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
    with pyro.validation_enabled(False):
        t = draw(PyroSource(vae.model, vae.guide, vae), x, None, 1)
    terms = [(f"log q({name}|x) (guide)", site) for name, site in t.guide.items()]
    terms += [
        (f"log p({name}) (prior)" if not site.observed else f"log p({name}|z) (likelihood)", site)
        for name, site in t.model.items()
    ]
    out = []
    for label, site in terms:
        values = site.log_prob()
        if not torch.isfinite(values).all():
            out.append(
                f"{label} at site '{site.name}' is {values[~torch.isfinite(values)][0].item()} "
                f"for {int((~torch.isfinite(values)).sum())} of {values.numel()} images"
            )
    return "; ".join(out) or "every term is finite when recomputed (an overflow in the gradient step)"
