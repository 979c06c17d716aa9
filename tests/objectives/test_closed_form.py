"""The Pyro losses against the hand-written closed form (pyro_vae.objectives.closed_form), in float64.

Exact where the maths says they are equal (same sampled z, replayed), statistical where they
agree in expectation (tolerances from Monte-Carlo standard errors)."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import Normal, kl_divergence

from pyro_vae.objectives import closed_form
from tests.helpers import assert_mc_close, mean_se


def _replayed(vae, x):
    """A guide trace and the guide replayed from it, so every loss sees the same z."""
    tr = poutine.trace(vae.guide).get_trace(x)
    return tr.nodes["z"]["value"], poutine.replay(vae.guide, trace=tr)


def _closed_form_parts(vae, x, z):
    loc, scale = vae.encoder.loc_scale(x)
    logits = vae.decoder(z)
    return loc, scale, logits


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mean_field_elbo_equals_closed_form_with_the_same_z(tiny_vae64, seed):
    vae, x = tiny_vae64
    pyro.set_rng_seed(seed)
    z, guide = _replayed(vae, x)
    pyro_loss = TraceMeanField_ELBO().differentiable_loss(vae.model, guide, x)
    loc, scale, logits = _closed_form_parts(vae, x, z)
    oracle = closed_form.neg_elbo_analytic(x, logits, loc, scale).sum()
    assert abs((pyro_loss - oracle).item()) < 1e-6, (pyro_loss.item(), oracle.item())
    # ... and so are their gradients, parameter by parameter
    g_pyro = torch.autograd.grad(pyro_loss, list(vae.parameters()), retain_graph=True)
    g_oracle = torch.autograd.grad(oracle, list(vae.parameters()))
    for (name, _), a, b in zip(vae.named_parameters(), g_pyro, g_oracle):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), name


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trace_elbo_differs_from_closed_form_by_mc_minus_analytic_kl(tiny_vae64, seed):
    vae, x = tiny_vae64
    pyro.set_rng_seed(seed)
    z, guide = _replayed(vae, x)
    pyro_loss = Trace_ELBO().differentiable_loss(vae.model, guide, x)
    loc, scale, logits = _closed_form_parts(vae, x, z)
    analytic = closed_form.neg_elbo_analytic(x, logits, loc, scale).sum()
    mc_kl = closed_form.log_normal(z, loc, scale) - closed_form.log_normal(z, torch.zeros_like(z), torch.ones_like(z))
    kl_gap = (mc_kl - closed_form.kl_normal_std_normal(loc, scale)).sum()
    assert abs(kl_gap.item()) > 1e-3  # the two estimators really differ at this z ...
    assert abs((pyro_loss - (analytic + kl_gap)).item()) < 1e-6  # ... by exactly the KL estimates' gap
    mc = closed_form.neg_elbo_monte_carlo(x, logits, z, loc, scale).sum()
    assert abs((pyro_loss - mc).item()) < 1e-6


def test_trace_elbo_mean_and_gradients_agree_with_closed_form(tiny_vae64):
    """Independent draws: Trace_ELBO's loss and (projected) gradients against the closed form's."""
    vae, x = tiny_vae64
    n, seed = 1500, 7
    params = dict(vae.named_parameters())
    groups = {
        "encoder": [p for k, p in params.items() if k.startswith("encoder")],
        "decoder": [p for k, p in params.items() if k.startswith("decoder")],
    }
    gen = torch.Generator().manual_seed(99)
    directions = {g: [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in ps] for g, ps in groups.items()}

    def record(loss):
        grads = torch.autograd.grad(loss, [p for ps in groups.values() for p in ps])
        out, i = [loss.item()], 0
        for g, ps in groups.items():
            out.append(sum(float((gr * d).sum()) for gr, d in zip(grads[i : i + len(ps)], directions[g])))
            i += len(ps)
        return out

    pyro.set_rng_seed(seed)
    elbo = Trace_ELBO()
    pyro_rows = [record(elbo.differentiable_loss(vae.model, vae.guide, x)) for _ in range(n)]
    oracle_rows = []
    for _ in range(n):
        loc, scale = vae.encoder.loc_scale(x)
        z = loc + scale * torch.randn_like(loc)
        oracle_rows.append(record(closed_form.neg_elbo_analytic(x, vae.decoder(z), loc, scale).sum()))
    pyro_rows, oracle_rows = torch.tensor(pyro_rows), torch.tensor(oracle_rows)
    for j, what in enumerate(["loss", "encoder gradient . v", "decoder gradient . v"]):
        m1, s1 = mean_se(pyro_rows[:, j])
        m2, s2 = mean_se(oracle_rows[:, j])
        assert_mc_close(m1, m2, (s1**2 + s2**2) ** 0.5, n=n, seed=seed, what=f"Trace_ELBO vs closed form: {what}")


def _kl_slip(loc, scale):
    """The common slip: 1/2 sum(1 - log s^2 + m^2 + s^2). Kept to show the tests catch it."""
    return 0.5 * (1 - 2 * torch.log(scale) + loc**2 + scale**2).sum(-1)


def _check_kl(kl_fn, loc, scale):
    expected = kl_divergence(Normal(loc, scale), Normal(torch.zeros_like(loc), torch.ones_like(scale))).sum(-1)
    assert torch.allclose(kl_fn(loc, scale), expected, atol=1e-10, rtol=0), "KL formula != torch kl_divergence"


def _kl_inputs():
    gen = torch.Generator().manual_seed(3)
    loc = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    scale = torch.rand(5, 4, generator=gen, dtype=torch.float64) * 2 + 0.1
    return loc, scale


def test_analytic_kl_matches_torch_and_a_monte_carlo_estimate():
    loc, scale = _kl_inputs()
    _check_kl(closed_form.kl_normal_std_normal, loc, scale)
    n, seed = 200_000, 11
    torch.manual_seed(seed)
    z = loc + scale * torch.randn(n, *loc.shape, dtype=torch.float64)
    samples = closed_form.log_normal(z, loc, scale) - closed_form.log_normal(z, torch.zeros_like(z), torch.ones_like(z))
    for i, analytic in enumerate(closed_form.kl_normal_std_normal(loc, scale)):
        m, se = mean_se(samples[:, i])
        assert_mc_close(m, float(analytic), se, n=n, seed=seed, what=f"Monte-Carlo KL of row {i}")


def test_the_kl_check_catches_the_sign_slip():
    loc, scale = _kl_inputs()
    with pytest.raises(AssertionError, match="KL formula"):
        _check_kl(_kl_slip, loc, scale)
    # The slip is off by 1 - 1 per dimension's constant and the sign of log s^2: at loc=0, scale=1
    # the true KL is 0 and the slip gives 1 per dimension.
    zero, one = torch.zeros(1, 4, dtype=torch.float64), torch.ones(1, 4, dtype=torch.float64)
    assert float(closed_form.kl_normal_std_normal(zero, one)) == 0.0
    assert float(_kl_slip(zero, one)) == 4.0


def test_bernoulli_log_likelihood_matches_torch():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(7, 30, generator=gen, dtype=torch.float64) * 5
    x = torch.bernoulli(torch.full((7, 30), 0.5, dtype=torch.float64), generator=gen)
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
    assert torch.allclose(closed_form.bernoulli_log_likelihood(logits, x), expected, atol=1e-12, rtol=0)
