"""Every registered prior, likelihood, guide and ELBO: shapes, densities against samplers
(goodness of fit), one SVI step for every combination the build-time checks accept, the
documented error for every one they reject, and KL warm-up as each estimator defines it."""

from __future__ import annotations

import itertools
import math

import pyro
import pytest
import torch
from pyro.distributions.testing.gof import multinomial_goodness_of_fit
from torch.distributions import MixtureSameFamily

from pyro_vae.components.guides import GUIDES
from pyro_vae.components.likelihoods import LIKELIHOODS, DiscretizedLogisticDist, _BernoulliLogits
from pyro_vae.components.nets import NETWORKS
from pyro_vae.components.priors import PRIORS, GaussianMixture
from pyro_vae.config import ConfigError, ExperimentConfig, ModelConfig, TrainConfig, load_config
from pyro_vae.data import Splits
from pyro_vae.model import VAE, build_vae
from pyro_vae.objectives.elbos import ELBOS, build_elbo
from pyro_vae.objectives.fast import build_loss
from pyro_vae.training.checks import check_compatible, check_data
from pyro_vae.training.engine import make_optimizer, train_step
from tests.helpers import ROOT, assert_mc_close, mean_se

B, D, L = 5, 12, 3
GOF_THRESHOLD = 1e-3  # chi-square p-value below which a discrete sampler and its probabilities disagree


def _cfg(**model) -> ModelConfig:
    return ModelConfig(latent_dim=L, hidden=(8,), settings=_components(4), **model)


def _components(k: int) -> dict:
    """Settings with ``k`` components for the mixture prior and ``k`` pseudo-inputs for vamp."""
    return {"mixture_of_gaussians": {"components": k}, "vamp": {"components": k}}


def _encoder(guide="diag_normal", d=D, cfg=None):
    cfg = cfg or _cfg()
    network = NETWORKS.build(cfg.network, cfg.settings, cfg=cfg)
    return GUIDES.build(guide, cfg.settings, data_dim=d, latent_dim=cfg.latent_dim, cfg=cfg, network=network)


# ---------------------------------------------------------------- shapes and finite densities


@pytest.mark.parametrize("name", PRIORS.names())
def test_prior_shapes(name):
    torch.manual_seed(0)
    prior = PRIORS.build(name, {}, latent_dim=L, data_dim=D, encoder=_encoder(), cfg=_cfg())(B)
    assert prior.batch_shape == (B,) and prior.event_shape == (L,)
    z = prior.sample((7,))
    assert z.shape == (7, B, L)
    assert prior.log_prob(z).shape == (7, B) and torch.isfinite(prior.log_prob(z)).all()


@pytest.mark.parametrize("name", LIKELIHOODS.names())
def test_likelihood_shapes(name):
    torch.manual_seed(0)
    lik = LIKELIHOODS.build(name, {}, data_dim=D, cfg=_cfg())
    h = torch.randn(7, B, lik.param_dim(D))
    px = lik(h)
    assert px.batch_shape == (7, B) and px.event_shape == (D,)
    x = px.sample()
    assert x.shape == (7, B, D) and torch.isfinite(px.log_prob(x)).all() and px.log_prob(x).shape == (7, B)
    mean = lik.mean(h)
    assert mean.shape == (7, B, D) and (mean >= 0).all() and (mean <= 1).all()
    lik.validate(x[0], "samples")  # its own samples are in its support


@pytest.mark.parametrize("name", GUIDES.names())
def test_guide_shapes(name):
    torch.manual_seed(0)
    guide = _encoder(name)
    q = guide(torch.rand(B, D))
    assert q.batch_shape == (B,) and q.event_shape == (L,) and q.has_rsample
    z = q.rsample((7,))
    assert z.shape == (7, B, L) and torch.isfinite(q.log_prob(z)).all() and q.log_prob(z).shape == (7, B)
    assert guide.point(torch.rand(B, D)).shape == (B, L)


# ---------------------------------------------------------------- samplers agree with densities


