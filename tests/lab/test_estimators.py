"""The estimator laboratory (pyro_vae.lab.estimators): per-image terms equal Pyro's own losses, and
the statistical claims it reports hold, with tolerances from Monte-Carlo standard errors."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch import nn

from pyro_vae.components.priors import StandardNormal
from pyro_vae.config import ModelConfig
from pyro_vae.lab import estimators as E
from pyro_vae.model import VAE, build_vae
from tests.helpers import GaussianLikelihood, LinearGaussian, assert_mc_close, linear_gaussian_vae, mean_se


@pytest.mark.parametrize("elbo_cls, key", [(Trace_ELBO, "trace"), (TraceMeanField_ELBO, "mean_field")])
def test_per_image_terms_sum_to_pyros_losses(tiny_vae64, elbo_cls, key):
    vae, x = tiny_vae64
    pyro.set_rng_seed(3)
    ours = E.estimator_particles(E.elbo_terms(vae, x, 1))[key].sum()
    pyro.set_rng_seed(3)  # the same draw of z
    theirs = elbo_cls().loss(vae.model, vae.guide, x)
    assert abs(float(ours) - theirs) < 1e-8, (float(ours), theirs)


def test_both_estimators_are_unbiased_for_the_same_elbo(tiny_vae64):
    """Paired by particle, the two estimators differ only in the KL term, whose Monte-Carlo
    version has the analytic KL as its expectation."""
    vae, x = tiny_vae64
    n, seed = 20_000, 5
    torch.manual_seed(seed)
    parts = E.estimator_particles(E.elbo_terms(vae, x, n))
    diff = (parts["trace"] - parts["mean_field"]).sum(-1)  # per particle, summed over images
    m, se = mean_se(diff)
    assert_mc_close(m, 0.0, se, n=n, seed=seed, what="Trace_ELBO - TraceMeanField_ELBO")
    m_cf, se_cf = mean_se(E.closed_form_particles(vae, x, n).sum(-1))
    m_tr, se_tr = mean_se(parts["trace"].sum(-1))
    assert_mc_close(m_tr, m_cf, (se_tr**2 + se_cf**2) ** 0.5, n=n, seed=seed, what="Trace_ELBO vs closed form")


def test_analytic_kl_term_has_zero_variance_and_lowers_the_variance_of_an_untrained_model():
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(latent_dim=8, hidden=(32,)), 64).double()
    x = torch.bernoulli(torch.full((10, 64), 0.2, dtype=torch.float64))
    n, seed = 4000, 9
    torch.manual_seed(seed)
    parts = E.estimator_particles(E.elbo_terms(vae, x, n))
    assert torch.equal(parts["mean_field_kl_term"], parts["mean_field_kl_term"][:1].expand(n, -1))
    var_mc, var_an = parts["trace"].var(0), parts["mean_field"].var(0)  # per image
    # var of a sample variance ~ 2 sigma^4 / (n - 1): the ratio is known to a few percent
    message = f"analytic {var_an.tolist()} vs Monte Carlo {var_mc.tolist()}; N={n}, seed={seed}"
    assert (var_an < 0.8 * var_mc).all(), message


def test_monte_carlo_kl_estimator_has_zero_variance_at_the_exact_posterior():
    """Where q(z|x) is the exact posterior, log p(x,z) - log q(z|x) = log p(x) for every z: the
    Monte-Carlo-KL estimator has zero variance while the analytic-KL one does not. So "analytic
    KL always has lower variance" is false near convergence (Roeder et al. 2017)."""
    d, l, sigma = 5, 2, 0.7
    lg = LinearGaussian(0, d, l, sigma)
    chol = torch.linalg.cholesky(lg.post_cov)

    class ExactPosterior(nn.Module):
        def forward(self, x):
            return dist.MultivariateNormal((x - lg.b) @ lg.a.T, scale_tril=chol.expand(x.shape[0], l, l))

    vae = VAE(StandardNormal(l).double(), GaussianLikelihood(sigma), ExactPosterior(), lg.decoder)
    eye = torch.eye(l, dtype=torch.float64)
    vae.prior.forward = lambda n: dist.MultivariateNormal(torch.zeros(n, l, dtype=torch.float64), eye.expand(n, l, l))
    x = torch.randn(4, d, generator=lg.generator, dtype=torch.float64)
    torch.manual_seed(1)
    parts = E.estimator_particles(E.elbo_terms(vae, x, 500))
    assert parts["trace"].std(0).max() < 1e-10
    assert parts["mean_field"].std(0).min() > 0.1
    assert torch.allclose(-parts["trace"][0], lg.marginal.log_prob(x), atol=1e-10)


def test_spread_falls_as_one_over_root_p(tiny_vae64):
    vae, x = tiny_vae64
    torch.manual_seed(2)
    parts = E.estimator_particles(E.elbo_terms(vae, x, 64 * 200))
    sd = E.spread(parts["trace"], (1, 4, 16, 64), reps=200)
    for p in (4, 16, 64):
        ratio = sd[p]["mean_sd"] / sd[1]["mean_sd"]
        assert abs(ratio * p**0.5 - 1) < 0.15, (p, ratio)  # sd of a sd from 200 groups: ~5%


