r"""Expected gradients under KL warm-up: every registered ELBO, through Pyro's trace and the fast
path, at beta in {0.1, 0.5, 1}, against the plain reparameterised gradient of the objective it
reports, written by hand.

With warm-up, log w = log p(x|z) + beta (log p(z) - log q(z|x)). The plain reparameterised
estimator of an objective f(log w_1..K) differentiates it through z = loc + scale * eps with the
score term included: that is the reference (an unbiased gradient of the objective). ``trace``,
``jit_trace``, ``iwae``, ``miwae`` and ``ciwae`` are that estimator; ``mean_field`` replaces the
Monte-Carlo KL by its expectation; ``stl`` drops the zero-mean score term; ``iwae_dreg`` rewrites it
(encoder weights (1 - beta) w + beta w^2); ``piwae``'s encoder gradient is MIWAE's. All of them must
have the reference's expected encoder gradient.

The test pairs the draws (the same seed, so the same eps, for the estimator and the reference) and
uses batch means: each of G gradient draws averages R copies of the data, so a draw costs one
backward pass. Per coordinate, z = mean difference / its standard error over the G draws; the
largest |z| over the C coordinates must stay below the Bonferroni bound for a family-wise error of
1e-4. Two known-biased estimators are rejected by the same test (it has power): the DReG weights
w^2 at every beta (the code before this test existed) and the path-only IWAE gradient (the score
term dropped with weights w, no second factor).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae.components.priors import StandardNormal
from pyro_vae.config import TrainConfig
from pyro_vae.model import VAE
from pyro_vae.objectives import surrogates
from pyro_vae.objectives.elbos import ELBOS, _Surrogate
from pyro_vae.objectives.fast import build_loss
from tests.helpers import GaussianLikelihood

pytestmark = pytest.mark.filterwarnings("ignore:decoder.*was not registered in the param store")  # (frozen on purpose)

D, L, SIGMA = 3, 2, 0.5
GROUPS, COPIES = 50, 40  # G gradient draws, each averaging R copies of the data: 2,000 draws in all
FAMILY_ERROR = 1e-4
K, M = 4, 2  # particles of the importance-weighted estimators; groups of miwae / piwae


class _Encoder(nn.Module):
    """q(z | x) = N(A x + c, diag softplus(r)^2), started off the exact posterior."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.a = nn.Parameter(0.5 * torch.randn(L, D, generator=g, dtype=torch.float64))
        self.c = nn.Parameter(0.3 * torch.randn(L, generator=g, dtype=torch.float64))
        self.raw = nn.Parameter(torch.full((L,), -0.5, dtype=torch.float64))

    def loc_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc = x @ self.a.T + self.c
        return loc, F.softplus(self.raw).expand_as(loc)

    def forward(self, x: torch.Tensor):
        return dist.Normal(*self.loc_scale(x)).to_event(1)


def _problem():
    """A linear-Gaussian VAE whose decoder is the true (frozen) model; x: 3 images, each R times."""
    g = torch.Generator().manual_seed(0)
    decoder = nn.Linear(L, D).double().requires_grad_(False)
    with torch.no_grad():
        decoder.weight.copy_(torch.randn(D, L, generator=g, dtype=torch.float64))
        decoder.bias.copy_(torch.randn(D, generator=g, dtype=torch.float64))
    vae = VAE(StandardNormal(L).double(), GaussianLikelihood(SIGMA), _Encoder(), decoder)
    x = torch.randn(3, D, generator=g, dtype=torch.float64).repeat(COPIES, 1)
    return vae, x


