r"""ELBO estimators by name; every one is a Pyro ``ELBO`` whose ``differentiable_loss`` trains.

With :math:`w = p(x, z) / q(z | x)`, :math:`z \sim q` (reparameterised), per image:

- ``trace``: :class:`pyro.infer.Trace_ELBO`, :math:`\log w` averaged over particles: the KL
  term is estimated by Monte Carlo.
- ``mean_field``: :class:`pyro.infer.TraceMeanField_ELBO`, :math:`\log p(x|z) -
  \mathrm{KL}(q \| p)` with the KL in closed form where torch registers one for the pair (else
  the Monte-Carlo term, site by site; ``train.kl_fallback=false`` rejects such pairs up front).
- ``jit_trace``, ``jit_mean_field``: the same, compiled once with ``torch.jit.trace``
  (:class:`~pyro.infer.JitTrace_ELBO`, :class:`~pyro.infer.JitTraceMeanField_ELBO`).
- ``iwae``: the importance-weighted bound :math:`\log \frac1K \sum_k w_k` per image with
  K = ``train.num_particles`` (Burda et al., 2016): :class:`IWAE_ELBO`, which is Pyro's
  :class:`~pyro.infer.RenyiELBO` at :math:`\alpha = 0` given a ``differentiable_loss``.
- ``stl``, ``iwae_dreg``, ``miwae``, ``ciwae``, ``piwae``: the ELBO with the path-derivative
  gradient, the IWAE bound with doubly reparameterised gradients, and the multi-sample bounds of
  Rainforth et al. (2018), as surrogate losses of :mod:`pyro_vae.objectives.surrogates` on the terms of Pyro
  traces (:class:`_WeightedELBO`).

Class attributes say what each computes (``analytic_kl``, ``jit``, ``importance_weighted``,
``min_particles``); the fast path (:mod:`pyro_vae.objectives.fast`) and the build-time checks
(:mod:`pyro_vae.training.checks`) read them instead of comparing names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO, JitTrace_ELBO, JitTraceMeanField_ELBO, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.util import get_dependent_plate_dims, torch_sum
from pyro.poutine.util import prune_subsample_sites

from pyro_vae.config import ConfigError, TrainConfig
from pyro_vae.objectives import surrogates
from pyro_vae.objectives.surrogates import NotDetachable, Terms, detach_distribution
from pyro_vae.registry import Registry

ELBOS: Registry = Registry("ELBO", config_key="train.elbo")


class ELBOFlags:
    """What pyro-vae's factories, checks and fast path need to know of an ELBO class: mix it in
    (``class MyELBO(ELBOFlags, pyro.infer.Trace_ELBO)``) and override the flags that differ."""

    analytic_kl = False
    jit = False
    importance_weighted = False
    min_particles = 1
    grouped = False  # draws train.iw_groups groups of train.num_particles samples
    gradient_hooks = False  # reweights gradients with hooks on z (torch.compile drops them)

    @classmethod
    def options(cls, cfg: TrainConfig) -> dict:
        """Constructor arguments from the config beyond the particle count."""
        return {}


@ELBOS.register("trace")
class TraceELBO(ELBOFlags, Trace_ELBO):
    """:class:`pyro.infer.Trace_ELBO`: Monte-Carlo KL."""


@ELBOS.register("mean_field")
class MeanFieldELBO(ELBOFlags, TraceMeanField_ELBO):
    """:class:`pyro.infer.TraceMeanField_ELBO`: analytic KL where registered."""

    analytic_kl = True


@ELBOS.register("jit_trace")
class JitTraceELBO(ELBOFlags, JitTrace_ELBO):
    """:class:`pyro.infer.JitTrace_ELBO`: ``trace`` compiled on its first call."""

    jit = True

    def __init__(self, **kwargs) -> None:
        super().__init__(ignore_jit_warnings=True, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """Pyro 1.9's version returns ``loss + (surrogate - surrogate.detach())`` with ``loss`` not
        detached, so for a reparameterised guide (where the two are equal) every gradient comes out
        twice the ELBO's (Pyro's own ``loss_and_grads`` backpropagates the surrogate alone, as here).
        Found by tests/objectives/test_warmup_gradients.py."""
        loss, surrogate = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        return loss.detach() + (surrogate - surrogate.detach())


@ELBOS.register("jit_mean_field")
class JitMeanFieldELBO(ELBOFlags, JitTraceMeanField_ELBO):
    """:class:`pyro.infer.JitTraceMeanField_ELBO`: ``mean_field`` compiled on its first call."""

    analytic_kl = True
    jit = True

    def __init__(self, **kwargs) -> None:
        super().__init__(ignore_jit_warnings=True, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """Pyro 1.9's version checks for ``_loss_and_surrogate_loss``, an attribute this class never
        sets, before building its compiled loss, so it builds and traces a new one on every call
        (25 ms a step at batch 128, against 1.3 ms for ``jit_trace``). This reuses the one built
        on the first call, with the same keys (model and guide ids) that ``JitTrace_ELBO`` uses."""
        compiled = getattr(self, "_differentiable_loss", None)
        if compiled is None:
            return super().differentiable_loss(model, guide, *args, **kwargs)
        return compiled(*args, _pyro_model_id=id(model), _pyro_guide_id=id(guide), **kwargs)


@ELBOS.register("iwae")
class IWAE_ELBO(ELBOFlags, RenyiELBO):
    r"""The IWAE bound :math:`\sum_b \log \frac1K \sum_k w_{kb}`: :class:`~pyro.infer.RenyiELBO`
    with :math:`\alpha = 0` (whose ``loss`` is this value), plus the ``differentiable_loss`` that
    class lacks. Its gradient is the reparameterised IWAE gradient
    :math:`\sum_k \tilde w_k \nabla \log w_k` with normalised weights :math:`\tilde w_k`, the one
    ``RenyiELBO.loss_and_grads`` builds (tested equal, and the value equal to a hand-written
    bound on the same draws).
    """

    importance_weighted = True
    min_particles = 2

    def __init__(self, num_particles: int = 2, **kwargs) -> None:
        super().__init__(alpha=0, num_particles=num_particles, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        log_w = []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            particle = 0.0
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    particle = particle + torch_sum(site["log_prob"], sum_dims)
            for name, site in guide_trace.nodes.items():
                if site["type"] == "sample":
                    if not site["fn"].has_rsample:
                        raise ValueError(f"iwae needs a reparameterised guide, but site {name!r} is not")
                    particle = particle - torch_sum(site["log_prob"], sum_dims)
            log_w.append(particle)
        log_w = log_w[0] if self.vectorize_particles and self.num_particles > 1 else torch.stack(log_w)
        return -(torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)).sum()


class _WeightedELBO(ELBOFlags, Trace_ELBO):
    """An estimator of :mod:`pyro_vae.objectives.surrogates` on the per-sample terms of Pyro traces (vectorised
    particles: one model and one guide trace with a particle dimension). ``needs`` names the terms
    beyond log p and log q: ``stop`` (log q with the guide's parameters detached: the site's
    distribution rebuilt from detached parameters, which a transformed distribution such as the IAF
    does not allow; the fast path recomputes the encoder instead), ``fixed`` (log q at the
    detached samples) and ``model_fixed`` (log p at the detached samples)."""

    needs: frozenset = frozenset()
    twin_class: type = Trace_ELBO  # a Pyro ELBO with this estimator's value on the same draws

    @classmethod
    def options(cls, cfg: TrainConfig) -> dict:
        return {"groups": cfg.iw_groups} if cls.grouped else {}

    def __init__(self, num_particles: int = 1, groups: int = 1, ciwae_beta: float = 0.5, **kwargs) -> None:
        super().__init__(num_particles=num_particles * groups, **kwargs)
        self.groups, self.ciwae_beta = groups, ciwae_beta

    def surrogate(self, terms: Terms) -> torch.Tensor:
        raise NotImplementedError

    def twin(self) -> ELBO:
        """A Pyro ELBO whose value equals this one's on the same draws (for the fast path's check
        where this estimator cannot run through Pyro's trace)."""
        return self.twin_class(num_particles=self.num_particles, vectorize_particles=self.vectorize_particles,
                               max_plate_nesting=self.max_plate_nesting)  # fmt: skip

    def trace_terms(self, model, guide, args, kwargs) -> Terms:
        (model_trace, guide_trace), *more = list(self._get_traces(model, guide, args, kwargs))
        if more:
            raise ValueError(f"{type(self).__name__} needs vectorised particles (train.vectorize_particles=true)")
        sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
        log_p = sum(torch_sum(s["log_prob"], sum_dims) for s in model_trace.nodes.values() if s["type"] == "sample")
        log_q, log_q_stop, log_q_fixed_z, zs, scales = 0.0, 0.0, 0.0, [], []
        for name, site in guide_trace.nodes.items():
            if site["type"] != "sample":
                continue
            fn, z = site["fn"], site["value"]
            if not fn.has_rsample:
                raise ValueError(f"{type(self).__name__} needs a reparameterised guide, but site {name!r} is not")
            log_q = log_q + torch_sum(site["log_prob"], sum_dims)
            if "stop" in self.needs:
                log_q_stop = log_q_stop + torch_sum(self._stopped_log_prob(name, site), sum_dims)
            if "fixed" in self.needs:
                log_q_fixed = scale_and_mask(fn.log_prob(z.detach()), site["scale"], site["mask"])
                log_q_fixed_z = log_q_fixed_z + torch_sum(log_q_fixed, sum_dims)
            zs.append((z, fn.event_dim))
            scales.append(site["scale"])
        needs = self.needs
        log_p_fixed_z = self._model_at_detached_samples(model, guide_trace, sum_dims, args, kwargs) \
            if "model_fixed" in needs else None  # fmt: skip
        return Terms(log_p, log_q, log_q_stop if "stop" in needs else None, log_q_fixed_z if "fixed" in needs else None,
                     log_p_fixed_z, zs, _one_scale(scales)).with_particle_dim()  # fmt: skip

    def _stopped_log_prob(self, name: str, site: dict) -> torch.Tensor:
        """log q at the site's sample with the guide's parameters detached (scaled like the site)."""
        try:
            stopped = detach_distribution(site["fn"])
        except NotDetachable as exc:
            raise NotDetachable(
                f"{type(self).__name__} through Pyro's trace needs the guide's parameters detached from "
                f"site {name!r}: {exc}. The fast path (train.fast_path=true) recomputes the encoder with "
                "detached parameters instead"
            ) from None
        return scale_and_mask(stopped.log_prob(site["value"]), site["scale"], site["mask"])

    def _model_at_detached_samples(self, model, guide_trace, sum_dims, args, kwargs) -> torch.Tensor:
        """log p(x, z) with the guide's samples detached: the model replayed against them."""
        fixed = guide_trace.copy()
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample":
                fixed.nodes[name] = dict(site, value=site["value"].detach())
        replayed = poutine.replay(self._vectorized_num_particles(model), trace=fixed)
        trace = prune_subsample_sites(poutine.trace(replayed).get_trace(*args, **kwargs))
        trace.compute_log_prob()
        return sum(torch_sum(site["log_prob"], sum_dims) for site in trace.nodes.values() if site["type"] == "sample")

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        return self.surrogate(self.trace_terms(model, guide, args, kwargs))

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:  # (as Pyro's ELBOs: nothing to do when no parameter is trainable)
            loss.backward()
        return loss.item()


