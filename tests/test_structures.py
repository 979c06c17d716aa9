"""Model structures (``model.structure``): the ``vae`` unchanged, the ``hierarchical`` one (with its
ladder), the two ways a story is emitted (lean, Pyro) agreeing site by site, every component on the
top layer building or refused, and the latent API, generic and per structure."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, config_enumerate
from torch import nn

from pyro_vae.components.guides import GUIDES
from pyro_vae.components.nets import MLP, NETWORKS
from pyro_vae.config import ConfigError, ModelConfig, load_config
from pyro_vae.hierarchical import Hierarchical, merge
from pyro_vae.model import STRUCTURES, VAE, LeanEmit, Structure, _build, build_model, build_vae, meta_vae
from pyro_vae.plugins import isolated

B, D = 4, 12


def _x(b=B, d=D, dtype=torch.float64):
    return torch.bernoulli(torch.full((b, d), 0.5, dtype=dtype), generator=torch.Generator().manual_seed(1))


def _model(*extra, d=D, image_shape=None):
    cfg = load_config(
        None,
        [
            "model.hidden=8",
            "model.latent_dim=3",
            "model.vamp.components=3",
            "model.mixture_of_gaussians.components=3",
            *extra,
        ],
    ).model
    torch.manual_seed(0)
    return build_model(cfg, d, image_shape).double()


HIERARCHICAL = {
    "L2": ["model.structure=hierarchical"],
    "L3": ["model.structure=hierarchical", "model.hierarchical.layers=3", "model.hierarchical.latent_dims=[2,3,4]"],
    "ladder": ["model.structure=hierarchical", "model.hierarchical.ladder=true", "model.hierarchical.layers=3"],
    "markov": ["model.structure=hierarchical", "model.hierarchical.skip=false", "model.hierarchical.latent_dims=[3,2]"],
}


# ---------------------------------------------------------------- vae: unchanged


def test_the_vaes_state_dict_keys_are_unchanged():
    """Exported models load by these names: the structure adds no submodule, parameter or buffer."""
    vae = build_vae(ModelConfig(latent_dim=2, hidden=(8,)), D)
    assert isinstance(vae, VAE) and isinstance(vae, Structure) and STRUCTURES.get("vae") is not None
    assert list(vae.state_dict()) == [
        "prior.loc",
        "prior.scale",
        "encoder.trunk.0.weight",
        "encoder.trunk.0.bias",
        "encoder.head.weight",
        "encoder.head.bias",
        "decoder.0.weight",
        "decoder.0.bias",
        "decoder.2.weight",
        "decoder.2.bias",
    ]
    assert build_model is build_vae and ModelConfig().structure == "vae"


def test_the_vae_stories_give_todays_pyro_traces():
    """Sites z (latent, scaled by beta) and x (observed, unscaled), each in plate("data") alone; the
    guide's z is the encoder's draw, the model's replays it."""
    vae, x, beta = build_vae(ModelConfig(latent_dim=3, hidden=(8,)), D).double(), _x(), torch.tensor(0.3)
    torch.manual_seed(5)
    guide_trace, model_trace = vae.traces(x, beta)
    torch.manual_seed(5)
    z = vae.encoder(x).rsample()

    def sites(trace):
        return [
            (n, s["is_observed"], [f.name for f in s["cond_indep_stack"]], s["scale"])
            for n, s in trace.nodes.items()
            if s["type"] == "sample" and n != "data"
        ]

    assert sites(guide_trace) == [("z", False, ["data"], beta)]
    assert sites(model_trace) == [("z", False, ["data"], beta), ("x", True, ["data"], 1.0)]
    assert torch.equal(guide_trace.nodes["z"]["value"], z)
    assert model_trace.nodes["z"]["value"] is guide_trace.nodes["z"]["value"]
    assert vae.has_stories and vae.layers() == {"z": 3}


# ---------------------------------------------------------------- lean and Pyro emit the same sites


def _pyro_sites(structure, x, particles):
    def run(fn):
        return pyro.plate("num_particles_vectorized", particles, dim=-2, device=x.device)(fn) if particles > 1 else fn

    guide_trace = poutine.trace(run(structure.guide)).get_trace(x)
    model_trace = poutine.trace(poutine.replay(run(structure.model), trace=guide_trace)).get_trace(x)

    def sites(trace):
        return {n: s for n, s in trace.nodes.items() if s["type"] == "sample" and not n.startswith(("data", "num_"))}

    return sites(guide_trace), sites(model_trace)


@pytest.mark.parametrize("particles", [1, 3])
@pytest.mark.parametrize("which", ["vae", *HIERARCHICAL])
def test_lean_emit_records_what_pyro_traces(which, particles):
    """Same seed, same draws; the same site names in the same order, the same values, log-densities
    and shapes (a replayed run of the lean guide too)."""
    structure, x = _model(*HIERARCHICAL.get(which, [])), _x()
    torch.manual_seed(3)
    pyro_guide, pyro_model = _pyro_sites(structure, x, particles)
    torch.manual_seed(3)
    guide = LeanEmit(particles)
    structure.guide_story(x, guide)
    model = LeanEmit(particles, values={n: s.value for n, s in guide.sites.items()})
    structure.model_story(x, model)
    replayed = LeanEmit(particles, values={n: s["value"] for n, s in pyro_guide.items()})
    structure.guide_story(x, replayed)
    names = list(structure.layers())
    assert list(guide.sites) == list(pyro_guide) == names and list(model.sites) == list(pyro_model) == [*names, "x"]
    lead = (particles, B) if particles > 1 else (B,)
    for lean, pyro_sites in ((guide.sites, pyro_guide), (model.sites, pyro_model), (replayed.sites, pyro_guide)):
        for name, site in lean.items():
            node = pyro_sites[name]
            assert site.observed == node["is_observed"] and site.scale == 1.0
            torch.testing.assert_close(site.value, node["value"], rtol=0, atol=0)
            log_p = node["fn"].log_prob(node["value"])
            assert site.log_prob().shape == log_p.shape == lead, name
            torch.testing.assert_close(site.log_prob(), log_p, rtol=1e-12, atol=1e-12)
            assert site.log_prob() is site.log_prob()  # computed once
    beta = torch.tensor(0.5)
    emit = LeanEmit(particles, beta)
    structure.guide_story(x, emit)
    assert all(s.scale is beta for s in emit.sites.values())


