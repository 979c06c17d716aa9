r"""The estimator laboratory: analytic-KL versus Monte-Carlo ELBO, measured.

On fixed images and a (trained) VAE, :func:`run_lab` estimates

1. **values** (nats per image): the negative ELBO by ``Trace_ELBO`` (Monte-Carlo KL), by
   ``TraceMeanField_ELBO`` (analytic KL) and by the hand-written closed form; the IWAE bound
   :math:`\mathcal L_K` for several K; the importance-sampled log-likelihood (the bound at the
   largest K); and the gap :math:`\mathrm{ELBO} - \log p(x) = -\mathrm{KL}(q(z|x)\,\|\,p(z|x))`;
2. **variance**: the per-image standard deviation of each ELBO estimator with P particles,
   for P in ``particles`` (it falls as :math:`1/\sqrt P`);
3. **gradients**: variance and signal-to-noise ratio :math:`|\mathbb E g_j| / \mathrm{sd}(g_j)`
   (averaged over parameter coordinates j) of the gradient estimates for the encoder and the
   decoder separately, for the Monte-Carlo-KL and the analytic-KL reparameterised estimators,
   the score-function estimator (a guide whose samples are not reparameterised, handled by
   ``TraceGraph_ELBO``) and the registered ``stl``, ``iwae``, ``iwae_dreg``, ``miwae``, ``ciwae``
   and ``piwae`` (P samples in all; M = ``groups`` groups of P / M for the grouped ones), across P;
4. **encoder SNR against K** for ``iwae``, ``iwae_dreg`` and ``piwae`` (``groups`` groups of
   K / M: the same K samples per image), K in ``snr_ks``: IWAE's falls like :math:`1/\sqrt K`
   (Rainforth et al., 2018), DReG's does not (Tucker et al., 2019).

Per-particle ELBO terms come from Pyro traces of ``vae.guide`` and ``vae.model`` under a
vectorised particle plate: the same terms ``Trace_ELBO`` (``log p(x,z) - log q(z|x)``) and
``TraceMeanField_ELBO`` (``log p(x|z) - KL(q||p)``, with ``torch.distributions.kl_divergence``)
sum, kept per image (``tests/lab/test_estimators.py`` checks the sums against Pyro's own losses).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from pyro.distributions import TorchDistribution
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.distributions import Independent, kl_divergence
from tqdm.auto import tqdm

from pyro_vae.components.guides import DiagNormal
from pyro_vae.components.likelihoods import Bernoulli
from pyro_vae.components.priors import StandardNormal
from pyro_vae.evaluation.metrics import eval_mode, iwae_log_likelihood, mean_se, samples_per_chunk
from pyro_vae.model import VAE, Structure
from pyro_vae.objectives import closed_form
from pyro_vae.objectives.elbos import ELBOS
from pyro_vae.objectives.sites import PyroSource, draw, without_analytic_kl
from pyro_vae.seeding import fork_rng


@dataclass(frozen=True)
class LabConfig:
    images: int = 100  # evenly spaced test images the values and spreads are averaged over
    ks: tuple[int, ...] = (1, 10, 100, 1000)  # IWAE sample sizes; the largest gives log p(x)
    particles: tuple[int, ...] = (1, 4, 16, 64)  # P, particles per ELBO / gradient estimate
    reps: int = 32  # independent P-particle estimates per image for the spread
    grad_images: int = 32  # images in the batch whose gradient is estimated
    grad_reps: int = 50  # independent gradient estimates per (estimator, P)
    snr_ks: tuple[int, ...] = (1, 4, 16, 64, 256, 1024)  # samples per image in the encoder-SNR-against-K panel
    groups: int = 4  # M of miwae / piwae (P = M x P/M samples where M divides P, else M = 1)
    ciwae_beta: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("images", "reps", "grad_images", "grad_reps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.groups < 1 or not 0 <= self.ciwae_beta <= 1:
            raise ValueError(
                f"groups must be at least 1 (got {self.groups}) and ciwae_beta in [0, 1] (got {self.ciwae_beta})"
            )
        if self.reps < 2 or self.grad_reps < 2:
            raise ValueError("reps and grad_reps must be at least 2 to estimate a spread")
        for name in ("ks", "particles", "snr_ks"):
            values = getattr(self, name)
            if not values or min(values) < 1:
                raise ValueError(f"every value of {name} must be at least 1 (K < 1 has no meaning), got {list(values)}")


@dataclass
class LabResult:
    config: LabConfig
    values: dict = field(default_factory=dict)
    spread: dict = field(default_factory=dict)
    gradients: dict = field(default_factory=dict)
    snr_vs_k: dict = field(default_factory=dict)  # estimator -> K -> encoder gradient stats


def _describe(d) -> str:
    base = d
    while isinstance(base, Independent):
        base = base.base_dist
    return type(base).__name__ if base is d else f"{type(base).__name__} (inside {type(d).__name__})"


def check_analytic_kl(vae: Structure, x: torch.Tensor) -> None:
    """Raise ``ValueError`` if the KL of some latent site, KL(q || p), has no closed form."""
    missing = without_analytic_kl(vae, x[:1])
    if missing is not None:
        name, q, p, several = missing
        where = f" at site '{name}'" if several else ""
        raise ValueError(
            f"no analytic KL is registered{where} between the guide's {_describe(q)} and the prior's "
            f"{_describe(p)}; the analytic-versus-Monte-Carlo comparison needs one "
            "(register it with torch.distributions.kl.register_kl, or compare a model with "
            "model.prior=standard_normal and model.guide=diag_normal)"
        )


def _mean_se(values: torch.Tensor) -> dict[str, float]:
    mean, se = mean_se(values)
    return {"mean": mean, "se": se}


@torch.no_grad()
def elbo_terms(vae: Structure, x: torch.Tensor, num_particles: int) -> dict[str, torch.Tensor]:
    """Per-particle, per-image ELBO terms from Pyro traces, each of shape (num_particles, B), summed
    over the latent sites (one for ``vae``, one per layer for ``hierarchical``).

    ``log_lik`` = log p(x|z), ``log_prior`` = log p(z), ``log_q`` = log q(z|x) at z ~ q and
    ``kl`` = KL(q(z|x) || p(z)) in closed form (site by site, given the guide's draws above it).
    The Monte-Carlo ELBO particle (``Trace_ELBO``) is ``log_lik + log_prior - log_q``; the
    analytic one (``TraceMeanField_ELBO``) ``log_lik - kl``.
    Particles are drawn in chunks so that memory stays bounded.
    """
    chunk = samples_per_chunk(x)
    pieces = [_elbo_terms(vae, x, min(chunk, num_particles - s)) for s in range(0, num_particles, chunk)]
    return {key: torch.cat([piece[key] for piece in pieces]) for key in pieces[0]}


def _elbo_terms(vae: Structure, x: torch.Tensor, num_particles: int) -> dict[str, torch.Tensor]:
    t = draw(PyroSource(vae.model, vae.guide, vae), x, None, num_particles)
    shape = (num_particles, x.shape[0])

    def total(terms) -> torch.Tensor:
        return sum(term.expand(shape) for term in terms)

    latent = [(t.guide[name], t.model[name]) for name in t.latent]
    return {
        "log_lik": total(t.model[name].log_prob() for name in t.observed),
        "log_prior": total(p.log_prob() for _, p in latent),
        "log_q": total(q.log_prob() for q, _ in latent),
        "kl": total(kl_divergence(q.fn, p.fn) for q, p in latent),
    }


def estimator_particles(terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Negative-ELBO particles (P, B) of the two estimators, and their KL terms."""
    return {
        "trace": -(terms["log_lik"] + terms["log_prior"] - terms["log_q"]),
        "mean_field": -(terms["log_lik"] - terms["kl"]),
        "trace_kl_term": terms["log_q"] - terms["log_prior"],
        "mean_field_kl_term": terms["kl"],
    }


def has_closed_form(vae: Structure) -> bool:
    """``pyro_vae.objectives.closed_form`` covers the default components only."""
    return (
        isinstance(vae, VAE)
        and isinstance(vae.prior, StandardNormal)
        and isinstance(vae.likelihood, Bernoulli)
        and isinstance(vae.encoder, DiagNormal)
    )


@torch.no_grad()
def closed_form_particles(vae: Structure, x: torch.Tensor, num_particles: int) -> torch.Tensor:
    """Negative ELBO of the hand-written closed form (analytic KL), (num_particles, B)."""
    loc, scale = vae.encoder.loc_scale(x)
    chunk = samples_per_chunk(x)
    out = []
    for start in range(0, num_particles, chunk):
        eps = torch.randn((min(chunk, num_particles - start), *loc.shape), dtype=loc.dtype, device=loc.device)
        z = loc + scale * eps
        out.append(closed_form.neg_elbo_analytic(x, vae.decoder(z), loc, scale))
    return torch.cat(out)


def spread(particles: torch.Tensor, counts: tuple[int, ...], reps: int) -> dict[int, dict[str, float]]:
    """Per-image standard deviation of the P-particle average, for every P in ``counts``.

    ``particles`` (M, B) holds M >= reps * max(counts) iid draws per image; the P-particle
    estimates are means over disjoint groups of P draws, ``reps`` of them per image.
    """
    out = {}
    for p in counts:
        groups = particles[: reps * p].reshape(reps, p, -1).mean(1)  # (reps, B)
        per_image = groups.double().std(0)
        out[p] = {"mean_sd": float(per_image.mean()), "median_sd": float(per_image.median())}
    return out


class _ScoreFunctionOnly(TorchDistribution):
    """``base`` with samples that carry no pathwise gradient: an estimator then differentiates
    through its log-density (the score function) instead of through the sample."""

    has_rsample = False
    arg_constraints: dict = {}

    def __init__(self, base) -> None:
        self.base = base
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self):
        return self.base.support

    def expand(self, batch_shape, _instance=None):
        return _ScoreFunctionOnly(self.base.expand(batch_shape))

    def sample(self, sample_shape=()):
        return self.base.sample(torch.Size(sample_shape))

    def log_prob(self, value):
        return self.base.log_prob(value)