@ELBOS.register("stl")
class STL_ELBO(_WeightedELBO):
    """The Monte-Carlo-KL ELBO (``trace``'s value) with the path-derivative encoder gradient
    ("sticking the landing", Roeder et al., 2017): the score term is dropped. With the analytic
    KL there is no score term to drop (``mean_field`` already differentiates the KL exactly)."""

    needs = frozenset({"stop"})

    def surrogate(self, terms: Terms) -> torch.Tensor:
        return surrogates.stl(terms.log_p, terms.log_q_stop)


@ELBOS.register("iwae_dreg")
class IWAE_DReG(_WeightedELBO):
    """The IWAE bound (``iwae``'s value) with doubly reparameterised gradients (Tucker et al., 2019):
    the decoder's gradient is IWAE's, the encoder's keeps its signal as K grows."""

    importance_weighted = True
    min_particles = 2
    needs = frozenset({"stop"})
    gradient_hooks = True
    twin_class = IWAE_ELBO

    def surrogate(self, terms: Terms) -> torch.Tensor:
        return surrogates.iwae_dreg(terms.log_p, terms.log_q, terms.log_q_stop, terms.zs, terms.beta)


@ELBOS.register("miwae")
class MIWAE(_WeightedELBO):
    """The mean of M = ``train.iw_groups`` IWAE bounds of K = ``train.num_particles`` samples each
    (Rainforth et al., 2018): M = 1 is ``iwae``, K = 1 the ELBO."""

    importance_weighted = True
    grouped = True

    def surrogate(self, terms: Terms) -> torch.Tensor:
        return surrogates.miwae(terms.log_p - terms.log_q, self.groups)