def test_lean_emit_refuses_a_site_emitted_twice():
    emit = LeanEmit()
    emit.latent("z", dist.Normal(torch.zeros(2, 3), 1.0).to_event(1))
    with pytest.raises(ValueError, match="sample site 'z' is emitted twice"):
        emit.observed("z", dist.Normal(torch.zeros(2, 3), 1.0).to_event(1), torch.zeros(2, 3))


# ---------------------------------------------------------------- hierarchical


@pytest.mark.parametrize("which", list(HIERARCHICAL))
def test_hierarchical_log_weights_and_the_latent_api(which):
    h, x = _model(*HIERARCHICAL[which]), _x()
    assert isinstance(h, Hierarchical) and h.has_stories
    layers = h.layers()
    assert list(layers) == [f"z{i}" for i in range(len(layers), 0, -1)]
    torch.manual_seed(0)
    log_w = h.log_weights(x, 7)
    assert log_w.shape == (7, B) and torch.isfinite(log_w).all()
    assert (log_w.mean(0) < torch.logsumexp(log_w, 0) - math.log(7)).all()  # ELBO < IWAE
    assert h.log_weights(x, 1).shape == (1, B)
    point, encoded = h.point(x), h.encode(x)
    assert {n: tuple(z.shape) for n, z in point.items()} == {n: (B, d) for n, d in layers.items()}
    for name, (loc, scale) in encoded.items():
        assert torch.equal(loc, point[name]) and scale.shape == loc.shape and (scale > 0).all()
    codes = h.sample_latents(5, temperature=0.5)
    assert {n: tuple(z.shape) for n, z in codes.items()} == {n: (5, d) for n, d in layers.items()}
    top, *lower = list(layers)
    held = h.sample_latents(5, fixed={top: point[top][0]})
    assert torch.equal(held[top], point[top][0].expand(5, -1))
    assert not torch.equal(held[lower[-1]][0], held[lower[-1]][1])  # the layers below are drawn
    assert h.sample(5).shape == (5, D) and h.reconstruct(x).shape == (B, D)
    assert ((h.sample(5) >= 0) & (h.sample(5) <= 1)).all()
    # decode fills the missing lower layers at their conditional means
    complete = h.complete({top: point[top]})
    torch.testing.assert_close(h.decode({top: point[top]}), h.decode(complete))
    torch.testing.assert_close(h.decode(point[top]), h.decode(complete))  # a tensor is the top layer's code
    with pytest.raises(ValueError, match="the code of the top layer 'z"):
        h.complete({lower[-1]: point[lower[-1]]})
    with pytest.raises(ValueError, match="codes for \\['z9'\\]"):
        h.decode({"z9": point[top]})
    groups = h.parameter_groups()
    everything = [p for ps in groups.values() for p in ps]
    assert len(everything) == len({id(p) for p in everything}) == len(list(h.parameters()))
    assert ("shared" in groups) == h.ladder and groups["encoder"] and groups["decoder"]


def test_without_skip_the_decoder_reads_the_bottom_layer_alone():
    h, x = _model(*HIERARCHICAL["markov"]), _x()
    z1 = h.point(x)["z1"]
    torch.testing.assert_close(h.decode({"z1": z1}), h.likelihood.mean(h.decoder(z1)))
    assert h.decoder[0].in_features == 3  # z1 alone (latent_dims = [3, 2])
    assert _model(*HIERARCHICAL["L3"]).decoder[0].in_features == 2 + 3 + 4


def test_the_ladder_merges_by_precision():
    g = torch.Generator().manual_seed(0)
    loc_a, loc_b = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(2))
    scale_a = torch.rand(5, 3, generator=g, dtype=torch.float64) + 0.1
    scale_b = torch.rand(5, 3, generator=g, dtype=torch.float64) + 1e-5
    loc, scale = merge(loc_a, scale_a, loc_b, scale_b)
    precision = scale_a**-2 + scale_b**-2
    torch.testing.assert_close(scale, precision.rsqrt())
    torch.testing.assert_close(loc, (loc_a * scale_a**-2 + loc_b * scale_b**-2) / precision)
    h, x = _model(*HIERARCHICAL["ladder"]), _x()  # and the guide's z1 is that merge
    up = h._bottom_up(x)
    emit = LeanEmit()
    h.guide_story(x, emit)
    expected = merge(*up[0], *h.conditionals[0].loc_scale(emit.sites["z2"].value))
    torch.testing.assert_close(emit.sites["z1"].fn.base_dist.loc, expected[0])
    torch.testing.assert_close(emit.sites["z1"].fn.base_dist.scale, expected[1])


