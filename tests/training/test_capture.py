"""The capture-safety check, on the CPU: every configuration the engine would capture is run one step
under the watch; the check finds what a CUDA graph cannot hold (shown on the failures a review
predicted before any GPU ran the engine), changes nothing, and decides the engine."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

from pyro_vae.components.guides import GUIDES
from pyro_vae.components.likelihoods import LIKELIHOODS
from pyro_vae.components.priors import PRIORS
from pyro_vae.config import ConfigError, load_config
from pyro_vae.data.pixels import decode
from pyro_vae.model import VAE, build_vae
from pyro_vae.objectives.elbos import build_elbo
from pyro_vae.objectives.fast import build_loss
from pyro_vae.objectives.sites import LeanSource
from pyro_vae.training.capture import SYNC
from pyro_vae.training.engine import Choice, StepEngine, capture_choice, checked_choice, make_optimizer

B, N = 16, 48
BASE = [
    "model.hidden=8",
    "model.latent_dim=3",
    "train.device=cpu",
    f"train.batch_size={B}",
    "model.vamp.components=4",
    "model.mixture_of_gaussians.components=4",
]


def _engine(*overrides: str, data=None, verified: bool = True, labels: torch.Tensor | None = None):
    """A capturing engine for the config; ``verified``: its loss from ``build_loss`` (the structure
    checked and compared with Pyro's on a batch), else the estimator on the structure's stories
    built directly (quicker)."""
    cfg = load_config(None, [*BASE, *overrides])
    torch.manual_seed(0)
    x = data if data is not None else torch.bernoulli(torch.full((N, 12), 0.3))
    vae = build_vae(cfg.model, x.shape[1], (1, 3, 4))  # 12 pixels as 3 x 4 images, for the conv networks
    first = decode(x[:B])  # the batch fit checks the loss on
    if verified:
        first = (first > 0.5).to(first.dtype) if cfg.data.binarize == "dynamic" else first
        loss = build_loss(vae, cfg.train, first, labels=None if labels is None else labels[:B])
        assert loss.fast, overrides
        fn = loss.fn
    else:
        fn = build_elbo(cfg.train).loss_fn(LeanSource(vae))
    engine = StepEngine(
        fn,
        make_optimizer(vae, 1e-3),
        x,
        B,
        Choice("graph", True, False),
        binarize=cfg.data.binarize == "dynamic",
        warmup_steps=cfg.train.kl_warmup_epochs * 3,
        labels=labels,
    )
    engine.start_epoch(torch.randperm(N, generator=torch.Generator().manual_seed(0)))
    return engine, vae


FAST_ELBOS = [
    ("train.elbo=trace",),
    ("train.elbo=mean_field",),
    ("train.elbo=iwae", "train.num_particles=3"),
    ("train.elbo=stl",),
    ("train.elbo=stl", "train.num_particles=2"),
    ("train.elbo=iwae_dreg", "train.num_particles=3"),
    ("train.elbo=miwae", "train.num_particles=2", "train.iw_groups=2"),
    ("train.elbo=ciwae", "train.num_particles=3"),
    ("train.elbo=piwae", "train.num_particles=2", "train.iw_groups=2"),
]
STOPPED = {"train.elbo=stl", "train.elbo=iwae_dreg", "train.elbo=piwae"}  # need log q at stopped parameters
EVERY = [
    (f"model.prior={p}", f"model.likelihood={lik}", f"model.guide={g}", *e)
    for p in PRIORS.names()
    for lik in LIKELIHOODS.names()
    for g in GUIDES.names()
    for e in FAST_ELBOS
    if not (p == "vamp" and g == "iaf")
]  # (build_vae refuses vamp with iaf)
WARMUP = [("train.kl_warmup_epochs=2", *e) for e in FAST_ELBOS]


@pytest.mark.parametrize("overrides", EVERY + WARMUP, ids=lambda o: ",".join(s.split("=", 1)[1] for s in o))
def test_every_fast_path_configuration_is_checked(overrides):
    """Every prior x likelihood x guide x fast-path ELBO setting (and every ELBO under warm-up):
    capturable, except the IAF guide with an estimator that needs log q at the stopped parameters."""
    problem = _engine(*overrides, verified=False)[0].check_capture()
    if "model.guide=iaf" in overrides and overrides[3] in STOPPED:
        assert problem is not None and problem.what == SYNC and "affine_autoregressive" in problem.where, problem
    else:
        assert problem is None, (overrides, str(problem))


NETS = [
    ("model.network=gated_mlp",),
    ("model.network=conv", "model.conv.channels=[4,8]", "model.conv.features=8"),
    ("model.network=resnet", "model.resnet.channels=[4]", "model.resnet.features=8"),
]


@pytest.mark.parametrize("network", NETS, ids=lambda o: o[0].split("=")[1])
@pytest.mark.parametrize("elbo", FAST_ELBOS, ids=lambda o: ",".join(s.split("=", 1)[1] for s in o))
def test_every_network_passes_the_check_with_every_fast_elbo(network, elbo):
    """Convolutions, transposed convolutions, gates and residual blocks hold no host sync and
    allocate nothing a graph cannot replay (the check CI runs for the CUDA-graph engine)."""
    assert _engine(*network, *elbo, verified=False)[0].check_capture() is None


@pytest.mark.parametrize(
    "overrides",
    [
        ("train.elbo=trace",),
        ("model.prior=vamp", "train.elbo=iwae_dreg", "train.num_particles=3"),
        ("model.likelihood=discretized_logistic", "train.elbo=piwae", "train.num_particles=2", "train.iw_groups=2"),
    ],
)
def test_the_loss_fit_builds_passes_the_check_too(overrides):
    assert _engine(*overrides)[0].check_capture() is None


def test_dynamic_binarization_and_grey_data_pass_the_check():
    grey = torch.randint(0, 256, (N, 12), dtype=torch.uint8)  # stored as levels, decoded in the step
    engine, _ = _engine("data.binarize=dynamic", data=grey)
    assert engine.check_capture() is None


@pytest.mark.parametrize(
    "elbo",
    [
        ("train.elbo=stl",),
        ("train.elbo=iwae_dreg", "train.num_particles=3"),
        ("train.elbo=piwae", "train.num_particles=2", "train.iw_groups=2"),
    ],
)
def test_the_iaf_guide_with_a_stopped_log_q_is_found_and_runs_eagerly(elbo):
    """The flow's inverse (log q at the stopped parameters) indexes with elements of a permutation
    buffer: host syncs in Pyro's AffineAutoregressive."""
    engine, _ = _engine("model.guide=iaf", *elbo)
    problem = engine.check_capture()
    assert problem is not None and problem.what == SYNC and "affine_autoregressive" in problem.where, problem
    auto = capture_choice(Choice("graph", True, False), "auto", problem)
    assert auto == Choice("eager", False, False, auto.reason) and "affine_autoregressive" in auto.reason
    with pytest.raises(ConfigError, match="train.engine=graph captures the training step .* cannot hold a host sync"):
        capture_choice(Choice("graph", True, False), "graph", problem)


def test_distribution_checks_in_the_step_are_host_syncs():
    """Argument validation on (torch's default) reads device values on the host: what the engine
    did before it turned the checks off around its own step."""
    engine, _ = _engine()
    problem = engine.check_capture(validation=True)
    assert problem is not None and problem.what == SYNC and problem.count >= 2, problem


@pytest.fixture
def register_prior():
    names = []

    def register(name, cls):
        PRIORS.register(name)(cls)
        names.append(name)

    yield register
    for name in names:
        del PRIORS._items[name]


def test_torchs_student_t_in_the_step_is_found(register_prior):
    """torch's StudentT builds Gamma(df / 2, 0.5): the Python 0.5 becomes a new tensor in every step
    (a host-to-device copy on a GPU): why the student_t prior writes its density out."""

    class TorchStudentT(nn.Module):
        def __init__(self, latent_dim, **_):
            super().__init__()
            self.latent_dim = latent_dim
            self.register_buffer("df", torch.tensor(5.0))

        def forward(self, n):
            zero = torch.zeros(())
            return dist.StudentT(self.df, zero, zero + 1).expand([n, self.latent_dim]).to_event(1)

    register_prior("test_torch_student_t", TorchStudentT)
    problem = _engine("model.prior=test_torch_student_t")[0].check_capture()
    assert problem is not None and problem.op == "aten.lift_fresh.default", problem
    assert "made from Python data" in problem.what and "torch" not in problem.where.split(":")[0], problem


def test_a_data_dependent_shape_is_found(register_prior):
    class Masked(nn.Module):
        def __init__(self, latent_dim, **_):
            super().__init__()
            self.latent_dim = latent_dim

        def forward(self, n):
            return _MaskedNormal(torch.zeros(n, self.latent_dim), torch.ones(n, self.latent_dim)).to_event(1)

    register_prior("test_masked", Masked)
    problem = _engine("model.prior=test_masked")[0].check_capture()
    assert problem is not None and "depends on the data" in problem.what and "test_capture.py" in problem.where


class _MaskedNormal(dist.Normal):
    def log_prob(self, z):
        return super().log_prob(z) - 0 * z[z.abs() > 3].sum()  # boolean indexing: nonzero underneath


def test_checking_changes_nothing_a_run_computes():
    engine, vae = _engine("train.elbo=iwae", "train.num_particles=3")
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    rng = torch.get_rng_state()
    assert engine.check_capture() is None
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert int(engine.step_count) == 0 and float(engine.loss_sum) == 0 and int(engine.batch) == 0
    assert all(float(s["step"]) == 0 for s in engine.optim.state.values())  # Adam has not counted a step


def test_an_engine_that_does_not_capture_is_not_changed():
    eager = Choice("eager", False, False)
    problem = _engine("model.guide=iaf", "train.elbo=stl")[0].check_capture()
    assert capture_choice(eager, "auto", problem) is eager and capture_choice(eager, "eager", problem) is eager


def _trained(choice: Choice, fallback: bool, monkeypatch=None, steps: int = 7):
    """Parameters and loss sum after ``steps`` steps (3 batches an epoch) from the same start."""
    cfg = load_config(None, [*BASE, "train.kl_warmup_epochs=1"])
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((N, 12), 0.3))
    vae = build_vae(cfg.model, x.shape[1])
    loss = build_loss(vae, cfg.train, x[:B])
    engine = StepEngine(loss.fn, make_optimizer(vae, 1e-2), x, B, choice, warmup_steps=5, fallback=fallback)
    order = torch.Generator().manual_seed(1)
    totals = []
    for step in range(steps):
        if step % 3 == 0:
            engine.start_epoch(torch.randperm(N, generator=order), step=step)
        engine.step()
        totals.append(engine.read().total)
    return {k: v.clone() for k, v in vae.state_dict().items()}, totals, engine


