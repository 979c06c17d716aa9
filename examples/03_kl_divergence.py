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
# # 03 — KL divergence
#
# The KL divergence is asymmetric and a difference of cross-entropy and entropy, and minimising it in
# each direction does something different:
#
# 1. For p = N(0, 1) and q = N(1, 0.6^2), KL(p || q) != KL(q || p): closed form
#    (``torch.distributions.kl_divergence``) against Monte Carlo estimates.
# 2. H(p) + KL(p || q) = H(p, q), the cross-entropy E_p[-log q], checked numerically.
# 3. Fitting one Gaussian q to a bimodal p: minimising KL(q || p) (what variational inference
#    does) locks onto one mode (mode seeking); minimising KL(p || q) matches p's mean and variance
#    and spreads over both (mass covering).
#
# Writes asymmetry.png, fits.png and results.json.
#
# Run it as a script, `python examples/03_kl_divergence.py [--smoke-test] [--out DIR] [--device cpu|cuda]`,
# or as a notebook (`jupytext --to ipynb examples/03_kl_divergence.py`); in a kernel the arguments come from
# `PYRO_VAE_EXAMPLE_ARGS`, for example `--smoke-test`.

# %%
import math

import matplotlib.pyplot as plt
import torch
from _common import parse_args, save_figure, save_results
from torch.distributions import Categorical, MixtureSameFamily, Normal, kl_divergence


# %%
def mc_kl(a, b, n: int) -> tuple[float, float]:
    """Monte Carlo KL(a || b) = E_a[log a - log b] and its standard error."""
    x = a.sample((n,))
    d = a.log_prob(x) - b.log_prob(x)
    return float(d.mean()), float(d.std() / math.sqrt(n))


# %%
def bimodal() -> MixtureSameFamily:
    mix = Categorical(torch.tensor([0.5, 0.5], dtype=torch.float64))
    comp = Normal(torch.tensor([-2.0, 2.0], dtype=torch.float64), torch.tensor([0.6, 0.6], dtype=torch.float64))
    return MixtureSameFamily(mix, comp)


# %%
def fit_reverse_kl(p, steps: int, n: int, init_loc: float) -> Normal:
    """argmin_q KL(q || p) over Gaussians q, by the reparameterised gradient (as in a VAE)."""
    loc = torch.tensor(init_loc, dtype=torch.float64, requires_grad=True)
    log_scale = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    optim = torch.optim.Adam([loc, log_scale], lr=0.05)
    for _ in range(steps):
        q = Normal(loc, log_scale.exp())
        z = q.rsample((n,))
        loss = (q.log_prob(z) - p.log_prob(z)).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
    return Normal(loc.detach(), log_scale.detach().exp())


# %%
args = parse_args("03_kl_divergence")
torch.manual_seed(args.seed)
torch.set_default_device(args.device)  # every tensor below is made there
n = 100_000 if args.smoke_test else 1_000_000
p = Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
q = Normal(torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.6, dtype=torch.float64))
kl_pq, kl_qp = float(kl_divergence(p, q)), float(kl_divergence(q, p))
mc_pq, mc_qp = mc_kl(p, q, n), mc_kl(q, p, n)
print(f"KL(p||q) = {kl_pq:.4f} (Monte Carlo {mc_pq[0]:.4f} ± {mc_pq[1]:.4f})")
print(f"KL(q||p) = {kl_qp:.4f} (Monte Carlo {mc_qp[0]:.4f} ± {mc_qp[1]:.4f})")
x = p.sample((n,))
cross = float(-q.log_prob(x).mean())
entropy = float(p.entropy())
print(f"H(p) + KL(p||q) = {entropy + kl_pq:.4f};  cross-entropy H(p, q) by Monte Carlo = {cross:.4f}")

# %%
grid = torch.linspace(-5, 5, 400, dtype=torch.float64)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(grid.cpu(), p.log_prob(grid).exp().cpu(), label="p = N(0, 1)")
ax.plot(grid.cpu(), q.log_prob(grid).exp().cpu(), label="q = N(1, 0.6²)")
ax.set(title=f"KL(p‖q) = {kl_pq:.3f}   but   KL(q‖p) = {kl_qp:.3f}", xlabel="x")
ax.legend()
save_figure(fig, args.out, "asymmetry.png")

# %%
target = bimodal()
steps = 1000 if args.smoke_test else 3000
reverse = fit_reverse_kl(target, steps, 64, init_loc=1.0)
forward = Normal(target.mean, target.variance.sqrt())  # argmin_q KL(p || q): moment matching
print(f"min KL(q||p): q = N({float(reverse.loc):.2f}, {float(reverse.scale):.2f}²) (one mode)")
print(f"min KL(p||q): q = N({float(forward.loc):.2f}, {float(forward.scale):.2f}²) (covers both)")
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.fill_between(grid.cpu(), target.log_prob(grid).exp().cpu(), alpha=0.3, color="gray", label="bimodal p")
ax.plot(grid.cpu(), reverse.log_prob(grid).exp().cpu(), label="argmin KL(q‖p): mode seeking")
ax.plot(grid.cpu(), forward.log_prob(grid).exp().cpu(), label="argmin KL(p‖q): mass covering")
ax.set(xlabel="x", title="Fitting one Gaussian to two modes")
ax.legend(fontsize=8)
save_figure(fig, args.out, "fits.png")
save_results(
    {
        "kl_pq": kl_pq,
        "kl_qp": kl_qp,
        "mc_kl_pq": mc_pq,
        "mc_kl_qp": mc_qp,
        "n": n,
        "entropy_plus_kl": entropy + kl_pq,
        "cross_entropy_mc": cross,
        "reverse_fit": [float(reverse.loc), float(reverse.scale)],
        "forward_fit": [float(forward.loc), float(forward.scale)],
    },
    args.out,
)

# %% [markdown]
# ## What the full run shows
#
# $$\mathrm{KL}(q \,\|\, p) = \mathbb{E}_{q}\left[\log q(z) - \log p(z)\right] \ge 0,$$
#
# zero only when $q = p$. It is not symmetric: for
# p = N(0, 1) and q = N(1, 0.6²), KL(p ‖ q) = 1.767 but KL(q ‖ p) = 0.691 (closed form, matched by
# Monte Carlo estimates; `docs/figures/examples/03_kl_divergence_results.json`). It is the gap
# between a cross-entropy and an entropy:
# $H(p, q) = \mathbb{E}_{p}[-\log q] = H(p) + \mathrm{KL}(p \,\|\, q)$.
#
#
# The direction matters when one fits q to p. Minimising KL(q ‖ p), as variational inference does,
# punishes q for putting mass where p has none: fitted to two well-separated modes, q settles on one
# of them (mode seeking). Minimising KL(p ‖ q) punishes q for missing mass of p: q matches p's mean
# and variance and spreads over both modes (mass covering).

#
# The full run's figures:
#
# ![asymmetry (full run)](../docs/figures/examples/03_kl_divergence_asymmetry.png)
# ![fits (full run)](../docs/figures/examples/03_kl_divergence_fits.png)
