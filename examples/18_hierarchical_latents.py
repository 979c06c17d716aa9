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
# # 18 — Hierarchical latents
#
# The notebook shows what each layer encodes, and why the top one collapses without KL warm-up.
#
# A hierarchical VAE stacks latent layers: a top layer $z_2$ drawn from a fixed prior, a bottom
# layer $z_1$ drawn given $z_2$, and the image drawn given the codes (`model.structure =
# hierarchical`, `pyro_vae/hierarchical.py`). The example trains four two-layer models on binarized
# MNIST (`pyro_vae.fit` through `_common.train_vae`): the strict chain $z_2 \to z_1 \to x$
# (`model.hierarchical.skip = false`) and Tomczak & Welling's HVAE, whose decoder also sees $z_2$
# (`skip = true`, the package's default), each with KL warm-up (`train.kl_warmup_epochs`) and
# without. For each it shows samples with $z_2$ held and $z_1$ redrawn (what each layer decides),
# counts the active units of each layer (Burda et al., 2016) and measures each layer's KL, during
# training and at its end.
#
# Writes samples.png, active_units.png, kl.png, kl_curves.png and results.json.
#
# Run it as a script, `python examples/18_hierarchical_latents.py [--smoke-test] [--out DIR] [--device cpu|cuda]`,
# or as a notebook (`jupytext --to ipynb examples/18_hierarchical_latents.py`); in a kernel the arguments come from
# `PYRO_VAE_EXAMPLE_ARGS`, for example `--smoke-test`.

# %% [markdown]
# ## The model and the guide
#
# The generative model draws top-down, each layer from a diagonal Gaussian given the one above:
#
# $$z_2 \sim p(z_2) = \mathcal{N}(0, I), \qquad
# z_1 \mid z_2 \sim p_\theta(z_1 \mid z_2)
# = \mathcal{N}\left(\mu_\theta(z_2), \operatorname{diag} \sigma_\theta(z_2)^2\right), \qquad
# x \mid z_1, z_2 \sim \prod_d \mathrm{Bernoulli}\left(f_\theta(z_1, z_2)_d\right),$$
#
# where the decoder $f_\theta$ sees both layers with `skip = true` and $z_1$ alone with `skip = false`
# (then $z_2$ reaches $x$ only through $z_1$). The guide runs top-down in the model's order, each
# layer given the image and the layer above ($h$ is one bottom-up network shared by the lower layers):
#
# $$q_\phi(z_1, z_2 \mid x) = q_\phi(z_2 \mid x)\, q_\phi(z_1 \mid x, z_2), \qquad
# q_\phi(z_2 \mid x) = \mathcal{N}\left(\mu_\phi(x), \operatorname{diag} \sigma_\phi(x)^2\right), \qquad
# q_\phi(z_1 \mid x, z_2) = \mathcal{N}\left(\mu_\phi(h(x), z_2), \operatorname{diag} \sigma_\phi(h(x), z_2)^2\right).$$
#
# The negative ELBO splits into a reconstruction term and one KL term per layer, each the layer's own
# rate in nats and each at least 0:
#
# $$-\mathrm{ELBO}(x) = \mathbb{E}_{q}\left[-\log p_\theta(x \mid z_1, z_2)\right] + \mathrm{KL}_2 + \mathrm{KL}_1,$$
#
# $$\mathrm{KL}_2 = \mathbb{E}_{q}\left[\log q_\phi(z_2 \mid x) - \log p(z_2)\right]
# = \mathrm{KL}\left(q_\phi(z_2 \mid x) \,\|\, p(z_2)\right),$$
#
# $$\mathrm{KL}_1 = \mathbb{E}_{q}\left[\log q_\phi(z_1 \mid x, z_2) - \log p_\theta(z_1 \mid z_2)\right]
# = \mathbb{E}_{q_\phi(z_2 \mid x)}\left[
# \mathrm{KL}\left(q_\phi(z_1 \mid x, z_2) \,\|\, p_\theta(z_1 \mid z_2)\right)\right].$$
#
# KL warm-up trains on the same terms with both KLs weighed by $\beta_t$, which rises from near 0 to 1
# over the first $T$ steps (`train.kl_warmup_epochs` epochs of them) and is the ELBO from then on:
#
# $$\mathrm{ELBO}_\beta(x) = \mathbb{E}_{q}\left[\log p_\theta(x \mid z_1, z_2)\right]
# - \beta_t \left(\mathrm{KL}_2 + \mathrm{KL}_1\right), \qquad \beta_t = \min\left(\frac{t + 1}{T}, 1\right).$$
#
# A unit $u$ of layer $i$ is *active* (Burda et al.) when its posterior mean moves with the image,
# $\operatorname{Var}_x\left(\mathbb{E}_{q}[z_{i,u} \mid x]\right) > 10^{-2}$; an inactive unit's
# $q$ is the same for every image, so it carries nothing about $x$.
#
# Where each piece lives in the package:
#
# - $p(z_2)\, p_\theta(z_1 \mid z_2)\, p_\theta(x \mid z_1, z_2)$: `Hierarchical.model_story`
#   (`pyro_vae/hierarchical.py`), sites `z2`, `z1`, `x`; as a Pyro model, `vae.model(x)`.
# - $q_\phi(z_2 \mid x)\, q_\phi(z_1 \mid x, z_2)$: `Hierarchical.guide_story`, sites `z2`, `z1`; as a
#   Pyro guide, `vae.guide(x)`.
# - Draws $z \sim q$ and every $\log q$ and $\log p$ term: `draw(LeanSource(vae), x, beta, particles)`
#   (`pyro_vae.objectives.sites`, the sites every estimator reads): `.guide[name]` and
#   `.model[name]`, each a `Site` whose `.log_prob()` is the term.
# - $\log p(x, z) - \log q(z \mid x)$ per draw, whose mean is the ELBO: `vae.log_weights(x, K)`.
# - $\beta_t$: `train.kl_warmup_epochs` (`pyro_vae.training.engine.kl_warmup_weight`).
# - $z_2 \sim p(z_2)$, then $z_1 \sim p_\theta(z_1 \mid z_2)$ with $z_2$ held:
#   `vae.sample_latents(n, fixed={"z2": codes})`.
# - $\mathbb{E}[x \mid z_1, z_2]$, the decoded pixels: `vae.decode(codes)`.
# - $\mathbb{E}_q[z_i \mid x]$ per layer, each lower layer's at the means above it: `vae.point(x)`.
# - Active units per layer: `pyro_vae.evaluation.latent.active_units_per_layer(vae, x)` (a trained
#   run's `summary.json` has them too, under `active_units`).

