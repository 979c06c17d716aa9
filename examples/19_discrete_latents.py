# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 19 — Discrete latents three ways
#
# A discrete latent can be summed out, scored, or relaxed.
#
# A latent variable that takes one of K values, a cluster or a class, has no reparameterisation:
# $c = g(\phi, \varepsilon)$ would be a step function of $\phi$, whose derivative is zero wherever
# it exists. The ELBO's gradient for the parameters of $q_\phi(c \mid x)$ then has three routes,
# each a `train.elbo` of the package (`pyro_vae/objectives/elbos.py`):
#
# - **enumerate** (`enum`, Pyro's `TraceEnum_ELBO`): sum over the K values exactly;
# - **score function** (`trace`, REINFORCE): sample $c$ and weigh $\nabla \log q_\phi(c \mid x)$
#   by the sample's log weight: unbiased, noisy;
# - **relax** (`gumbel`, and `gumbel_st` straight-through): replace the one-hot $c$ by a
#   Gumbel-softmax draw at temperature $\tau$ and differentiate through it: quiet, biased.
#
# On a toy model small enough that the ELBO and its gradient are known in closed form, the notebook
# writes the sum over $c$ by hand and checks it against the package's `enum` and Pyro's
# `TraceEnum_ELBO` (to $10^{-10}$), draws many gradient estimates from each estimator, compares
# their distributions with the exact gradient, and measures the relaxation's bias and variance
# against its temperature. Then it trains the package's clustering VAE (`model.structure =
# mixture`, $c$ summed out by `enum`) on binarized MNIST, draws samples per component and scores its
# clusters against the digit labels.
#
# Writes estimates.png, temperature.png, components.png and results.json.
#
# Run it as a script, `python examples/19_discrete_latents.py [--smoke-test] [--out DIR] [--device cpu|cuda]`,
# or as a notebook (`jupytext --to ipynb examples/19_discrete_latents.py`); in a kernel the arguments come from
# `PYRO_VAE_EXAMPLE_ARGS`, for example `--smoke-test`.

# %% [markdown]
# ## A toy with a discrete and a continuous latent
#
# $K = 3$ components, a 2-D $z$ and 4-D observations:
#
# $$c \sim p(c) = \mathrm{Cat}\left(\tfrac1K, \dots, \tfrac1K\right), \qquad
# z \mid c \sim p(z \mid c) = \mathcal{N}\left(m_c, I\right), \qquad
# x \mid z \sim p(x \mid z) = \mathcal{N}\left(W z + b, \sigma^2 I\right),$$
#
# with $c$ one-hot, so that $m_c = c^\top M$ is a matrix product that also takes a blend of
# components (which the relaxation below will need). The guide has the shape of the package's
# `mixture`'s: a classifier, then a Gaussian given the image and the class (here linear maps of $x$),
#
# $$q_\phi(c \mid x) = \mathrm{Cat}\left(\operatorname{softmax}(A x + a)\right), \qquad
# q_\phi(z \mid x, c) = \mathcal{N}\left(\mu_\phi(x, c), \operatorname{diag} s_\phi(x, c)^2\right).$$
#
# The ELBO of one image sums the expectation over $c$ and integrates over $z$:
#
# $$\mathrm{ELBO}(x) = \sum_{c=1}^{K} q_\phi(c \mid x)\, \mathbb{E}_{q_\phi(z \mid x, c)}\left[
# \log p(c) + \log p(z \mid c) + \log p(x \mid z) - \log q_\phi(c \mid x) - \log q_\phi(z \mid x, c)\right].$$
#
# It is written below as a `pyro_vae.model.Structure`: two stories, `model_story` and
# `guide_story`, against the two-method `emit` interface. `toy.model(x)` and `toy.guide(x)` run them
# as a plain Pyro model and guide (each `emit.latent` a `pyro.sample` inside `pyro.plate("data", B)`,
# each `emit.observed` a `pyro.sample(..., obs=x)`); the package's estimators run the same stories
# without Pyro's handlers (`LeanSource`), drawing the same numbers.
#
# Where each piece lives in the package:
#
# - the estimators: `ELBOS.get(name)(num_particles=..., temperature=...)` for `name` in `enum`,
#   `trace`, `gumbel`, `gumbel_st` (`pyro_vae.objectives.elbos`); `est.loss_fn(LeanSource(toy))(x)`
#   is the negative ELBO estimate of the batch, summed over its images, whose gradient is the
#   estimator's;
# - one draw of the guide's sites and the model's replayed against them, $c$ enumerated or relaxed:
#   `draw(LeanSource(toy), x, None, 1, enumerate=True)` (`pyro_vae.objectives.sites`), what every
#   estimator reads (`est.objective(t)`);
# - Pyro's own: `pyro.infer.TraceEnum_ELBO` on `config_enumerate(toy.guide, "parallel")`;
# - $\log p(x, z, c) - \log q(z, c \mid x)$ for every value of $c$ and $N$ draws of $z$:
#   `toy.log_weights(x, N)`, an `EnumeratedWeights` (`log_w`, `log_q`);
# - the same comparison on a trained `mixture` or `semi_supervised` run: `pyro-vae compare RUN`
#   (`pyro_vae.lab.discrete`, the discrete-site laboratory).