@pytest.mark.filterwarnings("ignore:ConditionalAutoRegressiveNN input_dim = 1")
@pytest.mark.parametrize("network", ["mlp", "gated_mlp", "conv"])
def test_every_prior_and_likelihood_on_a_hierarchical_model_builds_and_trains_or_is_refused(network):
    """Every prior on the top layer, every likelihood, both guides, with and without the ladder: a
    meta-device twin of the real model's shapes, a finite Pyro Trace_ELBO loss and gradient, or a
    ConfigError up front."""
    priors = ["standard_normal", "student_t", "mixture_of_gaussians", "vamp"]
    likelihoods = [
        "bernoulli",
        "continuous_bernoulli",
        "gaussian",
        "discretized_logistic",
        "discretized_logistic_mixture",
    ]
    image, x = (1, 4, 4), _x(d=16)  # binary pixels: valid for every likelihood
    built = refused = 0
    for prior in priors:
        for likelihood in likelihoods:
            for guide, ladder in (("diag_normal", "false"), ("diag_normal", "true"), ("iaf", "false")):
                extra = [
                    "model.structure=hierarchical",
                    f"model.network={network}",
                    f"model.prior={prior}",
                    f"model.likelihood={likelihood}",
                    f"model.guide={guide}",
                    f"model.hierarchical.ladder={ladder}",
                    "model.conv.channels=[2]",
                    "model.conv.features=8",
                ]
                if guide == "iaf":
                    with pytest.raises(
                        ConfigError, match="does not build per-layer conditional flows; use model.guide=diag_normal"
                    ):
                        _model(*extra, d=16, image_shape=image)
                    refused += 1
                    continue
                cfg = load_config(
                    None,
                    [
                        "model.hidden=8",
                        "model.latent_dim=2",
                        "model.vamp.components=3",
                        "model.mixture_of_gaussians.components=3",
                        *extra,
                    ],
                ).model
                torch.manual_seed(0)
                meta = meta_vae(cfg, 16, image)
                h = build_model(cfg, 16, image).double()
                assert {n: t.shape for n, t in meta.state_dict().items()} == {
                    n: t.shape for n, t in h.state_dict().items()
                }
                torch.manual_seed(1)
                loss = Trace_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1).differentiable_loss(
                    h.model, h.guide, x
                )
                loss.backward()
                assert torch.isfinite(loss), (prior, likelihood, ladder)
                assert all(torch.isfinite(p.grad).all() for p in h.parameters() if p.grad is not None)
                assert h.sample(2).shape == (2, 16) and torch.isfinite(h.log_weights(x, 3)).all()
                built += 1
    assert (built, refused) == (40, 20)


def test_refusals_say_why_and_the_fix():
    base = ["model.structure=hierarchical", "model.hidden=8", "model.latent_dim=2"]
    with pytest.raises(ConfigError, match="model.hierarchical: layers = 1 must be between 2 and 64: a hierarchical"):
        load_config(None, [*base, "model.hierarchical.layers=1"])
    with pytest.raises(ConfigError, match=r"latent_dims = \[2, 3, 4\] gives 3 sizes for layers = 2; give one size "):
        load_config(None, [*base, "model.hierarchical.latent_dims=[2,3,4]"])
    with pytest.raises(
        ConfigError, match="model.structure = 'tree' is not one of: hierarchical, mixture, semi_supervised, vae"
    ):
        load_config(None, ["model.structure=tree"])
    with pytest.raises(ConfigError, match="model.structure=tree: unknown model structure 'tree'"):
        build_model(ModelConfig(structure="tree"), D)
    with pytest.raises(ConfigError, match="layers = 1 must be between 2"):  # unvalidated settings, at build time
        build_model(ModelConfig(structure="hierarchical", settings={"hierarchical": {"layers": 1}}), D)

    class PlainGuide(nn.Module):  # a plugin guide: no loc_scale, no precision to merge
        def __init__(self, data_dim, latent_dim, network, **_):
            super().__init__()
            self.trunk, features = network.encoder(data_dim)
            self.head = nn.Linear(features, latent_dim)

        def forward(self, x):
            return dist.Normal(self.head(self.trunk(x)), 1.0).to_event(1)

    class NoDecoder(MLP):
        decoder = None

    with isolated():
        GUIDES.register("plain")(PlainGuide)
        NETWORKS.register("no_decoder")(NoDecoder)
        with pytest.raises(
            ConfigError,
            match="the ladder merges Gaussian parameters by precision.*not "
            "model.guide=plain; use model.guide=diag_normal",
        ):
            build_model(load_config(None, [*base, "model.guide=plain", "model.hierarchical.ladder=true"]).model, D)
        h = build_model(load_config(None, [*base, "model.guide=plain"]).model, D)  # without the ladder: its top layer
        assert torch.isfinite(h.double().log_weights(_x(), 2)).all()
        with pytest.raises(ConfigError, match="the network no_decoder has no decoder.*give it both"):
            build_model(load_config(None, [*base, "model.network=no_decoder"]).model, D)


@pytest.mark.parametrize("network", ["gated_mlp", "mlp"])
def test_the_shallow_lower_guide_is_tomczak_and_wellings_q_z1(network):
    """``model.hierarchical.lower = shallow``: q(z1 | x, z2) from one layer on x, one on z2, a joint
    layer on both and a linear head, all of width hidden[0] (T&W's HVAE: 2 layers on x, the
    default 4 with the gated 300-300 network); it trains (finite log weights, gradients reach
    every layer) and is refused, saying why, with the ladder and a network without ``layer``."""
    from pyro_vae.components.nets import Gated
    from pyro_vae.hierarchical import _Joint

    base = ["model.structure=hierarchical", f"model.network={network}", "model.hidden=[12, 9]", "model.latent_dim=3"]
    h = build_model(load_config(None, [*base, "model.hierarchical.lower=shallow"]).model, D).double()
    (lower,) = h.lower
    assert isinstance(lower.net, _Joint)
    kind = Gated if network == "gated_mlp" else nn.Linear
    trunk = h.trunk if network == "gated_mlp" else h.trunk[0]
    assert isinstance(trunk, kind) and (trunk.value if network == "gated_mlp" else trunk).weight.shape == (12, D)
    shapes = [p.shape for p in lower.net.parameters() if p.dim() == 2]
    expected = [(12, 3), (12, 24), (6, 12)]  # z2 -> 12, [h, z2'] -> 12, head -> (loc, raw) of z1
    assert shapes == [s for s in expected for _ in range(2 if network == "gated_mlp" and s != (6, 12) else 1)]
    weights = h.log_weights(_x(), 2)
    assert torch.isfinite(weights).all()
    weights.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in [*h.trunk.parameters(), *lower.parameters()])
    with pytest.raises(ConfigError, match="lower = 'shallow' shapes q.*leave lower = deep with ladder = true"):
        load_config(None, [*base, "model.hierarchical.lower=shallow", "model.hierarchical.ladder=true"])
    with pytest.raises(ConfigError, match=r"lower = 'wide' is not one of: deep, shallow"):
        load_config(None, [*base, "model.hierarchical.lower=wide"])
    with pytest.raises(ConfigError, match="which conv does not give .*model.network=gated_mlp or mlp"):
        shallow_conv = ["model.structure=hierarchical", "model.network=conv", "model.hierarchical.lower=shallow"]
        build_model(load_config(None, shallow_conv).model, 784, (28, 28))


