"""Discrete latent sites summed out by parallel enumeration (``train.elbo=enum``), Pyro's
:class:`~pyro.infer.TraceEnum_ELBO` on the one loss path.

- Exactness (float64, fixed draws): the enumerated loss equals TraceEnum_ELBO's, value and
  gradients, on the lean and the Pyro-traced sources, with and without particles and KL warm-up;
  and it equals the sum over the discrete values written out by hand.
- The IWAE evaluation with the discrete site summed out converges to the exact log p(x) of a
  linear-Gaussian mixture (z-score from the weights' standard error).
- Expected gradients: the score-function estimator (``trace``) and the enumerated one agree in
  expectation (z-scores over many seeded draws); a score function without its log-probability term
  is rejected by the same test (the negative control).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import TraceEnum_ELBO, config_enumerate
from torch import nn

from pyro_vae.config import load_config
from pyro_vae.evaluation.metrics import iwae_log_likelihood
from pyro_vae.mixture import broadcast_cat
from pyro_vae.model import EnumeratedWeights, Structure, build_vae
from pyro_vae.objectives.elbos import ELBOS, _log_w
from pyro_vae.objectives.fast import build_loss
from pyro_vae.objectives.sites import LeanSource, PyroSource, draw

C, D, L, B = 3, 5, 2, 4


class Toy(Structure):
    """c ~ Cat(1/C) one-hot, z | c ~ N(m_c, 1), x | z ~ Bernoulli(sigmoid(W z + b)); guide q(c | x)
    q(z | x, c) from linear maps of x (and c)."""

    def __init__(self) -> None:
        super().__init__()
        self.cls, self.enc = nn.Linear(D, C), nn.Linear(D + C, 2 * L)
        self.means, self.dec = nn.Parameter(torch.randn(C, L)), nn.Linear(L, D)

    def model_story(self, x, emit):
        c = emit.latent("c", dist.OneHotCategorical(logits=x.new_zeros(x.shape[0], C)))
        z = emit.latent("z", dist.Normal(c @ self.means, 1.0).to_event(1))
        emit.observed("x", dist.Bernoulli(logits=self.dec(z)).to_event(1), x)

    def guide_story(self, x, emit):
        c = emit.latent("c", dist.OneHotCategorical(logits=self.cls(x)))
        loc, raw = self.enc(broadcast_cat(x, c)).chunk(2, -1)
        emit.latent("z", dist.Normal(loc, F.softplus(raw)).to_event(1))

    def layers(self):
        return {"z": L}


class SemiSupervisedToy(Toy):
    """Toy with labels for some images (``known``): where a label is unknown, c is latent (summed
    out); where it is known, a second branch observes it (``c_l``, ``z_l``, ``x_l``), and the
    classifier q(c | x) scores it with weight ``alpha`` (an observed site with a scale): Kingma et
    al.'s M2 in miniature, written with masks."""

    alpha = 2.5

    def __init__(self, labels: torch.Tensor) -> None:
        super().__init__()
        self.labels, self.known = labels.clamp(min=0), labels >= 0

    def model_story(self, x, emit):
        unknown, onehot = ~self.known, F.one_hot(self.labels, C).to(x.dtype)
        c = emit.latent("c", dist.OneHotCategorical(logits=x.new_zeros(x.shape[0], C)), mask=unknown)
        z = emit.latent("z", dist.Normal(c @ self.means, 1.0).to_event(1), mask=unknown)
        emit.observed("x", dist.Bernoulli(logits=self.dec(z)).to_event(1), x, mask=unknown)
        prior = dist.OneHotCategorical(logits=x.new_zeros(x.shape[0], C))
        emit.observed("c_l", prior, onehot, mask=self.known)
        z_l = emit.latent("z_l", dist.Normal(onehot @ self.means, 1.0).to_event(1), mask=self.known)
        emit.observed("x_l", dist.Bernoulli(logits=self.dec(z_l)).to_event(1), x, mask=self.known)
        emit.observed("c_aux", dist.OneHotCategorical(logits=self.cls(x)), onehot, mask=self.known, scale=self.alpha)

    def guide_story(self, x, emit):
        unknown, onehot = ~self.known, F.one_hot(self.labels, C).to(x.dtype)
        c = emit.latent("c", dist.OneHotCategorical(logits=self.cls(x)), mask=unknown)
        for name, code, mask in (("z", c, unknown), ("z_l", onehot, self.known)):
            loc, raw = self.enc(broadcast_cat(x, code)).chunk(2, -1)
            emit.latent(name, dist.Normal(loc, F.softplus(raw)).to_event(1), mask=mask)


