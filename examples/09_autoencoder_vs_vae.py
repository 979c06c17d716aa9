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
# # 09 — Autoencoder versus VAE
#
# The same networks are trained deterministically (the autoencoder) and variationally (the VAE).
#
# The autoencoder maps x to the code mu(x) (the encoder's mean head) and is trained to reconstruct
# x through the same decoder and Bernoulli likelihood; nothing ties its codes to any distribution.
# The VAE (``pyro_vae.fit``) samples z ~ q(z | x) and pays KL(q(z | x) || N(0, I)), so its codes fill
# the prior. Decoding random points from N(0, I) therefore gives digits for the VAE and, for the
# autoencoder, whatever its decoder does in regions no code visits.
#
# The mismatch is measured by the KL from a Gaussian fitted to each model's test codes to N(0, I)
# (0 when the codes look like the prior), next to each model's reconstruction error.
#
# Writes latents.png (the 2-D codes of the test set, coloured by digit), samples.png (decoded
# N(0, I) draws for both) and results.json.
#
# Run it as a script, `python examples/09_autoencoder_vs_vae.py [--smoke-test] [--out DIR] [--device cpu|cuda]`,
# or as a notebook (`jupytext --to ipynb examples/09_autoencoder_vs_vae.py`); in a kernel the arguments come from
# `PYRO_VAE_EXAMPLE_ARGS`, for example `--smoke-test`.

# %%
import matplotlib.pyplot as plt
import torch
from _common import parse_args, save_figure, save_results, train_vae
from torch.distributions import MultivariateNormal, kl_divergence

from pyro_vae import build_vae
from pyro_vae.data.pixels import image_grid
from pyro_vae.evaluation.plots import latent_means


# %%
def train_autoencoder(cfg, x_train: torch.Tensor, epochs: int, seed: int, device: torch.device):
    torch.manual_seed(seed)
    ae = build_vae(cfg.model, x_train.shape[1]).to(device)
    x_train = x_train.to(device)
    optim = torch.optim.Adam(ae.parameters(), lr=cfg.train.lr)
    gen = torch.Generator().manual_seed(seed)
    bs = cfg.train.batch_size
    for _ in range(epochs):
        perm = torch.randperm(x_train.shape[0], generator=gen).to(device)
        for i in range(0, x_train.shape[0], bs):
            x = x_train[perm[i : i + bs]]
            code = ae.encoder.loc_scale(x)[0]  # deterministic: the mean head only
            loss = -ae.likelihood(ae.decoder(code)).log_prob(x).mean()
            optim.zero_grad()
            loss.backward()
            optim.step()
    return ae.eval()


# %%
def gaussian_fit_kl(codes: torch.Tensor) -> float:
    """KL(N(mean, cov) of the codes || N(0, I)): how far the codes are from the prior."""
    codes = codes.double()
    cov = torch.cov(codes.T) + 1e-9 * torch.eye(codes.shape[1], dtype=codes.dtype)
    fitted = MultivariateNormal(codes.mean(0), cov)
    prior = MultivariateNormal(
        torch.zeros(codes.shape[1], dtype=codes.dtype), torch.eye(codes.shape[1], dtype=codes.dtype)
    )
    return float(kl_divergence(fitted, prior))


# %%
@torch.no_grad()
def reconstruction_nats(model, codes: torch.Tensor, x: torch.Tensor) -> float:
    device = next(model.parameters()).device
    return float(-model.likelihood(model.decoder(codes.to(device))).log_prob(x.to(device)).mean())


# %%
args = parse_args("09_autoencoder_vs_vae")
epochs, subset = (2, 2000) if args.smoke_test else (15, 0)
cfg, vae, data = train_vae(args.out / "vae", 2, epochs, subset, args.seed, args.device)
ae = train_autoencoder(cfg, data.train, epochs, args.seed, args.device)
models = {"autoencoder": ae, "VAE": vae}
codes = {name: latent_means(m, data.test) for name, m in models.items()}  # on the CPU
torch.manual_seed(args.seed)
z = torch.randn(64, 2).to(args.device)  # drawn on the CPU: the same z on any device
results = {"epochs": epochs}
for name, model in models.items():
    results[name] = {
        "code_mean": codes[name].mean(0).tolist(),
        "code_sd": codes[name].std(0).tolist(),
        "kl_gaussian_fit_to_prior": gaussian_fit_kl(codes[name]),
        "reconstruction_nats": reconstruction_nats(model, codes[name], data.test),
    }
    r = results[name]
    mean, sd = [round(v, 2) for v in r["code_mean"]], [round(v, 2) for v in r["code_sd"]]
    kl, rec = r["kl_gaussian_fit_to_prior"], r["reconstruction_nats"]
    print(f"{name:>11}: codes mean {mean}, sd {sd}, KL(Gaussian fit || N(0, I)) {kl:.2f}, reconstruction {rec:.1f}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
labels = data.test_labels.numpy() if data.test_labels is not None else None
for ax, (name, c) in zip(axes, codes.items()):
    points = ax.scatter(c[:, 0], c[:, 1], c=labels, cmap="tab10", s=3, alpha=0.6)
    circle = plt.Circle((0, 0), 2, fill=False, ls="--", color="k")
    ax.add_patch(circle)
    ax.set(title=f"{name}: test codes (dashed: 2 sd of N(0, I))", xlabel="z[0]", ylabel="z[1]")
fig.colorbar(points, ax=axes, ticks=range(10), label="digit")
save_figure(fig, args.out, "latents.png")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 5.3))
for ax, (name, model) in zip(axes, models.items()):
    with torch.no_grad():
        images = model.decode(z)
    ax.imshow(image_grid(images, data.image_shape, 8).numpy(), cmap="gray_r", vmin=0, vmax=1)
    ax.set_title(f"{name}: decoded z ~ N(0, I)")
    ax.axis("off")
save_figure(fig, args.out, "samples.png")
save_results(results, args.out)

# %% [markdown]
# ## What the full run shows
#
# The same networks with a 2-D latent space, trained for 15 epochs two ways: as an autoencoder
# (x → the encoder's mean → decoder, maximising the Bernoulli log-likelihood of x) and as a VAE
# (`pyro_vae.fit`). Nothing ties the autoencoder's codes to any distribution: they spread over
# tens of units (sd 7.4 and 11.3), and a Gaussian fitted to them is 104.8 nats from N(0, I). The
# VAE pays KL(q(z | x) ‖ N(0, I)) for every image, and its codes fill the prior (sd 1.4 and 1.3,
# 0.28 nats from N(0, I)); it reconstructs slightly worse (157.0 against 150.0 nats per test image)
# because it has to keep its codes where the prior is.
#
#
# Decoding random points from N(0, I) shows what that buys: the VAE draws digits of every kind,
# while the autoencoder, whose codes mostly lie outside the dashed circle, decodes almost every
# such point to the same blurred shape.

#
# The full run's figures:
#
# ![codes (full run)](../docs/figures/examples/09_autoencoder_vs_vae_latents.png)
# ![samples (full run)](../docs/figures/examples/09_autoencoder_vs_vae_samples.png)