@ELBOS.register("ciwae")
class CIWAE(_WeightedELBO):
    """``train.ciwae.beta`` x ELBO + (1 - beta) x IWAE bound on the same K samples (Rainforth et al.,
    2018): beta = 0 is ``iwae``, beta = 1 the ELBO."""

    importance_weighted = True

    @dataclass(frozen=True)
    class Settings:
        beta: float = 0.5  # 0: the IWAE bound, 1: the ELBO

        def __post_init__(self) -> None:
            if not 0.0 <= self.beta <= 1.0:
                raise ValueError(f"beta = {self.beta} must be in [0, 1] (0: the IWAE bound, 1: the ELBO)")

    @classmethod
    def options(cls, cfg: TrainConfig) -> dict:
        return {"ciwae_beta": ELBOS.settings("ciwae", cfg.settings).beta}

    def surrogate(self, terms: Terms) -> torch.Tensor:
        return surrogates.ciwae(terms.log_p - terms.log_q, self.ciwae_beta)


@ELBOS.register("piwae")
class PIWAE(_WeightedELBO):
    """The IWAE bound of all M K samples for the decoder, MIWAE(M, K) for the encoder (Rainforth
    et al., 2018); its value is the IWAE bound."""

    importance_weighted = True
    grouped = True
    needs = frozenset({"stop", "fixed", "model_fixed"})
    twin_class = IWAE_ELBO

    def surrogate(self, terms: Terms) -> torch.Tensor:
        t = terms
        return surrogates.piwae(t.log_p, t.log_q, t.log_q_stop, t.log_q_fixed_z, t.log_p_fixed_z, self.groups)


