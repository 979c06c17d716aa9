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
# # 05 — Monte Carlo estimation
#
# The example estimates pi from random points in the unit square.
#
# A point (u, v) drawn uniformly from [0, 1]^2 lands inside the quarter disc u^2 + v^2 <= 1 with
# probability pi/4, so pi ~= 4 * (fraction of N points inside). The estimate is unbiased and its
# standard deviation is 4 * sqrt(p (1 - p) / N) with p = pi/4: the error shrinks as 1/sqrt(N),
# the rate every Monte Carlo estimate in this project (ELBO, KL, IWAE) obeys.
#
# Writes points.png (the darts), error.png (error against N on log-log axes, with the 1/sqrt(N)
# law) and results.json (the fitted slope of log error on log N, which should be about -0.5).
#
# Run it as a script, `python examples/05_monte_carlo.py [--smoke-test] [--out DIR] [--device cpu|cuda]`,
# or as a notebook (`jupytext --to ipynb examples/05_monte_carlo.py`); in a kernel the arguments come from
# `PYRO_VAE_EXAMPLE_ARGS`, for example `--smoke-test`.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from _common import parse_args, save_figure, save_results


# %%
def estimate_pi(n: int, reps: int, generator: torch.Generator) -> torch.Tensor:
    """``reps`` independent estimates of pi from ``n`` points each."""
    chunk = max(1, 2_000_000 // n)  # bounded memory for large N
    out = []
    for start in range(0, reps, chunk):
        points = torch.rand(
            min(chunk, reps - start), n, 2, generator=generator, dtype=torch.float64, device=generator.device
        )
        out.append(4 * ((points**2).sum(-1) <= 1).double().mean(-1))
    return torch.cat(out)


# %%
args = parse_args("05_monte_carlo")
gen = torch.Generator(device=args.device).manual_seed(args.seed)
ns = [10, 100, 1000, 10_000] if args.smoke_test else [10, 100, 1000, 10_000, 100_000]
reps = 50 if args.smoke_test else 200
rms = []
for n in ns:
    est = estimate_pi(n, reps, gen)
    rms.append(float(((est - math.pi) ** 2).mean().sqrt()))
    print(f"N={n:>7}: mean estimate {float(est.mean()):.5f}, RMS error {rms[-1]:.5f}")
slope = float(np.polyfit(np.log(ns), np.log(rms), 1)[0])
p = math.pi / 4
theory = [4 * math.sqrt(p * (1 - p) / n) for n in ns]

# %%
pts = torch.rand(2000, 2, generator=gen, device=gen.device).cpu()
inside = (pts**2).sum(-1) <= 1
fig, ax = plt.subplots(figsize=(4.5, 4.5))
ax.scatter(pts[inside, 0], pts[inside, 1], s=3, c="C0", label="inside")
ax.scatter(pts[~inside, 0], pts[~inside, 1], s=3, c="C3", label="outside")
t = np.linspace(0, math.pi / 2, 100)
ax.plot(np.cos(t), np.sin(t), "k")
ax.set(aspect="equal", title=f"pi ~ 4 x {int(inside.sum())}/2000 = {4 * float(inside.double().mean()):.3f}")
ax.legend(loc="lower left")
save_figure(fig, args.out, "points.png")

# %%
fig, ax = plt.subplots(figsize=(5.5, 4))
ax.loglog(ns, rms, "o-", label=f"measured RMS error (slope {slope:.2f})")
ax.loglog(ns, theory, "k--", label=r"$4\sqrt{p(1-p)/N}$, slope -1/2")
ax.set(xlabel="points N", ylabel="RMS error of the estimate of pi", title="Monte Carlo error falls as 1/sqrt(N)")
ax.legend()
ax.grid(alpha=0.3, which="both")
save_figure(fig, args.out, "error.png")
save_results({"n": ns, "rms_error": rms, "theory": theory, "slope": slope, "reps": reps}, args.out)

# %% [markdown]
# ## What the full run shows
#
# An expectation is estimated by the average over $N$ draws,
#
# $$\mathbb{E}_{p}[f(z)] \approx \frac{1}{N} \sum_{n=1}^{N} f(z_n), \qquad z_n \sim p,$$
#
# an unbiased estimate whose standard deviation is $\operatorname{sd}(f) / \sqrt{N}$.
# Throwing N darts at the unit square and
# counting those inside the quarter disc gives π/4; the measured error falls with slope −½ on
# log-log axes, as the theory line says (fitted slope −0.498;
# `docs/figures/examples/05_monte_carlo_results.json`).
#
#
# Every quantity this project estimates by sampling (the ELBO, a KL term, the IWAE bound) has
# this 1/√N error; `pyro-vae compare` shows it for the ELBO estimators of a trained VAE.

#
# The full run's figures:
#
# ![darts (full run)](../docs/figures/examples/05_monte_carlo_points.png)
# ![error (full run)](../docs/figures/examples/05_monte_carlo_error.png)