class _NotReparameterised(Messenger):
    def _pyro_sample(self, msg) -> None:
        if not msg["is_observed"] and not site_is_subsample(msg):
            msg["fn"] = _ScoreFunctionOnly(msg["fn"])


def score_function_guide(vae: Structure):
    """``vae.guide`` with every latent site sampled without reparameterisation (any structure), so
    the estimator differentiates through ``log q`` (the score function) instead of through z."""

    def guide(x, beta=None):
        with _NotReparameterised():
            vae.guide(x) if beta is None else vae.guide(x, beta)

    return guide


@dataclass(frozen=True)
class GradientEstimator:
    """One row of the laboratory's gradient table, read from an estimator class's
    :attr:`~pyro_vae.objectives.elbos.ELBOFlags.lab_rows`: ``build(vae, num_particles, groups,
    ciwae_beta)`` returns the (estimator, guide) that draws ``num_particles`` samples per image in
    all (``groups`` groups of ``num_particles / groups`` where ``grouped``); ``snr_label`` puts it
    in the encoder-SNR-against-K panel too."""

    name: str
    label: str
    build: Callable
    grouped: bool = False
    snr_label: str | None = None


def _build(elbo_name: str, guide: str):
    """The registered estimator ``elbo_name`` with the guide's samples reparameterised or not."""

    def build(vae: Structure, num_particles: int, groups: int, ciwae_beta: float):
        cls = ELBOS.get(elbo_name)
        groups = groups if cls.grouped else 1
        options = {"ciwae_beta": ciwae_beta} if "ciwae_beta" in vars(cls) else {}
        elbo = cls(
            num_particles=num_particles // groups,
            groups=groups,
            vectorize_particles=num_particles > 1,
            max_plate_nesting=1,
            **options,
        )
        return elbo, (score_function_guide(vae) if guide == "score_function" else vae.guide)

    return build


