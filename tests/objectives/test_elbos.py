"""The ELBO registry: the IWAE bound against a hand-written one and Pyro's RenyiELBO, and every
ELBO recovering the exact posterior of a conjugate linear-Gaussian model."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro.infer import RenyiELBO

from pyro_vae.config import TrainConfig
from pyro_vae.objectives import closed_form
from pyro_vae.objectives.elbos import ELBOS, build_elbo
from tests.helpers import conjugate_problem


@pytest.mark.parametrize("k", [2, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_renyi_alpha0_is_the_hand_written_iwae_bound(tiny_vae64, k, seed):
    """First Pyro's RenyiELBO(alpha=0) against the hand-written bound on the same draws (the issue's
    precondition for using it), then our IWAE_ELBO's value and gradient against RenyiELBO's."""
    vae, x = tiny_vae64
    pyro.clear_param_store()
    model, guide = vae.registered()
    renyi = RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True, max_plate_nesting=1)
    pyro.set_rng_seed(seed)
    renyi_loss = renyi.loss(model, guide, x)
    # the same draws by hand: Pyro samples the vectorised z from q expanded to (K, B)
    pyro.set_rng_seed(seed)
    z = vae.encoder(x).rsample((k,))
    loc, scale = vae.encoder.loc_scale(x)
    log_w = closed_form.log_weights(x, vae.decoder(z), z, loc, scale)  # (K, B)
    by_hand = -closed_form.iwae_bound(log_w).sum()
    assert abs(renyi_loss - by_hand.item()) < 1e-9, (renyi_loss, by_hand.item())

    ours = build_elbo(TrainConfig(elbo="iwae", num_particles=k))
    pyro.set_rng_seed(seed)
    loss = ours.differentiable_loss(model, guide, x)
    assert abs(loss.item() - by_hand.item()) < 1e-9
    grads = torch.autograd.grad(loss, list(vae.parameters()))
    pyro.set_rng_seed(seed)
    for p in vae.parameters():
        p.grad = None
    renyi.loss_and_grads(model, guide, x)
    for (name, p), g in zip(vae.named_parameters(), grads):
        assert torch.allclose(p.grad, g, atol=1e-9, rtol=0), name


def test_iwae_bound_tightens_with_k(tiny_vae64):
    """E[L_1] <= E[L_4] <= E[L_64] (Burda et al., Theorem 1): means over 200 draws of the same
    images, each gap more than 4 standard errors."""
    vae, x = tiny_vae64
    stats = []
    for k in (1, 4, 64):
        elbo = build_elbo(TrainConfig(elbo="trace" if k == 1 else "iwae", num_particles=k))
        pyro.set_rng_seed(0)
        with torch.no_grad():
            values = torch.stack([-elbo.differentiable_loss(vae.model, vae.guide, x) for _ in range(200)])
        stats.append((values.mean().item(), values.std().item() / math.sqrt(200)))
    for (m1, s1), (m2, s2) in zip(stats, stats[1:]):
        assert m2 - m1 > 4 * math.hypot(s1, s2), (
            f"IWAE bound not tighter with more particles: {stats} (N = 200, seed 0)"
        )


# (particles, steps, loc tolerance, relative scale tolerance) per ELBO. The importance-weighted
# bound's gradient for the guide carries less signal the more particles it has (Rainforth et al.,
# "Tighter variational bounds are not necessarily better", 2018): with 8 particles and 3,000 steps
# its guide was still 9% off, so it runs longer with K=2 and a looser tolerance.
# The multi-sample bounds of the same paper trade tightness for encoder signal: MIWAE and PIWAE as
# 16 groups of 2, CIWAE with K=8 (half ELBO; its IWAE half needs IWAE's smaller learning rate), with
# more steps.
RECOVERY = {
    "iwae": (2, 6000, 0.03, 0.06),
    "miwae": (2, 3000, 0.01, 0.02),
    "piwae": (2, 3000, 0.01, 0.02),
    "ciwae": (8, 6000, 0.01, 0.02),
}
EXTRA = {"miwae": {"iw_groups": 16}, "piwae": {"iw_groups": 16}}
DEFAULT_RECOVERY = (32, 1500, 0.01, 0.02)


@pytest.mark.parametrize("name", ELBOS.names())
def test_every_elbo_recovers_the_exact_conjugate_posterior(name):
    """Adam on each ELBO, learning rate decaying 100-fold, then the mean of the last fifth of the
    iterates: at the exact posterior log w is constant, so every estimator's gradient there is
    exactly zero and the optimum is the posterior for all of them."""
    particles, steps, loc_tol, scale_tol = RECOVERY.get(name, DEFAULT_RECOVERY)
    model, guide, x, post_loc, post_scale = conjugate_problem()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    elbo = build_elbo(TrainConfig(elbo=name, num_particles=particles, **EXTRA.get(name, {})))
    elbo.differentiable_loss(model, guide, x)  # creates the params (and compiles a JIT ELBO)
    store = pyro.get_param_store()
    params = [store.get_param(n).unconstrained() for n in ("loc", "scale")]
    lr = 0.02 if name in ("iwae", "ciwae") else 0.05
    optim = torch.optim.Adam(params, lr=lr)
    decay = 0.005 if name in ("iwae", "ciwae") else 0.01
    sched = torch.optim.lr_scheduler.ExponentialLR(optim, gamma=math.exp(math.log(decay) / steps))
    locs, scales = [], []
    for step in range(steps):
        optim.zero_grad()
        elbo.differentiable_loss(model, guide, x).backward()
        optim.step()
        sched.step()
        if step >= steps - steps // 5:
            locs.append(pyro.param("loc").detach().clone())
            scales.append(pyro.param("scale").detach().clone())
    loc, scale = torch.stack(locs).mean(0), torch.stack(scales).mean(0)
    loc_err = (loc - post_loc).abs().max().item()
    scale_err = (scale / post_scale - 1).abs().max().item()
    assert loc_err < loc_tol and scale_err < scale_tol, (
        f"{name}: posterior loc off by {loc_err:.3g} (tolerance {loc_tol}), scale by {100 * scale_err:.2g}% "
        f"(tolerance {100 * scale_tol:.0f}%); exact loc {post_loc.tolist()}, scale {post_scale[0].tolist()}; got "
        f"{loc.tolist()}, {scale.tolist()}; {steps} steps, {particles} particles, seed 0"
    )


@pytest.mark.parametrize("name", [n for n in ELBOS.names() if ELBOS.get(n).jit])
def test_jit_elbos_trace_the_model_once_and_equal_their_eager_twins(name):
    """The Python model runs only while a JIT ELBO traces it (twice: Pyro first runs it to find
    the params), never again on later steps; Pyro 1.9's JitTraceMeanField_ELBO re-traced on
    every call until ``pyro_vae.objectives.elbos`` fixed it. After that first step the compiled loss equals
    the eager one on the same seed."""
    model, guide, x, _, _ = conjugate_problem()
    calls = []

    def counted_model(x):
        calls.append(1)
        return model(x)

    eager = {"jit_trace": "trace", "jit_mean_field": "mean_field"}[name]
    pyro.clear_param_store()
    elbo = build_elbo(TrainConfig(elbo=name, num_particles=4))
    for step in range(5):
        pyro.set_rng_seed(step)
        compiled = elbo.differentiable_loss(counted_model, guide, x)
        if step == 0:  # tracing draws extra random numbers: compare from the second step on
            traced = len(calls)
            continue
        pyro.set_rng_seed(step)
        plain = build_elbo(TrainConfig(elbo=eager, num_particles=4)).differentiable_loss(model, guide, x)
        assert torch.allclose(compiled, plain, rtol=1e-6), (name, step, compiled.item(), plain.item())
    assert traced > 0 and len(calls) == traced, (
        f"{name}: the model ran {len(calls)} times in 5 steps, {traced} in the first"
    )
