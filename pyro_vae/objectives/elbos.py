r"""ELBO estimators by name: one class each, computing its loss from the sites of one draw.

With :math:`w = p(x, z) / q(z | x)`, :math:`z \sim q` (reparameterised), per image, where z is
every latent site of the structure (:mod:`pyro_vae.model`):

- ``trace``: :class:`pyro.infer.Trace_ELBO`'s estimator, :math:`\log w` averaged over particles:
  the KL term by Monte Carlo (a guide site that is not reparameterised gets Pyro's
  score-function term).
- ``mean_field``: :class:`pyro.infer.TraceMeanField_ELBO`'s, :math:`\log p(x|z) -
  \sum_{\text{sites}} \mathrm{KL}(q \| p)` with each KL in closed form where torch registers one for
  the pair (else the Monte-Carlo term; ``train.kl_fallback=false`` rejects such pairs up front).
- ``jit_trace``, ``jit_mean_field``: Pyro's :class:`~pyro.infer.JitTrace_ELBO` and
  :class:`~pyro.infer.JitTraceMeanField_ELBO` (compiled once with ``torch.jit.trace``), run
  through Pyro's own ``differentiable_loss``.
- ``iwae``: the importance-weighted bound :math:`\log \frac1K \sum_k w_k` per image with
  K = ``train.num_particles`` (Burda et al., 2016), with Pyro's :class:`~pyro.infer.RenyiELBO`
  (:math:`\alpha = 0`) value and gradient.
- ``stl``, ``iwae_dreg``, ``miwae``, ``ciwae``, ``piwae``: the ELBO with the path-derivative
  gradient, the IWAE bound with doubly reparameterised gradients, and the multi-sample bounds of
  Rainforth et al. (2018), as surrogate losses of :mod:`pyro_vae.objectives.surrogates`.

Each :class:`Estimator` reads :class:`~pyro_vae.objectives.sites.Traces` (the guide's and the
model's sites of one draw, from Pyro's traces or from a structure's stories: the same numbers), so
one object serves training, evaluation, the laboratory (its :attr:`~ELBOFlags.lab_rows`) and
Pyro's SVI. Class attributes say what each computes (``analytic_kl``, ``jit``,
``importance_weighted``, ``min_particles``, ``needs``); the checks read them instead of names.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from pyro.infer import ELBO, JitTrace_ELBO, JitTraceMeanField_ELBO
from torch import nn
from torch.distributions import kl_divergence

from pyro_vae.config import ConfigError, TrainConfig
from pyro_vae.model import Relaxation, Site
from pyro_vae.objectives import surrogates
from pyro_vae.objectives.sites import PyroSource, Sites, StructureInfo, Traces, draw, weigh
from pyro_vae.objectives.surrogates import Terms
from pyro_vae.registry import Registry

ELBOS: Registry = Registry("ELBO", config_key="train.elbo")


@dataclass(frozen=True)
class LabRow:
    """A row of the estimator laboratory's gradient table (:mod:`pyro_vae.lab.estimators`):
    ``guide = "score_function"`` measures the estimator with the guide's samples not
    reparameterised; ``snr_label`` puts it in the encoder-SNR-against-K panel too."""

    name: str
    label: str
    guide: str = "reparameterised"
    snr_label: str | None = None


class ELBOFlags:
    """What pyro-vae's factories and checks need to know of an ELBO class. Every registered
    estimator has them (through :class:`Estimator`); a plugin's ELBO built on a Pyro ELBO class
    mixes them in (``class MyELBO(ELBOFlags, pyro.infer.Trace_ELBO)``) and runs through Pyro's own
    ``differentiable_loss``."""

    analytic_kl = False
    jit = False
    importance_weighted = False
    min_particles = 1
    grouped = False  # draws train.iw_groups groups of train.num_particles samples
    gradient_hooks = False  # reweights gradients with hooks on z (torch.compile drops them)
    enumerates = False  # sums the guide's discrete sites out by parallel enumeration
    relaxes = False  # draws the guide's one-hot sites by the Gumbel-softmax relaxation (a temperature)
    discrete_label: str | None = None  # its row in the discrete-site laboratory (pyro_vae.lab.discrete)

    def relaxation(self) -> Relaxation | None:
        """How the guide's one-hot categorical sites are relaxed (None: drawn as they are)."""
        return None

    lab_rows: tuple[LabRow, ...] = ()

    @classmethod
    def options(cls, cfg: TrainConfig) -> dict:
        """Constructor arguments from the config beyond the particle count."""
        return {}