def _toy(seed: int = 0) -> tuple[Toy, torch.Tensor]:
    torch.manual_seed(seed)
    toy = Toy().double()
    x = torch.bernoulli(torch.full((B, D), 0.5, dtype=torch.float64, requires_grad=False))
    return toy, x


def _mixture() -> tuple[Structure, torch.Tensor]:
    cfg = load_config(
        None, ["model.structure=mixture", "model.mixture.components=4", "model.latent_dim=3", "model.hidden=8"]
    )
    torch.manual_seed(0)
    vae = build_vae(cfg.model, 12).double()
    x = torch.bernoulli(torch.full((5, 12), 0.4, dtype=torch.float64))
    return vae, x


@pytest.mark.parametrize("which", ["toy", "mixture"])
@pytest.mark.parametrize("particles", [1, 3])
@pytest.mark.parametrize("beta", [None, 0.3])
def test_the_enumerated_loss_is_trace_enum_elbos_value_and_gradient(which, particles, beta):
    vae, x = _toy() if which == "toy" else _mixture()
    args = (x,) if beta is None else (x, torch.tensor(beta, dtype=torch.float64))
    ours = ELBOS.get("enum")(num_particles=particles, vectorize_particles=particles > 1)
    theirs = TraceEnum_ELBO(num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1)
    params = list(vae.parameters())
    torch.manual_seed(1)
    reference = theirs.differentiable_loss(vae.model, config_enumerate(vae.guide, "parallel"), *args)
    expected = torch.autograd.grad(reference, params)
    for source in (LeanSource(vae), PyroSource(vae.model, vae.guide, vae)):
        torch.manual_seed(1)
        loss = ours.loss_fn(source)(*args)
        grads = torch.autograd.grad(loss, params)
        where = f"{which}, {type(source).__name__}, particles {particles}, beta {beta}"
        assert torch.allclose(loss, reference, rtol=0, atol=1e-10), (where, loss.item(), reference.item())
        for (name, _), g, e in zip(vae.named_parameters(), grads, expected):
            assert torch.allclose(g, e, rtol=0, atol=1e-10), (where, name, (g - e).abs().max().item())


@pytest.mark.parametrize("particles", [1, 3])
@pytest.mark.parametrize("beta", [None, 0.3])
def test_masks_and_a_labelled_branch_give_trace_enum_elbos_value_and_gradient(particles, beta):
    """A masked enumerated site (labels known for some images) and terms outside the enumerated
    branch (the labelled images' sites, the scaled classification term) count once, as Pyro's
    dice factors count them; Trace_ELBO's score function agrees on the masked sites too (its score
    term neither masked nor scaled by the warm-up weight)."""
    torch.manual_seed(0)
    toy = SemiSupervisedToy(torch.tensor([-1, 2, -1, 0])).double()
    x = torch.bernoulli(torch.full((B, D), 0.5, dtype=torch.float64))
    args = (x,) if beta is None else (x, torch.tensor(beta, dtype=torch.float64))
    params = list(toy.parameters())
    for ours, theirs, guide in [
        (
            ELBOS.get("enum")(num_particles=particles, vectorize_particles=particles > 1),
            TraceEnum_ELBO(num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1),
            config_enumerate(toy.guide, "parallel"),
        ),
        (
            ELBOS.get("trace")(num_particles=particles, vectorize_particles=particles > 1),
            pyro.infer.Trace_ELBO(num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1),
            toy.guide,
        ),
    ]:
        torch.manual_seed(1)
        reference = theirs.differentiable_loss(toy.model, guide, *args)
        expected = torch.autograd.grad(reference, params)
        for source in (LeanSource(toy), PyroSource(toy.model, toy.guide, toy)):
            torch.manual_seed(1)
            loss = ours.loss_fn(source)(*args)
            where = f"{type(ours).__name__}, {type(source).__name__}, particles {particles}, beta {beta}"
            assert torch.allclose(loss, reference, rtol=0, atol=1e-10), (where, loss.item(), reference.item())
            for (name, _), g, e in zip(toy.named_parameters(), torch.autograd.grad(loss, params), expected):
                assert torch.allclose(g, e, rtol=0, atol=1e-10), (where, name, (g - e).abs().max().item())


