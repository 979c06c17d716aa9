"""ELBO estimators by name; every one is a Pyro ``ELBO`` whose ``differentiable_loss`` trains.

- ``trace``: :class:`pyro.infer.Trace_ELBO`. Per particle, ``log p(x, z) - log q(z | x)`` at
  ``z ~ q``: the KL term is estimated by Monte Carlo.
- ``mean_field``: :class:`pyro.infer.TraceMeanField_ELBO`. ``log p(x | z) - KL(q(z|x) || p(z))``
  with the KL in closed form where one is registered for the pair of distributions (else it
  falls back to the Monte-Carlo term site by site). Same expectation, lower variance.
"""

from __future__ import annotations

from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

from .config import TrainConfig
from .registry import Registry

ELBOS: Registry = Registry("ELBO")
ELBOS.register("trace")(Trace_ELBO)
ELBOS.register("mean_field")(TraceMeanField_ELBO)


def build_elbo(cfg: TrainConfig) -> ELBO:
    """The ELBO named ``cfg.elbo`` with ``cfg.num_particles`` particles (vectorised when > 1)."""
    return ELBOS.get(cfg.elbo)(
        num_particles=cfg.num_particles,
        vectorize_particles=cfg.num_particles > 1,
        max_plate_nesting=1,
    )