# %%
import math

import matplotlib.pyplot as plt
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from _common import parse_args, save_figure, save_results, train_vae
from pyro.infer import TraceEnum_ELBO, config_enumerate
from torch import nn
from torch.distributions import Normal

from pyro_vae.data.pixels import image_grid
from pyro_vae.evaluation.clustering import assign, best_mapping, cluster_accuracy, kmeans, nmi
from pyro_vae.evaluation.plots import show_grid
from pyro_vae.mixture import broadcast_cat
from pyro_vae.model import Structure
from pyro_vae.objectives.elbos import ELBOS
from pyro_vae.objectives.sites import LeanSource, draw

K, L, D, SIGMA, B = 3, 2, 4, 0.5, 8  # components, size of z, size of x, the noise of x, images in the batch


class Toy(Structure):
    """c ~ Cat(1/K) one-hot, z | c ~ N(c M, I), x | z ~ N(W z + b, sigma^2 I); guide q(c | x) q(z | x, c)."""

    def __init__(self) -> None:
        super().__init__()
        self.means = nn.Parameter(2 * torch.randn(K, L))  # M: row c is m_c
        self.decoder = nn.Linear(L, D)  # W z + b
        self.classifier = nn.Linear(D, K)  # A x + a, the logits of q(c | x)
        self.encoder = nn.Linear(D + K, 2 * L)  # mu and the raw scale of q(z | x, c), from [x, c]

    def model_story(self, x, emit):
        c = emit.latent("c", dist.OneHotCategorical(logits=x.new_zeros(x.shape[0], K)))
        z = emit.latent("z", dist.Normal(c @ self.means, 1.0).to_event(1))
        emit.observed("x", dist.Normal(self.decoder(z), SIGMA).to_event(1), x)

    def guide_story(self, x, emit):
        c = emit.latent("c", dist.OneHotCategorical(logits=self.classifier(x)))
        loc, raw = self.encoder(broadcast_cat(x, c)).chunk(2, -1)  # (x beside every enumerated c)
        emit.latent("z", dist.Normal(loc, F.softplus(raw)).to_event(1))

    def layers(self):
        return {"z": L}


args = parse_args("19_discrete_latents")
torch.manual_seed(args.seed)
toy = Toy().double()  # made, and its images drawn, on the CPU: the same toy on every device
with torch.no_grad():  # eight images drawn from the model itself
    classes = torch.randint(K, (B,))
    x = toy.decoder(toy.means[classes] + torch.randn(B, L, dtype=torch.float64))
    x = x + SIGMA * torch.randn_like(x)
toy, x = toy.to(args.device), x.to(args.device)
params = [toy.classifier.weight, toy.classifier.bias]  # phi: A (K x D) and a (K), what q(c | x) learns
names = [f"A[{k},{d}]" for k in range(K) for d in range(D)] + [f"a[{k}]" for k in range(K)]
eye = torch.eye(K, dtype=x.dtype, device=x.device)  # row c: the one-hot c
results = {"toy": {"components": K, "latent_dim": L, "data_dim": D, "sigma": SIGMA, "images": B}}

