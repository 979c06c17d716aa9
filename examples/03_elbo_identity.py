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
# # 03 — The ELBO identity: log p(x) = ELBO(q) + KL(q(z) || p(z | x)), for every q.
#
# On a conjugate model the posterior and the evidence are exact:
#
# $$z \sim \mathcal{N}(0, 1), \qquad x_i \mid z \sim \mathcal{N}(z, \sigma^2), \quad i = 1, \dots, n,$$
#
# $$p(z \mid x) = \mathcal{N}(\mu, s^2), \quad \frac{1}{s^2} = 1 + \frac{n}{\sigma^2}, \quad
# \mu = \frac{s^2}{\sigma^2} \sum_i x_i, \qquad p(x) = \mathcal{N}(0, \sigma^2 I + \mathbf{1}\mathbf{1}^\top).$$
#
# For several Gaussians q the ELBO (closed form) plus KL(q || p(z|x)) equals log p(x) to machine
# precision, so maximising the ELBO is minimising that KL. Then Pyro's SVI with Trace_ELBO fits
# q = N(m, s) by stochastic gradients and drives the KL to (nearly) zero.
#
# Writes identity.png (ELBO and KL for several q), svi.png (the ELBO rising to log p(x) and the
# KL falling during SVI) and results.json.
#
# Run it as a script, `python examples/03_elbo_identity.py [--smoke-test] [--out DIR] [--device cpu|cuda]`,
# or as a notebook (`jupytext --to ipynb examples/03_elbo_identity.py`); in a kernel the arguments come from
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


# %%
args = parse_args("03_elbo_identity")
pyro.set_rng_seed(args.seed)
torch.set_default_device(args.device)  # every tensor below (and Pyro's parameters) is made there
x = 1.5 + SIGMA * torch.randn(10, dtype=torch.float64)
posterior, log_px = exact(x)
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
results = {"log_px": log_px, "rows": rows, "max_identity_error": max_error, "steps": steps}
save_results({**results, "svi_kl_first": trace[0]["kl"], "svi_kl_last": trace[-1]["kl"]}, args.out)

# %% [markdown]
# ## What the full run shows
#
# For any q,
#
# $$\log p(x) = \mathbb{E}_{q}\left[\log p(x, z) - \log q(z)\right] + \mathrm{KL}\left(q(z) \,\|\, p(z \mid x)\right)
# = \mathrm{ELBO}(q) + \mathrm{KL}\left(q \,\|\, p(z \mid x)\right).$$
#
# Since the KL is non-negative, the ELBO is a lower bound on the evidence log p(x), and raising the
# ELBO over q is the same as lowering the KL to the true posterior. On a conjugate Gaussian model,
# where the posterior and log p(x) are exact, the example shows the identity to ten decimals for
# five different q, then lets Pyro's SVI (`Trace_ELBO`) fit q: the ELBO climbs to log p(x) and
# the KL falls to nearly zero.
#
#
# A VAE does the same with q(z | x) from an encoder shared by all images and p(x | z) from a
# decoder; its ELBO is what `pyro-vae train` maximises and reports (negated, in nats per image).

#
# The full run's figures:
#
# ![identity (full run)](../docs/figures/examples/03_elbo_identity_identity.png)
# ![svi (full run)](../docs/figures/examples/03_elbo_identity_svi.png)