class Estimator(ELBOFlags, ELBO):
    """One gradient estimator of a bound on log p(x): :meth:`objective` turns one draw of the
    model's and the guide's sites (:class:`~pyro_vae.objectives.sites.Traces`) into the negative
    objective summed over the batch, whose value is the bound's and whose gradient is the
    estimator's. The same object trains (eager, compiled, captured: :meth:`loss_fn`), evaluates,
    fills the laboratory (:attr:`lab_rows`) and keeps Pyro's ``ELBO`` interface
    (``differentiable_loss(model, guide, *args)``, ``loss``, ``loss_and_grads``) for SVI."""

    needs: frozenset = frozenset()  # stop (log q at detached parameters), fixed (log q at detached samples),
    #                                 model_fixed (log p at detached samples)
    reparameterized_only = True  # refuses a guide site that is not reparameterised

    def __init__(
        self,
        num_particles: int = 1,
        groups: int = 1,
        vectorize_particles: bool = False,
        max_plate_nesting: int = 1,
        **options,
    ) -> None:
        super().__init__(
            num_particles=num_particles * groups,
            vectorize_particles=vectorize_particles,
            max_plate_nesting=max_plate_nesting,
        )
        self.groups = groups
        unknown = sorted(key for key in options if not hasattr(type(self), key))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} takes no option {', '.join(unknown)} (its options are its class "
                "attributes; see its [train.NAME] settings)"
            )
        for key, value in options.items():
            setattr(self, key, value)

    def objective(self, t: Traces) -> torch.Tensor:
        raise NotImplementedError

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("pyro-vae's estimators read the sites of a draw (pyro_vae.objectives.sites)")

    def check(self, info: StructureInfo) -> list[str]:
        """What this estimator cannot do with the structure ``info``."""
        if not self.reparameterized_only:
            return []
        return [
            f"train.elbo needs a reparameterised guide, but guide site '{s.name}' is discrete: use "
            "train.elbo=enum (sums it out exactly) or train.elbo=trace (its score function)"
            if s.discrete
            else f"train.elbo needs a reparameterised guide, but guide site '{s.name}' is not: use train.elbo=trace"
            for s in info.of("guide")
            if not s.reparameterized
        ]

    def check_structure(self, structure: nn.Module, info: StructureInfo) -> list[str]:
        """What this estimator needs of the structure itself (beyond its sites, ``info``)."""
        return []

    def uses_hooks(self, latent_sites: int) -> bool:
        """Whether the loss reweights gradients with hooks (which ``torch.compile`` drops)."""
        return self.gradient_hooks and latent_sites == 1

    def loss_fn(self, source) -> Callable[..., torch.Tensor]:
        """``(x, beta=None, labels=None) -> loss`` on draws of ``source`` (``labels``: the batch's, for a
        structure that learns from them): particles as one tensor dimension, or
        (``vectorize_particles`` off, several particles) a Python loop averaging single draws."""
        n, loop = self.num_particles, self.num_particles > 1 and not self.vectorize_particles
        relax = self.relaxation()  # (resolved once, not every step)

        def loss(x: torch.Tensor, beta: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
            if loop:
                return (
                    sum(self.objective(draw(source, x, beta, 1, self.enumerates, labels, relax)) for _ in range(n)) / n
                )
            return self.objective(draw(source, x, beta, n, self.enumerates, labels, relax))

        return loss

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """Pyro's interface: the loss of ``model`` and ``guide`` on ``args`` (the batch, and
        optionally the warm-up weight), on Pyro's traces."""
        module = getattr(model, "__self__", None)
        source = PyroSource(model, guide, module if isinstance(module, nn.Module) else None)
        return self.loss_fn(source)(*args, **kwargs)

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:  # (as Pyro's ELBOs: nothing to do when no parameter is trainable)
            loss.backward()
        return loss.item()


def _log_obs(model: Sites) -> torch.Tensor:
    """Σ over the model's observed sites of the (scaled) log-density, model order."""
    total = None
    for site in model.values():
        if site.observed:
            term = weigh(site.log_prob(), site)
            total = term if total is None else total + term
    return total


def _kl_term(q: Site, p: Site, analytic: bool) -> torch.Tensor | None:
    """One latent site's term of log q - log p (analytic: the closed-form KL where torch registers
    one, else None), weighed by the sites' scales: one multiplication when the model and the guide
    share the scale (the lean source hands both the same weight)."""
    if analytic:
        try:
            kl = kl_divergence(q.fn, p.fn)
        except NotImplementedError:  # TraceMeanField_ELBO falls back to the Monte-Carlo term
            return None
        return weigh(kl, q)
    if q.scale is p.scale or (not torch.is_tensor(q.scale) and not torch.is_tensor(p.scale) and q.scale == p.scale):
        return weigh(q.log_prob() - p.log_prob(), q)
    return weigh(q.log_prob(), q) - weigh(p.log_prob(), p)


def _log_w(t: Traces, analytic_kl: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per draw and image: log p(x|z) - Σ_sites (log q - log p) (or the analytic KLs), computed in a
    fixed order (the likelihood first, then each latent site's log q before its log p); and the
    score-function terms of the guide's sites that are not reparameterised (their log q, whose
    gradient Pyro's Trace_ELBO weighs by the detached log weight: neither scaled by the warm-up
    weight, which the log weight already carries, nor masked, since a masked-out draw may still
    shape the sites after it)."""
    log_obs = _log_obs(t.model)
    kl, scores = None, []
    for name in t.latent:
        q, p = t.guide[name], t.model[name]
        if q.relaxed:  # (Jang et al.: the categorical KL in closed form, the relaxed draw downstream)
            term = weigh(_categorical_kl(q.fn, p.fn), q)
        elif not q.fn.has_rsample:
            term = weigh(q.log_prob(), q).detach() - weigh(p.log_prob(), p)
            scores.append(q.fn.log_prob(q.value))  # unscaled and unmasked, as Pyro's score_parts keep it
        else:
            term = _kl_term(q, p, analytic_kl)
            if term is None:
                term = _kl_term(q, p, False)
        term = term.expand(log_obs.shape) if term.shape != log_obs.shape else term
        kl = term if kl is None else kl + term
    return (log_obs if kl is None else log_obs - kl), scores


def _categorical_kl(q, p) -> torch.Tensor:
    """KL(q || p) of two (one-hot) categoricals over their last dimension, 0 where q is: torch's
    version writes infinities and zeros by boolean indexing, a host sync and tensors from Python
    data inside the step."""
    term = q.probs * (q.logits - p.logits)
    return torch.where(q.probs > 0, term, term.new_zeros(())).sum(-1)


def _mean_over_particles(log_w: torch.Tensor, scores: list[torch.Tensor], n: int) -> torch.Tensor:
    loss = -log_w.sum() / n
    if scores:
        surrogate = sum((log_w.detach() * score).sum() for score in scores) / n
        loss = loss - (surrogate - surrogate.detach())
    return loss


@ELBOS.register("trace")
class TraceELBO(Estimator):
    """:class:`pyro.infer.Trace_ELBO`: log w = log p(x, z) - log q(z|x) averaged over particles,
    the KL term by Monte Carlo; a guide site that is not reparameterised gets Pyro's
    score-function term."""

    reparameterized_only = False
    discrete_label = "score function (trace)"
    lab_rows = (
        LabRow("reparam_mc_kl", "reparameterised, Monte-Carlo KL (trace)"),
        LabRow("score_function", "score function (trace, guide not reparameterised)", guide="score_function"),
    )

    def objective(self, t: Traces) -> torch.Tensor:
        log_w, scores = _log_w(t)
        return _mean_over_particles(log_w, scores, t.particles)


@ELBOS.register("mean_field")
class MeanFieldELBO(Estimator):
    """:class:`pyro.infer.TraceMeanField_ELBO`: the KL of every latent site in closed form where
    torch registers one for the pair (else its Monte-Carlo term)."""

    analytic_kl = True
    lab_rows = (LabRow("reparam_analytic_kl", "reparameterised, analytic KL (mean_field)"),)

    def objective(self, t: Traces) -> torch.Tensor:
        log_w, _ = _log_w(t, analytic_kl=True)
        return -log_w.sum() / t.particles


@ELBOS.register("enum")
class TraceEnumELBO(Estimator):
    r""":class:`pyro.infer.TraceEnum_ELBO` with every discrete guide site enumerated in parallel
    (``config_enumerate``): the expectation over the discrete sites is a sum over their supports,

    .. math:: \mathcal L = \sum_c q(c \mid x)\, \mathbb E_{q(z \mid x, c)}
              \big[\log p(x, z, c) - \log q(z \mid x, c) - \log q(c \mid x)\big],

    exact in c (no score-function variance), by Monte Carlo in the continuous sites, whose
    gradients are reparameterised. Each site's term is weighed by the enumerated sites'
    probabilities only where it depends on them (has their dimensions), as Pyro's dice factors
    do: a term outside the enumerated branch (a masked-out image's, or a site that does not depend
    on c) counts once. Without a discrete site it is ``trace``."""

    enumerates = True
    reparameterized_only = False
    discrete_label = "enumerated, exact in c (enum)"

    def check(self, info: StructureInfo) -> list[str]:
        return [
            f"train.elbo=enum sums discrete sites out and reparameterises the rest, but guide site '{s.name}' "
            "is neither discrete nor reparameterised: use train.elbo=trace (its score function)"
            for s in info.of("guide")
            if not s.reparameterized and not s.discrete
        ]

    def objective(self, t: Traces) -> torch.Tensor:
        log_q = t.log_q_enumerated()
        weights = None if log_q is None else log_q.exp()
        plates = 1 if t.particles == 1 else 2  # (data, and particles): dimensions left of them are enumerated
        total = None
        for name, site in t.model.items():
            terms = [weigh(site.log_prob(), site)]
            if not site.observed:
                q = t.guide[name]
                terms.append(-weigh(q.log_prob(), q))
            for term in terms:
                if weights is not None and term.dim() > plates:
                    term = weights * term
                total = _particle_sum(term, t.particles) if total is None else total + _particle_sum(term, t.particles)
        return -total / t.particles


def _particle_sum(term: torch.Tensor, particles: int) -> torch.Tensor:
    """The sum of ``term`` over all N particles: a term without a particle dimension (a site that
    depends on no draw) counts N times, as it does expanded in Pyro's particle plate."""
    if particles > 1 and (term.dim() < 2 or term.shape[-2] == 1):
        return term.sum() * particles
    return term.sum()


@ELBOS.register("tracegraph")
class TraceGraphELBO(Estimator):
    r""":class:`pyro.infer.TraceGraph_ELBO`'s score function with a learned neural baseline: the
    gradient of a guide site that is not reparameterised is :math:`(\log w - b(x))\,\nabla\log q`,
    the baseline b(x) (the structure's :meth:`~pyro_vae.model.Structure.score_baseline`) fitted to
    the log weight by least squares in the same step. Unbiased (b does not depend on the draw),
    with less variance than ``trace``'s the better b predicts log w. Every cost of the structures
    here lies downstream of their discrete site, so Pyro's Rao-Blackwellisation changes nothing
    beyond the baseline: without a site to score (every site reparameterised) this is ``trace``."""

    reparameterized_only = False
    uses_baseline = True
    discrete_label = "score function, neural baseline (tracegraph)"

    def check_structure(self, structure: nn.Module, info: StructureInfo) -> list[str]:
        scored = [s.name for s in info.of("guide") if not s.reparameterized]
        if not scored or getattr(structure, "has_score_baseline", False):  # (nothing to score: trace's)
            return []
        name = getattr(structure, "structure_name", type(structure).__name__)
        return [
            f"train.elbo=tracegraph learns a baseline b(x) for the score function of {scored}, which this {name} "
            "does not build: set "
            "model.mixture.baseline=true (or model.semi_supervised.baseline=true), or use train.elbo=trace "
            "(the score function without a baseline)"
        ]

    def objective(self, t: Traces) -> torch.Tensor:
        log_w, scores = _log_w(t)
        loss = -log_w.sum() / t.particles
        if not scores:
            return loss
        target = log_w.detach()
        b = None if t.structure is None else t.structure.score_baseline(t.x)
        if b is None:
            raise ValueError(
                "train.elbo=tracegraph needs the structure's learned baseline b(x) (score_baseline), and this one "
                "has none: build it with model.mixture.baseline=true (or model.semi_supervised.baseline=true)"
            )
        advantage = target - b.detach()
        surrogate = sum((advantage * score).sum() for score in scores) / t.particles
        fit = (target - b).square().sum() / t.particles  # (value 0 in the loss: it only trains b)
        return loss - (surrogate - surrogate.detach()) + (fit - fit.detach())


@ELBOS.register("gumbel")
class GumbelSoftmaxELBO(Estimator):
    r"""The Gumbel-softmax (concrete) relaxation of every one-hot categorical guide site (Jang et
    al., 2017; Maddison et al., 2017): c̃ = softmax((logits + G) / τ), G standard Gumbel noise,
    reparameterised, passed on to the sites after it; the site's own term the categorical KL(q(c |
    x) ‖ p(c)) in closed form. Low variance, biased for τ > 0 (the bias shrinks with τ, the
    variance grows). ``[train.gumbel] temperature`` τ (0.5)."""

    reparameterized_only = False
    relaxes = True
    discrete_label = "Gumbel-softmax (gumbel)"
    straight_through = False
    temperature = 0.5

    @dataclass(frozen=True)
    class Settings:
        temperature: float = 0.5  # tau of the relaxation: towards 0, less bias and more variance

        def __post_init__(self) -> None:
            if not (isinstance(self.temperature, (int, float)) and 0 < self.temperature < math.inf):
                raise ValueError(f"temperature = {self.temperature} must be a positive finite number")

    @classmethod
    def options(cls, cfg: TrainConfig) -> dict:
        return {"temperature": ELBOS.settings(cfg.elbo, cfg.settings).temperature}

    def relaxation(self) -> Relaxation:
        if not (isinstance(self.temperature, (int, float)) and 0 < self.temperature < math.inf):
            raise ValueError(f"temperature = {self.temperature} must be a positive finite number")
        return Relaxation(self.temperature, self.straight_through)

    def check(self, info: StructureInfo) -> list[str]:
        return [
            f"train.elbo={'gumbel_st' if self.straight_through else 'gumbel'} relaxes one-hot categorical sites, "
            f"but guide site '{s.name}' is neither one nor reparameterised: use train.elbo=trace (its score "
            "function)" + (" or enum" if s.discrete else "")
            for s in info.of("guide")
            if not s.reparameterized and not s.one_hot
        ]

    def objective(self, t: Traces) -> torch.Tensor:
        log_w, _ = _log_w(t)
        return -log_w.sum() / t.particles


@ELBOS.register("gumbel_st")
class StraightThroughGumbelELBO(GumbelSoftmaxELBO):
    """``gumbel`` with the straight-through estimator: the one-hot of the relaxed draw's argmax
    forward (the sites after it see a class), the relaxed draw's gradient backward.
    ``[train.gumbel_st] temperature`` (0.5)."""

    straight_through = True
    discrete_label = "straight-through Gumbel (gumbel_st)"


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
class IWAE_ELBO(Estimator):
    r"""The IWAE bound :math:`\sum_b \log \frac1K \sum_k w_{kb}` (Burda et al., 2016), with the
    reparameterised IWAE gradient :math:`\sum_k \tilde w_k \nabla \log w_k` (normalised weights
    :math:`\tilde w_k`): the value and gradient of Pyro's :class:`~pyro.infer.RenyiELBO` at
    :math:`\alpha = 0` (tested equal)."""

    importance_weighted = True
    min_particles = 2
    lab_rows = (LabRow("iwae", "IWAE bound, K = P (iwae)", snr_label="IWAE (iwae)"),)

    def objective(self, t: Traces) -> torch.Tensor:
        log_w, _ = _log_w(t)
        return -(torch.logsumexp(log_w, dim=0) - math.log(t.particles)).sum()

    def loss_fn(self, source) -> Callable[..., torch.Tensor]:
        """With ``vectorize_particles`` off, K single draws whose log weights are stacked (the
        bound is over all K of them, not an average of one-sample bounds)."""
        n = self.num_particles
        if n == 1 or self.vectorize_particles:
            return super().loss_fn(source)

        def loss(x: torch.Tensor, beta: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
            log_w = torch.stack([_log_w(draw(source, x, beta, 1, self.enumerates, labels))[0] for _ in range(n)])
            return -(torch.logsumexp(log_w, dim=0) - math.log(n)).sum()

        return loss


class _Surrogate(Estimator):
    """An estimator of :mod:`pyro_vae.objectives.surrogates` on the per-sample terms of one draw
    (:meth:`terms`); needs vectorised particles (one draw of N samples)."""

    @classmethod
    def options(cls, cfg: TrainConfig) -> dict:
        return {"groups": cfg.iw_groups} if cls.grouped else {}

    def surrogate(self, terms: Terms) -> torch.Tensor:
        raise NotImplementedError

    def objective(self, t: Traces) -> torch.Tensor:
        terms = self.terms(t)
        return self.surrogate(terms.with_particle_dim() if t.particles == 1 else terms)

    def terms(self, t: Traces) -> Terms:
        """log p(x, z) (the likelihood first), log q and the terms of :attr:`needs`, per draw and
        image, each weighed by its site's scale (the KL warm-up weight)."""
        for name, site in t.guide.items():
            if not site.fn.has_rsample:
                raise ValueError(f"{type(self).__name__} needs a reparameterised guide, but site {name!r} is not")
        log_p = _log_joint(t.model, t.latent)
        log_q = _sum_scaled(t.guide)
        scales = [site.scale for site in t.guide.values()]
        terms = Terms(
            log_p, log_q, zs=[(s.value, s.fn.event_dim) for s in t.guide.values()], beta=scales[0] if scales else 1.0
        )
        if "stop" in self.needs:
            terms.log_q_stop = _sum_scaled(t.stopped_guide())
        if "fixed" in self.needs:
            terms.log_q_fixed_z = _sum_scaled(t.guide_at_detached())
        if "model_fixed" in self.needs or (self.gradient_hooks and len(t.latent) > 1):
            terms.log_p_fixed_z = _log_joint(t.model_at_detached(), t.latent)
        return terms


def _log_joint(model: Sites, latent: list[str]) -> torch.Tensor:
    """log p(x, z) per draw and image: the observed sites first, then the latent ones in order
    (each weighed by its scale; the order keeps the default run's arithmetic)."""
    log_p = _log_obs(model)
    for name in latent:
        log_p = log_p + weigh(model[name].log_prob(), model[name])
    return log_p


def _sum_scaled(sites: Sites) -> torch.Tensor:
    total = None
    for site in sites.values():
        term = weigh(site.log_prob(), site)
        total = term if total is None else total + term
    return total


@ELBOS.register("stl")
class STL_ELBO(_Surrogate):
    """The Monte-Carlo-KL ELBO (``trace``'s value) with the path-derivative encoder gradient
    ("sticking the landing", Roeder et al., 2017): the score term is dropped. With the analytic
    KL there is no score term to drop (``mean_field`` already differentiates the KL exactly)."""

    needs = frozenset({"stop"})
    lab_rows = (LabRow("stl", "path derivative, Monte-Carlo KL (stl)"),)

    def surrogate(self, terms: Terms) -> torch.Tensor:
        return surrogates.stl(terms.log_p, terms.log_q_stop)


@ELBOS.register("iwae_dreg")
class IWAE_DReG(_Surrogate):
    """The IWAE bound (``iwae``'s value) with doubly reparameterised gradients (Tucker et al., 2019):
    the decoder's gradient is IWAE's, the encoder's keeps its signal as K grows. One latent site:
    hooks on z reweight its gradient; several: the hook-free form
    (:func:`~pyro_vae.objectives.surrogates.iwae_dreg_hookless`, one more pass of the model)."""

    importance_weighted = True
    min_particles = 2
    needs = frozenset({"stop"})
    gradient_hooks = True
    lab_rows = (LabRow("iwae_dreg", "IWAE bound, DReG gradients (iwae_dreg)", snr_label="DReG (iwae_dreg)"),)

    def surrogate(self, terms: Terms) -> torch.Tensor:
        if terms.log_p_fixed_z is not None:
            return surrogates.iwae_dreg_hookless(
                terms.log_p, terms.log_q, terms.log_q_stop, terms.log_p_fixed_z, terms.beta
            )
        return surrogates.iwae_dreg(terms.log_p, terms.log_q, terms.log_q_stop, terms.zs, terms.beta)


@ELBOS.register("miwae")
class MIWAE(_Surrogate):
    """The mean of M = ``train.iw_groups`` IWAE bounds of K = ``train.num_particles`` samples each
    (Rainforth et al., 2018): M = 1 is ``iwae``, K = 1 the ELBO."""

    importance_weighted = True
    grouped = True
    lab_rows = (LabRow("miwae", "MIWAE, M groups of P/M (miwae)"),)

    def surrogate(self, terms: Terms) -> torch.Tensor:
        return surrogates.miwae(terms.log_p - terms.log_q, self.groups)


@ELBOS.register("ciwae")
class CIWAE(_Surrogate):
    """``train.ciwae.beta`` x ELBO + (1 - beta) x IWAE bound on the same K samples (Rainforth et al.,
    2018): beta = 0 is ``iwae``, beta = 1 the ELBO."""

    importance_weighted = True
    ciwae_beta = 0.5
    lab_rows = (LabRow("ciwae", "CIWAE, beta mix of ELBO and IWAE (ciwae)"),)

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
class PIWAE(_Surrogate):
    """The IWAE bound of all M K samples for the decoder, MIWAE(M, K) for the encoder (Rainforth
    et al., 2018); its value is the IWAE bound."""

    importance_weighted = True
    grouped = True
    needs = frozenset({"stop", "fixed", "model_fixed"})
    lab_rows = (LabRow("piwae", "PIWAE, M groups of P/M (piwae)", snr_label="PIWAE (piwae, M groups of K/M)"),)

    def surrogate(self, terms: Terms) -> torch.Tensor:
        t = terms
        return surrogates.piwae(t.log_p, t.log_q, t.log_q_stop, t.log_q_fixed_z, t.log_p_fixed_z, self.groups)


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
    if issubclass(cls, _Surrogate) and total > 1 and not cfg.vectorize_particles:
        raise ConfigError(
            f"train.elbo={cfg.elbo} draws its {total} samples as one tensor: set train.vectorize_particles=true"
        )
    vectorize = cfg.vectorize_particles and total > 1
    return cls(num_particles=cfg.num_particles, vectorize_particles=vectorize, max_plate_nesting=1, **cls.options(cfg))