# %% [markdown]
# ## The sum over $c$, by hand, against `enum` and Pyro's `TraceEnum_ELBO`
#
# Enumeration draws $z$ once *for every value* of $c$: Pyro's parallel enumeration
# (`config_enumerate(guide, "parallel")`) puts $c$'s whole support in a tensor dimension of its own,
# left of the data's, so the guide's $z$ has shape $(K, B, L)$ and every term downstream is
# computed once for each $c$. With those draws $z_c \sim q_\phi(z \mid x, c)$ the estimate is
#
# $$\widehat{\mathrm{ELBO}}(x) = \sum_{c=1}^{K} q_\phi(c \mid x) \left[\log \tfrac1K
# + \log p(z_c \mid c) + \log p(x \mid z_c) - \log q_\phi(c \mid x) - \log q_\phi(z_c \mid x, c)\right]:$$
#
# exact in $c$, Monte Carlo in $z$. The cell writes this sum as a loop over $c$, on one draw of
# the guide's sites (`draw(..., enumerate=True)`), and compares it with the package's `enum`
# objective on the same draw and with Pyro's `TraceEnum_ELBO` drawing the same random numbers.
#
# Here more is known: every Gaussian expectation over $z$ has a closed form, so the ELBO itself is
# exact. With $\mu_c, s_c$ the guide's mean and scale given $c$,
#
# $$\mathbb{E}_{q_\phi(z \mid x, c)}\left[\log p(x \mid z)\right] = -\frac{D}{2} \log\left(2\pi\sigma^2\right)
# - \frac{\lVert x - W \mu_c - b \rVert^2 + \sum_{d, j} W_{dj}^2 s_{cj}^2}{2 \sigma^2},$$
#
# $$\mathbb{E}_{q_\phi(z \mid x, c)}\left[\log p(z \mid c) - \log q_\phi(z \mid x, c)\right]
# = -\sum_j \left(-\log s_{cj} + \frac{s_{cj}^2 + (\mu_{cj} - m_{cj})^2 - 1}{2}\right),$$
#
# and the mean of many enumerated estimates must come out at this value.


# %%
def exact_elbo(toy: Toy, x: torch.Tensor) -> torch.Tensor:
    """ELBO(x) per image (B,), every expectation in closed form."""
    log_q_c = torch.log_softmax(toy.classifier(x), -1)
    w = toy.decoder.weight  # (D, L)
    total = 0.0
    for c in range(K):
        loc, raw = toy.encoder(torch.cat([x, eye[c].expand(x.shape[0], K)], -1)).chunk(2, -1)
        s = F.softplus(raw)
        likelihood = (
            -0.5 * D * math.log(2 * math.pi * SIGMA**2)
            - ((x - toy.decoder(loc)) ** 2).sum(-1) / (2 * SIGMA**2)
            - (s**2 @ (w**2).T).sum(-1) / (2 * SIGMA**2)
        )
        kl = (-s.log() + (s**2 + (loc - toy.means[c]) ** 2 - 1) / 2).sum(-1)
        total = total + log_q_c[:, c].exp() * (math.log(1 / K) - log_q_c[:, c] + likelihood - kl)
    return total


with torch.no_grad():
    torch.manual_seed(args.seed)
    t = draw(LeanSource(toy), x, None, 1, enumerate=True)  # the guide's sites, c enumerated; the model's replayed
    z = t.guide["z"].value  # (K, B, L): a draw of z for every value of c and every image
    log_q_c = torch.log_softmax(toy.classifier(x), -1)  # (B, K)
    by_hand = torch.zeros(B, dtype=x.dtype, device=x.device)
    for c in range(K):
        loc, raw = toy.encoder(torch.cat([x, eye[c].expand(B, K)], -1)).chunk(2, -1)
        log_q_z = Normal(loc, F.softplus(raw)).log_prob(z[c]).sum(-1)
        log_p_z = Normal(toy.means[c], 1.0).log_prob(z[c]).sum(-1)
        log_p_x = Normal(toy.decoder(z[c]), SIGMA).log_prob(x).sum(-1)
        by_hand = by_hand + log_q_c[:, c].exp() * (math.log(1 / K) + log_p_z + log_p_x - log_q_c[:, c] - log_q_z)
    by_hand = float(by_hand.sum())
    enumerated = float(-ELBOS.get("enum")().objective(t))  # the package's enum on the same draw
    torch.manual_seed(args.seed)  # Pyro's TraceEnum_ELBO, drawing the same numbers
    pyro_enum = TraceEnum_ELBO(max_plate_nesting=1)
    pyro_value = -pyro_enum.loss(toy.model, config_enumerate(toy.guide, "parallel"), x)  # (a float)

draws = 2000 if args.smoke_test else 20000
with torch.no_grad():
    torch.manual_seed(args.seed)
    w = toy.log_weights(x, draws)  # log_w (K, N, B): log p(x, z, c) - log q(z, c | x); log_q: log q(c | x)
    per_draw = (w.log_q.exp() * w.log_w).sum(0).sum(-1)  # (N,): the batch's enumerated ELBO, one per draw of z
    exact_value = float(exact_elbo(toy, x).sum())
