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
# # 04 — The ELBO, from Jensen's inequality and from the KL identity
#
# For any distribution $q(z)$ over the latent variable, the evidence lower bound (ELBO) is
#
# $$\mathrm{ELBO}(q) = \mathbb{E}_{q(z)}\left[\log \frac{p(x, z)}{q(z)}\right] \le \log p(x),$$
#
# and it can be reached two ways: from Jensen's inequality, since $\log$ is concave and
# $\log p(x) = \log \mathbb{E}_{q}[p(x, z) / q(z)]$, and from the identity
# $\log p(x) = \mathrm{ELBO}(q) + \mathrm{KL}(q(z) \,\|\, p(z \mid x))$, which says how far below
# $\log p(x)$ the bound lies: exactly the KL divergence from $q$ to the posterior.
#
# On a conjugate model the posterior and the evidence are exact:
#
# $$z \sim \mathcal{N}(0, 1), \qquad x_i \mid z \sim \mathcal{N}(z, \sigma^2), \quad i = 1, \dots, n,$$
#
# $$p(z \mid x) = \mathcal{N}(\mu, s^2), \quad \frac{1}{s^2} = 1 + \frac{n}{\sigma^2}, \quad
# \mu = \frac{s^2}{\sigma^2} \sum_i x_i, \qquad p(x) = \mathcal{N}(0, \sigma^2 I + \mathbf{1}\mathbf{1}^\top).$$
#
# First, for a few Gaussians $q$, Monte Carlo estimates of both sides of Jensen's inequality, whose
# gap matches $\mathrm{KL}(q \,\|\, p(z \mid x))$; then, for several $q$, the ELBO (closed form) plus
# that KL equals $\log p(x)$ to machine precision, so maximising the ELBO is minimising the KL.
# Last, Pyro's SVI with Trace_ELBO fits $q = \mathcal{N}(m, s^2)$ by stochastic gradients and drives
# the KL to (nearly) zero.
#
# Writes jensen.png (the two sides of Jensen's inequality, and their gap against the KL),
# identity.png (ELBO and KL for several q), svi.png (the ELBO rising to log p(x) and the KL falling
# during SVI) and results.json.
#
# Run it as a script, `python examples/04_elbo.py [--smoke-test] [--out DIR] [--device cpu|cuda]`,
# or as a notebook (`jupytext --to ipynb examples/04_elbo.py`); in a kernel the arguments come from
# `PYRO_VAE_EXAMPLE_ARGS`, for example `--smoke-test`.

# %%
import math

import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch
from _common import parse_args, save_figure, save_results
from pyro.infer import SVI, Trace_ELBO
from torch.distributions import MultivariateNormal, Normal, kl_divergence

SIGMA = 1.0


# %%
def model(x):
    z = pyro.sample("z", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(z, SIGMA), obs=x)


# %%
def guide(x):
    m = pyro.param("m", torch.tensor(-2.0, dtype=x.dtype))
    s = pyro.param("s", torch.tensor(2.0, dtype=x.dtype), constraint=dist.constraints.positive)
    pyro.sample("z", dist.Normal(m, s))


# %%
def exact(x):
    n = x.shape[0]
    var = 1 / (1 + n / SIGMA**2)
    posterior = Normal(var * x.sum() / SIGMA**2, math.sqrt(var))
    cov = SIGMA**2 * torch.eye(n, dtype=x.dtype) + torch.ones(n, n, dtype=x.dtype)
    return posterior, float(MultivariateNormal(torch.zeros(n, dtype=x.dtype), cov).log_prob(x))


# %%
def elbo_closed_form(x, m: float, s: float) -> float:
    """E_q[log p(x|z)] + E_q[log p(z)] + H(q) for q = N(m, s^2)."""
    loglik = (-0.5 * math.log(2 * math.pi * SIGMA**2) - ((x - m) ** 2 + s**2) / (2 * SIGMA**2)).sum()
    logprior = -0.5 * math.log(2 * math.pi) - (m**2 + s**2) / 2
    entropy = 0.5 * math.log(2 * math.pi * math.e * s**2)
    return float(loglik + logprior + entropy)