def test_he_init_draws_every_dense_weight_from_n_0_2_over_fan_in():
    """``model.init = he``: every ``nn.Linear`` weight ~ N(0, 2 / fan_in), the sample standard
    deviation within 5 standard errors (SE = sigma / sqrt(2 n)); biases keep PyTorch's uniform
    start; PyTorch's own start (the default) has standard deviation 1 / sqrt(3 fan_in); a name not
    known is refused."""
    for init in ("he", "torch"):
        torch.manual_seed(0)
        vae = build_model(load_config(None, ["model.hidden=[400]", f"model.init={init}"]).model, D)
        for name, m in vae.named_modules():
            if not isinstance(m, nn.Linear):
                continue
            w, fan_in = m.weight.detach().double(), m.in_features
            sigma = math.sqrt(2 / fan_in) if init == "he" else 1 / math.sqrt(3 * fan_in)
            z = (w.std().item() - sigma) / (sigma / math.sqrt(2 * w.numel()))
            assert abs(z) < 5 and abs(w.mean().item()) < 5 * sigma / math.sqrt(w.numel()), (
                f"{init}, {name}: std {w.std().item():.4g} vs {sigma:.4g} (z = {z:.2f}, n = {w.numel()}, seed 0)"
            )
            assert m.bias.abs().max() <= 1 / math.sqrt(fan_in)
    with pytest.raises(ConfigError, match="model.init = 'xavier' is not one of: torch, he"):
        load_config(None, ["model.init=xavier"])


def test_a_hierarchical_model_above_the_size_limit_is_refused_before_it_is_allocated():
    cfg = load_config(None, ["model.structure=hierarchical", "model.hidden=[60000,60000]", "model.latent_dim=8"]).model
    with pytest.raises(ConfigError, match="the VAE would hold .* model.structure = hierarchical, model.latent_dim"):
        build_model(cfg, 20000, None)


def test_the_meta_model_draws_no_random_numbers():
    cfg = load_config(
        None,
        [
            "model.structure=hierarchical",
            "model.hidden=8",
            "model.latent_dim=2",
            "model.hierarchical.ladder=true",
            "model.prior=vamp",
            "model.vamp.components=3",
        ],
    ).model
    torch.manual_seed(0)
    build_model(cfg, D)
    torch.manual_seed(0)
    again = _build(cfg, D, None)
    torch.manual_seed(0)
    real = build_model(cfg, D)  # (the meta twin first, then the same weights)
    assert all(torch.equal(t, again.state_dict()[n]) for n, t in real.state_dict().items())


# ---------------------------------------------------------------- a plugin's structure


class TwoLayerStories(Structure):
    """z2 ~ N(0, I), z1 | z2 ~ N(A z2, I), x | z1 ~ N(W z1, I): a plugin that writes stories."""

    def __init__(self, cfg=None, data_dim=D, **_):
        super().__init__()
        self.data_dim = data_dim
        self.a, self.w = nn.Linear(2, 3), nn.Linear(3, data_dim)
        self.q2, self.q1 = nn.Linear(data_dim, 4), nn.Linear(data_dim + 2, 6)

    def model_story(self, x, emit):
        z2 = emit.latent("z2", dist.Normal(torch.zeros(x.shape[0], 2, dtype=x.dtype), 1.0).to_event(1))
        z1 = emit.latent("z1", dist.Normal(self.a(z2), 1.0).to_event(1))
        emit.observed("x", dist.Normal(self.w(z1), 1.0).to_event(1), x)

    def guide_story(self, x, emit):
        loc, raw = self.q2(x).chunk(2, -1)
        z2 = emit.latent("z2", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))
        h = torch.cat([x.expand(*z2.shape[:-1], x.shape[-1]), z2], -1)
        loc, raw = self.q1(h).chunk(2, -1)
        emit.latent("z1", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))

    def layers(self):
        return {"z2": 2, "z1": 3}


class TwoLayerPyro(TwoLayerStories):
    """The same model and guide written as plain Pyro."""

    def model(self, x, beta=None):
        with pyro.plate("data", x.shape[0]):
            self.model_story(x, _Sample())

    def guide(self, x, beta=None):
        with pyro.plate("data", x.shape[0]):
            self.guide_story(x, _Sample())


class _Sample:
    def latent(self, name, fn):
        return pyro.sample(name, fn)

    def observed(self, name, fn, value):
        return pyro.sample(name, fn, obs=value)


