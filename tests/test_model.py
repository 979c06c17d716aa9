"""Structure of the model and guide traces; the registry; the MLP. (Every registered component
and ELBO: tests/components/test_components.py and tests/objectives/test_elbos.py.)"""

from __future__ import annotations

import pytest
import torch
from pyro import poutine

from pyro_vae.components.nets import mlp
from pyro_vae.config import ModelConfig
from pyro_vae.model import build_vae
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
