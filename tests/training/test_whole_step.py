"""The CPU's compiled engine (pyro_vae.training.whole_step): forward, backward and Adam in one
compiled graph give the eager engine's step (the same draws; float32 rounding apart) for every
structure and ELBO whose loss compiles, flag a non-finite loss as the eager step does, fall back
to eager when compiling fails, and ``auto`` compiles only where it pays."""

from __future__ import annotations

import logging
import math

import pyro
import pytest
import torch

from pyro_vae.config import load_config
from pyro_vae.data.pixels import decode
from pyro_vae.model import build_vae
from pyro_vae.objectives.fast import build_loss
from pyro_vae.training import engine as E
from pyro_vae.training.engine import Choice, StepEngine, choose_engine, make_optimizer

CPU = torch.device("cpu")
EAGER, WHOLE = Choice("eager", False, False), Choice("compiled", False, False, whole=True)
STRUCTURES = {
    "vae": [],
    "hierarchical": ["model.structure=hierarchical", "model.hierarchical.latent_dims=[2,3]"],
    "mixture": ["model.structure=mixture", "model.mixture.components=3"],
    "mixture_baseline": ["model.structure=mixture", "model.mixture.components=3", "model.mixture.baseline=true"],
    "semi_supervised": ["model.structure=semi_supervised", "model.semi_supervised.classes=3"],
    "adgm": [
        "model.structure=semi_supervised",
        "model.semi_supervised.classes=3",
        "model.semi_supervised.auxiliary_dim=2",
    ],
    "hierarchical_tw": [  # Tomczak & Welling's options: their q(z1 | x, z2), He init, clamped log-variances
        "model.structure=hierarchical",
        "model.network=gated_mlp",
        "model.hierarchical.lower=shallow",
        "model.init=he",
        "model.diag_normal.log_var_range=[-6, 2]",
    ],
}
LABELS = torch.where(torch.arange(300) % 5 == 0, torch.arange(300) % 3, -1)  # every fifth image labelled


