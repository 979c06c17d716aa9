"""The training loss without Pyro's per-step tracing, for a verified VAE structure.

Pyro's ``Trace_ELBO`` runs the guide and the model under effect handlers on every step to
record their sample sites, then sums ``log p(x, z) - log q(z | x)`` over the trace. That costs
about a millisecond a step on a CPU, a fifth of a whole training step at batch 128. For a VAE
whose structure is fixed, the trace is always the same: one latent site ``z`` drawn by the guide
with a reparameterised sample, one observed site ``x``, both in ``plate("data")``.
:func:`check_structure` verifies that once with real Pyro traces (and :func:`build_loss` compares
the two losses on one batch and seed); :class:`FastELBO` then
evaluates the same sites' distributions (the very objects the model and guide hand to
``pyro.sample``) directly. It draws the same random numbers in the same order, so the loss and its
gradients equal Pyro's for the same seed (``tests/objectives/test_fast.py``). It implements the three
non-JIT estimators of :mod:`pyro_vae.objectives.elbos` (Monte-Carlo KL, analytic KL with Pyro's fallback,
the IWAE bound, and the surrogate estimators ``stl``, ``iwae_dreg``, ``miwae``, ``ciwae``,
``piwae``) for any registered prior, likelihood and guide, and KL warm-up as
``poutine.scale`` on the ``z`` sites defines it. A structure it does not recognise keeps the
stock Pyro ELBO.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
from pyro.infer import ELBO
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence

from pyro_vae.config import TrainConfig
from pyro_vae.model import VAE
from pyro_vae.objectives.elbos import _WeightedELBO, build_elbo
from pyro_vae.objectives.surrogates import NotDetachable, Terms, detach_distribution
from pyro_vae.seeding import fork_rng

log = logging.getLogger(__name__)


def check_structure(vae: VAE, x: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``vae.model`` / ``vae.guide`` have exactly the structure
    :class:`FastELBO` evaluates (checked on real Pyro traces of the batch ``x``)."""
    guide_tr, model_tr = vae.traces(x)

    def sites(tr):
        return {
            name: s for name, s in tr.nodes.items() if s["type"] in ("sample", "param") and not site_is_subsample(s)
        }

    model_sites, guide_sites = sites(model_tr), sites(guide_tr)
    problems = []
    if list(model_sites) != ["z", "x"] or list(guide_sites) != ["z"]:
        problems.append(f"sites: model {list(model_sites)}, guide {list(guide_sites)} (expected ['z', 'x'] and ['z'])")
    else:
        if model_sites["z"]["is_observed"] or not model_sites["x"]["is_observed"]:
            problems.append("'z' must be latent and 'x' observed")
        if not guide_sites["z"]["fn"].has_rsample:
            problems.append("the guide's 'z' is not reparameterised")
        for tr_name, tr_sites in (("model", model_sites), ("guide", guide_sites)):
            for name, site in tr_sites.items():
                plates = [f.name for f in site["cond_indep_stack"]]
                if plates != ["data"]:
                    problems.append(f"{tr_name} site '{name}' is in plates {plates} (expected ['data'])")
                if site["type"] == "sample" and (site["scale"] != 1.0 or site["mask"] is not None):
                    problems.append(f"{tr_name} site '{name}' is scaled or masked")
    if problems:
        raise ValueError("the fast ELBO does not apply to this model: " + "; ".join(problems))


class FastELBO:
    """Pyro's ``Trace_ELBO`` (``analytic_kl=False``), ``TraceMeanField_ELBO``
    (``analytic_kl=True``) or the IWAE bound (``importance_weighted=True``) for a
    structure-checked :class:`~pyro_vae.model.VAE`, with ``num_particles`` vectorised particles;
    or, given ``weighted`` (a :class:`~pyro_vae.objectives.elbos._WeightedELBO`: ``stl``, ``iwae_dreg``,
    ``miwae``, ``ciwae``, ``piwae``), that estimator's surrogate on the same terms, with its
    particle count. :meth:`differentiable_loss` matches Pyro's ``differentiable_loss``: the
    negative ELBO summed over the batch and averaged over particles (the negative bound summed over
    the batch)."""

    def __init__(self, vae: VAE, analytic_kl: bool = False, num_particles: int = 1,
                 importance_weighted: bool = False, weighted=None) -> None:  # fmt: skip
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


