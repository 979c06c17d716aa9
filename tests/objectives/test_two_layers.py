"""Two latent layers where everything is known: z2 ~ N(0, I), z1 | z2 ~ N(A z2 + a, s1^2 I),
x | z1 ~ N(W z1 + b, sigma^2 I), so log p(x) is a Gaussian's. On it: the IWAE evaluation converges
to log p(x), mean_field's analytic KL terms are the hand-written ones, and every estimator's
expected gradient is its objective's (paired draws, z-scores), while two estimators that are right
with one latent site and wrong with two are rejected by the same test."""

from __future__ import annotations

import math
from statistics import NormalDist

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae.config import TrainConfig
from pyro_vae.evaluation.metrics import iwae_log_likelihood
from pyro_vae.model import Structure
from pyro_vae.objectives import surrogates
from pyro_vae.objectives.elbos import _Surrogate, build_elbo
from pyro_vae.objectives.sites import LeanSource, PyroSource, draw, weigh
from pyro_vae.objectives.surrogates import detach_distribution
from tests.helpers import assert_mc_close, mean_se

D, L1, L2, B = 4, 3, 2, 6
S1, SIGMA = 0.6, 0.5


class TwoLayerLinearGaussian(Structure):
    """The model above with fixed random weights, and a linear Gaussian guide q(z2|x) q(z1|x,z2)
    (trainable, near but not at the posterior): a structure written as stories."""

    def __init__(self, seed: int = 0, perturb: float = 0.03) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)

        def randn(*shape, scale=1.0):
            return scale * torch.randn(*shape, generator=g, dtype=torch.float64)

        self.A, self.a, self.W, self.b = randn(L1, L2), randn(L1, scale=0.3), randn(D, L1), randn(D, scale=0.3)
        self.q2 = nn.Linear(D, 2 * L2).double()
        self.q1 = nn.Linear(D + L2, 2 * L1).double()
        # The guide starts at the exact posterior's conditional means and marginal scales
        # (p(z2|x) and p(z1|x,z2) are Gaussian, their covariances not diagonal), then perturbed.
        eye = torch.eye(L1, dtype=torch.float64)
        c11 = self.A @ self.A.T + S1**2 * eye
        cxx = self.W @ c11 @ self.W.T + SIGMA**2 * torch.eye(D, dtype=torch.float64)
        c2x, c1x, mu_x = (self.W @ self.A).T, (self.W @ c11).T, self.W @ self.a + self.b
        k2 = c2x @ torch.linalg.inv(cxx)
        cov2 = torch.eye(L2, dtype=torch.float64) - k2 @ c2x.T
        c1u = torch.cat([c1x, self.A], 1)
        cuu = torch.cat([torch.cat([cxx, c2x.T], 1), torch.cat([c2x, torch.eye(L2, dtype=torch.float64)], 1)], 0)
        k1 = c1u @ torch.linalg.inv(cuu)
        cov1 = c11 - k1 @ c1u.T
        mu_u = torch.cat([mu_x, torch.zeros(L2, dtype=torch.float64)])
        with torch.no_grad():
            for layer, k, bias, cov in ((self.q2, k2, -k2 @ mu_x, cov2), (self.q1, k1, self.a - k1 @ mu_u, cov1)):
                raw = torch.log(torch.expm1(cov.diagonal().sqrt() - 0.1))  # softplus(raw) + 0.1 = the marginal scale
                layer.weight.copy_(torch.cat([k, torch.zeros_like(k)]) + randn(*layer.weight.shape, scale=perturb))
                layer.bias.copy_(torch.cat([bias, raw]) + randn(*layer.bias.shape, scale=perturb))

    def model_story(self, x, emit):
        zeros = torch.zeros(x.shape[0], L2, dtype=x.dtype)
        z2 = emit.latent("z2", dist.Normal(zeros, 1.0).to_event(1))
        z1 = emit.latent("z1", dist.Normal(z2 @ self.A.T + self.a, S1).to_event(1))
        emit.observed("x", dist.Normal(z1 @ self.W.T + self.b, SIGMA).to_event(1), x)

    def q_z2(self, x):
        loc, raw = self.q2(x).chunk(2, -1)
        return dist.Normal(loc, F.softplus(raw) + 0.1).to_event(1)

    def q_z1(self, x, z2):
        loc, raw = self.q1(torch.cat([x.expand(*z2.shape[:-1], D), z2], -1)).chunk(2, -1)
        return dist.Normal(loc, F.softplus(raw) + 0.1).to_event(1)

    def guide_story(self, x, emit):
        z2 = emit.latent("z2", self.q_z2(x))
        emit.latent("z1", self.q_z1(x, z2))

    def layers(self):
        return {"z2": L2, "z1": L1}

    def log_px(self, x):
        cov_z1 = self.A @ self.A.T + S1**2 * torch.eye(L1, dtype=torch.float64)
        cov = self.W @ cov_z1 @ self.W.T + SIGMA**2 * torch.eye(D, dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.W @ self.a + self.b, cov).log_prob(x)


