"""A frozen copy of pyro-vae's ``FastELBO`` as it was before the one loss path (commit a6170ad):
the oracle that keeps the default run's arithmetic bit for bit (tests/objectives/test_one_loss_path.py).
Not imported by the package; do not change it."""

from __future__ import annotations

import math

import torch
from torch.distributions import kl_divergence

from pyro_vae.model import VAE
from pyro_vae.objectives.surrogates import NotDetachable, Terms, detach_distribution


class FastELBO:
    """Pyro's ``Trace_ELBO`` (``analytic_kl=False``), ``TraceMeanField_ELBO``
    (``analytic_kl=True``) or the IWAE bound (``importance_weighted=True``) for a
    structure-checked :class:`~pyro_vae.model.VAE`, with ``num_particles`` vectorised particles;
    or, given ``weighted`` (a :class:`~pyro_vae.objectives.elbos._WeightedELBO`: ``stl``, ``iwae_dreg``,
    ``miwae``, ``ciwae``, ``piwae``), that estimator's surrogate on the same terms, with its
    particle count. :meth:`differentiable_loss` matches Pyro's ``differentiable_loss``: the
    negative ELBO summed over the batch and averaged over particles (the negative bound summed over
    the batch)."""

    def __init__(
        self,
        vae: VAE,
        analytic_kl: bool = False,
        num_particles: int = 1,
        importance_weighted: bool = False,
        weighted=None,
    ) -> None:
        self.vae = vae
        self.analytic_kl = analytic_kl
        self.num_particles = weighted.num_particles if weighted is not None else num_particles
        self.importance_weighted = importance_weighted
        self.weighted = weighted

    def differentiable_loss(self, x: torch.Tensor, beta: torch.Tensor | float = 1.0) -> torch.Tensor:
        """``beta`` weighs the KL term (KL warm-up), as ``poutine.scale`` on the ``z`` sites does."""
        vae, batch = self.vae, x.shape[0]
        q = vae.encoder(x)
        p = vae.prior(batch)
        # Pyro draws the vectorised particles from q expanded to (P, B): the same numbers as this
        z = q.rsample((self.num_particles,)) if self.num_particles > 1 else q.rsample()
        log_lik = vae.likelihood(vae.decoder(z)).log_prob(x)
        if self.weighted is not None:
            return self._weighted(x, q, p, z, log_lik, beta)
        kl = None
        if self.analytic_kl:
            try:
                kl = kl_divergence(q, p).expand(log_lik.shape)
            except NotImplementedError:  # TraceMeanField_ELBO falls back to the Monte-Carlo term
                pass
        if kl is None:
            kl = q.log_prob(z) - p.log_prob(z)
        log_w = log_lik - beta * kl
        if self.importance_weighted:
            return -(torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)).sum()
        return -log_w.sum() / self.num_particles

    def _weighted(self, x, q, p, z, log_lik, beta) -> torch.Tensor:
        needs = self.weighted.needs
        terms = Terms(log_lik + beta * p.log_prob(z), beta * q.log_prob(z), zs=[(z, q.event_dim)], beta=beta)
        if "stop" in needs:
            terms.log_q_stop = beta * _stopped(self.vae.encoder, q, x).log_prob(z)
        if "fixed" in needs:
            terms.log_q_fixed_z = beta * q.log_prob(z.detach())
        if "model_fixed" in needs:
            fixed = z.detach()
            terms.log_p_fixed_z = self.vae.likelihood(self.vae.decoder(fixed)).log_prob(x) + beta * p.log_prob(fixed)
        return self.weighted.surrogate(terms.with_particle_dim() if self.num_particles == 1 else terms)


def _stopped(encoder: torch.nn.Module, q, x: torch.Tensor):
    """q(z|x) with the encoder's parameters detached: ``q`` rebuilt from its detached parameters
    where it stores them, else the encoder run again with detached parameters (the IAF)."""
    try:
        return detach_distribution(q)
    except NotDetachable:
        detached = {name: t.detach() for name, t in (*encoder.named_parameters(), *encoder.named_buffers())}
        return torch.func.functional_call(encoder, detached, (x,))