# %%
import json

import matplotlib.pyplot as plt
import torch
from _common import parse_args, save_figure, save_results, train_vae

from pyro_vae import open_model
from pyro_vae.data.pixels import evenly_spaced, image_grid
from pyro_vae.evaluation.latent import active_units_per_layer
from pyro_vae.objectives.sites import LeanSource, draw

MODELS = {  # name: (decoder sees z2 too, KL warm-up)
    "chain_warmup": (False, True),
    "chain_no_warmup": (False, False),
    "skip_warmup": (True, True),
    "skip_no_warmup": (True, False),
}
LABELS = {
    "chain_warmup": "z₂→z₁→x, warm-up",
    "chain_no_warmup": "z₂→z₁→x, no warm-up",
    "skip_warmup": "skip (T&W), warm-up",
    "skip_no_warmup": "skip (T&W), no warm-up",
}
COLOURS = {
    "chain_warmup": "tab:blue",
    "chain_no_warmup": "tab:orange",
    "skip_warmup": "tab:green",
    "skip_no_warmup": "tab:red",
}
ROWS, COLS = 20, 20  # z2 draws, and z1 draws for each (the figure shows the first 6 x 8)


@torch.no_grad()
def layer_terms(vae, x: torch.Tensor, particles: int, seed: int) -> dict:
    """Nats per image: each layer's KL, E_q[log q(z_i | .) - log p(z_i | .)], and the reconstruction
    term, E_q[-log p(x | z)], from ``particles`` draws of the guide per image (``draw`` gives the
    sites every estimator reads); and the negative ELBO from ``vae.log_weights`` on the same draws."""
    torch.manual_seed(seed)
    traces = draw(LeanSource(vae), x, None, particles)
    kl = {name: float((site.log_prob() - traces.model[name].log_prob()).mean()) for name, site in traces.guide.items()}
    reconstruction = float(-traces.model["x"].log_prob().mean())
    torch.manual_seed(seed)
    neg_elbo = float(-vae.log_weights(x, particles).mean())
    return {"kl": kl, "reconstruction_nats": reconstruction, "neg_elbo": neg_elbo}