def test_the_enumerated_elbo_is_the_sum_over_the_discrete_values_written_out():
    """Σ_c q(c|x) [log p(c) + log p(z_c|c) + log p(x|z_c) - log q(c|x) - log q(z_c|x,c)] by hand,
    at the draws z_c the enumerated guide made (one per value c and image)."""
    toy, x = _toy(3)
    torch.manual_seed(2)
    t = draw(LeanSource(toy), x, None, 1, enumerate=True)
    z = t.guide["z"].value
    assert t.guide["c"].enumerated and z.shape == (C, B, L) and t.guide["c"].value.shape == (C, 1, C)
    elbo = torch.zeros(B, dtype=torch.float64)
    log_qc = torch.log_softmax(toy.cls(x), -1)  # (B, C)
    for c in range(C):
        onehot = F.one_hot(torch.tensor(c), C).double().expand(B, C)
        loc, raw = toy.enc(torch.cat([x, onehot], -1)).chunk(2, -1)
        scale = F.softplus(raw)
        log_q_z = (-0.5 * ((z[c] - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_p_z = (-0.5 * (z[c] - toy.means[c]) ** 2 - 0.5 * math.log(2 * math.pi)).sum(-1)
        logits = toy.dec(z[c])
        log_p_x = (x * logits - F.softplus(logits)).sum(-1)
        term = math.log(1 / C) + log_p_z + log_p_x - log_qc[:, c] - log_q_z
        elbo = elbo + log_qc[:, c].exp() * term
    loss = ELBOS.get("enum")().objective(t)
    assert torch.allclose(loss, -elbo.sum(), rtol=0, atol=1e-10), (loss.item(), -elbo.sum().item())


class LinearMixture(Structure):
    """c ~ Cat(pi), z | c ~ N(m_c, s_c^2 I), x | z ~ N(W z + b, sigma^2 I): log p(x) is known,
    Σ_c pi_c N(x; W m_c + b, s_c^2 W W^T + sigma^2 I). The guide is deliberately inexact."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.pi = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
        self.m = torch.randn(C, L, generator=g, dtype=torch.float64) * 2
        self.s = torch.tensor([0.7, 1.0, 1.3], dtype=torch.float64)
        self.W = torch.randn(D, L, generator=g, dtype=torch.float64)
        self.b = torch.randn(D, generator=g, dtype=torch.float64)
        self.sigma = 0.8
        self.cls = torch.randn(D, C, generator=g, dtype=torch.float64) * 0.3
        self.A = torch.randn(D + C, L, generator=g, dtype=torch.float64) * 0.3

    def model_story(self, x, emit):
        c = emit.latent("c", dist.OneHotCategorical(probs=self.pi.expand(x.shape[0], C)))
        z = emit.latent("z", dist.Normal(c @ self.m, (c @ self.s).unsqueeze(-1).expand(*c.shape[:-1], L)).to_event(1))
        emit.observed("x", dist.Normal(z @ self.W.T + self.b, self.sigma).to_event(1), x)

    def guide_story(self, x, emit):
        c = emit.latent("c", dist.OneHotCategorical(logits=x @ self.cls))
        emit.latent("z", dist.Normal(broadcast_cat(x, c) @ self.A + c @ self.m, 0.9).to_event(1))

    def layers(self):
        return {"z": L}

    def exact_log_px(self, x):
        terms = []
        for c in range(C):
            cov = self.s[c] ** 2 * self.W @ self.W.T + self.sigma**2 * torch.eye(D, dtype=torch.float64)
            mvn = torch.distributions.MultivariateNormal(self.W @ self.m[c] + self.b, cov)
            terms.append(self.pi[c].log() + mvn.log_prob(x))
        return torch.logsumexp(torch.stack(terms), 0)


def test_the_iwae_evaluation_sums_the_discrete_site_out_and_converges_to_log_px():
    model, seed, k = LinearMixture(), 7, 20_000
    x = torch.randn(3, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    draws = model.log_weights(x, 4)
    assert isinstance(draws, EnumeratedWeights) and draws.log_w.shape == (C, 4, 3)
    assert torch.broadcast_shapes(draws.log_q.shape, (C, 4, 3)) == (C, 4, 3)
    torch.manual_seed(seed)
    bound, elbo = iwae_log_likelihood(model, x, k)
    torch.manual_seed(seed)  # the same draws again: their standard error (delta method on log of the mean)
    w = model.log_weights(x, k)
    stratified = (w.log_w + w.log_q).exp().sum(0)  # (k, B): Σ_c p(x, z_c, c) / q(z_c | x, c)
    se = stratified.std(0) / math.sqrt(k) / stratified.mean(0)
    exact = model.exact_log_px(x)
    z = (bound - exact) / se
    assert z.abs().max() < 4, f"N = {k} draws per value of c, seed {seed}: z-scores {z.tolist()}"
    assert (elbo < exact).all()  # the ELBO, Σ_c q(c|x) E[log w], is below log p(x)


def _gradients(vae, x, estimator: str, groups: int, copies: int, seed: int) -> torch.Tensor:
    """``groups`` independent gradients (groups, P) of the classifier q(c | x) and the component
    means, each the mean of ``copies`` single-draw gradients (the batch repeated ``copies`` times:
    every copy of an image draws its own c and z)."""
    params, xs = [vae.cls.weight, vae.means], x.repeat(copies, 1)
    out = []
    for i in range(groups):
        torch.manual_seed(seed + i)
        if estimator == "no_log_prob":  # -log w with c sampled, no score term: E[grad log q(c|x)] = 0, biased
            t = draw(LeanSource(vae), xs, None, 1)
            log_w = sum(s.log_prob() for s in t.model.values()) - sum(s.log_prob() for s in t.guide.values())
            loss = -log_w.sum()
        else:
            loss = ELBOS.get(estimator)().loss_fn(LeanSource(vae))(xs)
        out.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss / copies, params)]))
    return torch.stack(out)


@pytest.mark.parametrize("estimator, unbiased", [("trace", True), ("no_log_prob", False)])
def test_score_function_and_enumerated_gradients_agree_in_expectation(estimator, unbiased):
    vae, x = _toy(4)
    groups, copies, seed = 200, 100, 11
    enumerated = _gradients(vae, x, "enum", groups, copies, seed)
    sampled = _gradients(vae, x, estimator, groups, copies, seed + groups)
    diff = sampled.mean(0) - enumerated.mean(0)
    se = (sampled.var(0) / groups + enumerated.var(0) / groups).sqrt().clamp_min(1e-12)
    z = diff / se
    n = groups * copies
    message = f"{estimator}: N = {n} draws each, seeds {seed}..{seed + 2 * groups - 1}, max |z| = {z.abs().max():.2f}"
    if unbiased:
        assert z.abs().max() < 4.5, message
    else:
        assert z.abs().max() > 8, message


def test_enum_builds_the_lean_loss_and_refuses_a_guide_site_it_cannot_handle():
    vae, x = _mixture()
    loss = build_loss(vae, load_config(None, ["train.elbo=enum"]).train, x)
    assert loss.fast and loss.static and loss.compilable
    for elbo in ("iwae", "mean_field", "stl"):
        cfg = load_config(None, [f"train.elbo={elbo}", "train.num_particles=2"]).train
        with pytest.raises(Exception, match="guide site 'c' is discrete: use train.elbo=enum"):
            build_loss(vae, cfg, x)


def test_pyro_validation_accepts_the_enumerated_traces():
    vae, x = _mixture()
    with pyro.validation_enabled(True):
        TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(vae.model, config_enumerate(vae.guide), x)


# ---------------------------------------------------------------- the Gumbel-softmax relaxation


@pytest.mark.parametrize("name", ["gumbel", "gumbel_st"])
@pytest.mark.parametrize("particles", [1, 3])
def test_the_relaxed_loss_is_the_same_on_both_sources_and_written_out_by_hand(name, particles):
    """Pyro's traces (the relaxed draw inside its handlers) and the lean stories agree to 1e-10;
    the value is Jang et al.'s: log p(x | z) + log p(z | c~) - log q(z | x, c~) - KL(q(c|x) || p(c))
    at the relaxed draw c~ (one-hot forward under straight-through)."""
    toy, x = _toy(5)
    estimator = ELBOS.get(name)(num_particles=particles, vectorize_particles=particles > 1, temperature=0.4)
    params = list(toy.parameters())
    torch.manual_seed(3)
    lean = estimator.loss_fn(LeanSource(toy))(x)
    torch.manual_seed(3)
    pyro_traced = estimator.loss_fn(PyroSource(toy.model, toy.guide, toy))(x)
    assert torch.allclose(lean, pyro_traced, rtol=0, atol=1e-10)
    for g, e in zip(torch.autograd.grad(lean, params), torch.autograd.grad(pyro_traced, params)):
        assert torch.allclose(g, e, rtol=0, atol=1e-10)
    torch.manual_seed(3)
    t = draw(LeanSource(toy), x, None, particles, relax=estimator.relaxation())
    c, z = t.guide["c"].value, t.guide["z"].value
    assert t.guide["c"].relaxed and torch.allclose(c.sum(-1), torch.ones_like(c[..., 0]))
    if name == "gumbel_st":
        assert torch.equal(c.detach(), c.detach().round())  # one-hot forward
    q_c = torch.distributions.OneHotCategorical(logits=toy.cls(x))
    kl = torch.distributions.kl_divergence(
        q_c, torch.distributions.OneHotCategorical(logits=torch.zeros_like(x[:, :C]))
    )
    loc, raw = toy.enc(broadcast_cat(x, c)).chunk(2, -1)
    log_q_z = dist.Normal(loc, F.softplus(raw)).log_prob(z).sum(-1)
    log_p_z = dist.Normal(c @ toy.means, 1.0).log_prob(z).sum(-1)
    logits = toy.dec(z)
    log_p_x = (x * logits - F.softplus(logits)).sum(-1)
    by_hand = -(log_p_x + log_p_z - log_q_z - kl).sum() / particles
    assert torch.allclose(estimator.objective(t), by_hand, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["gumbel", "gumbel_st"])
def test_the_relaxed_gradients_bias_shrinks_with_the_temperature_and_its_variance_grows(name):
    """Bias against the enumerated (exact in c) gradient of the classifier and the component means,
    each mean of 100 groups of 100 draws; the drop from one temperature to the next is many
    standard errors, and the variance rises as the bias falls (Jang et al.'s trade-off)."""
    vae, x = _toy(4)
    groups, copies = 100, 100

    def gradients(estimator, seed):
        params, xs, out = [vae.cls.weight, vae.means], x.repeat(copies, 1), []
        for i in range(groups):
            torch.manual_seed(seed + i)
            loss = estimator.loss_fn(LeanSource(vae))(xs) / copies
            out.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
        return torch.stack(out)

    exact = gradients(ELBOS.get("enum")(), 0)
    rows = []
    for temperature in (1.0, 0.5, 0.2):
        g = gradients(ELBOS.get(name)(temperature=temperature), 1000)
        bias = g.mean(0) - exact.mean(0)
        direction = bias / bias.norm()  # the bias's standard error along its own direction
        se = (direction.square() * (g.var(0) + exact.var(0)) / groups).sum().sqrt()
        rows.append((temperature, float(bias.norm()), float(se), float(g.var(0).sum())))
    for (t1, b1, s1, v1), (t2, b2, s2, v2) in zip(rows, rows[1:]):
        z = (b1 - b2) / math.hypot(s1, s2)
        assert z > 4, f"{name}, N = {groups * copies} draws: bias at tau = {t1}, {t2}: {b1:.3f}, {b2:.3f} (z = {z:.1f})"
        assert v2 > v1, f"{name}: variance at tau = {t1}, {t2}: {v1:.3f}, {v2:.3f}"


def test_the_relaxation_refuses_a_discrete_site_it_cannot_relax():
    class Counts(Toy):  # a Categorical (integer) site: nothing to relax
        def model_story(self, x, emit):
            emit.latent("k", dist.Categorical(logits=x.new_zeros(x.shape[0], C)))
            emit.observed("x", dist.Bernoulli(logits=self.dec(x.new_zeros(x.shape[0], L))).to_event(1), x)

        def guide_story(self, x, emit):
            emit.latent("k", dist.Categorical(logits=self.cls(x)))

    toy, x = _toy()
    counts = Counts().double()
    with pytest.raises(Exception, match="relaxes one-hot categorical sites, but guide site 'k' is neither"):
        build_loss(counts, load_config(None, ["train.elbo=gumbel"]).train, x)
    assert build_loss(counts, load_config(None, ["train.elbo=enum"]).train, x).fast


def test_the_score_function_with_a_learned_baseline_is_unbiased_and_fits_its_baseline():
    """tracegraph: trace's value; its gradient agrees with the enumerated one in expectation (the
    baseline depends on x alone); the baseline's own gradient is the least-squares fit to log w."""
    cfg = load_config(
        None,
        [
            "model.structure=mixture",
            "model.mixture.components=3",
            "model.mixture.baseline=true",
            "model.latent_dim=2",
            "model.hidden=8",
        ],
    )
    torch.manual_seed(0)
    vae = build_vae(cfg.model, 6).double()
    x = torch.bernoulli(torch.full((3, 6), 0.4, dtype=torch.float64))
    graph, trace, enum = ELBOS.get("tracegraph")(), ELBOS.get("trace")(), ELBOS.get("enum")()
    torch.manual_seed(2)
    a = graph.loss_fn(LeanSource(vae))(x)
    torch.manual_seed(2)
    assert torch.allclose(a, trace.loss_fn(LeanSource(vae))(x), rtol=0, atol=1e-10)
    groups, copies, params, xs = 100, 50, [vae.classifier.weight, vae.classifier.bias], x.repeat(50, 1)

    def estimates(estimator, seed):
        out = []
        for i in range(groups):
            torch.manual_seed(seed + i)
            g = torch.autograd.grad(estimator.loss_fn(LeanSource(vae))(xs) / copies, params)
            out.append(torch.cat([t.flatten() for t in g]))
        return torch.stack(out)

    exact, scored = estimates(enum, 0), estimates(graph, 10_000)
    z = (scored.mean(0) - exact.mean(0)) / ((scored.var(0) + exact.var(0)) / groups).sqrt().clamp_min(1e-12)
    assert z.abs().max() < 4.5, f"N = {groups * copies} draws, seeds 0.., 10000..: max |z| = {z.abs().max():.2f}"
    torch.manual_seed(5)  # the baseline's gradient: d/db sum (log w - b)^2 = -2 sum (log w - b)
    t = draw(LeanSource(vae), x, None, 1)
    grad = torch.autograd.grad(graph.objective(t), vae.baseline.bias)[0]
    log_w = _log_w(t)[0].detach()
    assert torch.allclose(grad, -2 * (log_w - vae.score_baseline(x).detach()).sum().reshape(1), atol=1e-10)


def test_estimator_options_are_checked_when_built_by_hand():
    with pytest.raises(TypeError, match="GumbelSoftmaxELBO takes no option temprature"):
        ELBOS.get("gumbel")(temprature=0.1)
    with pytest.raises(TypeError, match="TraceEnumELBO takes no option temperature"):
        ELBOS.get("enum")(temperature=0.1)
    toy, x = _toy()
    with pytest.raises(ValueError, match="temperature = -1 must be a positive finite number"):
        ELBOS.get("gumbel")(temperature=-1).loss_fn(LeanSource(toy))(x)
    with pytest.raises(ValueError, match="needs the structure's learned baseline b.x. .score_baseline., and this one"):
        ELBOS.get("tracegraph")().loss_fn(LeanSource(toy))(x)