def _setup(structure: str, elbo: str, particles: int, groups: int = 1, lr: float = 1e-2, dim: int = 12):
    cfg = load_config(
        None,
        [
            *STRUCTURES[structure],
            f"train.elbo={elbo}",
            f"train.num_particles={particles}",
            f"train.iw_groups={groups}",
            "model.latent_dim=3",
            "model.hidden=8",
        ],
    )
    x = (torch.rand(300, dim, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    torch.manual_seed(0)
    vae = build_vae(cfg.model, dim)
    optim = make_optimizer(vae, lr)
    loss = build_loss(vae, cfg.train, decode(x[:8]))
    return vae, optim, loss, x


def _run(choice, structure, elbo, particles, groups=1, epochs=2, **engine_kw):
    """Two epochs of 300 images in batches of 64 (the fifth batch, 44, runs eagerly between compiled
    steps), the learning rate halved between them as a scheduler would; the loss sums and the final
    state."""
    vae, optim, loss, x = _setup(structure, elbo, particles, groups)
    engine = StepEngine(loss.fn, optim, x, 64, choice, module=vae, **engine_kw)
    sched = torch.optim.lr_scheduler.ExponentialLR(optim, gamma=0.5)
    pyro.set_rng_seed(3)
    totals, order = [], torch.Generator().manual_seed(1)
    for _ in range(epochs):
        engine.start_epoch(torch.randperm(300, generator=order))
        for _ in range(5):
            engine.step()
        totals.append(engine.read())
        sched.step()
    return totals, vae, optim, engine, loss


def _assert_same_training(structure, elbo, particles, groups=1, **engine_kw):
    eager, vae_a, optim_a, _, loss = _run(EAGER, structure, elbo, particles, groups, **engine_kw)
    assert loss.compilable, f"{structure} x {elbo}: the loss should compile"
    whole, vae_b, optim_b, engine, _ = _run(WHOLE, structure, elbo, particles, groups, **engine_kw)
    assert engine.whole is not None and list(engine.whole.compile_seconds) == [64]  # the last batch runs eagerly
    for a, b in zip(eager, whole):
        assert a.bad_step is None and b.bad_step is None
        assert math.isclose(a.total, b.total, rel_tol=1e-5), (structure, elbo, a.total, b.total)
    for (name, a), b in zip(vae_a.named_parameters(), vae_b.parameters()):
        where = f"{structure} x {elbo}, {name}"
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m, where=where: f"{where}: {m}")
    for sa, sb in zip(optim_a.state.values(), optim_b.state.values()):
        assert float(sa["step"]) == float(sb["step"]) == 10
        torch.testing.assert_close(sa["exp_avg"], sb["exp_avg"], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(sa["exp_avg_sq"], sb["exp_avg_sq"], rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize(
    "structure, elbo, particles, engine_kw",
    [
        ("vae", "trace", 1, {}),
        ("vae", "trace", 1, {"binarize": True, "warmup_steps": 7.0, "kl_weight": 2.0}),
        ("vae", "iwae", 3, {}),
        ("hierarchical", "iwae_dreg", 3, {}),  # two latent sites: DReG without hooks, so it compiles
        ("mixture", "enum", 1, {}),  # a discrete site enumerated: static shapes, one graph
        ("mixture", "trace", 1, {"warmup_steps": 7.0}),  # the discrete site sampled: the score function
        ("mixture", "gumbel_st", 1, {}),  # the relaxed draw, straight through
        ("mixture_baseline", "tracegraph", 1, {}),  # the score function and its learned baseline
        ("semi_supervised", "enum", 1, {"labels": LABELS}),  # labels gathered with the batch, masks
        ("semi_supervised", "trace", 2, {"labels": LABELS, "warmup_steps": 7.0}),
        ("adgm", "enum", 1, {"labels": LABELS}),  # the auxiliary a before the enumerated y
        ("vae", "trace", 1, {"normalize_grads": True}),  # AdamNormGrad in the graph
        ("hierarchical_tw", "mean_field", 1, {"normalize_grads": True, "warmup_steps": 7.0}),
    ],
)
def test_the_compiled_whole_step_trains_as_the_eager_engine(structure, elbo, particles, engine_kw):
    _assert_same_training(structure, elbo, particles, **engine_kw)


GRID = [
    (structure, elbo, k, m)
    for structure in ("vae", "hierarchical")
    for elbo, k, m in [
        ("trace", 1, 1),
        ("trace", 2, 1),
        ("mean_field", 1, 1),
        ("iwae", 3, 1),
        ("stl", 2, 1),
        ("miwae", 2, 2),
        ("ciwae", 3, 1),
        ("piwae", 2, 2),
        ("iwae_dreg", 3, 1),
    ]
] + [("mixture", elbo, k, 1) for elbo, k in [("enum", 1), ("enum", 2), ("trace", 1), ("trace", 2)]]


@pytest.mark.slow
@pytest.mark.parametrize("structure, elbo, particles, groups", GRID)
def test_every_structure_and_compilable_elbo_trains_compiled_as_eager(structure, elbo, particles, groups):
    loss = _setup(structure, elbo, particles, groups)[2]
    if not loss.compilable:  # a gradient hook on z (one latent site): the engines never compile it
        assert structure == "vae" and elbo == "iwae_dreg" and loss.hooks
        assert choose_engine("auto", CPU, loss.static, False, loss.compilable).name == "eager"
        return
    _assert_same_training(structure, elbo, particles, groups)


def test_a_non_finite_loss_is_flagged_and_no_later_step_moves_the_parameters():
    """Batch 3 holds a NaN pixel: its loss is NaN, the step is flagged with its index and value,
    and neither it nor any later step changes the parameters or Adam's state (as the eager step)."""
    vae, optim, loss, x = _setup("vae", "trace", 1)
    x = decode(x)
    x[3 * 64 + 5, 0] = float("nan")
    engine = StepEngine(loss.fn, optim, x, 64, WHOLE, module=vae)
    engine.start_epoch(torch.arange(300), step=10)
    for _ in range(3):
        engine.step()
    good, before = engine.read(), [p.detach().clone() for p in vae.parameters()]
    for _ in range(2):
        engine.step()
    reading = engine.read()
    assert good.bad_step is None and reading.bad_step == 13 and math.isnan(reading.bad_value)
    assert reading.total == good.total
    assert all(torch.equal(a, b) for a, b in zip(before, vae.parameters()))
    assert all(int(s["step"]) == 3 for s in optim.state.values())


def _poisoned(loss):
    def fn(x, beta=None):
        value = loss(x) if beta is None else loss(x, beta)
        if value.item() > 1e30:  # a host read: the graph cannot hold it, so compiling fails
            return value * 2
        return value

    return fn


def test_a_failed_compilation_continues_eagerly_under_auto_with_one_warning(caplog):
    vae, optim, loss, x = _setup("vae", "trace", 1)
    engine = StepEngine(_poisoned(loss.fn), optim, x, 64, WHOLE, module=vae, fallback=True)
    engine.start_epoch(torch.arange(300))
    with caplog.at_level(logging.WARNING, logger="pyro_vae.training.engine"):
        for _ in range(5):
            engine.step()
    warnings = [r for r in caplog.records if "compiling the training step failed" in r.getMessage()]
    assert len(warnings) == 1 and engine.choice.name == "eager" and engine.whole is None
    assert engine.read().bad_step is None and all(int(s["step"]) == 5 for s in optim.state.values())
    engine = StepEngine(_poisoned(loss.fn), optim, x, 64, WHOLE, module=vae, fallback=False)
    engine.start_epoch(torch.arange(300))
    with pytest.raises(Exception, match="(?i)item|graph break|unsupported"):
        engine.step()


def test_auto_compiles_on_a_cpu_only_where_it_pays(monkeypatch):
    long = E.COMPILE_MIN_STEPS
    assert choose_engine("auto", CPU, True, False, True, long) == WHOLE
    short = choose_engine("auto", CPU, True, False, True, long - 1)
    assert short.name == "eager" and f"a run of {long - 1} steps" in short.reason
    hooks = choose_engine("auto", CPU, True, False, False, long)
    assert hooks.name == "eager" and "cannot be compiled" in hooks.reason
    monkeypatch.setattr(E, "compiler_problem", lambda: "no C++ compiler for torch.compile (test)")
    for requested in ("auto", "compiled"):
        choice = choose_engine(requested, CPU, True, False, True, long)
        assert choice.name == "eager" and choice.reason.endswith("no C++ compiler for torch.compile (test)")


def test_the_whole_step_refuses_an_optimizer_it_does_not_write_out():
    vae, _, loss, x = _setup("vae", "trace", 1)
    for optim, words in [
        (torch.optim.SGD(vae.parameters(), lr=0.1), "torch.optim.Adam"),
        (torch.optim.Adam(vae.parameters(), weight_decay=0.1), "weight_decay"),
        (torch.optim.Adam(list(vae.parameters())[:2]), "not the structure's"),
    ]:
        with pytest.raises(ValueError, match=words):
            StepEngine(loss.fn, optim, x, 64, WHOLE, module=vae)
