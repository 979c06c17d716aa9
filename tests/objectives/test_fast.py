"""The fast training loss equals Pyro's Trace_ELBO / TraceMeanField_ELBO, loss and gradients,
for the same seed; structures it does not cover keep Pyro's ELBO."""

from __future__ import annotations

import logging

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae.config import TrainConfig
from pyro_vae.lab import estimators
from pyro_vae.objectives.fast import FastELBO, build_loss, check_structure
from pyro_vae.runs.checkpoint import load_checkpoint
from pyro_vae.training import loop as T
from tests.helpers import small_cfg


def _score_function_vae(vae):
    """The same VAE with a guide whose z is not reparameterised (outside the fast path)."""

    class ScoreFunction(type(vae)):
        def guide(self, x):
            estimators.score_function_guide(vae)(x)

    return ScoreFunction(vae.prior, vae.likelihood, vae.encoder, vae.decoder)


def _assert_falls_back_to_pyro(model_vae, x, caplog, warning):
    """build_loss warns with ``warning`` and returns exactly Pyro's Trace_ELBO loss."""
    with caplog.at_level(logging.WARNING):
        loss_fn = build_loss(model_vae, TrainConfig(), x)
    assert warning in caplog.text
    pyro.set_rng_seed(0)
    value = loss_fn(x)
    pyro.set_rng_seed(0)
    expected = Trace_ELBO().differentiable_loss(model_vae.model, model_vae.guide, x)
    assert value.item() == pytest.approx(expected.item(), abs=1e-10)


@pytest.mark.parametrize("particles", [1, 5])
@pytest.mark.parametrize("elbo_cls, analytic", [(Trace_ELBO, False), (TraceMeanField_ELBO, True)])
def test_fast_loss_and_gradients_equal_pyros(tiny_vae64, elbo_cls, analytic, particles):
    vae, x = tiny_vae64
    params = list(vae.parameters())
    pyro.set_rng_seed(7)
    stock = elbo_cls(num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1)
    ref = stock.differentiable_loss(vae.model, vae.guide, x)
    ref_grads = torch.autograd.grad(ref, params)
    pyro.set_rng_seed(7)
    ours = FastELBO(vae, analytic, particles).differentiable_loss(x)
    grads = torch.autograd.grad(ours, params)
    assert abs(ours.item() - ref.item()) < 1e-10, (ours.item(), ref.item())
    for (name, _), a, b in zip(vae.named_parameters(), grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-10, rtol=0), name


def test_structure_check_rejects_what_it_does_not_cover(tiny_vae64):
    vae, x = tiny_vae64
    check_structure(vae, x)

    def extra_site_model(x):
        vae.model(x)
        pyro.sample("w", pyro.distributions.Normal(0.0, 1.0))

    class Extra(type(vae)):
        def model(self, x):
            extra_site_model(x)

    with pytest.raises(ValueError, match=r"sites: model \['z', 'x', 'w'\]"):
        check_structure(Extra(vae.prior, vae.likelihood, vae.encoder, vae.decoder), x)

    with pytest.raises(ValueError, match="not reparameterised"):
        check_structure(_score_function_vae(vae), x)


def test_build_loss_falls_back_to_pyro_with_a_warning(tiny_vae64, caplog):
    vae, x = tiny_vae64
    _assert_falls_back_to_pyro(_score_function_vae(vae), x, caplog, "using Pyro's trace")


def test_build_loss_leaves_the_rng_alone(tiny_vae64):
    vae, x = tiny_vae64
    torch.manual_seed(3)
    state = torch.get_rng_state()
    build_loss(vae, TrainConfig(), x)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("elbo", ["trace", "mean_field"])
def test_training_with_and_without_the_fast_path_agrees(tmp_path, elbo):
    for fast in (True, False):
        T.fit(small_cfg("train.epochs=1", f"train.elbo={elbo}", f"train.fast_path={fast}"), tmp_path / str(fast),
              progress=False, figures=False)  # fmt: skip
    a = load_checkpoint(tmp_path / "True" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "False" / "checkpoints" / "last.pt")["model"]
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5, rtol=1e-4), name


def test_a_model_that_computes_its_sites_differently_keeps_pyros_loss(tiny_vae64, caplog):
    """Same sites and plates as the VAE, but the model scales the decoder's output: the structure
    check alone cannot see it, the numerical check at build time does."""
    vae, x = tiny_vae64

    class Sharper(type(vae)):
        def model(self, x):
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", self.prior(x.shape[0]))
                pyro.sample("x", self.likelihood(2 * self.decoder(z)), obs=x)

    sharper = Sharper(vae.prior, vae.likelihood, vae.encoder, vae.decoder)
    check_structure(sharper, x)  # passes
    _assert_falls_back_to_pyro(sharper, x, caplog, "differs from Pyro's")