# %% [markdown]
# ## The ELBO from Jensen's inequality
#
# Write the evidence as an expectation under any $q$ that is positive wherever the posterior is
# (importance sampling): with the weight $w(z) = p(x, z) / q(z)$,
#
# $$p(x) = \int p(x, z)\, dz = \int q(z) \frac{p(x, z)}{q(z)}\, dz = \mathbb{E}_{q}[w(z)].$$
#
# Jensen's inequality says that for a concave function such as $\log$, the function of an average is
# at least the average of the function, $\log \mathbb{E}[w] \ge \mathbb{E}[\log w]$ (the chord
# between two points of a concave curve lies below the curve). So
#
# $$\log p(x) = \log \mathbb{E}_{q}[w(z)] \;\ge\; \mathbb{E}_{q}[\log w(z)]
# = \mathbb{E}_{q}\left[\log p(x, z) - \log q(z)\right] = \mathrm{ELBO}(q).$$
#
# The bound holds for every $q$, and the inequality is an equality only when $w$ is constant, that is
# when $q(z) \propto p(x, z)$, the posterior. Jensen's inequality alone does not say how large the
# gap is; the next section does.
#
# The code draws $N$ samples $z_j \sim q$ and estimates both sides: $\log \frac{1}{N} \sum_j w_j$
# (which tends to $\log p(x)$ for every $q$) and $\frac{1}{N} \sum_j \log w_j$ (which tends to the
# ELBO), each with its standard error. On the same draws the first is never below the second:
# Jensen's inequality holds for the $N$ draws themselves, as an average is an expectation too. Their
# difference estimates the gap $\log p(x) - \mathrm{ELBO}(q)$, set beside
# $\mathrm{KL}(q \,\|\, p(z \mid x))$ in closed form. (The standard errors come from the delta method:
# the gap's is the standard deviation of $w_j / \bar w - \log w_j$ over $\sqrt{N}$, with $\bar w$ the
# mean weight.)
#
# The four $q$ here are all at least as wide as the posterior. A $q$ much narrower than it, such as
# $\mathcal{N}(1, 0.1^2)$ in the next section, has weights of infinite variance (for Gaussians,
# whenever $q$'s variance is below half the posterior's): the average of the $w_j$ still tends to
# $p(x)$, but so slowly and erratically that no sample size here gives a trustworthy estimate of
# $\log p(x)$, which is why importance sampling wants a $q$ wider than the posterior rather than
# narrower (notebook 08).


# %%
def log_weights(x, q, n: int) -> torch.Tensor:
    """log w(z_j) = log p(x, z_j) - log q(z_j) for n draws z_j ~ q."""
    z = q.sample((n,))
    log_joint = Normal(0.0, 1.0).log_prob(z) + Normal(z[:, None], SIGMA).log_prob(x).sum(-1)
    return log_joint - q.log_prob(z)


def jensen_sides(log_w: torch.Tensor) -> dict:
    """Estimates [value, standard error] of log E[w], E[log w] and their gap, from one set of draws."""
    n = log_w.shape[0]
    log_mean_w = log_w.logsumexp(0) - math.log(n)
    ratio = (log_w - log_mean_w).exp()  # w_j / mean(w)
    se = lambda v: float(v.std() / n**0.5)  # noqa: E731
    return {
        "log_mean_w": [float(log_mean_w), se(ratio)],
        "mean_log_w": [float(log_w.mean()), se(log_w)],
        "gap": [float(log_mean_w - log_w.mean()), se(ratio - log_w)],
    }


# %%
args = parse_args("04_elbo")
pyro.set_rng_seed(args.seed)
torch.set_default_device(args.device)  # every tensor below (and Pyro's parameters) is made there
x = 1.5 + SIGMA * torch.randn(10, dtype=torch.float64)
posterior, log_px = exact(x)
draws = 100_000 if args.smoke_test else 1_000_000
jensen = []
for m, s in [(-2.0, 2.0), (0.0, 1.0), (float(posterior.loc), 0.6), (float(posterior.loc), float(posterior.scale))]:
    q = Normal(torch.tensor(m, dtype=torch.float64), torch.tensor(s, dtype=torch.float64))
    log_w = log_weights(x, q, draws)
    row = {"m": m, "s": s, **jensen_sides(log_w)}
    row.update({"elbo": elbo_closed_form(x, m, s), "kl": float(kl_divergence(q, posterior))})
    jensen.append(row)
    (lw, lw_se), (ml, ml_se), (gap, gap_se) = row["log_mean_w"], row["mean_log_w"], row["gap"]
    print(
        f"q = N({m:+.3f}, {s:.3f}²): log mean w {lw:9.4f} ± {lw_se:.4f} (log p(x) {log_px:.4f}), "
        f"mean log w {ml:9.4f} ± {ml_se:.4f} (ELBO {row['elbo']:.4f}); gap {gap:.4f} ± {gap_se:.4f}, KL {row['kl']:.4f}"
    )

