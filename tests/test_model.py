"""Structure of the model and guide traces; the registry; the MLP. (Every registered component
and ELBO: tests/components/test_components.py and tests/objectives/test_elbos.py.)"""

from __future__ import annotations

import pytest
import torch
from pyro import poutine

from pyro_vae.components.nets import mlp
from pyro_vae.components.priors import PRIORS, StandardNormal
from pyro_vae.config import ConfigError, ModelConfig, load_config
from pyro_vae.model import _build, build_vae, meta_vae
from pyro_vae.plugins import isolated
from pyro_vae.registry import Registry

B, D, L = 5, 12, 3


def test_model_and_guide_traces():
    vae = build_vae(ModelConfig(latent_dim=L, hidden=(8, 6)), D)
    x = torch.bernoulli(torch.full((B, D), 0.5))
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    model_tr.compute_log_prob()
    assert model_tr.nodes["z"]["value"] is guide_tr.nodes["z"]["value"]
    assert model_tr.nodes["x"]["is_observed"] and torch.equal(model_tr.nodes["x"]["value"], x)
    for site in ("z", "x"):
        assert model_tr.nodes[site]["log_prob"].shape == (B,)
        assert [f.name for f in model_tr.nodes[site]["cond_indep_stack"]] == ["data"]
    assert vae.log_weights(x, 7).shape == (7, B)
    assert vae.reconstruct(x).shape == (B, D) and vae.sample(4).shape == (4, D)
    # the decoder mirrors the encoder: L -> 6 -> 8 -> D
    assert [m.out_features for m in vae.decoder if isinstance(m, torch.nn.Linear)] == [6, 8, D]


def test_registry_errors_list_the_names():
    reg = Registry("widget")
    reg.register("a")(int)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(float)
    with pytest.raises(ValueError, match="unknown widget 'b'; registered widgets: a"):
        reg.get("b")
    assert "a" in reg and list(reg) == ["a"]


def test_mlp_shapes_and_errors():
    net = mlp([4, 8, 2], "tanh")
    assert net(torch.zeros(3, 4)).shape == (3, 2)
    assert isinstance(mlp([4]), torch.nn.Identity)
    with pytest.raises(ValueError, match="unknown activation"):
        mlp([4, 2], "swish")


@pytest.mark.filterwarnings("ignore:ConditionalAutoRegressiveNN input_dim = 1")
@pytest.mark.parametrize("network", ["mlp", "gated_mlp", "conv", "resnet"])
def test_the_meta_vae_has_the_real_ones_shapes_and_draws_no_random_numbers(network):
    """Every built-in component builds on the meta device (the iaf guide's MADE included, down to one
    latent dimension), with the real VAE's tensor names, shapes and dtypes, and leaves the random
    stream where it was: the real VAE built after it gets the weights it always got."""
    combinations = [
        ("standard_normal", "iaf", "gaussian", 1),
        ("student_t", "iaf", "bernoulli", 2),
        ("vamp", "diag_normal", "discretized_logistic_mixture", 3),
        ("mixture_of_gaussians", "diag_normal", "continuous_bernoulli", 2),
    ]
    for prior, guide, likelihood, latent in combinations:
        cfg = load_config(
            None,
            [
                f"model.network={network}",
                f"model.prior={prior}",
                f"model.guide={guide}",
                f"model.likelihood={likelihood}",
                f"model.latent_dim={latent}",
                "model.hidden=8",
                "model.vamp.components=3",
                "model.mixture_of_gaussians.components=3",
            ],
        )
        cfg = cfg.model
        torch.manual_seed(0)
        meta = meta_vae(cfg, 3 * 8 * 8, (3, 8, 8))
        real = build_vae(cfg, 3 * 8 * 8, (3, 8, 8))
        torch.manual_seed(0)
        again = _build(cfg, 3 * 8 * 8, (3, 8, 8))  # what build_vae built before it counted on the meta device
        assert all(t.is_meta for t in meta.state_dict().values() if t.numel() > 1)  # single values may be real
        shapes = {n: (t.shape, t.dtype) for n, t in real.state_dict().items()}
        assert {n: (t.shape, t.dtype) for n, t in meta.state_dict().items()} == shapes, (prior, guide, likelihood)
        assert all(torch.equal(t, again.state_dict()[n]) for n, t in real.state_dict().items())


def test_a_vae_above_the_size_limit_is_refused_before_it_is_allocated():
    cfg = load_config(None, ["model.hidden=[60000,60000,60000]", "model.latent_dim=60000"]).model  # each within limits
    with pytest.raises(ConfigError) as info:
        build_vae(cfg, 20000**2, (20000, 20000))
    message = str(info.value)
    assert message.startswith("the VAE would hold ") and "above the limit of 536,870,912" in message
    assert (
        "(pyro_vae.config.MAX_MODEL_SIZE, 2 GiB as float32): model.latent_dim = 60000, model.hidden = [60000, "
        "60000, 60000], model.network = mlp, images of 400,000,000 values (20000 x 20000)" in message
    )
    with pytest.raises(ConfigError, match="the data dimension must be a positive integer, got 0"):
        build_vae(ModelConfig(), 0)


def test_a_component_that_cannot_build_on_the_meta_device_builds_with_a_warning(caplog):
    """Plugins' components are code the user chose to run: one that reads a tensor's values while it is
    built cannot be counted on the meta device, and is built without the size check, saying so."""

    class ReadsItsValues(StandardNormal):
        def __init__(self, latent_dim: int, **kw) -> None:
            super().__init__(latent_dim, **kw)
            self.spread = float(torch.ones(latent_dim).sum().item())  # data-dependent: fails on meta

    with isolated():
        PRIORS.register("reads_its_values")(ReadsItsValues)
        cfg = load_config(None, ["model.prior=reads_its_values", "model.latent_dim=3", "model.hidden=8"]).model
        with caplog.at_level("WARNING"):
            vae = build_vae(cfg, D)
    assert vae.prior.spread == 3.0
    assert "the VAE's size is not checked before it is built: a component does not build on PyTorch" in caplog.text