def _table() -> dict[str, GradientEstimator]:
    rows = {}
    for name in ELBOS.in_order():
        cls = ELBOS.get(name)
        for row in getattr(cls, "lab_rows", ()):
            rows[row.name] = GradientEstimator(row.name, row.label, _build(name, row.guide), cls.grouped, row.snr_label)
    return rows


GRADIENT_ESTIMATORS: dict[str, GradientEstimator] = _table()  # the registered estimators' rows, in registry order
SNR_VS_K_ESTIMATORS = [e.name for e in GRADIENT_ESTIMATORS.values() if e.snr_label]


def _gradient_estimator(name: str, vae: Structure, num_particles: int, groups: int = 1, ciwae_beta: float = 0.5):
    """(Pyro ELBO, guide) of the laboratory's estimator ``name`` (see :data:`GRADIENT_ESTIMATORS`)."""
    if name not in GRADIENT_ESTIMATORS:
        raise ValueError(f"unknown gradient estimator {name!r}; choose from {', '.join(GRADIENT_ESTIMATORS)}")
    return GRADIENT_ESTIMATORS[name].build(vae, num_particles, groups, ciwae_beta)


def lab_groups(particles: int, groups: int) -> int:
    """M for ``particles`` samples in the gradient table: ``groups`` where it divides them, else 1."""
    return groups if particles % groups == 0 else 1