def _check_sampler_density(sample, log_prob, what: str, n: int, seed: int) -> None:
    """If z ~ q (the sampler) and q is the density, E[r(z) / q(z)] = 1 for every normalised
    density r; a sampler whose law differs from q moves it. Checked for five Gaussians r around
    the bulk of q (half its spread, so r / q has finite variance), each within 4.5 standard
    errors (five z-scores: a false alarm about once in 30,000 seeds)."""
    pilot = sample(n)
    m, s = pilot.mean(0), pilot.std(0)
    z = sample(n)
    log_q = log_prob(z)
    dims = z.shape[-1]
    shifts = [torch.zeros(dims)] + [sign * 0.5 * torch.eye(dims)[i] for i in range(min(dims, 2)) for sign in (1, -1)]
    for shift in shifts:
        r = torch.distributions.Normal(m + shift.to(m) * s, 0.5 * s).log_prob(z).sum(-1)
        est, se = mean_se((r - log_q).exp())
        what_r = f"{what}: E_q[r/q] for r centred at mean + {shift.tolist()} sd"
        assert_mc_close(est, 1.0, se, n=n, seed=seed, what=what_r, z_max=4.5)


def test_the_sampler_density_check_catches_a_wrong_sampler():
    torch.manual_seed(0)
    wrong = torch.distributions.Normal(torch.zeros(2, dtype=torch.float64), 1.1)  # sampler 10% too wide
    density = torch.distributions.Normal(torch.zeros(2, dtype=torch.float64), 1.0)
    with pytest.raises(AssertionError, match="z = "):
        _check_sampler_density(lambda k: wrong.sample((k,)), lambda z: density.log_prob(z).sum(-1), "wrong", 20000, 0)


@pytest.mark.parametrize("name", PRIORS.names())
def test_prior_sampler_matches_density(name):
    n, seed = 20000, 0
    torch.manual_seed(seed)
    cfg = ModelConfig(latent_dim=2, hidden=(8,), settings=_components(3))
    encoder = _encoder(cfg=cfg).double()  # (the vamp prior shares the guide's network)
    prior = PRIORS.build(name, cfg.settings, latent_dim=2, data_dim=D, encoder=encoder, cfg=cfg).double()
    p = prior(1)
    with torch.no_grad():
        _check_sampler_density(
            lambda k: p.sample((k,))[:, 0], lambda z: p.log_prob(z[:, None])[:, 0], f"prior {name}", n, seed
        )


@pytest.mark.parametrize("name", GUIDES.names())
def test_guide_sampler_matches_density(name):
    n, seed = 20000, 0
    torch.manual_seed(seed)
    cfg = ModelConfig(latent_dim=2, hidden=(8,))
    guide = _encoder(name, cfg=cfg).double()
    with torch.no_grad():
        q = guide(torch.rand(1, D, dtype=torch.float64))
        _check_sampler_density(
            lambda k: q.rsample((k,))[:, 0], lambda z: q.log_prob(z[:, None])[:, 0], f"guide {name}", n, seed
        )


@pytest.mark.parametrize("name", LIKELIHOODS.names())
def test_likelihood_sampler_matches_density(name):
    """Continuous likelihoods: the E[r/q] = 1 test on two pixels; discrete ones: a chi-square test of
    one pixel's frequencies over its whole support (whose probabilities must sum to 1)."""
    n, seed = 4000, 0
    torch.manual_seed(seed)
    lik = LIKELIHOODS.build(name, {"gaussian": {"scale": 0.3}}, data_dim=2, cfg=ModelConfig()).double()
    if name == "discretized_logistic_mixture":  # K blocks each of logits, locations in (0, 1), log-scales
        k = lik.param_dim(2) // 6
        g = torch.Generator().manual_seed(seed)
        parts = [torch.randn(k, 2, generator=g), torch.rand(k, 2, generator=g), -3 + torch.rand(k, 2, generator=g)]
        h = torch.cat(parts).reshape(-1).double()
    else:
        h = torch.tensor([0.3, -0.8, -1.5, -2.5][: lik.param_dim(2)], dtype=torch.float64)
    px = lik(h)
    x = px.sample((n,))
    if name in ("bernoulli", "discretized_logistic", "discretized_logistic_mixture"):
        levels = torch.linspace(0, 1, 2 if name == "bernoulli" else 256, dtype=torch.float64)
        grid = torch.stack([levels, torch.full_like(levels, x[0, 1].item())], -1)
        marginal = px.base_dist.log_prob(grid)[:, 0].exp()  # pixel 0 over its support
        assert abs(marginal.sum().item() - 1) < 1e-9, f"{name}: probabilities sum to {marginal.sum().item()}"
        counts = torch.stack([(x[:, 0] == v).sum() for v in levels]).double()
        p = multinomial_goodness_of_fit(marginal, counts)
        assert p > GOF_THRESHOLD, f"likelihood {name}: chi-square p = {p:.2g}; N = {n}, seed = {seed}"
    else:
        _check_sampler_density(lambda k: px.sample((k,)), px.log_prob, f"likelihood {name}", n, seed)