# %% [markdown]
# On the left, for $q = \mathcal{N}(\mu, 0.6^2)$ (the posterior's mean, twice its width), a few
# hundred draws of the normalised weight $r = w / p(x) = p(z \mid x) / q(z)$ on the curve $\log r$:
# their mean $r$ is 1 (so
# $\log \mathbb{E}[r] = 0$), while the mean of their $\log r$ lies lower, by the KL. On the right,
# the gap estimated by Monte Carlo for each $q$ beside the KL in closed form.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
shown = jensen[2]
q = Normal(torch.tensor(shown["m"], dtype=torch.float64), torch.tensor(shown["s"], dtype=torch.float64))
r = (log_weights(x, q, 300) - log_px).exp().cpu()
grid = torch.linspace(float(r.min()) * 0.9, float(r.max()) * 1.05, 200, dtype=torch.float64, device="cpu")
axes[0].plot(grid, grid.log(), "k-", lw=1, label="the curve log r")
axes[0].plot(r, r.log(), "o", ms=3, alpha=0.4, color="C0", label="300 draws z ~ q")
axes[0].plot([1, 1], [-shown["kl"], 0], "k:", lw=1)
axes[0].plot([1], [0], "s", color="C2", ms=8, label="(mean r, log of mean r) = (1, 0)")
axes[0].plot([1], [-shown["kl"]], "D", color="C3", ms=8, label=f"(mean r, mean of log r): {shown['kl']:.2f} lower")
axes[0].set(
    xlabel="r = p(z | x) / q(z)",
    ylabel="log r",
    title=f"q = N({shown['m']:.2f}, {shown['s']:.2f}²): log E[r] ≥ E[log r]",
)
axes[0].legend(fontsize=7, loc="lower right")
names = [f"N({row['m']:.2f}, {row['s']:.2f}²)" for row in jensen]
at = torch.arange(len(jensen), dtype=torch.float64, device="cpu")
axes[1].bar(at - 0.2, [row["kl"] for row in jensen], 0.4, color="C1", alpha=0.7, label="KL(q ‖ p(z|x)), exact")
axes[1].bar(
    at + 0.2,
    [row["gap"][0] for row in jensen],
    0.4,
    yerr=[2 * row["gap"][1] for row in jensen],
    color="C0",
    alpha=0.7,
    label="log mean w − mean log w (± 2 s.e.)",
)
for i, row in enumerate(jensen):
    axes[1].text(i, max(row["kl"], row["gap"][0]) + 1, f"{row['kl']:.2f}", ha="center", fontsize=7)
axes[1].set_xticks(at.tolist(), names, fontsize=7)
axes[1].set(ylabel="nats", title=f"Jensen's gap is the KL ({draws:,} draws per q)")
axes[1].legend(fontsize=8)
for ax in axes:
    ax.grid(alpha=0.3)
save_figure(fig, args.out, "jensen.png")

# %% [markdown]
# ## The ELBO from the KL identity
#
# Bayes' rule, $p(x, z) = p(z \mid x)\, p(x)$, turns the weight into
# $\log w(z) = \log p(x) + \log p(z \mid x) - \log q(z)$, and averaging over $q$ gives
#
# $$\mathrm{ELBO}(q) = \log p(x) - \mathrm{KL}\left(q(z) \,\|\, p(z \mid x)\right)
# \quad\Longleftrightarrow\quad \log p(x) = \mathrm{ELBO}(q) + \mathrm{KL}\left(q \,\|\, p(z \mid x)\right).$$
#
# This is the same bound, now with its gap named: the KL, which is never negative and is zero only
# at the posterior, which is the gap Jensen's inequality left open. Below, for five $q$, the ELBO in
# closed form plus the KL in closed form, against $\log p(x)$.

# %%
rows = []
for m, s in [
    (-2.0, 2.0),
    (0.0, 1.0),
    (1.0, 0.1),
    (float(posterior.loc), 0.6),
    (float(posterior.loc), float(posterior.scale)),
]:
    q = Normal(torch.tensor(m, dtype=torch.float64), torch.tensor(s, dtype=torch.float64))
    elbo, kl = elbo_closed_form(x, m, s), float(kl_divergence(q, posterior))
    rows.append({"m": m, "s": s, "elbo": elbo, "kl": kl, "elbo_plus_kl": elbo + kl})
    print(f"q = N({m:+.3f}, {s:.3f}²): ELBO {elbo:9.4f} + KL {kl:8.4f} = {elbo + kl:.10f}   (log p(x) = {log_px:.10f})")
max_error = max(abs(r["elbo_plus_kl"] - log_px) for r in rows)

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
labels = [f"N({r['m']:.2f}, {r['s']:.2f}²)" for r in rows]
elbos = [r["elbo"] for r in rows]
ax.bar(labels, [r["kl"] for r in rows], bottom=elbos, color="C1", alpha=0.6, label="KL(q ‖ p(z|x)): the gap")
ax.plot(labels, elbos, "o", color="C0", label="ELBO(q)")
ax.axhline(log_px, color="k", ls="--", label="log p(x)")
ax.set(ylabel="nats", title="ELBO + KL = log p(x) for every q", ylim=(min(elbos) - 5, log_px + 5))
ax.tick_params(axis="x", labelsize=7)
ax.legend(fontsize=8)
save_figure(fig, args.out, "identity.png")