def test_score_function_gradient_is_unbiased_but_noisier(tiny_vae64):
    vae, x = tiny_vae64
    seed = 13
    pyro.set_rng_seed(seed)
    reparam = E.gradient_samples(vae, x, "reparam_mc_kl", num_particles=8, reps=200)["encoder"]
    score = E.gradient_samples(vae, x, "score_function", num_particles=8, reps=200)["encoder"]
    n_reps = reparam.shape[0]
    direction = torch.randn(reparam.shape[1], generator=torch.Generator().manual_seed(0), dtype=reparam.dtype)
    m1, s1 = mean_se(reparam @ direction)
    m2, s2 = mean_se(score @ direction)
    assert_mc_close(m2, m1, (s1**2 + s2**2) ** 0.5, n=n_reps, seed=seed, what="score-function vs reparam gradient . v")
    assert score.var(0).mean() > 5 * reparam.var(0).mean()
    # the decoder gradient does not involve the guide's sampling path: same distribution
    dec_r = E.gradient_samples(vae, x, "reparam_mc_kl", 8, 100)["decoder"].var(0).mean()
    dec_s = E.gradient_samples(vae, x, "score_function", 8, 100)["decoder"].var(0).mean()
    assert 0.7 < float(dec_s / dec_r) < 1.4


def test_run_lab_end_to_end_iwae_non_decreasing(tiny_vae64):
    vae, x = tiny_vae64
    cfg = E.LabConfig(images=6, ks=(1, 10, 100, 1000), particles=(1, 4), reps=50, grad_images=6, grad_reps=10)
    result = E.run_lab(vae, x, cfg)
    v = result.values
    for k_lo, k_hi in ((1, 10), (10, 100), (100, 1000)):
        # -L_K falls with K; paired differences are precise
        se = (v[f"iwae_{k_lo}"]["se_vs_kmax"] ** 2 + v[f"iwae_{k_hi}"]["se_vs_kmax"] ** 2) ** 0.5
        assert v[f"iwae_{k_hi}"]["mean"] <= v[f"iwae_{k_lo}"]["mean"] + 3 * se + 1e-12
    assert v["nll"]["k"] == 1000 and v["gap"]["mean"] < 0
    assert abs(v["trace"]["mean"] - v["mean_field"]["mean"]) < 0.5
    assert result.spread["mean_field_kl_term"][1]["mean_sd"] == 0.0
    assert set(result.gradients) == set(E.GRADIENT_ESTIMATORS)


def test_iwae_converges_to_exact_log_likelihood_through_the_lab():
    vae, x, log_px = linear_gaussian_vae()
    for p in vae.parameters():
        p.requires_grad_(False)
    cfg = E.LabConfig(images=40, ks=(1, 10, 100, 3000), particles=(1, 2), reps=10, grad_images=4, grad_reps=3)
    torch.manual_seed(0)
    v = E.run_lab(vae, x, cfg).values
    exact = -float(log_px.mean())
    gap_1 = v["iwae_1"]["mean"] - exact
    assert gap_1 > 0.05 and v["iwae_3000"]["mean"] - exact < 0.1 * gap_1, (v, exact)


def test_bad_input_errors(tiny_vae64):
    vae, x = tiny_vae64
    with pytest.raises(ValueError, match="at least 1"):
        E.LabConfig(ks=(0, 10))
    with pytest.raises(ValueError, match="at least 2"):
        E.LabConfig(reps=1)

    class StudentTPrior(nn.Module):
        def forward(self, n):
            return dist.StudentT(3.0, torch.zeros(n, 3, dtype=torch.float64), 1.0).to_event(1)

    no_kl = VAE(StudentTPrior(), vae.likelihood, vae.encoder, vae.decoder)
    with pytest.raises(ValueError, match="no analytic KL is registered .* StudentT"):
        E.run_lab(no_kl, x, E.LabConfig(images=2, ks=(1,), particles=(1,), reps=2, grad_images=2, grad_reps=2))


def test_the_report_and_figures_follow_the_structures_parameter_groups(tiny_vae64, tmp_path):
    """A structure of its own may group its parameters otherwise than encoder and decoder (the
    generic ``Structure.parameter_groups`` gives one group, ``all``): the tables and the SNR figure
    show the groups measured."""
    from pyro_vae.lab.report import format_table, gradient_groups, markdown, write_outputs

    vae, x = tiny_vae64
    cfg = E.LabConfig(images=4, ks=(1, 10), particles=(1, 2), reps=4, grad_images=4, grad_reps=4, snr_ks=(1, 2))
    result = E.run_lab(vae, x, cfg)
    assert gradient_groups(result) == ["encoder", "decoder"]
    result.gradients = {
        est: {p: {"all": g["encoder"]} for p, g in rows.items()} for est, rows in result.gradients.items()
    }
    assert gradient_groups(result) == ["all"]
    table, md = format_table(result), markdown(result)
    gradient_table = table.split("Gradients")[1].split("Encoder gradient SNR against K")[0]
    assert " all " in gradient_table and "encoder" not in gradient_table and "decoder" not in gradient_table
    assert "| all |" in md
    paths = write_outputs(result, tmp_path / "out")
    assert (tmp_path / "out" / "figures" / "gradient_snr.png") in paths