def test_gaussian_mixture_equals_torch_mixture_same_family():
    torch.manual_seed(0)
    logits, loc = torch.randn(5, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    scale = torch.rand(5, 3, dtype=torch.float64) + 0.2
    ours = GaussianMixture(logits, loc, scale, [4])
    theirs = MixtureSameFamily(
        torch.distributions.Categorical(logits=logits),
        torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1),
    )
    z = torch.randn(6, 4, 3, dtype=torch.float64)
    assert torch.allclose(ours.log_prob(z), theirs.log_prob(z), atol=1e-12, rtol=0)


def test_discretized_logistic_equals_cdf_differences():
    loc, scale = torch.tensor(0.4, dtype=torch.float64), torch.tensor(0.07, dtype=torch.float64)
    d = DiscretizedLogisticDist(loc, scale)
    x = torch.arange(256, dtype=torch.float64) / 255
    cdf = lambda v: torch.sigmoid((v - loc) / scale)  # noqa: E731
    direct = cdf(x + 0.5 / 255) - cdf(x - 0.5 / 255)
    direct[0], direct[-1] = cdf(x[0] + 0.5 / 255), 1 - cdf(x[-1] - 0.5 / 255)
    assert torch.allclose(d.log_prob(x).exp(), direct, atol=1e-12, rtol=0)
    # far in the tails the direct difference underflows; the stable form stays finite
    tight = DiscretizedLogisticDist(torch.tensor(0.0), torch.tensor(1e-3))
    assert torch.isfinite(tight.log_prob(torch.tensor(0.5))) and tight.log_prob(torch.tensor(0.5)) < -100


# ---------------------------------------------------------------- every combination, one step

ELBO_CHOICES = [  # (elbo, particles, kl_fallback)
    ("trace", 1, True),
    ("enum", 1, True),  # (no discrete site: trace's)
    ("tracegraph", 1, True),
    ("gumbel", 1, True),
    ("gumbel_st", 1, True),
    ("mean_field", 2, True),
    ("mean_field", 1, False),
    ("jit_trace", 2, True),
    ("jit_mean_field", 1, True),
    ("iwae", 3, True),
    ("iwae", 1, True),
    ("stl", 2, True),
    ("iwae_dreg", 3, True),
    ("iwae_dreg", 1, True),
    ("miwae", 2, True),
    ("ciwae", 2, True),
    ("piwae", 2, True),
]
COMBINATIONS = list(itertools.product(PRIORS.names(), LIKELIHOODS.names(), GUIDES.names(), ELBO_CHOICES))


def expected_rejection(prior, likelihood, guide, elbo, particles, kl_fallback) -> str | None:
    """The documented rules of pyro_vae.training.checks, written out independently: the message expected."""
    if prior == "vamp" and guide != "diag_normal":
        return "Use model.guide=diag_normal with model.prior=vamp"
    if ELBOS.get(elbo).min_particles > particles:
        return "needs train.num_particles >= 2"
    if ELBOS.get(elbo).analytic_kl and not kl_fallback and (prior != "standard_normal" or guide != "diag_normal"):
        return "set train.kl_fallback=true"
    return None