# %%
pyro.clear_param_store()
steps = 400 if args.smoke_test else 2000
svi = SVI(
    model,
    guide,
    pyro.optim.Adam({"lr": 0.05}),
    Trace_ELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=1),
)
trace = []
for step in range(steps):
    svi.step(x)
    m, s = pyro.param("m").item(), pyro.param("s").item()
    q = Normal(torch.tensor(m, dtype=torch.float64), torch.tensor(s, dtype=torch.float64))
    trace.append({"step": step + 1, "elbo": elbo_closed_form(x, m, s), "kl": float(kl_divergence(q, posterior))})
print(f"SVI: KL(q || p(z|x)) {trace[0]['kl']:.3f} after 1 step -> {trace[-1]['kl']:.5f} after {steps}")
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
axes[0].plot([t["step"] for t in trace], [t["elbo"] for t in trace], label="ELBO(q)")
axes[0].axhline(log_px, color="k", ls="--", label="log p(x)")
axes[0].set(xlabel="SVI step", ylabel="nats", title="SVI raises the ELBO to log p(x)")
axes[0].legend()
axes[1].semilogy([t["step"] for t in trace], [t["kl"] for t in trace])
axes[1].set(xlabel="SVI step", ylabel="KL(q ‖ p(z|x))", title="... by driving the KL to zero")
for ax in axes:
    ax.grid(alpha=0.3)
save_figure(fig, args.out, "svi.png")
results = {"log_px": log_px, "jensen_draws": draws, "jensen": jensen}
results.update({"rows": rows, "max_identity_error": max_error, "steps": steps})
save_results({**results, "svi_kl_first": trace[0]["kl"], "svi_kl_last": trace[-1]["kl"]}, args.out)

# %% [markdown]
# ## What the full run shows
#
# The same bound, two ways. From Jensen's inequality, for any $q$,
#
# $$\log p(x) = \log \mathbb{E}_{q}\left[\frac{p(x, z)}{q(z)}\right]
# \ge \mathbb{E}_{q}\left[\log \frac{p(x, z)}{q(z)}\right] = \mathrm{ELBO}(q),$$
#
# and from Bayes' rule, the gap exactly:
#
# $$\log p(x) = \mathrm{ELBO}(q) + \mathrm{KL}\left(q(z) \,\|\, p(z \mid x)\right).$$
#
# On the conjugate Gaussian model, with ten observations, $\log p(x) = -16.805$ nats. With a million
# draws from each of four $q$, the log of the mean weight lands on $\log p(x)$ every time (from
# $-16.8087 \pm 0.0019$ for $q = \mathcal{N}(0, 1)$ to $-16.8046 \pm 0.0007$ for
# $\mathcal{N}(1.12, 0.6^2)$), while the mean log weight is the ELBO, far below it for a poor $q$.
# Their difference, Jensen's gap, is the KL in closed form within its standard errors:
#
# | q | gap, Monte Carlo | KL(q ‖ p(z∣x)), exact |
# |---|---|---|
# | N(−2, 2²) | 72.96 ± 0.07 | 73.000 |
# | N(0, 1) | 10.656 ± 0.013 | 10.648 |
# | N(1.12, 0.6²) | 0.7904 ± 0.0016 | 0.7919 |
# | N(1.12, 0.30²), the posterior | 0 (every weight equals p(x)) | 0 |
#
# The identity then holds for five $q$ in closed form to $1.4 \times 10^{-14}$ nats. Since the KL is
# never negative, raising the ELBO over $q$ is the same as lowering the KL to the true posterior:
# Pyro's SVI (`Trace_ELBO`, 8 particles) takes the KL from 69.3 nats after one step to a few
# hundredths of a nat, where it stays within about $10^{-5}$ to $0.05$ (0.039 after 2,000 steps),
# the noise of stochastic gradients at a constant learning rate.
#
# A VAE does the same with $q(z \mid x)$ from an encoder shared by all images and $p(x \mid z)$ from
# a decoder; its ELBO is what `pyro-vae train` maximises and reports (negated, in nats per image).
#
# The full run's figures:
#
# ![jensen (full run)](../docs/figures/examples/04_elbo_jensen.png)
# ![identity (full run)](../docs/figures/examples/04_elbo_identity.png)
# ![svi (full run)](../docs/figures/examples/04_elbo_svi.png)