# %% [markdown]
# ## Training, with KL warm-up and without
#
# Each model is trained epoch by epoch (`train_vae` continues the run left in its folder), and after
# the epochs listed its weights of that moment are opened (`open_model(run, "last")`) and each layer's
# KL measured on test images: how the code of each layer forms, or dies, during training.

# %%
args = parse_args("18_hierarchical_latents")
if args.smoke_test:
    epochs, warmup, subset, hidden, latent, images, particles = 3, 2, 2000, 64, 8, 500, 4
    stages = (1, 3)  # the epochs after which each layer's KL is measured
else:
    epochs, warmup, subset, hidden, latent, images, particles = 20, 10, 0, 256, 32, 2000, 16
    stages = (1, 2, 3, 5, 10, 15, 20)
results = {
    "epochs": epochs,
    "warmup_epochs": warmup,
    "latent_dims": {"z2": latent, "z1": latent},
    "test_images": images,
    "particles": particles,
    "stages": list(stages),
    "models": {},
}
models = {}
for name, (skip, warm) in MODELS.items():
    run = args.out / name
    overrides = (
        "model.structure=hierarchical",
        f"model.hierarchical.skip={str(skip).lower()}",
        f"model.hidden=[{hidden}]",
        f"train.kl_warmup_epochs={warmup if warm else 0}",
    )
    # The KL after each stage, kept beside the run: run again, the notebook trains and measures only
    # the stages it lacks (the weights of an earlier epoch are gone once the run has gone past it).
    kept = args.out / f"{name}_kl_curve.json"
    curve = json.loads(kept.read_text()) if kept.exists() else {}
    for stage in stages:
        if str(stage) in curve and stage != stages[-1]:
            continue
        train_vae(run, latent, stage, subset, args.seed, args.device, overrides)
        trained = open_model(run, "last", device=str(args.device))  # the weights after epoch `stage`
        vae, data = trained.vae, trained.data
        x = data.test[evenly_spaced(data.test.shape[0], images)].to(args.device)
        terms = layer_terms(vae, x, particles, args.seed)
        curve[str(stage)] = terms["kl"]
        kept.write_text(json.dumps(curve))
    units = active_units_per_layer(vae, x)
    models[name] = vae
    by_layer = {layer: [curve[str(stage)][layer] for stage in stages] for layer in vae.layers()}
    results["models"][name] = {
        "skip": skip,
        "warmup_epochs": warmup if warm else 0,
        **terms,
        "kl_curve": by_layer,
        "active_units": {layer: u["active"] for layer, u in units.items()},
    }
    kl = terms["kl"]
    print(
        f"{LABELS[name]:>24}: reconstruction {terms['reconstruction_nats']:6.2f} + KL(z2) {kl['z2']:5.2f} "
        f"+ KL(z1) {kl['z1']:5.2f} = {terms['neg_elbo']:6.2f} nats; active units z2 {units['z2']['active']}, "
        f"z1 {units['z1']['active']} of {latent}"
    )

# %% [markdown]
# ## What each layer encodes: $z_2$ held, $z_1$ redrawn
#
# Each row holds one $z_2 \sim p(z_2)$; along the row $z_1 \sim p_\theta(z_1 \mid z_2)$ is drawn
# afresh (`sample_latents(n, fixed={"z2": ...})`) and each image is $\mathbb{E}[x \mid z_1, z_2]$
# (`decode`). What stays the same along a row is what $z_2$ decides; what changes, $z_1$. The law of
# total variance puts a number on it: of the pixel variance of these decoded images
# $\bar x = \mathbb{E}[x \mid z_1, z_2]$,
#
# $$\operatorname{Var}(\bar x) = \mathbb{E}_{z_2}\left[\operatorname{Var}(\bar x \mid z_2)\right]
# + \operatorname{Var}_{z_2}\left(\mathbb{E}[\bar x \mid z_2]\right),$$
#
# the second term's share is $z_2$'s (summed over pixels, over 20 rows of 20 draws each; a $z_2$ that
# decides nothing still gets about $1/20$ from the finite rows).