mc_mean, mc_se = float(per_draw.mean()), float(per_draw.std() / math.sqrt(draws))
results["value"] = {
    "by_hand": by_hand,
    "enum": enumerated,
    "trace_enum_elbo": pyro_value,
    "max_difference": max(abs(by_hand - enumerated), abs(by_hand - pyro_value)),
    "exact": exact_value,
    "enum_mean_over_draws": [mc_mean, mc_se],
    "draws": draws,
    "z": (mc_mean - exact_value) / mc_se,
}
print(f"one draw, the batch's ELBO: by hand {by_hand:.12f}, enum {enumerated:.12f}, TraceEnum_ELBO {pyro_value:.12f}")
print(
    f"exact ELBO {exact_value:.4f}; enumerated estimates over {draws:,} draws of z: {mc_mean:.4f} ± {mc_se:.4f} "
    f"(z = {results['value']['z']:+.2f})"
)

# %% [markdown]
# ## The exact gradient
#
# Only the $-\log q_\phi(c \mid x)$ terms and the weights $q_\phi(c \mid x)$ depend on the
# classifier's parameters $\phi = (A, a)$. Write $G_c = \mathbb{E}_{q(z \mid x, c)}[\log p(c)
# + \log p(z \mid c) + \log p(x \mid z) - \log q(z \mid x, c)] - \log q_\phi(c \mid x)$ and
# $\mathrm{ELBO} = \sum_c q_c G_c$; since $\sum_c \nabla q_c = \nabla 1 = 0$ the derivative of the
# $-\log q_c$ inside $G_c$ drops out, $\nabla_\phi \mathrm{ELBO} = \sum_c G_c \nabla_\phi q_c$, and
# for the logits $\ell = A x + a$ of a softmax,
#
# $$\frac{\partial\, \mathrm{ELBO}}{\partial \ell_k} = q_k \left(G_k - \sum_c q_c G_c\right):$$
#
# each component's probability rises in proportion to how much better its term is than the
# average. Autograd on `exact_elbo` gives $\nabla_\phi$ of the batch's ELBO per image, the target
# every estimator below is compared with (15 coordinates: $A$ is $3 \times 4$, $a$ has 3).

# %%
exact = torch.autograd.grad(exact_elbo(toy, x).sum() / B, params)
exact = torch.cat([g.flatten() for g in exact]).detach()
coordinate = int(exact.abs().argmax())  # the coordinate the first figure shows
results["exact_gradient"] = exact.tolist()
results["coordinates"] = names
results["shown_coordinate"] = coordinate
print("exact gradient of the ELBO per image:", ", ".join(f"{n} {g:+.3f}" for n, g in zip(names, exact.tolist())))