def _objective(name: str, log_w: torch.Tensor) -> torch.Tensor:
    """Per image, the objective the estimator ``name`` reports, from the log weights (N, B); for
    piwae, the encoder's objective (MIWAE)."""
    k = log_w.shape[0]
    lme = torch.logsumexp(log_w, 0) - math.log(k)
    grouped = torch.logsumexp(log_w.reshape(M, k // M, -1), 1).sub(math.log(k // M)).mean(0) if k % M == 0 else None
    return {
        "trace": log_w.mean(0),
        "enum": log_w.mean(0),  # (no discrete site: trace's)
        "tracegraph": log_w.mean(0),  # (nothing to score: trace's)
        "gumbel": log_w.mean(0),
        "gumbel_st": log_w.mean(0),
        "jit_trace": log_w.mean(0),
        "mean_field": log_w.mean(0),
        "jit_mean_field": log_w.mean(0),
        "stl": log_w.mean(0),
        "iwae": lme,
        "iwae_dreg": lme,
        "miwae": grouped,
        "piwae": grouped,
        "ciwae": 0.5 * log_w.mean(0) + 0.5 * lme,
    }[name]


def _particles(name: str) -> tuple[int, int]:
    """(num_particles, iw_groups) of the estimator's config."""
    cls = ELBOS.get(name)
    if cls.grouped:
        return K // M, M
    return (K, 1) if cls.importance_weighted else (1, 1)


def _reference(vae: VAE, x: torch.Tensor, name: str, beta: float) -> torch.Tensor:
    """The negative objective with the plain reparameterised gradient, on the draws the estimators
    make after the same seed (z ~ q expanded over the particles)."""
    per_particle, groups = _particles(name)
    n = per_particle * groups
    q = vae.encoder(x)
    z = q.rsample((n,)) if n > 1 else q.rsample().unsqueeze(0)
    log_w = vae.likelihood(vae.decoder(z)).log_prob(x) + beta * (vae.prior(x.shape[0]).log_prob(z) - q.log_prob(z))
    return -_objective(name, log_w).sum()


class _OldDReG(_Surrogate):
    """Negative control: the DReG encoder weights w^2 whatever the KL weight (the earlier code)."""

    needs = frozenset({"stop"})
    importance_weighted = True

    def surrogate(self, terms):
        return surrogates.iwae_dreg(terms.log_p, terms.log_q, terms.log_q_stop, terms.zs, beta=1.0)


class _PathOnlyIWAE(_Surrogate):
    """Negative control: IWAE's weights w on the path derivative, the score term dropped."""

    needs = frozenset({"stop"})
    importance_weighted = True

    def surrogate(self, terms):
        weights = torch.softmax((terms.log_p - terms.log_q).detach(), 0)
        return -(weights * (terms.log_p - terms.log_q_stop)).sum()


def _estimator(name: str, path: str, vae: VAE, x: torch.Tensor):
    """``(x, beta) -> loss`` of the registered ELBO ``name`` (or a control) through ``path``."""
    if name in CONTROLS:
        elbo = CONTROLS[name](num_particles=K, vectorize_particles=True, max_plate_nesting=1)
        return lambda xb, beta: elbo.differentiable_loss(vae.model, vae.guide, xb, torch.tensor(beta).double())
    per_particle, groups = _particles(name)
    cfg = TrainConfig(elbo=name, num_particles=per_particle, iw_groups=groups, fast_path=path == "fast")
    loss = build_loss(vae, cfg, x)
    assert loss.fast == (path == "fast"), f"{name}: expected the {path} path"
    return lambda xb, beta: loss(xb, torch.tensor(beta, dtype=torch.float64))


def _paired_z(name: str, reference: str, path: str, beta: float, seed: int = 0) -> tuple[torch.Tensor, str]:
    vae, x = _problem()
    params = list(vae.encoder.parameters())
    loss = _estimator(name, path, vae, x)
    diffs = []
    for g in range(GROUPS):
        pyro.set_rng_seed(seed + g)
        ours = torch.autograd.grad(loss(x, beta), params)
        pyro.set_rng_seed(seed + g)
        theirs = torch.autograd.grad(_reference(vae, x, reference, beta), params)
        diffs.append(torch.cat([(a - b).flatten() for a, b in zip(ours, theirs)]) / x.shape[0])
    diffs = torch.stack(diffs)
    z = diffs.mean(0) / (diffs.std(0) / math.sqrt(GROUPS)).clamp_min(1e-300)
    z = torch.where(diffs.abs().amax(0) < 1e-13, torch.zeros_like(z), z)  # identical on every draw
    where = (
        f"{name} ({path}) vs the reparameterised gradient of {reference}'s objective at beta={beta}: "
        f"N = {GROUPS} draws x {COPIES} copies, seeds {seed}..{seed + GROUPS - 1}, z = "
        f"{[round(v, 2) for v in z.tolist()]}"
    )
    return z, where


def _bound(coordinates: int) -> float:
    return NormalDist().inv_cdf(1 - FAMILY_ERROR / (2 * coordinates))


CONTROLS = {"old_dreg": _OldDReG, "path_only_iwae": _PathOnlyIWAE}
FAST = ("trace", "mean_field", "iwae", "stl", "iwae_dreg", "miwae", "ciwae", "piwae")  # the JIT ones are Pyro's


@pytest.mark.parametrize("beta", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("path, name", [*(("pyro", n) for n in ELBOS.names()), *(("fast", n) for n in FAST)])
def test_every_estimator_has_the_expected_gradient_of_its_objective(name, path, beta):
    z, where = _paired_z(name, name, path, beta)
    assert z.abs().max() < _bound(z.numel()), f"{where}; bound {_bound(z.numel()):.2f}"


@pytest.mark.parametrize(
    "control, beta", [("old_dreg", 0.5), ("old_dreg", 0.1), ("path_only_iwae", 0.5), ("path_only_iwae", 1.0)]
)
def test_the_test_rejects_a_biased_estimator(control, beta):
    z, where = _paired_z(control, "iwae", "pyro", beta)
    assert z.abs().max() > _bound(z.numel()), f"a known-biased estimator passed: {where}"


@pytest.mark.parametrize("beta", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("path", ["pyro", "fast"])
def test_dreg_encoder_gradient_equals_the_hand_written_formula_draw_by_draw(path, beta):
    """sum_k ((1 - beta) w_k + beta w_k^2) d log w_k / dz  dz / dphi, with the score part of
    d log w_k / dphi left out (log q at detached parameters), on the same draw."""
    vae, x = _problem()
    params = list(vae.encoder.parameters())
    loss = _estimator("iwae_dreg", path, vae, x)
    for seed in (0, 1):
        pyro.set_rng_seed(seed)
        ours = torch.autograd.grad(loss(x, beta), params)
        pyro.set_rng_seed(seed)
        q = vae.encoder(x)
        z = q.rsample((K,))
        loc, scale = (t.detach() for t in vae.encoder.loc_scale(x))
        log_w = vae.likelihood(vae.decoder(z)).log_prob(x) + beta * (
            vae.prior(x.shape[0]).log_prob(z) - dist.Normal(loc, scale).to_event(1).log_prob(z)
        )
        w = torch.softmax(log_w.detach(), 0)
        hand = torch.autograd.grad(-(((1 - beta) * w + beta * w**2) * log_w).sum(), params)
        for a, b in zip(ours, hand):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"{path}, beta={beta}, seed={seed}")
