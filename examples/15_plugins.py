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
# # 15 — Your own components as plugins
#
# Three plugins add a prior, a likelihood and a network without editing pyro-vae.
#
# ``examples/plugins/`` holds three files of a few lines each: ``laplace_prior.py`` (a Laplace prior
# with its closed-form KL against the Gaussian guide), ``binomial_likelihood.py`` (256 grey levels
# as Binomial counts) and ``residual_mlp.py`` (dense residual blocks). Each registers itself with the
# registry of its kind, which is all pyro-vae needs to use it by name:
#
# pyro-vae train --plugin examples/plugins/laplace_prior.py --set model.prior=laplace
#
# This script does what a plugin author would: it runs the contract checks that pyro-vae runs on
# every plugin as it is imported (``pyro_vae.check_component``), cross-checks the new prior's KL
# against Monte Carlo with the estimator laboratory's terms (the analytic KL that
# ``train.elbo=mean_field`` uses must be E_q[log q(z|x) - log p(z)]), then trains the standard VAE,
# the Laplace prior and the residual network through the command line and compares them in nats.
#
# Writes kl_check.png (analytic vs Monte-Carlo KL per image), nll.png and results.json.
#
# Run it as a script, `python examples/15_plugins.py [--smoke-test] [--out DIR] [--device cpu|cuda]`,
# or as a notebook (`jupytext --to ipynb examples/15_plugins.py`); in a kernel the arguments come from
# `PYRO_VAE_EXAMPLE_ARGS`, for example `--smoke-test`.

# %%

import matplotlib.pyplot as plt
import torch
from _common import EXAMPLES, nll_bars, parse_args, save_figure, save_results, train_by_cli

from pyro_vae import build_vae, check_component, load_plugin, open_model
from pyro_vae.config import ModelConfig
from pyro_vae.data.pixels import evenly_spaced
from pyro_vae.evaluation.metrics import evaluate
from pyro_vae.lab.estimators import elbo_terms, estimator_particles

PLUGINS = EXAMPLES / "plugins"
RUNS = {  # name -> (--plugin files, --set overrides)
    "standard VAE": ((), ()),
    "laplace prior": (("laplace_prior.py",), ("model.prior=laplace",)),
    "residual_mlp network": (
        ("residual_mlp.py",),
        ("model.network=residual_mlp", "model.residual_mlp.width=128", "model.residual_mlp.blocks=1"),
    ),
}


# %%
def kl_cross_check(n: int, seed: int) -> dict:
    """Per image: the plugin's analytic KL and the Monte-Carlo mean of log q - log p (± s.e.)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(latent_dim=4, hidden=(16,), prior="laplace", settings={"laplace": {"scale": 0.7}})
    vae = build_vae(cfg, 20).double()
    x = torch.rand(8, 20, dtype=torch.float64).round()
    terms = estimator_particles(elbo_terms(vae, x, n))
    mc = terms["trace_kl_term"]
    return {
        "analytic": terms["mean_field_kl_term"][0].tolist(),
        "monte_carlo": mc.mean(0).tolist(),
        "se": (mc.std(0) / n**0.5).tolist(),
        "samples": n,
    }


# %%
args = parse_args("15_plugins")
epochs, subset, k, images, n_kl = (1, 1000, 20, 200, 4000) if args.smoke_test else (10, 0, 200, 1000, 100000)
registered = {}
for file in sorted(PLUGINS.glob("*.py")):
    plugin = load_plugin(str(file))  # what --plugin does; then the contract checks
    for key, names in plugin.registered.items():
        for name in names:
            check_component(key, name)
            registered[name] = key
            print(f"{file.name}: {key}={name} meets its contract")

# %%
kl = kl_cross_check(n_kl, args.seed)
z = [(m - a) / s for a, m, s in zip(kl["analytic"], kl["monte_carlo"], kl["se"])]
print(f"KL(q || Laplace), analytic vs Monte Carlo over {n_kl} draws: max |z| = {max(map(abs, z)):.2f}")
fig, ax = plt.subplots(figsize=(5, 3.4))
ax.errorbar(kl["analytic"], kl["monte_carlo"], yerr=[2 * s for s in kl["se"]], fmt="o", ms=4)
lo, hi = min(kl["analytic"]), max(kl["analytic"])
ax.plot([lo, hi], [lo, hi], color="gray", lw=0.8, label="equal")
ax.set_xlabel("analytic KL(q(z|x) || Laplace) (nats)")
ax.set_ylabel("Monte-Carlo E_q[log q - log p] ± 2 s.e.")
ax.set_title("The plugin's closed-form KL, checked", fontsize=10)
ax.legend()
save_figure(fig, args.out, "kl_check.png")

# %%
results = {"registered": registered, "kl_check": {**kl, "z": z}, "epochs": epochs, "iwae_k": k, "runs": {}}
for name, (files, overrides) in RUNS.items():
    run = args.out / name.replace(" ", "_")
    sets = [
        "model.latent_dim=20",
        f"train.epochs={epochs}",
        f"data.subset={subset}",
        "eval.iwae_k=10",
        f"train.seed={args.seed}",
        f"train.device={args.device}",
        *overrides,
    ]
    train_by_cli(run, sets, plugins=tuple(PLUGINS / f for f in files))
    trained = open_model(run, device=str(args.device))
    vae, data = trained.vae, trained.data
    x = data.test[evenly_spaced(data.test.shape[0], images)].to(args.device)
    est = evaluate(vae, x, k=k, batch_size=100, seed=args.seed)
    results["runs"][name] = {
        "plugins": list(files),
        "overrides": list(overrides),
        "test_nll": [est["nll"].mean, est["nll"].se],
    }
    print(f"{name:<22} test NLL (K={k}) {est['nll']} nats")

# %%
nll_bars(
    {n: r["test_nll"] for n, r in results["runs"].items()},
    k,
    f"Built-in and plugin components, {epochs} epoch(s)",
    args.out,
)
save_results(results, args.out)

# %% [markdown]
# ## What the full run shows
#
# Everything above swapped built-in components. A component of your own is a file that registers
# it (`@PRIORS.register("laplace")`), given to any command with `--plugin`
# ([plugins.md](../docs/plugins.md) is the guide). The example loads the three plugins of
# `examples/plugins/` (a Laplace prior, a binomial likelihood for grey levels, a residual MLP),
# runs the contract check pyro-vae applies to each as it is imported, and then checks the one
# piece of maths a plugin author writes by hand: the Laplace prior's closed-form KL against the
# Gaussian guide,
#
# ```
# KL(N(μ, σ²) ‖ Laplace(0, b)) = −½ log(2πeσ²) + log 2b + E|z| / b,
# E|z| = σ √(2/π) exp(−μ² / 2σ²) + μ erf(μ / σ√2),
# ```
#
# against E_q[log q − log p] by Monte Carlo, using the laboratory's per-particle terms: over 100,000
# draws for 8 images, the largest |z| is 1.65. It then trains the standard VAE, the Laplace prior
# and the residual network from the command line (10 epochs each, latent size 20) and scores them
# by IWAE (K = 200, 1,000 test images): 99.22 ± 0.81, 98.74 ± 0.80 and 105.38 ± 1.02 nats. A
# heavier-tailed, sparser prior costs nothing here; the residual network of width 128 is worse
# than the 400-wide MLP at this budget.

#
# The full run's figures:
#
# ![kl check (full run)](../docs/figures/examples/15_plugins_kl_check.png)
# ![nll (full run)](../docs/figures/examples/15_plugins_nll.png)