def gradient_samples(
    vae: Structure,
    x: torch.Tensor,
    estimator: str,
    num_particles: int,
    reps: int,
    groups: int = 1,
    ciwae_beta: float = 0.5,
) -> dict[str, torch.Tensor]:
    """``reps`` independent gradient estimates of the mean negative objective of ``x``, as flat
    vectors (reps, n_params) for each group of the structure's parameters
    (:meth:`~pyro_vae.model.Structure.parameter_groups`: encoder and decoder, and shared ones)."""
    elbo, guide = _gradient_estimator(estimator, vae, num_particles, groups, ciwae_beta)
    loss = elbo.loss_fn(PyroSource(vae.model, guide, vae))  # the structure given: its guide can run detached
    groups = {g: [p for p in params if p.requires_grad] for g, params in vae.parameter_groups().items()}
    groups = {g: params for g, params in groups.items() if params}
    rows: dict[str, list[torch.Tensor]] = {g: [] for g in groups}
    for _ in range(reps):
        vae.zero_grad(set_to_none=True)
        value = loss(x)
        if value.requires_grad:  # (nothing to estimate for a frozen model)
            value.backward()
        for g, params in groups.items():
            rows[g].append(torch.cat([p.grad.flatten() / x.shape[0] for p in params]))
    vae.zero_grad(set_to_none=True)
    return {g: torch.stack(r) for g, r in rows.items()}


def snr_noise_floor(reps: int) -> float:
    """The mean |mean| / sd that ``reps`` draws show when the true gradient is zero:
    E|N(0, 1/reps)| = sqrt(2 / pi) / sqrt(reps). Measured SNRs near it mean "no signal seen"."""
    return math.sqrt(2 / math.pi) / math.sqrt(reps)


def gradient_stats(samples: torch.Tensor) -> dict[str, float]:
    """Mean over coordinates of the variance and of |mean| / sd of (reps, n) gradient draws."""
    samples = samples.double()
    mean, sd = samples.mean(0), samples.std(0)
    ok = sd > 0
    return {
        "variance": float((sd**2).mean()),
        "snr": float((mean[ok].abs() / sd[ok]).mean()) if ok.any() else float("nan"),
        "mean_norm": float(mean.norm()),
    }


