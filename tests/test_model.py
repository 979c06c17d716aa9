"""Shapes and structure of the model, the guide and their components; registries; ELBOs."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine

from pyro_vae.config import ModelConfig, TrainConfig
from pyro_vae.elbos import ELBOS, build_elbo
from pyro_vae.guides import GUIDES
from pyro_vae.likelihoods import LIKELIHOODS
from pyro_vae.model import build_vae
from pyro_vae.nets import mlp
from pyro_vae.priors import PRIORS
from pyro_vae.registry import Registry

B, D, L = 5, 12, 3


def test_component_shapes():
    prior = PRIORS.get("standard_normal")(L)(B)
    assert prior.batch_shape == (B,) and prior.event_shape == (L,)
    lik = LIKELIHOODS.get("bernoulli")()
    px = lik(torch.zeros(B, lik.param_dim(D)))
    assert px.batch_shape == (B,) and px.event_shape == (D,)
    q = GUIDES.get("diag_normal")(D, L, (8,), "relu")(torch.rand(B, D))
    assert q.batch_shape == (B,) and q.event_shape == (L,)
    assert torch.isfinite(q.log_prob(q.rsample())).all() and (q.base_dist.scale > 0).all()


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


@pytest.mark.parametrize("elbo", ELBOS.names())
@pytest.mark.parametrize("particles", [1, 4])
def test_one_step_of_every_elbo(elbo, particles):
    pyro.set_rng_seed(0)
    vae = build_vae(ModelConfig(latent_dim=L, hidden=(8,)), D)
    x = torch.bernoulli(torch.full((B, D), 0.5))
    loss_fn = build_elbo(TrainConfig(elbo=elbo, num_particles=particles))
    before = [p.detach().clone() for p in vae.parameters()]
    optim = torch.optim.Adam(vae.parameters(), lr=1e-2)
    loss = loss_fn.differentiable_loss(vae.model, vae.guide, x) / B
    loss.backward()
    optim.step()
    assert torch.isfinite(loss) and loss.item() > 0
    assert all(not torch.equal(a, b) for a, b in zip(before, vae.parameters()))


def test_registry_errors_list_the_names():
    reg = Registry("widget")
    reg.register("a")(int)
    with pytest.raises(ValueError, match="already registered"):
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