def test_every_component_and_rule_is_exercised():
    rejected = [c for c in COMBINATIONS if expected_rejection(*c[:3], *c[3])]
    accepted = [c for c in COMBINATIONS if not expected_rejection(*c[:3], *c[3])]
    for registry, i in ((PRIORS, 0), (LIKELIHOODS, 1), (GUIDES, 2)):
        assert {c[i] for c in accepted} == set(registry.names())
    assert {c[3][0] for c in accepted} == set(ELBOS.names())
    assert {expected_rejection(*c[:3], *c[3]) for c in rejected} == {
        "Use model.guide=diag_normal with model.prior=vamp",
        "needs train.num_particles >= 2",
        "set train.kl_fallback=true",
    }


@pytest.mark.parametrize("prior,likelihood,guide,elbo_choice", COMBINATIONS)
def test_one_svi_step_or_the_documented_error(prior, likelihood, guide, elbo_choice):
    elbo, particles, kl_fallback = elbo_choice
    pyro.set_rng_seed(0)
    cfg = ExperimentConfig(
        model=_cfg(prior=prior, likelihood=likelihood, guide=guide),
        train=TrainConfig(elbo=elbo, num_particles=particles, kl_fallback=kl_fallback),
    )
    x = torch.bernoulli(torch.full((B, D), 0.3))
    expected = expected_rejection(prior, likelihood, guide, elbo, particles, kl_fallback)

    def build():  # the order fit() uses
        vae = build_vae(cfg.model, D)
        check_compatible(vae, cfg, build_elbo(cfg.train), x)
        return vae, build_loss(vae, cfg.train, x)

    if expected:
        with pytest.raises(ConfigError, match=expected):
            build()
        return
    vae, loss_fn = build()
    before = [p.detach().clone() for p in vae.parameters()]
    loss = train_step(loss_fn, make_optimizer(vae, 1e-2), x, beta=0.5)
    assert torch.isfinite(loss)
    changed = [not torch.equal(a, b) for a, b in zip(before, vae.parameters())]
    assert all(changed), [n for (n, _), c in zip(vae.named_parameters(), changed) if not c]


# ---------------------------------------------------------------- other rejections


def test_jit_elbo_rejects_a_model_whose_sites_change():
    class Shifty(VAE):
        calls = 0

        def model(self, x, beta=None):
            Shifty.calls += 1
            super().model(x, beta)
            if Shifty.calls % 2:
                pyro.sample("extra", pyro.distributions.Normal(0.0, 1.0))

    base = build_vae(_cfg(), D)
    vae = Shifty(base.prior, base.likelihood, base.encoder, base.decoder)
    cfg = ExperimentConfig(model=_cfg(), train=TrainConfig(elbo="jit_trace"))
    with pytest.raises(ConfigError, match="sample sites change between calls.*use train.elbo=trace"):
        check_compatible(vae, cfg, build_elbo(cfg.train), torch.bernoulli(torch.full((B, D), 0.3)))


@pytest.mark.parametrize(
    "likelihood,values,message",
    [
        ("bernoulli", [0.0, 0.5, 1.0], "needs binary pixels, but 1 values"),
        ("continuous_bernoulli", [0.0, 1.5, 1.0], "needs pixels in \\[0, 1\\], but 1 values"),
        ("discretized_logistic", [0.0, 0.5, 1.0], "needs grey levels k/255"),
        ("discretized_logistic", [-0.2, 0.0, 1.0], "needs pixels in \\[0, 1\\]"),
        ("gaussian", [0.0, float("nan"), 1.0], "needs finite pixels, but 1 values"),
    ],
)
def test_data_outside_the_support_is_rejected_before_training(likelihood, values, message):
    x = torch.tensor([values])
    splits = Splits(x, x, x, (1, 3), source="toy")
    vae = build_vae(_cfg(likelihood=likelihood), 3)
    with pytest.raises(ConfigError, match=f"toy \\[train\\]: the {likelihood} likelihood {message}"):
        check_data(vae, splits)