def _one_scale(scales: list) -> torch.Tensor | float:
    """The KL warm-up weight on the guide's sites: the ``poutine.scale`` that the model and guide
    put around every latent site alike (:meth:`pyro_vae.model.VAE.model`); 1 without one."""
    return scales[0] if scales else 1.0


def build_elbo(cfg: TrainConfig) -> ELBO:
    """The ELBO named ``cfg.elbo`` with ``cfg.num_particles`` particles, vectorised when there are
    several and ``cfg.vectorize_particles`` is set."""
    cls = ELBOS.get(cfg.elbo)
    if cfg.num_particles < cls.min_particles:
        raise ConfigError(
            f"train.elbo={cfg.elbo} needs train.num_particles >= {cls.min_particles} (got {cfg.num_particles}); "
            f"with one particle it is the trace ELBO. Set train.num_particles=5 (or more), or train.elbo=trace"
        )
    if cfg.iw_groups != 1 and not cls.grouped:
        raise ConfigError(f"train.iw_groups={cfg.iw_groups} applies to miwae and piwae only, not train.elbo={cfg.elbo}")
    total = cfg.num_particles * cfg.iw_groups
    if issubclass(cls, _WeightedELBO) and total > 1 and not cfg.vectorize_particles:
        raise ConfigError(f"train.elbo={cfg.elbo} draws its {total} samples as one tensor: set "
                          "train.vectorize_particles=true")  # fmt: skip
    vectorize = cfg.vectorize_particles and total > 1
    return cls(num_particles=cfg.num_particles, vectorize_particles=vectorize, max_plate_nesting=1, **cls.options(cfg))