def _problem(seed: int = 0, perturb: float = 0.03):
    """The structure (its guide ``perturb`` away from the posterior's conditionals) and B images from the model."""
    model = TwoLayerLinearGaussian(seed, perturb)
    g = torch.Generator().manual_seed(seed + 100)
    z2 = torch.randn(B, L2, generator=g, dtype=torch.float64)
    z1 = z2 @ model.A.T + model.a + S1 * torch.randn(B, L1, generator=g, dtype=torch.float64)
    x = z1 @ model.W.T + model.b + SIGMA * torch.randn(B, D, generator=g, dtype=torch.float64)
    return model, x


def test_the_iwae_evaluation_converges_to_the_exact_log_likelihood():
    model, x = _problem()
    exact = float(model.log_px(x).mean())
    reps, seed = 20, 3
    torch.manual_seed(seed)
    means, ses = {}, {}
    for k in (1, 10, 100, 2000):
        runs = torch.stack([iwae_log_likelihood(model, x, k)[0].mean() for _ in range(reps)])
        means[k], ses[k] = mean_se(runs)
    gap = means[1] - exact
    assert gap < -0.05, f"the guide should be imperfect here: ELBO - log p(x) = {gap:.4f}"
    for k_lo, k_hi in zip(sorted(means), sorted(means)[1:]):
        z = (means[k_hi] - means[k_lo]) / (ses[k_hi] ** 2 + ses[k_lo] ** 2) ** 0.5
        assert z > -3, f"IWAE fell from K={k_lo} to K={k_hi} (z = {z:.2f}), N = {reps}, seed = {seed}"
    for k, mean in means.items():
        assert mean < exact + 3 * ses[k], f"IWAE K={k} {mean:.4f} above log p(x) {exact:.4f}; N = {reps}, seed = {seed}"
    assert exact - means[2000] < 0.1 * (exact - means[1]), (means, exact)
    assert_mc_close(means[2000], exact, max(ses[2000], 0.02), n=reps, seed=seed, what="IWAE K=2000 against log p(x)")


def _gauss_kl(loc_q, scale_q, loc_p, scale_p):
    """KL(N(loc_q, diag scale_q^2) || N(loc_p, diag scale_p^2)), written out."""
    return (torch.log(scale_p / scale_q) + (scale_q**2 + (loc_q - loc_p) ** 2) / (2 * scale_p**2) - 0.5).sum(-1)


@pytest.mark.parametrize("source", ["lean", "pyro"])
def test_mean_field_is_the_likelihood_minus_the_hand_written_kls(source):
    model, x = _problem()
    src = LeanSource(model) if source == "lean" else PyroSource(model.model, model.guide, model)
    elbo = build_elbo(TrainConfig(elbo="mean_field"))
    pyro.set_rng_seed(4)
    t = draw(src, x, None, 1)
    z2, z1 = t.guide["z2"].value, t.guide["z1"].value
    q2, q1 = model.q_z2(x), model.q_z1(x, z2)
    kl2 = _gauss_kl(q2.base_dist.loc, q2.base_dist.scale, torch.zeros_like(z2), torch.ones_like(z2))
    kl1 = _gauss_kl(q1.base_dist.loc, q1.base_dist.scale, z2 @ model.A.T + model.a, torch.full_like(z1, S1))
    log_lik = torch.distributions.Normal(z1 @ model.W.T + model.b, SIGMA).log_prob(x).sum(-1)
    expected = -(log_lik - kl2 - kl1).sum()
    assert abs(elbo.objective(t).item() - expected.item()) < 1e-10


# ---------------------------------------------------------------- expected gradients, paired draws


ESTIMATORS = {
    "trace": (1, 1),
    "stl": (3, 1),
    "iwae": (4, 1),
    "iwae_dreg": (4, 1),
    "miwae": (2, 2),
    "ciwae": (3, 1),
    "piwae": (2, 2),
}
# The guide's parameters are the only ones here (the model's are fixed): PIWAE's encoder gradient is MIWAE's.
REFERENCE = {
    "trace": "elbo",
    "stl": "elbo",
    "iwae": "iwae",
    "iwae_dreg": "iwae",
    "piwae": "miwae",
    "miwae": "miwae",
    "ciwae": "ciwae",
    "hooked_dreg": "iwae",
    "detached_dreg": "iwae",
}
DRAWS, FAMILY_ERROR = 400, 1e-4


