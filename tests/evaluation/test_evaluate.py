"""The importance-sampled log-likelihood (IWAE bound) and the test-set evaluation."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from pyro_vae.data.pixels import encode
from pyro_vae.evaluation.metrics import evaluate, iwae_log_likelihood
from pyro_vae.objectives import closed_form
from tests.helpers import assert_mc_close, linear_gaussian_vae, mean_se


def test_iwae_matches_a_hand_written_per_image_logsumexp(tiny_vae64):
    vae, x = tiny_vae64
    k = 64
    torch.manual_seed(4)
    bound, elbo = iwae_log_likelihood(vae, x, k, chunk=k)
    torch.manual_seed(4)  # the same draws, by hand
    loc, scale = vae.encoder.loc_scale(x)
    z = torch.distributions.Normal(loc, scale).rsample((k,))
    log_w = closed_form.log_weights(x, vae.decoder(z), z, loc, scale)
    expected = torch.stack([torch.logsumexp(log_w[:, b], 0) - math.log(k) for b in range(x.shape[0])])
    assert torch.allclose(bound, expected, atol=1e-10, rtol=0)
    assert torch.allclose(elbo, log_w.mean(0), atol=1e-10, rtol=0)
    assert (bound >= elbo).all()  # Jensen, per image and per draw set


def test_streaming_over_chunks_is_exact(tiny_vae64, monkeypatch):
    """Chunked accumulation equals one big log-sum-exp over the same weights."""
    vae, x = tiny_vae64
    k = 23
    table = torch.randn(k, x.shape[0], dtype=torch.float64) * 30  # wide range: stresses the LSE
    offset = {"i": 0}

    def fake_log_weights(x_, n):
        out = table[offset["i"] : offset["i"] + n]
        offset["i"] += n
        return out

    monkeypatch.setattr(vae, "weigher", lambda x_: lambda n: fake_log_weights(x_, n))
    bound, elbo = iwae_log_likelihood(vae, x, k, chunk=5)
    assert offset["i"] == k
    assert torch.allclose(bound, torch.logsumexp(table, 0) - math.log(k), atol=1e-10, rtol=0)
    assert torch.allclose(elbo, table.mean(0), atol=1e-10, rtol=0)


def test_a_batch_is_encoded_once_for_all_its_chunks_and_the_draws_are_unchanged(tiny_vae64):
    """The weigher builds q(z | x) once per batch; its chunks draw what separate log_weights
    calls would (bit for bit), so chunking changes neither the numbers nor the work per sample."""
    vae, x = tiny_vae64
    calls = []
    hook = vae.encoder.register_forward_hook(lambda *args: calls.append(1))
    torch.manual_seed(2)
    bound, elbo = iwae_log_likelihood(vae, x, 12, chunk=5)  # chunks of 5, 5, 2
    hook.remove()
    assert len(calls) == 1
    torch.manual_seed(2)
    log_w = torch.cat([vae.log_weights(x, n) for n in (5, 5, 2)])
    assert torch.allclose(bound, torch.logsumexp(log_w, 0) - math.log(12), atol=1e-12, rtol=0)
    assert torch.allclose(elbo, log_w.mean(0), atol=1e-12, rtol=0)


def test_k_below_one_is_rejected(tiny_vae64):
    vae, x = tiny_vae64
    with pytest.raises(ValueError, match="at least 1"):
        evaluate(vae, x, k=0)


def test_no_images_is_rejected_by_name(tiny_vae64):
    vae, x = tiny_vae64
    with pytest.raises(ValueError, match="no images to evaluate"):
        evaluate(vae, x[:0], k=2)


def test_evaluate_walks_uint8_levels_in_batches_like_their_floats(tiny_vae64):
    vae, x = tiny_vae64
    vae = copy.deepcopy(vae).float()  # uint8 levels decode to float32
    levels = (x * 255).round().to(torch.uint8)
    pieces = evaluate(vae, levels, k=3, batch_size=4, seed=0)  # batches of 4 and 2
    floats = evaluate(vae, levels.float() / 255, k=3, batch_size=4, seed=0)
    for name in ("neg_elbo", "nll"):
        assert pieces[name].n == floats[name].n == x.shape[0]
        assert pieces[name].mean == pytest.approx(floats[name].mean, abs=1e-6)


def test_evaluate_leaves_the_callers_rng_alone_and_repeats_itself(tiny_vae64):
    vae, x = tiny_vae64
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = evaluate(vae, x, k=8, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    b = evaluate(vae, x, k=8, seed=5)
    assert a["nll"].mean == b["nll"].mean and a["neg_elbo"].mean == b["neg_elbo"].mean


def test_stored_uint8_levels_evaluate_exactly_like_the_float_images(tiny_vae64):
    vae, x = tiny_vae64
    vae = vae.float()
    levels = encode(x.float())
    assert levels.dtype == torch.uint8
    a, b = evaluate(vae, levels, k=4, batch_size=4), evaluate(vae, x.float(), k=4, batch_size=4)
    assert a["nll"].mean == b["nll"].mean and a["neg_elbo"].mean == b["neg_elbo"].mean


def test_elbo_below_iwae_below_exact_log_likelihood_and_convergence():
    vae, x, log_px = linear_gaussian_vae()
    reps, seed = 30, 21
    torch.manual_seed(seed)
    exact = float(log_px.mean())
    means, ses = {}, {}
    for k in (1, 10, 100, 1000):
        runs = torch.stack([iwae_log_likelihood(vae, x, k)[0].mean() for _ in range(reps)])
        means[k], ses[k] = mean_se(runs)
    elbo_runs = torch.stack([iwae_log_likelihood(vae, x, 50)[1].mean() for _ in range(reps)])
    elbo, elbo_se = mean_se(elbo_runs)
    assert_mc_close(means[1], elbo, (ses[1] ** 2 + elbo_se**2) ** 0.5, n=reps, seed=seed, what="IWAE K=1 = ELBO")
    ks = sorted(means)
    for k_lo, k_hi in zip(ks, ks[1:]):
        z = (means[k_hi] - means[k_lo]) / (ses[k_hi] ** 2 + ses[k_lo] ** 2) ** 0.5
        assert z > -3, (
            f"IWAE bound fell from K={k_lo} ({means[k_lo]:.4f}) to K={k_hi} ({means[k_hi]:.4f}), "
            f"z={z:.2f}, N={reps}, seed={seed}"
        )
    gap = means[1] - exact
    assert gap < -0.05, f"the guide should be imperfect: ELBO - log p(x) = {gap:.4f}"  # a meaningful test
    for k in ks:
        assert means[k] < exact + 3 * ses[k], (
            f"IWAE K={k} {means[k]:.4f} above log p(x) {exact:.4f}; N={reps}, seed={seed}"
        )
    # convergence: K=1000 closes most of the ELBO's gap to log p(x)
    assert exact - means[1000] < 0.1 * (exact - means[1]), (means, exact)


def test_chunks_are_sized_for_the_device():
    from pyro_vae.evaluation.metrics import MAX_ELEMENTS_CPU, max_elements

    assert max_elements(torch.device("cpu")) == MAX_ELEMENTS_CPU


@pytest.mark.cuda
def test_gpu_chunks_are_larger_within_the_cap():
    from pyro_vae.evaluation.metrics import MAX_ELEMENTS_CPU, MAX_ELEMENTS_GPU, max_elements

    assert MAX_ELEMENTS_CPU <= max_elements(torch.device("cuda")) <= MAX_ELEMENTS_GPU


def test_any_model_with_log_weights_evaluates(tiny_vae64):
    """A model of one's own (a notebook's CVAE) needs only ``log_weights(x, n)``."""
    vae, x = tiny_vae64

    class Own(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = vae

        def log_weights(self, x_, n):
            return self.inner.log_weights(x_, n)

    assert evaluate(Own(), x, k=8, seed=5)["nll"].mean == evaluate(vae, x, k=8, seed=5)["nll"].mean