# %% [markdown]
# ## Three estimators of that gradient
#
# Each estimate below is the gradient of one draw per image, averaged over the batch.
#
# **Enumeration** (`enum`): the sum above, differentiated. Exact in $c$; its only noise is that of
# the draws $z_c$, which reach $\phi$ through the weights $q_\phi(c \mid x)$.
#
# **The score function** (`trace`): draw $c \sim q_\phi(c \mid x)$, then $z \sim q_\phi(z \mid x, c)$,
# and with the log weight $\log w = \log p(x, z, c) - \log q_\phi(z, c \mid x)$,
#
# $$\hat g = \nabla_\phi \left[\log p(x, z, c) - \log q_\phi(z \mid x, c)\right]
# + \log w \, \nabla_\phi \log q_\phi(c \mid x),$$
#
# the gradient Pyro's `Trace_ELBO` builds for a site without `rsample` (a surrogate whose value is
# $\log w$; the $-\log q_\phi(c \mid x)$ inside $\log w$ is a weight there, not differentiated,
# since its gradient averages to 0). For the classifier's parameters the first term is 0 in this
# toy, and $\hat g$ is REINFORCE's $\log w \, \nabla_\phi \log q_\phi(c \mid x)$. Unbiased,
# because $\mathbb{E}_{q}[f(c)\, \nabla \log q_\phi(c)] = \sum_c \nabla q_\phi(c)\, f(c)$, but every
# draw multiplies $\nabla \log q$ by the whole $\log w$ (here about the exact ELBO above over the
# 8 images: tens of nats per image), most of which
# is the same for every $c$ and cancels only on average.
#
# **The Gumbel-softmax relaxation** (`gumbel`; Jang et al. 2017, Maddison et al. 2017): with
# $G_k = -\log(-\log U_k)$, $U_k \sim \mathcal{U}(0, 1)$, the one-hot of
# $\operatorname{argmax}_k (\ell_k + G_k)$ is an exact draw of $q_\phi(c \mid x)$ (the Gumbel-max
# trick), and its smooth stand-in is
#
# $$\tilde c = \operatorname{softmax}\left(\frac{\ell + G}{\tau}\right), \qquad
# \frac{\partial \tilde c}{\partial \ell} = \frac{\operatorname{diag}(\tilde c) - \tilde c \tilde c^\top}{\tau}.$$
#
# $\tilde c$ is reparameterised: it goes on to $p(z \mid \tilde c) = \mathcal{N}(\tilde c^\top M, I)$
# and $q_\phi(z \mid x, \tilde c)$ and the gradient flows back through it, while the site's own term
# is the categorical KL in closed form:
#
# $$\widehat{\mathrm{ELBO}}_\tau = \log p(x \mid z) + \log p(z \mid \tilde c) - \log q_\phi(z \mid x, \tilde c)
# - \mathrm{KL}\left(q_\phi(c \mid x) \,\|\, p(c)\right), \qquad z \sim q_\phi(z \mid x, \tilde c).$$
#
# The model is evaluated at a blend of components that it does not define, so the estimate is
# biased. As $\tau \to 0$, $\tilde c$ tends to the one-hot Gumbel-max draw and the bias to 0, but the
# Jacobian above grows as $1/\tau$ near the ties, and with it the variance. **Straight-through**
# (`gumbel_st`) sends the one-hot $\operatorname{argmax}$ forward, so the model sees a real class, and
# the relaxed $\tilde c$'s gradient backward: $\hat c = \mathrm{onehot} + \tilde c - \mathrm{stop}(\tilde c)$.
#
# Each estimator gives many independent estimates. Against the exact gradient: per coordinate the
# z-score of their mean, $(\bar g_j - g_j^\ast) / (\mathrm{sd}_j / \sqrt{n})$, within about $\pm 4$
# for an unbiased estimator; the bias $\lVert \bar g - g^\ast \rVert$; and the variance of one
# estimate, $\sum_j \mathrm{sd}_j^2$. Even an unbiased estimator shows a bias of about
# $\sqrt{\sum_j \mathrm{sd}_j^2 / n}$ from the noise of its mean alone (its noise floor).

# %%
if args.smoke_test:
    estimates, temperatures = 500, (1.0, 0.5, 0.25, 0.1)
else:
    estimates, temperatures = 10000, (1.0, 0.5, 0.25, 0.1, 0.05)


def gradient_estimates(name: str, n: int, seed: int, **options) -> torch.Tensor:
    """``n`` independent estimates (n, 15) of the gradient of the batch's ELBO per image for the
    classifier's parameters, by the estimator ``name``, each from one draw per image."""
    loss = ELBOS.get(name)(**options).loss_fn(LeanSource(toy))  # x -> negative ELBO estimate, summed
    out = []
    for i in range(n):
        torch.manual_seed(seed + i)
        grads = torch.autograd.grad(-loss(x) / B, params)
        out.append(torch.cat([g.flatten() for g in grads]))
    return torch.stack(out)


def summary(g: torch.Tensor) -> dict:
    """The estimates ``g`` (n, 15) against the exact gradient."""
    n = g.shape[0]
    mean, sd = g.mean(0), g.std(0)
    bias = mean - exact
    direction = bias / bias.norm()
    return {
        "mean": mean.tolist(),
        "sd": sd.tolist(),
        "z": (bias / (sd / math.sqrt(n))).tolist(),
        "max_abs_z": float((bias / (sd / math.sqrt(n))).abs().max()),
        "bias": float(bias.norm()),
        "bias_se": float((direction**2 * sd**2).sum().sqrt() / math.sqrt(n)),  # along the bias's own direction
        "relative_bias": float(bias.norm() / exact.norm()),
        "variance": float((sd**2).sum()),
        "noise_floor": float((sd**2).sum().sqrt() / math.sqrt(n)),
        "shown": g[:1000, coordinate].tolist(),  # (the first figure's; at most 1,000 kept)
    }


rows = {"enum": summary(gradient_estimates("enum", estimates, 10_000))}
rows["trace"] = summary(gradient_estimates("trace", estimates, 20_000))
relaxed = {"gumbel": {}, "gumbel_st": {}}
for i, name in enumerate(relaxed):
    for j, tau in enumerate(temperatures):
        seed = 100_000 * (i + 1) + 10_000 * j
        relaxed[name][tau] = summary(gradient_estimates(name, estimates, seed, temperature=tau))
results["estimates"] = estimates
results["temperatures"] = list(temperatures)
results["estimators"] = {
    **rows,
    **{name: {"temperatures": list(temperatures), "by_temperature": list(r.values())} for name, r in relaxed.items()},
}

