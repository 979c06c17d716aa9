"""One loss path: each estimator computes its loss from the sites of one draw, read from Pyro's
traces or from a structure's stories; the two agree with each other and with Pyro's own
estimators, and the default VAE's arithmetic is bit for bit what it was (the frozen FastELBO)."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

from pyro_vae.config import ConfigError, ModelConfig, TrainConfig, load_config
from pyro_vae.model import STRUCTURES, Structure, build_vae
from pyro_vae.objectives.elbos import _Surrogate, build_elbo
from pyro_vae.objectives.fast import build_loss
from pyro_vae.objectives.sites import LeanSource, PyroSource, draw
from tests.objectives.legacy_fast import FastELBO

ESTIMATORS = [
    ("trace", 1, 1),
    ("trace", 4, 1),
    ("mean_field", 1, 1),
    ("mean_field", 3, 1),
    ("iwae", 4, 1),
    ("stl", 1, 1),
    ("stl", 3, 1),
    ("iwae_dreg", 4, 1),
    ("miwae", 2, 2),
    ("ciwae", 3, 1),
    ("piwae", 2, 2),
]


def _train_cfg(name: str, k: int, m: int, **kw) -> TrainConfig:
    return TrainConfig(elbo=name, num_particles=k, iw_groups=m, vectorize_particles=True, **kw)


def _grads(loss: torch.Tensor, module: torch.nn.Module) -> list[torch.Tensor]:
    params = [p for p in module.parameters() if p.requires_grad]
    return list(torch.autograd.grad(loss, params, allow_unused=True))


# ---------------------------------------------------------------- the default, bit for bit


@pytest.mark.parametrize("warmup", [False, True], ids=["no-warmup", "warmup"])
@pytest.mark.parametrize("name, k, m", ESTIMATORS)
def test_the_default_vae_computes_the_frozen_fast_loss_bit_for_bit(name, k, m, warmup):
    """The default architecture (784-400-50, batch 128, float32): loss and every gradient
    ``torch.equal`` to the FastELBO that trained every run before the one loss path."""
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(), 784)
    x = torch.bernoulli(torch.full((128, 784), 0.3))
    cfg = _train_cfg(name, k, m)
    elbo = build_elbo(cfg)
    loss = build_loss(vae, cfg, x, elbo)
    assert loss.fast and loss.static
    beta = torch.tensor(0.3) if warmup else None
    weighted = elbo if isinstance(elbo, _Surrogate) else None
    legacy = FastELBO(vae, elbo.analytic_kl, k, elbo.importance_weighted, weighted)
    torch.manual_seed(1)
    ours = loss(x, beta)
    ours_grads = _grads(ours, vae)
    torch.manual_seed(1)
    theirs = legacy.differentiable_loss(x, beta if warmup else 1.0)
    theirs_grads = _grads(theirs, vae)
    assert torch.equal(ours, theirs), (name, ours.item(), theirs.item())
    for (pname, _), a, b in zip(vae.named_parameters(), ours_grads, theirs_grads):
        assert torch.equal(a, b), f"{name}: gradient of {pname} differs by {(a - b).abs().max().item():.3g}"


# ---------------------------------------------------------------- against Pyro's estimators


def _both_sources(structure: Structure):
    return {"lean": LeanSource(structure), "pyro": PyroSource(structure.model, structure.guide, structure)}


@pytest.mark.parametrize("particles", [1, 3])
@pytest.mark.parametrize("name, pyro_cls", [("trace", Trace_ELBO), ("mean_field", TraceMeanField_ELBO)])
def test_trace_and_mean_field_equal_pyros_on_the_same_draw(tiny_vae64, name, pyro_cls, particles):
    vae, x = tiny_vae64
    pyro.set_rng_seed(7)
    stock = pyro_cls(num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1)
    ref = stock.differentiable_loss(vae.model, vae.guide, x)
    ref_grads = _grads(ref, vae)
    elbo = build_elbo(_train_cfg(name, particles, 1))
    for which, source in _both_sources(vae).items():
        pyro.set_rng_seed(7)
        ours = elbo.loss_fn(source)(x)
        assert abs(ours.item() - ref.item()) < 1e-10, (which, ours.item(), ref.item())
        for (pname, _), a, b in zip(vae.named_parameters(), _grads(ours, vae), ref_grads):
            assert torch.allclose(a, b, atol=1e-10, rtol=0), f"{which}: {pname}"


def test_iwae_equals_renyi_at_alpha_zero(tiny_vae64):
    vae, x = tiny_vae64
    elbo = build_elbo(_train_cfg("iwae", 5, 1))
    pyro.set_rng_seed(3)
    renyi = RenyiELBO(alpha=0, num_particles=5, vectorize_particles=True, max_plate_nesting=1)
    ref = renyi.loss(vae.model, vae.guide, x)
    for which, source in _both_sources(vae).items():
        pyro.set_rng_seed(3)
        assert abs(elbo.loss_fn(source)(x).item() - ref) < 1e-9, which


@pytest.mark.parametrize("name, k, m", [e for e in ESTIMATORS if e[0] not in ("trace", "mean_field", "iwae")])
def test_the_surrogate_estimators_have_their_bounds_value(tiny_vae64, name, k, m):
    """stl has trace's value, the others the IWAE bound's (miwae: the mean of group bounds; ciwae the
    mix), on the same draw, on both sources."""
    vae, x = tiny_vae64
    elbo = build_elbo(_train_cfg(name, k, m))
    for which, source in _both_sources(vae).items():
        pyro.set_rng_seed(11)
        t = draw(source, x, None, k * m)
        log_w = sum(s.log_prob() for s in t.model.values()) - sum(s.log_prob() for s in t.guide.values())
        log_w = log_w if log_w.dim() == 2 else log_w[None]
        iwae = torch.logsumexp(log_w, 0) - math.log(k * m)
        expected = {
            "stl": log_w.mean(0),
            "iwae_dreg": iwae,
            "piwae": iwae,
            "miwae": (torch.logsumexp(log_w.reshape(m, k, -1), 1) - math.log(k)).mean(0),
            "ciwae": 0.5 * log_w.mean(0) + 0.5 * iwae,
        }[name]
        assert abs(elbo.objective(t).item() + expected.sum().item()) < 1e-9, which


def test_the_lean_and_pyro_sources_draw_the_same_sites(tiny_vae64):
    vae, x = tiny_vae64
    for particles in (1, 4):
        draws = {}
        for which, source in _both_sources(vae).items():
            pyro.set_rng_seed(5)
            draws[which] = draw(source, x, torch.tensor(0.5, dtype=x.dtype), particles)
        lean, traced = draws["lean"], draws["pyro"]
        assert list(lean.guide) == list(traced.guide) and list(lean.model) == list(traced.model)
        for name in lean.model:
            a, b = lean.model[name], traced.model[name]
            assert a.observed == b.observed and torch.equal(a.value, b.value), name
            assert torch.allclose(a.log_prob().expand(b.log_prob().shape), b.log_prob(), atol=1e-12), name


# ---------------------------------------------------------------- refusals, up front


def test_what_the_estimators_cannot_handle_is_refused_naming_the_site(tiny_vae64):
    vae, x = tiny_vae64

    class GlobalLatent(type(vae)):
        def model(self, x, beta=None):
            pyro.sample("w", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
            super().model(x, beta)

        def guide(self, x, beta=None):
            pyro.sample("w", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
            super().guide(x, beta)

    odd = GlobalLatent(vae.prior, vae.likelihood, vae.encoder, vae.decoder)
    with pytest.raises(ConfigError, match=r"site 'w' is in plates \[\]"):
        build_loss(odd, TrainConfig(), x)

    class ScoreFunction(type(vae)):
        def guide(self, x, beta=None):
            q = self.encoder(x)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", _NotReparameterised(q.base_dist.loc, q.base_dist.scale).to_event(1))

    sf = ScoreFunction(vae.prior, vae.likelihood, vae.encoder, vae.decoder)
    with pytest.raises(ConfigError, match="guide site 'z' is not"):
        build_loss(sf, _train_cfg("iwae", 3, 1), x)
    build_loss(sf, TrainConfig(), x)  # trace takes it, with Pyro's score-function term


class _NotReparameterised(dist.Normal):
    has_rsample = False


def test_trace_with_a_score_function_site_equals_pyros_trace_elbo(tiny_vae64):
    vae, x = tiny_vae64

    def guide(x, beta=None):
        q = vae.encoder(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", _NotReparameterised(q.base_dist.loc, q.base_dist.scale).to_event(1))

    pyro.set_rng_seed(2)
    ref = Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1).differentiable_loss(
        vae.model, guide, x
    )
    ref_grads = _grads(ref, vae)
    pyro.set_rng_seed(2)
    ours = build_elbo(_train_cfg("trace", 3, 1)).loss_fn(PyroSource(vae.model, guide))(x)
    assert abs(ours.item() - ref.item()) < 1e-10
    for (pname, _), a, b in zip(vae.named_parameters(), _grads(ours, vae), ref_grads):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-10, rtol=0), pname


def test_the_structure_registry_builds_the_default():
    cfg = load_config(None, ["model.hidden=8", "model.latent_dim=2"])
    assert "vae" in STRUCTURES and cfg.model.structure == "vae"
    assert isinstance(build_vae(cfg.model, 12), Structure)