def test_a_capture_that_fails_falls_back_to_eager_and_the_run_equals_an_eager_run(monkeypatch, caplog):
    """A capture the check did not foresee raising (simulated on the CPU after the warm-up steps have
    changed the state): under train.engine=auto the state is restored, the failure logged once, and
    the run continues eagerly with exactly an eager run's numbers."""

    def failing_record(self, size):
        for _ in range(3):  # the warm-up has run (and changed parameters, Adam, counters, the RNG)
            self._body(size)
        raise RuntimeError("operation not permitted when stream is capturing")

    eager_weights, eager_totals, _ = _trained(Choice("eager", False, False), fallback=False)
    monkeypatch.setattr(StepEngine, "_record", failing_record)
    weights, totals, engine = _trained(Choice("graph", True, False), fallback=True)
    assert engine.choice.name == "eager" and "the capture failed" in engine.choice.reason
    assert totals == eager_totals
    assert all(torch.equal(weights[k], eager_weights[k]) for k in weights)
    assert sum("capturing the training step in a CUDA graph failed" in r.message for r in caplog.records) == 1
    with pytest.raises(RuntimeError, match="stream is capturing"):  # an engine asked for by name does not hide it
        _trained(Choice("graph", True, False), fallback=False)


def test_an_engine_built_for_the_check_leaves_the_learning_rate_exact():
    """The capturable Adam's lr is a float32 tensor; the eager engine built after the check (or
    after a failed capture) gets back the float it was made from, not its float32 rounding."""
    engine, vae = _engine()
    assert torch.is_tensor(engine.optim.param_groups[0]["lr"])
    StepEngine(engine.loss_fn, engine.optim, engine.x, B, Choice("eager", False, False))
    assert engine.optim.param_groups[0]["lr"] == 1e-3 and "lr_exact" not in engine.optim.param_groups[0]