labelled = [("enumerated (enum)", rows["enum"]), ("score function (trace)", rows["trace"])]
labelled += [(f"{name}, τ = {tau:g}", r) for name, by_tau in relaxed.items() for tau, r in by_tau.items()]
print(f"{'estimator':<24}{'max |z|':>9}{'bias':>9}{'noise floor':>13}{'variance':>11}   (n = {estimates:,} each)")
for label, r in labelled:
    print(f"{label:<24}{r['max_abs_z']:>9.2f}{r['bias']:>9.3f}{r['noise_floor']:>13.3f}{r['variance']:>11.2f}")

# %% [markdown]
# ## Each estimate's distribution beside the exact gradient
#
# Left, the distribution of one estimate of the coordinate with the largest exact gradient; right,
# where each estimator's expectation lies: the mean of its $n$ estimates, $\pm 2$ standard errors.
# The unbiased estimators' intervals cover the exact value (the dashed line); the relaxed ones sit
# beside it, by many standard errors at $\tau = 1$ and closer as $\tau$ falls. The score function's
# estimates spread over tens of units where the others spread over a few.

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.42 * len(labelled) + 1.6), sharey=True)
positions = list(range(len(labelled)))[::-1]
colours = ["tab:green", "tab:red"] + ["tab:blue"] * len(temperatures) + ["tab:purple"] * len(temperatures)
parts = left.violinplot(
    [r["shown"] for _, r in labelled], positions, orientation="horizontal", showextrema=False, widths=0.85
)
for body, colour in zip(parts["bodies"], colours):
    body.set_facecolor(colour)
    body.set_alpha(0.5)
spread = torch.tensor(rows["trace"]["shown"])
left.set_xlim(float(spread.quantile(0.01)), float(spread.quantile(0.99)))
left.axvline(float(exact[coordinate]), color="k", ls="--", lw=1)
left.set(xlabel=f"one estimate of ∂ELBO/∂{names[coordinate]} (the score function's 1-99% range)")
left.set_yticks(positions, [label for label, _ in labelled])
for y, (_, r), colour in zip(positions, labelled, colours):
    mean, se = r["mean"][coordinate], r["sd"][coordinate] / math.sqrt(estimates)
    right.errorbar(mean, y, xerr=2 * se, fmt="o", color=colour, capsize=3)
right.axvline(float(exact[coordinate]), color="k", ls="--", lw=1, label="exact")
right.set(xlabel=f"mean of {estimates:,} estimates ± 2 s.e.")
right.legend(fontsize=8, loc="lower right")
fig.suptitle(f"Gradient of the ELBO for q(c | x)'s {names[coordinate]}: each estimator against the exact value")
save_figure(fig, args.out, "estimates.png")

# %% [markdown]
# ## The relaxation's trade-off: bias against variance
#
# Left, the bias $\lVert \bar g - g^\ast \rVert$ of each relaxed estimator against $\tau$ (bars:
# $\pm 2$ standard errors along the bias's direction) and, dotted, the noise floor below which a
# bias cannot be told from the noise of $n$ estimates; right, the variance of one estimate, beside
# the two unbiased estimators'. Lowering $\tau$ trades bias for variance. The score function pays
# for its lack of bias with a variance far above all the others. Enumeration removes the noise of
# $c$ altogether: what is left in its estimates is the noise of the draws of $z$, which the relaxed
# estimators carry too (on this toy, of the order of theirs at the lowest temperatures). It has no
# bias, and costs $K$ passes of everything downstream of $c$ (every component decoded for every
# image): the package's choice, `train.elbo = enum`, for `mixture` and `semi_supervised` while $K$
# is small.

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
for name, colour in (("gumbel", "tab:blue"), ("gumbel_st", "tab:purple")):
    by_tau = relaxed[name]
    bias = [by_tau[tau]["bias"] for tau in temperatures]
    se = [by_tau[tau]["bias_se"] for tau in temperatures]
    left.errorbar(temperatures, bias, yerr=[2 * s for s in se], fmt="o-", color=colour, capsize=3, label=name)
    left.plot(temperatures, [by_tau[tau]["noise_floor"] for tau in temperatures], ":", color=colour)
    right.plot(temperatures, [by_tau[tau]["variance"] for tau in temperatures], "o-", color=colour, label=name)
for name, colour in (("enum", "tab:green"), ("trace", "tab:red")):
    right.axhline(rows[name]["variance"], color=colour, ls="--", label=f"{name} (no τ)")