# %%
fig, axes = plt.subplots(2, 2, figsize=(9, 6.2))
for ax, (name, vae) in zip(axes.flat, models.items()):
    torch.manual_seed(args.seed)
    tops = vae.sample_latents(ROWS)["z2"]  # one z2 per row
    codes = vae.sample_latents(ROWS * COLS, fixed={"z2": tops.repeat_interleave(COLS, 0)})  # z1 redrawn
    pixels = vae.decode(codes).reshape(ROWS, COLS, -1).double()
    between = pixels.mean(1).var(0, unbiased=False).sum()
    share = float(between / pixels.reshape(ROWS * COLS, -1).var(0, unbiased=False).sum())
    results["models"][name]["z2_share_of_sample_variance"] = share
    grid = image_grid(pixels[:6, :8].reshape(48, -1), data.image_shape, 6)
    ax.imshow(grid.numpy(), cmap="gray_r", vmin=0, vmax=1)
    ax.set(xticks=[], yticks=[], title=f"{LABELS[name]}: z₂ decides {share:.0%}")
    ax.title.set_fontsize(9)
    print(f"{LABELS[name]:>24}: z2 decides {share:.1%} of the samples' pixel variance")
fig.suptitle("rows: one z₂ each; along a row: z₁ redrawn from p(z₁ | z₂)", fontsize=10)
save_figure(fig, args.out, "samples.png")

# %% [markdown]
# ## Active units per layer
#
# `active_units_per_layer` computes Burda et al.'s activity of every unit of every layer on the test
# images: $\operatorname{Var}_x$ of the guide's mean (`vae.point`), $z_1$'s taken at $z_2$'s mean.

# %%
fig, ax = plt.subplots(figsize=(8.5, 3.6))
width = 0.2
for i, name in enumerate(MODELS):
    counts = [results["models"][name]["active_units"][layer] for layer in ("z2", "z1")]
    bars = ax.bar([j + (i - 1.5) * width for j in range(2)], counts, width, label=LABELS[name], color=COLOURS[name])
    ax.bar_label(bars, fontsize=7)
ax.axhline(latent, color="grey", lw=0.8, ls=":")
ax.set_xticks([0, 1], ["top layer z₂", "bottom layer z₁"])
ax.set_ylabel(f"active units (of {latent})")
ax.set_title("Active units per layer (Burda et al.: Var_x E_q[z_u | x] > 0.01)", fontsize=10)
ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
save_figure(fig, args.out, "active_units.png")

# %% [markdown]
# ## The KL of each layer, and why the top layer collapses
#
# Each layer's KL is estimated from draws of the guide: the guide's sites and the model's, replayed
# at the same values (`draw(LeanSource(vae), x, None, K)`), give $\log q - \log p$ of every layer for
# every draw; their mean over draws and images is $\mathrm{KL}_i$. The reconstruction term and the
# two KLs add up to the negative ELBO that `vae.log_weights` gives on the same draws.
#
# **Why the top layer of the chain collapses without warm-up.** In the chain $z_2 \to z_1 \to x$ the
# reconstruction has no use for $z_2$: $x$ is drawn from $z_1$ alone, and $z_1$'s guide
# $q_\phi(z_1 \mid x, z_2)$ sees the image itself. All $z_2$ can buy is a smaller $\mathrm{KL}_1$:
# a prior $p_\theta(z_1 \mid z_2)$ that predicts the bottom code better. What it costs is
# $\mathrm{KL}_2$, paid at once and in full for every nat $q_\phi(z_2 \mid x)$ carries about $x$. At
# the start $p_\theta(z_1 \mid z_2)$ is a random network that cannot use $z_2$ yet, so the cost comes
# first and the benefit later: the gradient of $\mathrm{KL}_2$ pulls $q_\phi(z_2 \mid x)$ onto
# $p(z_2)$ within the first epochs. Once $q_\phi(z_2 \mid x) = p(z_2)$ for every image, $z_2$ is
# noise independent of $x$, $p_\theta(z_1 \mid z_2)$ learns to ignore it, and neither term has a
# gradient that leads back: a stationary point, the inactive units of Burda et al. and Sønderby et
# al. (2016). Warm-up weighs both KLs by $\beta_t \approx 0$ at first: the units cost nearly nothing,
# $q_\phi(z_2 \mid x)$ keeps a code that varies with the image, and $p_\theta(z_1 \mid z_2)$ learns
# to predict $z_1$ from it while it is cheap; when $\beta_t$ reaches 1 the information in $z_2$ pays
# for itself through a smaller $\mathrm{KL}_1$, and it stays.
#
# With the skip connection (`skip = true`) the decoder sees $z_2$ directly: the top layer earns
# reconstruction from the first step, as the one latent of a plain VAE does, and is no longer the
# layer that has to wait for a benefit. Which layer then carries what is measured below.