# ---------------------------------------------------------------- every structure, and a user's own


HIERARCHICAL = [
    ("model.structure=hierarchical",),
    ("model.structure=hierarchical", "model.hierarchical.ladder=true"),
    ("model.structure=hierarchical", "model.hierarchical.layers=3", "model.hierarchical.skip=false"),
]


@pytest.mark.parametrize("structure", HIERARCHICAL, ids=lambda o: ",".join(s.split("=", 1)[1] for s in o))
@pytest.mark.parametrize(
    "elbo",
    [*FAST_ELBOS, ("train.kl_warmup_epochs=2", "train.elbo=iwae_dreg", "train.num_particles=3")],
    ids=lambda o: ",".join(s.split("=", 1)[1] for s in o),
)
def test_every_structure_with_every_estimator_passes_the_check(structure, elbo):
    """The loss fit builds (on the lean path, verified against Pyro's traces) for every structure
    and estimator: capturable."""
    assert _engine(*structure, *elbo)[0].check_capture() is None


DISCRETE_ELBOS = [
    ("train.elbo=enum",),
    ("train.elbo=enum", "train.num_particles=2"),
    ("train.elbo=trace",),
    ("train.elbo=trace", "train.num_particles=2"),
    ("train.kl_warmup_epochs=2", "train.elbo=enum"),
    ("train.elbo=gumbel",),
    ("train.elbo=gumbel_st", "train.num_particles=2"),
    ("train.elbo=tracegraph", "model.mixture.baseline=true", "model.semi_supervised.baseline=true"),
]