left.set(xscale="log", yscale="log", xlabel="temperature τ", ylabel="bias ‖mean − exact‖ (dotted: noise floor)")
right.set(xscale="log", yscale="log", xlabel="temperature τ", ylabel="variance of one estimate, Σ_j sd_j²")
left.set_title("bias shrinks as τ → 0", fontsize=10)
right.set_title("variance grows as τ → 0", fontsize=10)
for ax in (left, right):
    ax.invert_xaxis()
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
save_figure(fig, args.out, "temperature.png")

# %% [markdown]
# ## A mixture in a VAE: clustering digits without labels
#
# The package's `mixture` structure (`pyro_vae/mixture.py`) is the toy grown up: $c$ one of
# $K = 10$ components, $z \mid c \sim \mathcal{N}(\mu_c, \operatorname{diag} \sigma_c^2)$ with
# learned $\mu_c, \sigma_c$, and an image $x \mid z$ from the decoder; the guide is
# $q_\phi(c \mid x)\, q_\phi(z \mid x, c)$ on one shared encoder trunk (Dilokthanakul et al. 2016;
# Shu's GMVAE). `train.elbo = enum` sums $c$ out as above. The cluster of an image is the guide's
# most probable component, `vae.clusters(x)`; `vae.sample_latents(n, component=k)` draws
# $z \sim p(z \mid c = k)$.
#
# Cluster ids are arbitrary, so the clusters are scored against the digit labels under the
# one-to-one map of clusters to digits that matches the most test images (the Hungarian algorithm):
# the clustering accuracy, `cluster_accuracy`; and by the normalised mutual information, `nmi`
# (`pyro_vae.evaluation.clustering`). The baseline is k-means on the pixels (`kmeans`, fitted on the
# training images, test images assigned to the nearest centre).
#
# The smoke run trains three short epochs on 2,000 images, in small batches at a larger learning
# rate (a mixture's classifier needs steps before it uses more than one or two components); the
# full run uses the recipe's network and settings for ten epochs on all 50,000.

# %%
COMPONENTS, SAMPLES = 10, 10
if args.smoke_test:
    epochs, subset, hidden, batch, lr = 3, 2000, 128, 32, 3e-3
else:
    epochs, subset, hidden, batch, lr = 10, 0, 400, 128, 1e-3
overrides = (
    "model.structure=mixture",
    f"model.mixture.components={COMPONENTS}",
    "train.elbo=enum",
    f"model.hidden=[{hidden}]",
    f"train.batch_size={batch}",
    f"train.lr={lr}",
)
_, vae, data = train_vae(args.out / "mixture", 10, epochs, subset, args.seed, args.device, overrides)
x_test, labels = data.test, data.test_labels
clusters = torch.cat([vae.clusters(x_test[i : i + 1000].to(args.device)).cpu() for i in range(0, len(x_test), 1000)])
mapping = best_mapping(clusters, labels)  # cluster -> digit
centres, _ = kmeans(data.train.to(args.device), COMPONENTS, seed=args.seed)
pixel_clusters = assign(x_test.to(args.device), centres).cpu()
results["mixture"] = {
    "epochs": epochs,
    "train_images": int(data.train.shape[0]),
    "test_images": int(x_test.shape[0]),
    "components": COMPONENTS,
    "accuracy": cluster_accuracy(clusters, labels),
    "nmi": nmi(clusters, labels),
    "clusters_used": int(clusters.unique().numel()),
    "mapping": {str(c): d for c, d in mapping.items()},
    "kmeans_accuracy": cluster_accuracy(pixel_clusters, labels),
    "kmeans_nmi": nmi(pixel_clusters, labels),
}
m = results["mixture"]
print(
    f"mixture VAE ({epochs} epochs): clustering accuracy {m['accuracy']:.1%}, NMI {m['nmi']:.3f}, "
    f"{m['clusters_used']} of {COMPONENTS} components used on {m['test_images']:,} test images"
)
print(f"k-means on the pixels:      clustering accuracy {m['kmeans_accuracy']:.1%}, NMI {m['kmeans_nmi']:.3f}")

# %% [markdown]
# ## Samples per component
#
# Row $k$ decodes ten draws $z \sim p(z \mid c = k)$ (`sample_latents(10, component=k)`, then
# `decode`); its label gives the digit the row's cluster maps to and how many test images the guide
# puts there. A component no test image is assigned to has been left unused: its row shows what
# $p(z \mid c = k)$ decodes to without any image behind it.