def test_a_plugins_structure_gets_the_generic_latent_api():
    with isolated():
        STRUCTURES.register("two_layer")(TwoLayerStories)
        STRUCTURES.register("two_layer_pyro")(TwoLayerPyro)
        torch.manual_seed(0)
        stories = build_model(load_config(None, ["model.structure=two_layer"]).model, D).double()
        torch.manual_seed(0)
        plain = build_model(load_config(None, ["model.structure=two_layer_pyro"]).model, D).double()
    x = _x()
    assert stories.has_stories and not plain.has_stories
    torch.manual_seed(4)
    lean = stories.log_weights(x, 5)
    torch.manual_seed(4)
    traced = plain.log_weights(x, 5)
    torch.testing.assert_close(lean, traced)  # the same draws through Pyro's particle plate
    point = stories.point(x)
    loc2 = stories.q2(x).chunk(2, -1)[0]
    torch.testing.assert_close(point["z2"], loc2)
    torch.testing.assert_close(point["z1"], stories.q1(torch.cat([x, loc2], -1)).chunk(2, -1)[0])
    torch.testing.assert_close(stories.decode(point), stories.w(point["z1"]))  # the observed site's mean
    torch.testing.assert_close(stories.decode({"z2": point["z2"]}), stories.w(stories.a(point["z2"])))
    torch.manual_seed(1)
    drawn = stories.sample_latents(6, temperature=1e-9)
    torch.testing.assert_close(drawn["z1"], stories.a(drawn["z2"]))  # near T = 0: conditional means below the top
    assert drawn["z2"].abs().max() < 1e-8
    assert stories.sample(6).shape == (6, D) and stories.reconstruct(x).shape == (B, D)
    assert stories.parameter_groups() == {"all": list(stories.parameters())}

    class NoDataDim(TwoLayerStories):
        def __init__(self):
            super().__init__()
            del self.data_dim

    with pytest.raises(NotImplementedError, match="has no integer data_dim"):
        NoDataDim().sample(2)
    with pytest.raises(NotImplementedError, match="does not list its latent layers"):
        Structure().layers()
    with isolated():
        STRUCTURES.register("not_a_structure")(lambda **_: nn.Linear(2, 2))
        with pytest.raises(ConfigError, match="model.structure=not_a_structure built a Linear, not a"):
            build_model(load_config(None, ["model.structure=not_a_structure"]).model, D)