@dataclass(frozen=True)
class Loss:
    """A training loss and what it is: ``fn(x, beta=None)`` is the summed negative ELBO of the
    batch ``x`` (its KL term weighted by ``beta``), computed by ``elbo``; ``fast`` says whether it is
    the fast path's (a fixed structure: the step engine may capture or compile it)."""

    fn: Callable[..., torch.Tensor]
    elbo: ELBO
    fast: bool

    @property
    def compilable(self) -> bool:
        """Whether ``torch.compile`` keeps its gradients: a fast loss whose estimator does not
        reweight gradients with hooks on z (``gradient_hooks``: iwae_dreg)."""
        return self.fast and not self.elbo.gradient_hooks

    def __call__(self, x: torch.Tensor, beta: torch.Tensor | float | None = None) -> torch.Tensor:
        return self.fn(x) if beta is None else self.fn(x, beta)


def _pyro_loss(vae: VAE, elbo) -> Callable[..., torch.Tensor]:
    """``(x, beta=None) -> loss`` through Pyro's ``elbo.differentiable_loss``. A JIT ELBO sees the
    parameters only through the param store, so its model and guide register the VAE there
    (under its own :attr:`~pyro_vae.model.VAE.store_name`, cleared first so that entries left by
    an earlier loss of the same VAE cannot be picked up)."""
    model, guide = vae.model, vae.guide
    if getattr(elbo, "jit", False):
        store = pyro.get_param_store()
        for name in [n for n in store.keys() if n.startswith(f"{vae.store_name}$$$")]:
            del store[name]
        model, guide = vae.registered()

    def loss(x: torch.Tensor, beta: torch.Tensor | None = None) -> torch.Tensor:
        args = (x,) if beta is None else (x, torch.as_tensor(beta, dtype=x.dtype, device=x.device))
        with warnings.catch_warnings():  # torch deprecates jit.trace in favour of torch.compile; Pyro still uses it
            warnings.filterwarnings("ignore", message=".*torch.jit.trace.* is deprecated", category=FutureWarning)
            return elbo.differentiable_loss(model, guide, *args)

    return loss


def build_loss(vae: VAE, cfg: TrainConfig, x: torch.Tensor, elbo: ELBO | None = None) -> Loss:
    """The :class:`Loss` of ``elbo`` (built from ``cfg`` when not given), ``(batch, beta=None) ->
    summed negative ELBO`` (``beta``: the KL warm-up weight): the fast path when ``cfg.fast_path``
    is set, the ELBO is not a JIT one, several particles are vectorised, the structure check passes
    on the batch ``x`` and the fast loss equals Pyro's on ``x`` for one seed (so a model that
    computes its sites differently from the VAE's components is caught); else Pyro's
    ``elbo.differentiable_loss``. The checks leave the RNG alone."""
    elbo = build_elbo(cfg) if elbo is None else elbo
    loop = cfg.num_particles > 1 and not cfg.vectorize_particles  # the fast path draws particles as a tensor
    if cfg.fast_path and not elbo.jit and not loop:
        weighted = elbo if isinstance(elbo, _WeightedELBO) else None
        fast = FastELBO(vae, elbo.analytic_kl, cfg.num_particles, elbo.importance_weighted, weighted)
        try:
            with fork_rng(x.device):
                with pyro.validation_enabled(True), torch.no_grad():
                    check_structure(vae, x)
                    torch.manual_seed(0)
                    ours = fast.differentiable_loss(x)
                    torch.manual_seed(0)
                    try:
                        theirs = elbo.differentiable_loss(vae.model, vae.guide, x)
                    except NotDetachable as exc:  # Pyro's trace cannot run it; its twin has the same value
                        log.info("%s; the fast path is checked against %s", exc, type(elbo.twin()).__name__)
                        torch.manual_seed(0)
                        theirs = elbo.twin().differentiable_loss(vae.model, vae.guide, x)
            if not torch.allclose(ours, theirs, rtol=1e-5, atol=1e-4):
                raise ValueError(
                    f"the fast ELBO does not apply to this model: its loss {ours.item():.6g} differs from "
                    f"Pyro's {theirs.item():.6g} on the same draw"
                )
            return Loss(fast.differentiable_loss, elbo, fast=True)
        except ValueError as exc:
            log.warning("%s; using Pyro's %s", exc, cfg.elbo)
    return Loss(_pyro_loss(vae, elbo), elbo, fast=False)