# %%
torch.manual_seed(args.seed)
samples = torch.cat([vae.decode(vae.sample_latents(SAMPLES, component=k)) for k in range(COMPONENTS)])
counts = dict(enumerate(torch.bincount(clusters, minlength=COMPONENTS).tolist()))  # component -> test images
height = data.image_shape[-2]
fig, ax = plt.subplots(figsize=(6.2, 6.4))
show_grid(ax, image_grid(samples, data.image_shape, COMPONENTS))
ticks = [f"c = {k}: '{mapping[k]}', {counts[k]} images" if k in mapping else f"c = {k}: unused" for k in counts]
ax.set_yticks([(k + 0.5) * height for k in range(COMPONENTS)], ticks, fontsize=8)
ax.set_xticks([])
ax.set_title(f"Samples per component (row k: z ~ p(z | c = k)); accuracy {m['accuracy']:.0%}", fontsize=10)
save_figure(fig, args.out, "components.png")
save_results(results, args.out)

# %% [markdown]
# ## What the full run shows
#
# The full run (this script without `--smoke-test`: 10,000 gradient estimates per estimator and
# temperature, $\tau$ down to 0.05, and the mixture trained for ten epochs on all 50,000 training
# images with the recipe's network: one 400-unit layer, batches of 128, learning rate $10^{-3}$;
# 10 minutes on one CPU thread beside a training run on the other core; its numbers are in
# `docs/figures/examples/19_discrete_latents_results.json`).
#
# **Summing out is exact.** On the toy's batch of 8 images, the enumerated ELBO of one draw of $z$
# is the same number three ways, by hand (a loop over the 3 values of $c$), by the package's `enum`
# and by Pyro's `TraceEnum_ELBO`: −570.2444, to $1.1 \times 10^{-13}$. Over 20,000 draws of $z$ its
# mean is −585.30 ± 0.71 against the closed-form ELBO −585.24 ($z = -0.09$): unbiased.
#
# **Four gradients of the same ELBO** (the classifier's weights; $n$ = 10,000 estimates each; the
# largest |z-score| of the mean over the 15 coordinates, the bias $\lVert \bar g - g^\ast \rVert$, the
# noise floor an unbiased estimator shows from its $n$ draws alone, and the variance of one
# estimate):
#
# | estimator | max \|z\| | bias | noise floor | variance |
# |---|---|---|---|---|
# | enumeration (`enum`) | 1.88 | 0.137 | 0.098 | 95.8 |
# | score function (`trace`) | 0.93 | 0.321 | 0.654 | 4,271 |
# | Gumbel-softmax, τ = 1 | 164 | 4.010 | 0.037 | 13.4 |
# | Gumbel-softmax, τ = 0.25 | 25.4 | 1.331 | 0.077 | 58.8 |
# | Gumbel-softmax, τ = 0.1 | 7.1 | 0.350 | 0.114 | 130 |
# | Gumbel-softmax, τ = 0.05 | 3.3 | 0.181 | 0.165 | 272 |
# | straight-through, τ = 1 | 122 | 5.756 | 0.058 | 33.3 |
# | straight-through, τ = 0.05 | 1.75 | 0.344 | 0.271 | 735 |
#
# The two unbiased estimators keep every z-score of order 1 and a bias of about their noise floor; the
# score function pays for needing no derivative with 45 times the variance of enumeration. The
# relaxation is the quietest at τ = 1 and wrong there (its mean is 164 standard errors from the
# exact gradient in one coordinate); lowering τ shrinks its bias 22-fold, to near its noise floor
# at τ = 0.05, while its variance grows 20-fold: bias traded for variance, as the figure shows. The
# straight-through variant is more biased than the plain relaxation at every τ measured here.
#
# **The mixture clusters digits without labels.** After ten epochs it uses 9 of its 10 components
# and scores a clustering accuracy of 56.5% (NMI 0.566) on the 10,000 test digits, against 51.3%
# (NMI 0.491) for k-means on the pixels.
#
# The smoke run above only shows the mechanics: its mixture has trained for seconds, and its
# clusters say little. The long recipe is `benchmarks/configs/mixture.toml` (up to 300 epochs,
# scored over three seeds beside `benchmarks/kmeans_baseline.py`), run by `benchmarks/nll.py`.
#
# The full run's figures:
#
# ![the estimates against the exact gradient (full run)](../docs/figures/examples/19_discrete_latents_estimates.png)
# ![bias and variance against the temperature (full run)](../docs/figures/examples/19_discrete_latents_temperature.png)
# ![samples per component (full run)](../docs/figures/examples/19_discrete_latents_components.png)