@pytest.mark.parametrize("aux", [0, 2], ids=["m2", "adgm"])
@pytest.mark.parametrize("elbo", DISCRETE_ELBOS, ids=lambda o: ",".join(s.split("=", 1)[1] for s in o))
def test_the_semi_supervised_structure_with_each_of_its_estimators_passes_the_check(elbo, aux):
    """Labels gathered with the batch, masks, the one-hot labels made on the device, the labelled
    branch and the classification term (and the ADGM's auxiliary a): nothing a CUDA graph cannot hold."""
    labels = torch.where(torch.arange(N) % 4 == 0, torch.arange(N) % 3, -1)
    structure = ["model.structure=semi_supervised", "model.semi_supervised.classes=3"]
    engine = _engine(*structure, f"model.semi_supervised.auxiliary_dim={aux}", *elbo, labels=labels)[0]
    assert engine.check_capture() is None


@pytest.mark.parametrize("elbo", DISCRETE_ELBOS, ids=lambda o: ",".join(s.split("=", 1)[1] for s in o))
def test_the_mixture_with_each_of_its_estimators_passes_the_check(elbo):
    """Parallel enumeration has static shapes (the support is a tensor made on the device, no host
    data), and so does the score function of the sampled discrete site: capturable."""
    engine = _engine("model.structure=mixture", "model.mixture.components=3", *elbo)[0]
    assert engine.check_capture() is None


class _PlainPyro(VAE):
    """A user's own model and guide written as plain Pyro (its stories unused): the loss runs on
    Pyro's traces, the same estimators; ``sync`` puts a host sync in the guide."""

    sync = False

    def model(self, x, beta=None):
        with pyro.plate("data", x.shape[0], device=x.device):
            with poutine.scale(scale=1.0 if beta is None else beta):
                z = pyro.sample("z", self.prior(x.shape[0]))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x, beta=None):
        q = self.encoder(x)
        if self.sync:
            float(q.base_dist.loc.detach().mean())  # a host sync: what a CUDA graph cannot hold
        with pyro.plate("data", x.shape[0], device=x.device), poutine.scale(scale=1.0 if beta is None else beta):
            pyro.sample("z", q)


@pytest.fixture
def plain_structures():
    from pyro_vae.model import STRUCTURES, vae_structure

    def factory(sync):
        def build(cfg, data_dim, image_shape=None, settings=None, **_):
            vae = vae_structure(cfg, data_dim, image_shape)
            plain = _PlainPyro(vae.prior, vae.likelihood, vae.encoder, vae.decoder)
            plain.sync = sync
            return plain

        return build

    STRUCTURES.register("test_plain_pyro")(factory(False))
    STRUCTURES.register("test_plain_pyro_item")(factory(True))
    yield
    for name in ("test_plain_pyro", "test_plain_pyro_item"):
        STRUCTURES.unregister(name)


def _plain_engine(name: str, *overrides: str):
    cfg = load_config(None, [*BASE, f"model.structure={name}", *overrides])
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((N, 12), 0.3))
    vae = build_vae(cfg.model, x.shape[1])
    loss = build_loss(vae, cfg.train, x[:B])
    assert not loss.fast and loss.static  # Pyro's traces, a static structure: the engine may capture it
    return lambda choice: StepEngine(loss.fn, make_optimizer(vae, 1e-3), x, B, choice, warmup_steps=3), loss


@pytest.mark.parametrize(
    "elbo",
    [
        ("train.elbo=trace",),
        ("train.elbo=iwae_dreg", "train.num_particles=3"),
        ("train.kl_warmup_epochs=1", "train.elbo=piwae", "train.num_particles=2", "train.iw_groups=2"),
    ],
    ids=lambda o: o[-1],
)
def test_a_users_own_pyro_model_and_guide_passes_the_check(plain_structures, elbo):
    make, _ = _plain_engine("test_plain_pyro", *elbo)
    engine = make(Choice("graph", True, False))
    engine.start_epoch(torch.randperm(N, generator=torch.Generator().manual_seed(0)))
    assert engine.check_capture() is None
    assert checked_choice(Choice("graph", True, False), "graph", _started(make)).name == "graph"


def _started(make):
    def engine(choice):
        e = make(choice)
        e.start_epoch(torch.randperm(N, generator=torch.Generator().manual_seed(0)))
        return e

    return engine


def test_a_users_model_with_a_host_sync_is_refused_by_name_under_graph(plain_structures):
    make, _ = _plain_engine("test_plain_pyro_item")
    with pytest.raises(ConfigError, match=r"train.engine=graph .*host sync.*test_capture.py:\d+ \(guide\)"):
        checked_choice(Choice("graph", True, False), "graph", _started(make))
    auto = checked_choice(Choice("graph", True, False), "auto", _started(make))
    assert auto.name == "eager" and "host sync" in auto.reason
