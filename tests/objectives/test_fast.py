"""The loss path's structure check and its choice of source; the estimators' exactness against
Pyro's is in test_one_loss_path.py."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_vae.config import TrainConfig
from pyro_vae.lab import estimators
from pyro_vae.objectives.fast import build_loss, check_structure
from pyro_vae.runs.checkpoint import load_checkpoint
from pyro_vae.training import loop as T
from tests.helpers import small_cfg


def _score_function_vae(vae):
    """The same VAE with a guide whose z is not reparameterised (outside the fast path)."""

    class ScoreFunction(type(vae)):
        def guide(self, x, beta=None):
            estimators.score_function_guide(vae)(x)

    return ScoreFunction(vae.prior, vae.likelihood, vae.encoder, vae.decoder)


def _assert_runs_on_pyros_traces(model_vae, x):
    """build_loss takes Pyro's traces (not the stories) and its loss is exactly Pyro's Trace_ELBO."""
    loss = build_loss(model_vae, TrainConfig(), x)
    assert not loss.fast
    pyro.set_rng_seed(0)
    value = loss(x)
    pyro.set_rng_seed(0)
    expected = Trace_ELBO().differentiable_loss(model_vae.model, model_vae.guide, x)
    assert value.item() == pytest.approx(expected.item(), abs=1e-10)


def test_structure_check_rejects_what_it_does_not_cover(tiny_vae64):
    vae, x = tiny_vae64
    check_structure(vae, x)

    class Extra(type(vae)):
        def model(self, x, beta=None):
            super().model(x, beta)
            pyro.sample("w", pyro.distributions.Normal(0.0, 1.0))

    extra = Extra(vae.prior, vae.likelihood, vae.encoder, vae.decoder)
    with pytest.raises(ValueError, match=r"model site 'w' is in plates \[\]"):
        check_structure(extra, x)
    with pytest.raises(ValueError, match=r"the model's latent sites \['z', 'w'\] are not the guide's \['z'\]"):
        check_structure(extra, x)
    check_structure(_score_function_vae(vae), x)  # the structure is fine: the estimators decide (trace takes it)


def test_a_structure_that_overrides_its_model_or_guide_runs_on_pyros_traces(tiny_vae64, caplog):
    vae, x = tiny_vae64
    _assert_runs_on_pyros_traces(_score_function_vae(vae), x)


def test_build_loss_leaves_the_rng_alone(tiny_vae64):
    vae, x = tiny_vae64
    torch.manual_seed(3)
    state = torch.get_rng_state()
    build_loss(vae, TrainConfig(), x)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("elbo", ["trace", "mean_field"])
def test_training_with_and_without_the_fast_path_agrees(tmp_path, elbo):
    for fast in (True, False):
        T.fit(
            small_cfg("train.epochs=1", f"train.elbo={elbo}", f"train.fast_path={fast}"),
            tmp_path / str(fast),
            progress=False,
            figures=False,
        )
    a = load_checkpoint(tmp_path / "True" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "False" / "checkpoints" / "last.pt")["model"]
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5, rtol=1e-4), name


def test_a_model_that_computes_its_sites_differently_keeps_pyros_loss(tiny_vae64):
    """Same sites and plates as the VAE, but the model scales the decoder's output: its own model,
    not its stories, so its loss is the one on Pyro's traces."""
    vae, x = tiny_vae64

    class Sharper(type(vae)):
        def model(self, x, beta=None):
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", self.prior(x.shape[0]))
                pyro.sample("x", self.likelihood(2 * self.decoder(z)), obs=x)

    sharper = Sharper(vae.prior, vae.likelihood, vae.encoder, vae.decoder)
    check_structure(sharper, x)  # passes
    _assert_runs_on_pyros_traces(sharper, x)