# ---------------------------------------------------------------- KL warm-up, per estimator


def _vae_without_decoder_noise():
    """A float64 VAE whose decoder ignores z, so every loss is a deterministic function of the
    guide's draw only through the KL term: ELBOs can be compared exactly across compilations."""
    torch.manual_seed(0)
    vae = build_vae(_cfg(), D).double()
    with torch.no_grad():
        vae.decoder[-1].weight.zero_()
    return vae, torch.bernoulli(torch.full((B, D), 0.3, dtype=torch.float64))


@pytest.mark.parametrize("elbo", ELBOS.names())
@pytest.mark.parametrize("fast", [True, False])
def test_kl_warmup_weights_exactly_the_kl_term(elbo, fast):
    """loss(beta) = -sum_b [log p(x|z) - beta KL_b] for the ELBOs (KL analytic or per draw) and
    -sum_b log mean_k exp(log p(x|z_k) - beta (log q - log p)(z_k)) for iwae and iwae_dreg, on the
    same draws."""
    vae, x = _vae_without_decoder_noise()
    bound = elbo in ("iwae", "iwae_dreg")  # the others are the ELBO with one particle (K = M = 1)
    particles = 3 if bound else 1
    loss_fn = build_loss(vae, TrainConfig(elbo=elbo, num_particles=particles, fast_path=fast), x)
    loss_fn(x, torch.tensor(1.0, dtype=torch.float64))  # a JIT ELBO compiles here (its draws differ once)
    q, p = vae.encoder(x), vae.prior(B)
    for beta in (0.25, 1.0, 4.0):  # warm-up, the ELBO, a beta-VAE
        torch.manual_seed(7)
        z = q.rsample((particles,))
        log_lik = vae.likelihood(vae.decoder(z)).log_prob(x)
        kl = (
            torch.distributions.kl_divergence(q, p).expand(log_lik.shape)
            if ELBOS.get(elbo).analytic_kl
            else (q.log_prob(z) - p.log_prob(z))
        )
        log_w = log_lik - beta * kl
        expected = -(torch.logsumexp(log_w, 0) - math.log(particles)).sum() if bound else -log_w.sum()
        torch.manual_seed(7)
        got = loss_fn(x, torch.tensor(beta, dtype=torch.float64))
        assert torch.allclose(got, expected, atol=1e-10, rtol=0), (elbo, beta, got.item(), expected.item())