# %%
fig, ax = plt.subplots(figsize=(8.5, 3.6))
for i, name in enumerate(MODELS):
    kls = [results["models"][name]["kl"][layer] for layer in ("z2", "z1")]
    bars = ax.bar([j + (i - 1.5) * width for j in range(2)], kls, width, label=LABELS[name], color=COLOURS[name])
    ax.bar_label(bars, fmt="%.1f", fontsize=7)
ax.set_xticks([0, 1], ["KL₂: top layer z₂", "KL₁: bottom layer z₁"])
ax.set_ylabel("E_q[log q − log p], nats per image")
ax.set_title(f"Each layer's KL after {epochs} epochs (test images, {particles} draws each)", fontsize=10)
ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
save_figure(fig, args.out, "kl.png")

fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
for ax, kind in zip(axes, ("chain", "skip")):
    for name in (n for n in MODELS if n.startswith(kind)):
        curve = results["models"][name]["kl_curve"]
        ax.plot(stages, curve["z2"], "o-", color=COLOURS[name], label=f"{LABELS[name]}: KL₂ (z₂)")
        ax.plot(stages, curve["z1"], "s--", color=COLOURS[name], label=f"{LABELS[name]}: KL₁ (z₁)")
    ax.axvline(warmup, color="grey", lw=0.8, ls=":")
    title = "z₂ → z₁ → x" if kind == "chain" else "skip: x sees z₁ and z₂"
    ax.set(xlabel="epoch (dotted: end of the warm-up)", title=title)
    ax.legend(fontsize=7)
axes[0].set_ylabel("nats per image")
fig.suptitle("Each layer's KL during training (test images)", fontsize=10)
save_figure(fig, args.out, "kl_curves.png")
save_results(results, args.out)

# %% [markdown]
# ## What the full run shows
#
# The full run (this script without `--smoke-test`: 20 epochs on all 50,000 training images, two
# latent layers of 32 units, hidden width 256, warm-up over the first 10 epochs; measured on 2,000
# test images with 16 draws each; 11.5 minutes on one CPU thread beside a training run on the other
# core, 2026-12-05; its numbers are in `docs/figures/examples/18_hierarchical_latents_results.json`),
# nats per image:
#
# | model | reconstruction | KL(z₂) | KL(z₁) | negative ELBO | active z₂ / z₁ (of 32) | z₂'s share of variance |
# |---|---|---|---|---|---|---|
# | z₂ → z₁ → x, warm-up | 71.65 | 9.76 | 17.67 | **99.08** | 12 / 32 | 65% |
# | z₂ → z₁ → x, no warm-up | 79.11 | 0.02 | 22.59 | 101.72 | **0** / 32 | 5% |
# | skip (T&W), warm-up | 69.51 | 19.79 | 11.32 | 100.62 | 31 / 32 | 77% |
# | skip (T&W), no warm-up | 73.41 | 22.36 | 4.63 | 100.39 | 23 / 32 | 90% |
#
# Without warm-up the chain's top layer collapsed completely: no active unit, 0.02 nats of KL, and
# its samples change digit along a row (z₁ decides almost everything); with warm-up 12 of its units
# carry 9.8 nats and a row keeps its digit while z₁ redraws the style. It is also the better model
# by 2.6 nats. With the skip decoder the top layer survives without warm-up (23 active units), but
# then the bottom layer carries little (4.6 nats against 11.3): the decoder leans on z₂, and z₁'s
# rows in the samples hardly vary.
#
# ![samples with z2 held (full run)](../docs/figures/examples/18_hierarchical_latents_samples.png)
# ![active units (full run)](../docs/figures/examples/18_hierarchical_latents_active_units.png)
# ![each layer's KL (full run)](../docs/figures/examples/18_hierarchical_latents_kl.png)
# ![each layer's KL during training (full run)](../docs/figures/examples/18_hierarchical_latents_kl_curves.png)
