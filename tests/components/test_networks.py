"""The networks: shapes and round trips for every network, likelihood and channel count, and the
convolutional ones through every prior, guide and ELBO on both paths (the fast loss equal to Pyro's)."""

from __future__ import annotations

import math

import pyro
import pytest
import torch

from pyro_vae.components.likelihoods import LIKELIHOODS
from pyro_vae.components.nets import NETWORKS
from pyro_vae.components.priors import PRIORS
from pyro_vae.config import ConfigError, ModelConfig, TrainConfig
from pyro_vae.model import build_vae
from pyro_vae.objectives.elbos import ELBOS
from pyro_vae.objectives.fast import build_loss

SHAPES = [(28, 28), (3, 32, 32), (1, 7, 5)]  # grey MNIST, colour CIFAR, an odd size
SMALL_CONV = {"conv": {"channels": [4, 8], "features": 16}, "resnet": {"channels": [4, 8], "features": 16}}


def _vae(network, shape, latent=3, **model):
    torch.manual_seed(0)
    cfg = ModelConfig(latent_dim=latent, hidden=(16,), network=network, settings=dict(SMALL_CONV), **model)
    return build_vae(cfg, math.prod(shape), shape).double()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("likelihood", LIKELIHOODS.names())
@pytest.mark.parametrize("network", NETWORKS.names())
def test_every_network_likelihood_and_channel_count_round_trips(network, likelihood, shape):
    vae, d, b = _vae(network, shape, likelihood=likelihood), math.prod(shape), 5
    x = torch.randint(0, 256, (b, d), dtype=torch.float64) / 255
    x = x.round() if likelihood == "bernoulli" else x
    z = vae.encoder.point(x)
    assert z.shape == (b, 3)
    h = vae.decoder(z)
    assert h.shape == (b, vae.likelihood.param_dim(d))
    assert vae.decoder(torch.randn(2, b, 3, dtype=torch.float64)).shape == (2, b, vae.likelihood.param_dim(d))
    assert vae.reconstruct(x).shape == (b, d) and vae.sample(4).shape == (4, d)
    log_w = vae.log_weights(x, 2)
    assert log_w.shape == (2, b) and torch.isfinite(log_w).all()


def test_a_convolutional_decoder_emits_one_block_of_channels_per_parameter():
    """The last transposed convolution's output channel k (of P*C) fills values k*H*W .. (k+1)*H*W
    of the flat output: parameter p of channel c is block p*C + c, so h.chunk(P, -1) gives each
    parameter for all C*H*W pixels in the data's (C, H, W) order."""
    vae = _vae("conv", (3, 8, 6), likelihood="discretized_logistic")  # P = 2 parameters, C = 3
    last = [m for m in vae.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.arange(6, dtype=torch.float64))
    h = vae.decoder(torch.zeros(2, 3, dtype=torch.float64))
    expected = torch.arange(6, dtype=torch.float64).repeat_interleave(8 * 6)
    assert torch.equal(h, expected.expand(2, -1))


def test_conv_needs_the_image_shape_and_says_so():
    with pytest.raises(ConfigError, match=r"the conv network needs the images' shape \(C, H, W\)"):
        build_vae(ModelConfig(network="conv"), 784)
    with pytest.raises(ConfigError, match="model.conv: channels = \\[\\] needs at least one width"):
        from pyro_vae.config import load_config

        load_config(None, ["model.network=conv", "model.conv.channels=[]"])


def _paths_agree(vae, cfg: TrainConfig, x):
    """The fast loss and Pyro's, the same seed: values and gradients to 1e-10 (float64)."""
    params = list(vae.parameters())
    values, grads = [], []
    for fast in (True, False):
        loss_fn = build_loss(vae, TrainConfig(**{**cfg.__dict__, "fast_path": fast}), x)
        pyro.set_rng_seed(3)
        loss = loss_fn(x)
        values.append(loss.item())
        grads.append(torch.autograd.grad(loss, params, allow_unused=True))
    assert abs(values[0] - values[1]) < 1e-10 * max(1.0, abs(values[1])), values
    for (name, _), a, b in zip(vae.named_parameters(), *grads):
        if a is not None or b is not None:
            assert torch.allclose(a, b, atol=1e-10, rtol=1e-9), name


FAST_ELBOS = [n for n in ELBOS.names() if not ELBOS.get(n).jit]


@pytest.mark.parametrize("network", ["conv", "resnet"])
@pytest.mark.parametrize("elbo", FAST_ELBOS)
def test_convolutional_networks_with_every_elbo_equal_pyros_loss(network, elbo):
    cls = ELBOS.get(elbo)
    particles = max(cls.min_particles, 3 if cls.importance_weighted or cls.grouped else 1)
    cfg = TrainConfig(elbo=elbo, num_particles=particles, iw_groups=2 if cls.grouped else 1)
    vae = _vae(network, (1, 8, 8))
    x = torch.rand(4, 64, dtype=torch.float64).round()
    _paths_agree(vae, cfg, x)


@pytest.mark.parametrize("guide", ["diag_normal", "iaf"])
@pytest.mark.parametrize("prior", PRIORS.names())
def test_convolutional_networks_with_every_prior_and_guide(prior, guide):
    if prior == "vamp" and guide == "iaf":
        with pytest.raises(ConfigError, match="vamp"):
            _vae("conv", (1, 8, 8), prior=prior, guide=guide)
        return
    settings = {**SMALL_CONV, "vamp": {"components": 3}, "mixture_of_gaussians": {"components": 3}}
    torch.manual_seed(0)
    cfg = ModelConfig(latent_dim=3, hidden=(16,), network="conv", prior=prior, guide=guide, settings=settings)
    vae = build_vae(cfg, 64, (1, 8, 8)).double()
    x = torch.rand(4, 64, dtype=torch.float64).round()
    _paths_agree(vae, TrainConfig(elbo="trace"), x)
    if prior == "vamp":  # the pseudo-inputs are images of the data's shape, encoded by the conv trunk
        assert vae.prior.pseudo_inputs().shape == (3, 64)