class _HookedDReG(_Surrogate):
    """Negative control: DReG's one-site form (a gradient hook on each sample) on two dependent sites."""

    importance_weighted = True
    needs = frozenset({"stop"})

    def surrogate(self, terms):
        return surrogates.iwae_dreg(terms.log_p, terms.log_q, terms.log_q_stop, terms.zs, terms.beta)


class _DetachedDReG(_Surrogate):
    """Negative control: the hook-free DReG with log q at stopped parameters taken by detaching each
    site's distribution, which cuts q(z1 | x, z2)'s dependence on z2 (harmless for STL, whose
    dropped term has zero mean given z2; not for DReG, whose weights depend on z1)."""

    importance_weighted = True
    needs = frozenset({"stop", "model_fixed"})

    def terms(self, t):
        terms = super().terms(t)
        terms.log_q_stop = sum(weigh(detach_distribution(s.fn).log_prob(s.value), s) for s in t.guide.values())
        return terms

    def surrogate(self, terms):
        return surrogates.iwae_dreg_hookless(
            terms.log_p, terms.log_q, terms.log_q_stop, terms.log_p_fixed_z, terms.beta
        )


def _objective_value(kind: str, log_w: torch.Tensor, k: int, m: int) -> torch.Tensor:
    if kind == "elbo":
        return log_w.mean(0)
    iwae = torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])
    if kind == "iwae":
        return iwae
    if kind == "miwae":
        return (torch.logsumexp(log_w.reshape(m, k, -1), 1) - math.log(k)).mean(0)
    return 0.5 * log_w.mean(0) + 0.5 * iwae  # ciwae, beta = 1/2


def _estimator(name: str, k: int, m: int):
    if name == "hooked_dreg":
        return _HookedDReG(num_particles=k, vectorize_particles=True)
    if name == "detached_dreg":
        return _DetachedDReG(num_particles=k, vectorize_particles=True)
    return build_elbo(TrainConfig(elbo=name, num_particles=k, iw_groups=m))


def _z_scores(name: str, seed: int = 0) -> tuple[torch.Tensor, str]:
    k, m = ESTIMATORS.get(name, (4, 1))
    model, x = _problem(perturb=0.15)  # far enough from the posterior for the weights to matter
    params = list(model.parameters())
    source = LeanSource(model)
    elbo = _estimator(name, k, m)
    diffs = []
    for i in range(DRAWS):
        pyro.set_rng_seed(seed + i)
        ours = torch.autograd.grad(elbo.loss_fn(source)(x), params)
        pyro.set_rng_seed(seed + i)
        t = draw(source, x, None, k * m)
        log_w = sum(s.log_prob() for s in t.model.values()) - sum(s.log_prob() for s in t.guide.values())
        log_w = log_w if log_w.dim() == 2 else log_w[None]
        theirs = torch.autograd.grad(-_objective_value(REFERENCE[name], log_w, k, m).sum(), params)
        diffs.append(torch.cat([(a - b).flatten() for a, b in zip(ours, theirs)]))
    diffs = torch.stack(diffs)
    z = diffs.mean(0) / (diffs.std(0) / math.sqrt(DRAWS)).clamp_min(1e-300)
    z = torch.where(diffs.abs().amax(0) < 1e-12, torch.zeros_like(z), z)  # identical on every draw
    where = (
        f"{name} vs the reparameterised gradient of its objective on two latent layers: N = {DRAWS} paired "
        f"draws, seeds {seed}..{seed + DRAWS - 1}, max |z| = {z.abs().max():.2f}"
    )
    return z, where


def _bound(coordinates: int) -> float:
    return NormalDist().inv_cdf(1 - FAMILY_ERROR / (2 * coordinates))


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_every_estimator_has_its_objectives_expected_gradient_on_two_layers(name):
    z, where = _z_scores(name)
    assert z.abs().max() < _bound(z.numel()), f"{where}; bound {_bound(z.numel()):.2f}"


@pytest.mark.parametrize("control", ["hooked_dreg", "detached_dreg"])
def test_the_test_rejects_the_one_site_forms_on_two_layers(control):
    z, where = _z_scores(control)
    assert z.abs().max() > _bound(z.numel()), f"the control passed: {where}; bound {_bound(z.numel()):.2f}"