def run_lab(vae: Structure, x: torch.Tensor, cfg: LabConfig = LabConfig(), progress: bool = False) -> LabResult:
    """Measure the estimators on images ``x`` (N, D), the model in eval mode (its mode restored
    afterwards); see the module docstring."""
    check_analytic_kl(vae, x)
    with eval_mode(vae):
        return _run_lab(vae, x, cfg, progress)


def _run_lab(vae: Structure, x: torch.Tensor, cfg: LabConfig, progress: bool) -> LabResult:
    result = LabResult(cfg)
    pmax = max(cfg.particles)
    steps = len(cfg.ks) + 2 + len(GRADIENT_ESTIMATORS) * len(cfg.particles) + len(SNR_VS_K_ESTIMATORS) * len(cfg.snr_ks)
    bar = tqdm(total=steps, desc="estimator lab", disable=None if progress else True)
    with fork_rng(x.device):
        torch.manual_seed(cfg.seed)
        # 1. values and 2. spread, from one big set of particles per image
        n_particles = max(cfg.reps * pmax, 1000)
        parts = estimator_particles(elbo_terms(vae, x, n_particles))
        bar.update()
        values = {name: _mean_se(parts[name].mean(0)) for name in ("trace", "mean_field")}
        if has_closed_form(vae):
            values["closed_form"] = _mean_se(closed_form_particles(vae, x, n_particles).mean(0))
        result.spread = {
            name: spread(parts[name], cfg.particles, cfg.reps)
            for name in ("trace", "mean_field", "trace_kl_term", "mean_field_kl_term")
        }
        bar.update()
        bounds = {}
        for k in sorted(cfg.ks):
            bounds[k], _ = iwae_log_likelihood(vae, x, k)
            bar.update()
        kmax = max(cfg.ks)
        for k in sorted(cfg.ks):
            # the spread across images is large; differences between K, paired by image, are precise
            values[f"iwae_{k}"] = {**_mean_se(-bounds[k]), "se_vs_kmax": _mean_se(bounds[k] - bounds[kmax])["se"]}
        values["nll"] = {**values[f"iwae_{kmax}"], "k": kmax}
        # ELBO - log p(x) per image, with log p(x) estimated by the largest-K bound (so the
        # magnitude of this gap is a lower bound on KL(q(z|x) || p(z|x)))
        values["gap"] = _mean_se(-parts["mean_field"].mean(0) - bounds[kmax])
        result.values = values
        # 3. gradients
        xg = x[: cfg.grad_images]
        for estimator in GRADIENT_ESTIMATORS:
            result.gradients[estimator] = {}
            for p in cfg.particles:
                draws = gradient_samples(
                    vae, xg, estimator, p, cfg.grad_reps, lab_groups(p, cfg.groups), cfg.ciwae_beta
                )
                result.gradients[estimator][p] = {g: gradient_stats(d) for g, d in draws.items()}
                bar.update()
        # 4. encoder SNR against the number of samples K (PIWAE: M groups of K / M, the same budget)
        for estimator in SNR_VS_K_ESTIMATORS:
            result.snr_vs_k[estimator] = {}
            for k in cfg.snr_ks:
                m = lab_groups(k, cfg.groups) if GRADIENT_ESTIMATORS[estimator].grouped else 1
                draws = gradient_samples(vae, xg, estimator, k, cfg.grad_reps, m)
                if "encoder" in draws:  # (a model whose encoder is frozen has none)
                    result.snr_vs_k[estimator][k] = gradient_stats(draws["encoder"])
                bar.update()
        result.snr_vs_k = {est: rows for est, rows in result.snr_vs_k.items() if rows}
    bar.close()
    return result