EXAMPLE_CONFIGS = sorted((ROOT / "examples" / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLE_CONFIGS, ids=[p.stem for p in EXAMPLE_CONFIGS])
def test_every_example_config_builds_and_takes_a_step(path):
    cfg = load_config(path)
    pyro.set_rng_seed(0)
    vae = build_vae(cfg.model, 784)
    x = torch.bernoulli(torch.full((8, 784), 0.2))  # binary pixels are in every likelihood's support
    check_compatible(vae, cfg, build_elbo(cfg.train), x)
    loss = train_step(build_loss(vae, cfg.train, x), make_optimizer(vae, 1e-3), x)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("elbo", ["trace", "mean_field", "iwae"])
def test_particles_in_a_loop_estimate_the_same_objective(elbo):
    """vectorize_particles=false (Pyro's loop over particles, stock ELBO) and the vectorised fast
    path draw different numbers but estimate the same loss: means over 400 draws agree."""
    vae, x = _vae_without_decoder_noise()
    with torch.no_grad():
        vae.decoder[-1].weight.normal_()  # let the likelihood depend on z again
    values = {}
    for vectorize in (True, False):
        loss_fn = build_loss(vae, TrainConfig(elbo=elbo, num_particles=3, vectorize_particles=vectorize), x)
        torch.manual_seed(1)
        with torch.no_grad():
            values[vectorize] = torch.stack([loss_fn(x) for _ in range(400)])
    (m1, s1), (m2, s2) = mean_se(values[True]), mean_se(values[False])
    assert_mc_close(m1, m2, math.hypot(s1, s2), n=400, seed=1, what=f"{elbo}: vectorised vs loop")


def test_the_student_t_density_written_out_equals_torchs():
    """The prior's own Student-t (no fresh device tensor per construction: a CUDA graph can hold it)."""
    from pyro_vae.components.priors import StandardStudentT

    z = torch.linspace(-30, 30, 600, dtype=torch.float64).reshape(3, -1)
    for df in (0.7, 3.0, 50.0):
        nu = torch.tensor(df, dtype=torch.float64)
        ours = StandardStudentT(nu, z.shape).log_prob(z)
        torch.testing.assert_close(ours, torch.distributions.StudentT(nu).log_prob(z), rtol=1e-12, atol=1e-12)


def test_the_logistic_mixture_sums_to_one_and_is_the_logistic_at_k_1():
    """Over the 256 levels the mixture's probabilities sum to 1 per pixel (float64); with one
    component it is the discretized logistic exactly (its blocks: logits, locations, log-scales)."""
    from pyro_vae.components.likelihoods import DiscretizedLogistic, DiscretizedLogisticMixture

    torch.manual_seed(0)
    mixture = DiscretizedLogisticMixture(settings=DiscretizedLogisticMixture.Settings(components=4))
    h = 2 * torch.randn(3, mixture.param_dim(D), dtype=torch.float64)
    levels = (torch.arange(256, dtype=torch.float64) / 255).view(256, 1, 1).expand(256, 3, D)
    total = mixture(h).base_dist.log_prob(levels).exp().sum(0)
    torch.testing.assert_close(total, torch.ones(3, D, dtype=torch.float64), rtol=0, atol=1e-12)
    one = DiscretizedLogisticMixture(settings=DiscretizedLogisticMixture.Settings(components=1))
    h1 = torch.randn(5, one.param_dim(D), dtype=torch.float64)
    x = torch.randint(0, 256, (5, D), dtype=torch.float64) / 255
    torch.testing.assert_close(one(h1).log_prob(x), DiscretizedLogistic()(h1[:, D:]).log_prob(x), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="components = 0 must be at least 1"):
        load_config(
            None, ["model.likelihood=discretized_logistic_mixture", "model.discretized_logistic_mixture.components=0"]
        )


def test_a_log_var_range_clamps_the_scale_of_every_gaussian_layer():
    """``model.diag_normal.log_var_range = [lo, hi]`` (Tomczak & Welling's [-6, 2]): the raw output
    read as a clamped log-variance, its gradient zero outside the range; every Gaussian layer a
    structure computes from a network takes it (the default keeps softplus + 1e-5)."""
    from pyro_vae.components.guides import DiagNormal, scale_of
    from pyro_vae.hierarchical import ConditionalNormal

    raw = torch.tensor([-10.0, -6.0, 0.0, 2.0, 5.0], dtype=torch.float64, requires_grad=True)
    scale = scale_of(raw, (-6.0, 2.0))
    torch.testing.assert_close(scale, torch.exp(0.5 * raw.detach().clamp(-6, 2)), rtol=0, atol=0)
    scale.sum().backward()
    assert raw.grad[0] == 0 and raw.grad[-1] == 0 and raw.grad[2] == 0.5
    torch.testing.assert_close(scale_of(raw.detach()), torch.nn.functional.softplus(raw.detach()) + 1e-5)
    for structure in ("vae", "hierarchical", "semi_supervised", "mixture"):
        for clamp in ([], ["model.diag_normal.log_var_range=[-6, 2]"]):
            cfg = load_config(None, [f"model.structure={structure}", "model.hidden=[8]", "model.latent_dim=3", *clamp])
            vae = build_vae(cfg.model, D)
            layers = [m for m in vae.modules() if isinstance(m, (DiagNormal, ConditionalNormal))]
            assert layers, structure
            expected = (-6.0, 2.0) if clamp else None
            assert all(m.log_var_range == expected for m in layers), (structure, clamp)
    cfg = load_config(
        None, ["model.structure=hierarchical", "model.hidden=[8]", "model.diag_normal.log_var_range=[-6, 2]"]
    )
    torch.manual_seed(0)
    vae = build_vae(cfg.model, D)
    with torch.no_grad():
        for p in vae.parameters():
            p.mul_(50)  # raw outputs far outside [-6, 2]
        x = torch.bernoulli(torch.full((64, D), 0.5))
        scales = [s for _, s in vae.encode(x).values()] + [vae.conditionals[0].loc_scale(torch.randn(64, 50))[1]]
    low, high = math.exp(-3), math.exp(1)
    assert all(s.min() >= low * (1 - 1e-6) and s.max() <= high * (1 + 1e-6) for s in scales)
    assert any(s.min() <= low * (1 + 1e-6) for s in scales) and any(s.max() >= high * (1 - 1e-6) for s in scales)


def test_the_vamp_prior_s_pseudo_inputs_held_and_started_as_tomczak_and_welling_do():
    """``model.vamp.pseudo_inputs = "tomczak"``: values clamped to [0, 1], started at N(0.05, 0.01)
    and left there by the data-dependent start; the default starts them at training images."""
    x = torch.bernoulli(torch.full((40, D), 0.5))
    for scheme in ("tomczak", "data"):
        cfg = load_config(
            None,
            ["model.prior=vamp", "model.vamp.components=200", f"model.vamp.pseudo_inputs={scheme}", "model.hidden=[8]"],
        )
        torch.manual_seed(0)
        prior = build_vae(cfg.model, D).prior
        start = prior.pseudo_inputs().detach().clone()
        assert start.shape == (200, D) and abs(start.mean().item() - 0.05) < 0.01, scheme
        prior.init_from_data(x, torch.Generator().manual_seed(0))
        moved = prior.pseudo_inputs().detach()
        if scheme == "tomczak":
            assert torch.equal(moved, start)
            with torch.no_grad():
                prior.pseudo_values.add_(torch.linspace(-2, 2, D))
            u = prior.pseudo_inputs()
            assert u.min() == 0 and u.max() == 1  # clamped, not squashed
        else:
            assert (moved - 0.5).abs().min() > 0.4  # training images, squeezed into [0.05, 0.95]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_bernoulli_likelihood_gives_torchs_log_probability_and_gradient(dtype):
    """Its log_prob is written as x * logits + logsigmoid(-logits) (it compiles to fewer
    transcendentals): the same values and gradients as torch's Bernoulli, to rounding, over logits
    from -60 to 60 and at +-1e4 (finite, no overflow), and still after ``expand``."""
    likelihood = LIKELIHOODS.build("bernoulli", {}, data_dim=5)
    gen = torch.Generator().manual_seed(11)
    logits = torch.cat([torch.linspace(-60, 60, 238, dtype=dtype), torch.tensor([-1e4, 1e4], dtype=dtype)])
    logits = logits.repeat(2, 1).reshape(-1, 5)
    x = torch.bernoulli(torch.full(logits.shape, 0.5, dtype=dtype), generator=gen)
    x[:2] = torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 1.0, 0.0, 1.0]], dtype=dtype)
    ours_logits, torch_logits = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours = likelihood(ours_logits).log_prob(x)
    expected = torch.distributions.Bernoulli(logits=torch_logits).log_prob(x).sum(-1)
    ours.sum().backward()
    expected.sum().backward()
    eps = torch.finfo(dtype).eps
    # per image, a few roundings of its largest term: |logit| (x * logit), or 1 (the log1p)
    tol = 8 * eps * (1 + logits.abs().amax(-1))
    assert torch.isfinite(ours).all()
    assert ((ours - expected).abs() <= tol).all(), (ours - expected).abs().max()
    assert torch.allclose(ours_logits.grad, torch_logits.grad, atol=4 * eps, rtol=0)
    expanded = likelihood(logits[:1].detach()).expand((3,))
    assert isinstance(expanded.base_dist, _BernoulliLogits)
    assert torch.allclose(expanded.log_prob(x[:3]), likelihood(logits[:1].detach().expand(3, 5)).log_prob(x[:3]))