def test_a_hierarchical_run_trains_evaluates_compares_and_exports(tmp_path, capsys):
    """Every command on a two-layer run: train (its summary and table with the active units per
    layer), evaluate, the estimator laboratory, export and the exported model's evaluation."""
    from pyro_vae.cli import main
    from tests.helpers import SMALL

    run, model = tmp_path / "run", tmp_path / "model"
    sets = [
        a
        for item in (
            *SMALL,
            "train.epochs=1",
            "model.structure=hierarchical",
            "train.elbo=iwae_dreg",
            "train.num_particles=2",
        )
        for a in ("--set", item)
    ]
    assert main(["train", "--out", str(run), "--no-progress", "--no-figures", *sets]) == 0
    assert "active units (Cov_x E[z|x] > 0.01): z2 " in capsys.readouterr().out
    lab = [
        "--images",
        "4",
        "--k",
        "2,4",
        "--particles",
        "1,2",
        "--reps",
        "2",
        "--grad-images",
        "4",
        "--grad-reps",
        "2",
        "--snr-k",
        "2",
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert main(["compare", str(run), *lab]) == 0
    assert main(["evaluate", str(run), "--k", "3", "--images", "8", "--no-progress", "--device", "cpu"]) == 0
    assert main(["export", str(run), "--out", str(model)]) == 0
    assert main(["evaluate", str(model), "--k", "3", "--images", "8", "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "DReG gradients (iwae_dreg)" in (run / "compare" / "report.md").read_text()


# ---------------------------------------------------------------- mixture: a discrete c above z


def _mixture(*extra, d=D, image_shape=None):
    return _model("model.structure=mixture", "model.mixture.components=4", *extra, d=d, image_shape=image_shape)


def test_the_mixture_stories_emit_a_discrete_c_above_z_in_pyro_and_lean_alike():
    vae, x = _mixture(), _x()
    torch.manual_seed(3)
    guide_trace, model_trace = vae.traces(x)
    torch.manual_seed(3)
    lean = LeanEmit()
    vae.guide_story(x, lean)
    assert [n for n, s in guide_trace.nodes.items() if s["type"] == "sample" and n != "data"] == ["c", "z"]
    assert [n for n, s in model_trace.nodes.items() if s["type"] == "sample" and n != "data"] == ["c", "z", "x"]
    for name in ("c", "z"):
        assert torch.equal(guide_trace.nodes[name]["value"], lean.sites[name].value), name
    c = lean.sites["c"].value
    assert c.shape == (B, 4) and torch.equal(c.sum(-1), torch.ones(B, dtype=c.dtype))  # one-hot draws
    enumerated = LeanEmit(enumerate=True)
    vae.guide_story(x, enumerated)
    assert enumerated.sites["c"].enumerated and enumerated.sites["c"].value.shape == (4, 1, 4)
    assert enumerated.sites["z"].value.shape == (4, B, 3)


def test_the_mixtures_gumbel_max_draws_follow_the_categorical():
    from pyro_vae.mixture import OneHotCategorical

    probs = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    n, seed = 200_000, 0
    torch.manual_seed(seed)
    freq = OneHotCategorical(probs=probs).sample((n,)).mean(0)
    z = (freq - probs) / (probs * (1 - probs) / n).sqrt()
    assert z.abs().max() < 4.5, f"N = {n}, seed {seed}: z-scores {z.tolist()}"


def test_the_mixtures_latent_api_and_clusters():
    vae, x = _mixture(), _x()
    assert vae.layers() == {"z": 3} and vae.components() == 4 and vae.has_stories
    assert vae.point(x)["z"].shape == (B, 3) and vae.encode(x)["z"][1].shape == (B, 3)
    clusters = vae.clusters(x)
    assert (
        clusters.shape == (B,) and clusters.dtype == torch.long and 0 <= int(clusters.min()) <= int(clusters.max()) < 4
    )
    assert torch.equal(clusters, vae.responsibilities(x).argmax(-1))
    assert vae.sample(5).shape == (5, D) and vae.reconstruct(x).shape == (B, D)
    n, seed = 4000, 0
    torch.manual_seed(seed)
    z = vae.sample_latents(n, component=2)["z"]
    p = vae.prior_z(torch.nn.functional.one_hot(torch.tensor(2), 4).double())
    score = (z.mean(0) - p.mean) / (p.stddev / math.sqrt(n))
    assert score.abs().max() < 4.5, f"N = {n}, seed {seed}: z-scores {score.tolist()}"
    assert torch.equal(vae.sample_latents(3, temperature=0.0, component=2)["z"], p.mean.expand(3, 3))
    with pytest.raises(ValueError, match="component 4 does not exist: this mixture has components 0..3"):
        vae.sample_latents(1, component=4)
    assert VAE.components(build_vae(ModelConfig(latent_dim=2, hidden=(8,)), D)) == 0


def test_the_mixture_refuses_what_it_cannot_use():
    with pytest.raises(
        ConfigError, match="has its own prior, the mixture of K learned Gaussians p.z . c., so model.prior=vamp"
    ):
        _mixture("model.prior=vamp")
    with pytest.raises(
        ConfigError, match="guide q.z . x, c. is a diagonal Gaussian conditioned on the component, not model.guide=iaf"
    ):
        _mixture("model.guide=iaf")
    with pytest.raises(ConfigError, match="components = 1 must be between 2 and 10,000"):
        load_config(None, ["model.structure=mixture", "model.mixture.components=1"])


@pytest.mark.parametrize("network", ["mlp", "gated_mlp", "conv"])
@pytest.mark.parametrize(
    "likelihood",
    ["bernoulli", "continuous_bernoulli", "gaussian", "discretized_logistic", "discretized_logistic_mixture"],
)
def test_every_likelihood_and_network_trains_the_mixture_by_enumeration(network, likelihood):
    vae = _mixture(
        f"model.network={network}",
        f"model.likelihood={likelihood}",
        "model.conv.channels=[2]",
        "model.conv.features=8",
        d=16,
        image_shape=(1, 4, 4),
    )
    _trains_by_enumeration(vae)


def _trains_by_enumeration(vae, **labels):
    """Pyro's TraceEnum_ELBO on the structure (16 pixels; ``labels=`` for one that learns from
    them): a finite loss and finite gradients, samples, finite enumerated log weights."""
    x = _x(d=16)
    torch.manual_seed(1)
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(vae.model, config_enumerate(vae.guide), x, **labels)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in vae.parameters() if p.grad is not None)
    assert vae.sample(2).shape == (2, 16) and torch.isfinite(vae.log_weights(x, 3).log_w).all()


# ---------------------------------------------------------------- semi_supervised: M2, labels as data


def _m2(*extra, d=D, image_shape=None):
    return _model(
        "model.structure=semi_supervised", "model.semi_supervised.classes=3", *extra, d=d, image_shape=image_shape
    )


LABELS = torch.tensor([-1, 2, -1, 0])


ADGM = "model.semi_supervised.auxiliary_dim=2"  # Maaløe et al.'s auxiliary a beside M2's y and z


@pytest.mark.parametrize("elbo", ["enum", "trace"])
@pytest.mark.parametrize("particles", [1, 3])
@pytest.mark.parametrize("beta", [None, 0.3])
@pytest.mark.parametrize("extra", [[], [ADGM]], ids=["m2", "adgm"])
def test_m2_with_labels_gives_pyros_own_estimators_value_and_gradient(elbo, particles, beta, extra):
    """Masks, the labelled branch and the scaled classification term (and the ADGM's auxiliary a):
    TraceEnum_ELBO (y summed out) and Trace_ELBO (its score function) on the structure's Pyro model
    and guide, to 1e-10."""
    from pyro_vae.objectives.elbos import ELBOS
    from pyro_vae.objectives.sites import LeanSource, PyroSource

    vae, x = _m2(*extra), _x()
    vae.weigh_labels(images=1000, labelled=20, repeats=4.0)
    kw = dict(num_particles=particles, vectorize_particles=particles > 1)
    theirs, guide = (
        (TraceEnum_ELBO(max_plate_nesting=1, **kw), config_enumerate(vae.guide, "parallel"))
        if elbo == "enum"
        else (Trace_ELBO(max_plate_nesting=1, **kw), vae.guide)
    )
    args = (x,) if beta is None else (x, torch.tensor(beta, dtype=torch.float64))
    params = list(vae.parameters())
    torch.manual_seed(1)
    reference = theirs.differentiable_loss(vae.model, guide, *args, labels=LABELS)
    expected = torch.autograd.grad(reference, params)
    for source in (LeanSource(vae), PyroSource(vae.model, vae.guide, vae)):
        torch.manual_seed(1)
        loss = ELBOS.get(elbo)(**kw).loss_fn(source)(*args, labels=LABELS)
        where = f"{elbo}, {type(source).__name__}, particles {particles}, beta {beta}"
        assert torch.allclose(loss, reference, rtol=0, atol=1e-10), (where, loss.item(), reference.item())
        for (name, _), g, e in zip(vae.named_parameters(), torch.autograd.grad(loss, params), expected):
            assert torch.allclose(g, e, rtol=0, atol=1e-10), (where, name, (g - e).abs().max().item())


def test_m2_equals_pyros_ss_vae_written_as_its_three_losses(monkeypatch):
    """Our one masked program against M2 as Pyro's ``examples/vae/ss_vae_M2.py`` writes it, by hand:
    ``TraceEnum_ELBO`` on the unlabelled images (y summed out), ``Trace_ELBO`` on the labelled ones
    with y observed (times 1/r) and the auxiliary term α N / N_L / r · (−log q(y | x)) on them, all
    on the structure's own networks. The draws of z are made deterministic (z = loc + scale / 2) since
    the two compute them in different batch shapes. Value and every gradient, float64, to 1e-10."""
    from pyro_vae.mixture import broadcast_cat
    from pyro_vae.objectives.fast import build_loss

    monkeypatch.setattr(
        torch.distributions.Normal,
        "rsample",
        lambda self, sample_shape=(): (self.loc + 0.5 * self.scale).expand(torch.Size(sample_shape) + self.loc.shape),
    )
    vae, x, k = _m2(), _x(b=9), 3
    labels = torch.tensor([-1, 2, -1, -1, 0, -1, 1, -1, -1])
    vae.weigh_labels(images=1000, labelled=10, repeats=4.0)
    cfg = load_config(None, ["train.elbo=enum"]).train

    def model(xs, ys=None):
        with pyro.plate("data", xs.shape[0]):
            y = pyro.sample("y", dist.OneHotCategorical(logits=xs.new_zeros(xs.shape[0], k)), obs=ys)
            z = pyro.sample("z", dist.Normal(xs.new_zeros(xs.shape[0], 3), 1.0).to_event(1))
            pyro.sample("x", vae.likelihood(vae.decoder(broadcast_cat(z, y))), obs=xs)

    def guide(xs, ys=None):
        with pyro.plate("data", xs.shape[0]):
            if ys is None:
                ys = pyro.sample("y", dist.OneHotCategorical(logits=vae.classifier(vae.class_trunk(xs))))
            pyro.sample("z", vae.lower(broadcast_cat(vae.trunk(xs), ys)))

    unknown, known = labels < 0, labels >= 0
    y_known = nn.functional.one_hot(labels[known], k).to(x.dtype)
    unlabelled = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(
        model, config_enumerate(guide, "parallel"), x[unknown]
    )
    labelled = Trace_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, x[known], y_known)
    q_y = dist.OneHotCategorical(logits=vae.classifier(vae.class_trunk(x[known])))
    reference = unlabelled + vae.labelled_scale * labelled - vae.class_scale * q_y.log_prob(y_known).sum()
    params = list(vae.parameters())
    expected = torch.autograd.grad(reference, params)
    ours = build_loss(vae, cfg, x, labels=labels).fn(x, labels=labels)
    assert torch.allclose(ours, reference, rtol=0, atol=1e-10), (ours.item(), reference.item())
    for (name, _), g, e in zip(vae.named_parameters(), torch.autograd.grad(ours, params), expected):
        assert torch.allclose(g, e, rtol=0, atol=1e-10), (name, (g - e).abs().max().item())


def test_the_adgm_equals_its_bound_written_out_by_hand(monkeypatch):
    """The ADGM's loss (y summed out by ``enum``) against Maaløe et al.'s bound written here term by
    term on the structure's networks: for an unlabelled image
    -E_q(a|x)[sum_y q(y|a,x) (log p(x|y,z) + log p(y) + log p(z) + log p(a|x,y,z) - log q(y|a,x)
    - log q(z|a,y,x)) - log q(a|x)], for a labelled one the same at its class (times 1/r) and the
    classification term alpha N / N_L / r (-log q(y|a,x)). Draws made
    deterministic (loc + scale / 2). Value and every gradient, float64, to 1e-10."""
    from pyro_vae.objectives.fast import build_loss

    monkeypatch.setattr(
        torch.distributions.Normal,
        "rsample",
        lambda self, sample_shape=(): (self.loc + 0.5 * self.scale).expand(torch.Size(sample_shape) + self.loc.shape),
    )
    vae, x, k = _m2(ADGM), _x(b=7), 3
    labels = torch.tensor([-1, 2, -1, -1, 0, -1, 1])
    vae.weigh_labels(images=1000, labelled=10, repeats=4.0)
    eye = torch.eye(k, dtype=x.dtype)

    def draw(q):
        return q.base_dist.loc + 0.5 * q.base_dist.scale

    def bound(xi, y, a):  # log p(x, y, z, a) - log q(z | a, y, x) at z's draw, one image, class y
        q_z = vae.lower(torch.cat([vae.trunk(xi), a, y], -1))
        z = draw(q_z)
        log_p = (
            vae.likelihood(vae.decoder(torch.cat([z, y], -1))).log_prob(xi)
            + dist.OneHotCategorical(logits=torch.zeros(k, dtype=x.dtype)).log_prob(y)
            + dist.Normal(torch.zeros_like(z), 1.0).to_event(1).log_prob(z)
            + vae.p_a(torch.cat([xi, y, z], -1)).log_prob(a)
        )
        return log_p - q_z.log_prob(z)

    reference = x.new_zeros(())
    for i in range(x.shape[0]):
        xi = x[i]
        q_a = vae.q_a(xi)
        a = draw(q_a)
        q_y = torch.softmax(vae.classifier(torch.cat([vae.class_trunk(xi), a], -1)), -1)
        if labels[i] < 0:
            elbo = sum(q_y[c] * (bound(xi, eye[c], a) - q_y[c].log()) for c in range(k)) - q_a.log_prob(a)
            reference = reference - elbo
        else:
            c = int(labels[i])
            elbo = bound(xi, eye[c], a) - q_a.log_prob(a)
            reference = reference - vae.labelled_scale * elbo - vae.class_scale * q_y[c].log()
    params = list(vae.parameters())
    expected = torch.autograd.grad(reference, params)
    cfg = load_config(None, ["train.elbo=enum"]).train
    ours = build_loss(vae, cfg, x, labels=labels).fn(x, labels=labels)
    assert torch.allclose(ours, reference, rtol=0, atol=1e-10), (ours.item(), reference.item())
    for (name, _), g, e in zip(vae.named_parameters(), torch.autograd.grad(ours, params), expected):
        assert torch.allclose(g, e, rtol=0, atol=1e-10), (name, (g - e).abs().max().item())


def test_the_adgms_sites_classes_and_refusals():
    """a is drawn first in the guide (a, y, z; a_l, z_l) and last in the model (after x: p(a | x, y, z));
    the class is read at the mean of q(a | x), so classify is deterministic; the latent API is M2's
    (z, y); auxiliary_dim < 0 is refused."""
    vae, x = _m2(ADGM), _x()
    guide_trace, model_trace = vae.traces(x, None, LABELS)

    def sites(trace):
        return [n for n, s in trace.nodes.items() if s["type"] == "sample" and n != "data"]

    assert sites(guide_trace) == ["a", "y", "z", "a_l", "z_l"]
    assert sites(model_trace) == ["y", "z", "x", "a", "y_l", "z_l", "x_l", "a_l", "y_class"]
    assert sites(vae.traces(x)[0]) == ["a", "y", "z"]
    assert torch.equal(vae.classify(x), vae.classify(x)) and vae.layers() == {"z": 3, "y": 3}
    expected = vae.classifier(torch.cat([vae.class_trunk(x), vae.q_a(x).mean], -1)).softmax(-1)
    assert torch.allclose(vae.class_probabilities(x), expected)
    assert {id(p) for p in vae.q_a.parameters()} <= {id(p) for p in vae.parameter_groups()["encoder"]}
    assert {id(p) for p in vae.p_a.parameters()} <= {id(p) for p in vae.parameter_groups()["decoder"]}
    with pytest.raises(ConfigError, match=r"auxiliary_dim = -1 must be between 0 \(M2\) and"):
        load_config(None, ["model.structure=semi_supervised", "model.semi_supervised.auxiliary_dim=-1"])


def test_m2s_sites_with_and_without_labels():
    vae, x = _m2(), _x()
    vae.weigh_labels(images=1000, labelled=20, repeats=4.0)
    assert vae.labelled_scale == 0.25 and vae.class_scale == pytest.approx(0.1 * 1000 / 20 / 4)
    guide_trace, model_trace = vae.traces(x, None, LABELS)

    def sites(trace):
        return {n: s for n, s in trace.nodes.items() if s["type"] == "sample" and n != "data"}

    assert list(sites(guide_trace)) == ["y", "z", "z_l"]
    assert list(sites(model_trace)) == ["y", "z", "x", "y_l", "z_l", "x_l", "y_class"]
    model = sites(model_trace)
    assert torch.equal(model["x"]["mask"], LABELS < 0) and torch.equal(model["x_l"]["mask"], LABELS >= 0)
    assert model["x_l"]["scale"] == 0.25 and model["y_class"]["scale"] == vae.class_scale
    assert torch.equal(model["y_l"]["value"].argmax(-1)[LABELS >= 0], LABELS[LABELS >= 0])
    guide_trace, model_trace = vae.traces(x)  # no labels (evaluation): the unknown-label branch alone
    assert list(sites(guide_trace)) == ["y", "z"] and list(sites(model_trace)) == ["y", "z", "x"]
    assert all(s["mask"] is None for s in sites(model_trace).values())


def test_m2s_latent_api_classes_and_refusals():
    vae, x = _m2(), _x()
    assert vae.uses_labels and vae.classes() == 3 and vae.layers() == {"z": 3, "y": 3}
    assert vae.classify(x).shape == (B,) and torch.equal(vae.point(x)["y"].argmax(-1), vae.classify(x))
    assert vae.sample(4).shape == (4, D) and vae.reconstruct(x).shape == (B, D)
    codes = vae.complete({"z": torch.zeros(2, 3, dtype=torch.float64)})
    assert torch.allclose(codes["y"], torch.full((2, 3), 1 / 3, dtype=torch.float64))
    torch.manual_seed(0)
    y = vae.sample_latents(3000)["y"]
    assert y.shape == (3000, 3) and (y.mean(0) - 1 / 3).abs().max() < 4.5 * math.sqrt(2 / 9 / 3000)
    assert not VAE.uses_labels and build_vae(ModelConfig(latent_dim=2, hidden=(8,)), D).classes() == 0
    with pytest.raises(ConfigError, match="the VampPrior is a mixture of q.z . u. at pseudo-inputs u"):
        _m2("model.prior=vamp")
    with pytest.raises(
        ConfigError, match="q.z . x, y. is a diagonal Gaussian conditioned on the class, not model.guide=iaf"
    ):
        _m2("model.guide=iaf")
    with pytest.raises(ConfigError, match="labelled_per_batch = 0 must be at least 1"):
        load_config(None, ["model.structure=semi_supervised", "model.semi_supervised.labelled_per_batch=0"])
    with pytest.raises(ConfigError, match="alpha = -1.0 must be 0 or more"):
        load_config(None, ["model.structure=semi_supervised", "model.semi_supervised.alpha=-1"])


@pytest.mark.parametrize("network", ["mlp", "gated_mlp", "conv"])
@pytest.mark.parametrize("prior", ["standard_normal", "student_t", "mixture_of_gaussians"])
@pytest.mark.parametrize(
    "likelihood",
    ["bernoulli", "continuous_bernoulli", "gaussian", "discretized_logistic", "discretized_logistic_mixture"],
)
def test_every_prior_likelihood_and_network_trains_m2_by_enumeration_with_labels(network, prior, likelihood):
    vae = _m2(
        *([ADGM] if prior == "standard_normal" else []),  # and the ADGM with every network and likelihood
        f"model.network={network}",
        f"model.prior={prior}",
        f"model.likelihood={likelihood}",
        "model.conv.channels=[2]",
        "model.conv.features=8",
        d=16,
        image_shape=(1, 4, 4),
    )
    _trains_by_enumeration(vae, labels=LABELS)
