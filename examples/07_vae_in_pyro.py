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
# # 07 — The VAE written out in Pyro
#
# The encoder, the decoder, the Pyro `model` and `guide` and the SVI training loop, all on the page
# in plain torch and Pyro, in the shape of Pyro's own VAE tutorial; then the VAE's loss derived by
# hand and checked against Pyro's to ten digits; then the same model as `pyro_vae` builds it, with
# the weights trained here copied in, giving the same loss.
#
# Writes training.png (the loss per image during training), images.png (test images, their
# reconstructions and samples from the prior) and results.json.
#
# Run it as a script, `python examples/07_vae_in_pyro.py [--smoke-test] [--out DIR] [--device cpu|cuda]`,
# or as a notebook (`jupytext --to ipynb examples/07_vae_in_pyro.py`); in a kernel the arguments come from
# `PYRO_VAE_EXAMPLE_ARGS`, for example `--smoke-test`.

# %% [markdown]
# ## 1. The model and the guide
#
# **The generative story.** An image is $x \in \{0, 1\}^{784}$ (28 × 28 pixels, each black or
# white). It is made in two steps: draw a code $z$ of $L$ numbers from a standard normal, then
# let a neural network, the *decoder* $f_\theta$, turn it into one logit per pixel and draw every
# pixel independently:
#
# $$z \sim \mathcal{N}(0, I_L), \qquad x_d \mid z \sim \mathrm{Bernoulli}\big(\mathrm{sigmoid}(\eta_d)\big),
# \quad \eta = f_\theta(z), \quad d = 1, \dots, 784.$$
#
# This is $p_\theta(x, z) = p(z)\, p_\theta(x \mid z)$. Its posterior $p_\theta(z \mid x)$, the codes
# that could have made a given image, has no closed form.
#
# **The inference network.** The guide approximates the posterior by a diagonal Gaussian whose
# mean and standard deviation a second network, the *encoder*, computes from the image:
#
# $$q_\phi(z \mid x) = \mathcal{N}\big(\mu_\phi(x), \operatorname{diag} \sigma_\phi(x)^2\big).$$
#
# One encoder serves every image (the guide is *amortised*): instead of fitting a separate
# $q(z)$ per image, we fit one function from images to Gaussians.
#
# Both networks have one hidden layer of 400 softplus units
# ($\mathrm{softplus}(a) = \log(1 + e^a)$), and $L = 50$, the sizes `pyro_vae` uses by default,
# so that section 4 can copy the weights into the package's model one for one:
#
# $$h = \mathrm{softplus}(W_1 x + b_1), \quad \mu = W_{21} h + b_{21}, \quad
# \sigma = \mathrm{softplus}(W_{22} h + b_{22}) + 10^{-5},$$
#
# $$\eta = W_4\, \mathrm{softplus}(W_3 z + b_3) + b_4.$$
#
# (The softplus keeps $\sigma$ positive without the overflow of $e^a$; Pyro's tutorial uses
# `exp`. The decoder returns logits rather than probabilities: `Bernoulli(logits=...)` computes
# $\log p(x \mid z)$ without taking the log of a sigmoid that has rounded to 0 or 1.)

# %%
import copy
import inspect
import math
import textwrap
import time

import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from _common import parse_args, save_figure, save_results
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from torch import nn

from pyro_vae.config import DataConfig
from pyro_vae.data import load_data

LATENT, HIDDEN, PIXELS = 50, 400, 784
BATCH, LR = 128, 1e-3  # pyro_vae's defaults too (train.batch_size, train.lr)


# %%
class Encoder(nn.Module):
    """x (B, 784) -> the mean and the standard deviation of q(z | x), each (B, L)."""

    def __init__(self, z_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(PIXELS, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)  # mu
        self.fc22 = nn.Linear(hidden_dim, z_dim)  # sigma, before its softplus

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.softplus(self.fc1(x))
        return self.fc21(h), F.softplus(self.fc22(h)) + 1e-5


class Decoder(nn.Module):
    """z (..., L) -> one logit per pixel (..., 784)."""

    def __init__(self, z_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, PIXELS)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.softplus(self.fc1(z)))


# %% [markdown]
# The model and the guide are Python functions that call `pyro.sample`. `pyro.module` hands the
# network's parameters to Pyro (the optimiser finds them in Pyro's parameter store).
# `pyro.plate("data", B)` says that the B images of a batch are independent, so their
# log-densities add up. `.to_event(1)` says that the L numbers of one code, and the 784 pixels of
# one image, form one draw: their log-densities add up into one per image. The model's `x` site
# is *observed* (`obs=x`); the guide has the same latent site `z`, with its own distribution.


# %%
class VAE(nn.Module):
    def __init__(self, z_dim: int = LATENT, hidden_dim: int = HIDDEN) -> None:
        super().__init__()
        self.encoder = Encoder(z_dim, hidden_dim)
        self.decoder = Decoder(z_dim, hidden_dim)
        self.z_dim = z_dim

    def model(self, x: torch.Tensor) -> None:
        """p(z) p(x | z) for a batch x (B, 784)."""
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros((x.shape[0], self.z_dim))
            z_scale = x.new_ones((x.shape[0], self.z_dim))
            z = pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))
            logits = self.decoder(z)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """q(z | x) for a batch x (B, 784)."""
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))


# %% [markdown]
# The data: statically binarized MNIST (every pixel fixed at 0 or 1 once, the standard benchmark
# of Larochelle & Murray), 50,000 training and 10,000 test images, as float tensors (N, 784). This
# is the one cell before section 4 that uses `pyro_vae`: it only reads the files.

# %%
args = parse_args("07_vae_in_pyro")
subset, epochs, n_draws = (2000, 2, 200) if args.smoke_test else (0, 15, 2000)
data = load_data(DataConfig(subset=subset))  # (subset=0: every image)
x_train, x_test = data.train.to(args.device), data.test.to(args.device)
print(f"{x_train.shape[0]:,} training and {x_test.shape[0]:,} test images of {x_train.shape[1]} pixels in {{0, 1}}")


def spread(x: torch.Tensor, k: int) -> torch.Tensor:
    """``k`` evenly spaced images of ``x`` (the test split is sorted by digit: this takes every digit)."""
    return x[torch.linspace(0, x.shape[0] - 1, k).long().to(x.device)]


# %% [markdown]
# ## 2. Training with SVI
#
# `SVI` (stochastic variational inference) takes the model, the guide, an optimiser and a loss.
# `Trace_ELBO` runs the guide to draw $z \sim q_\phi(z \mid x)$ for every image (through
# $z = \mu + \sigma \odot \varepsilon$, $\varepsilon \sim \mathcal{N}(0, I)$, so gradients flow
# through the draw: notebook 06), runs the model with those $z$ and returns the negative ELBO of
# the batch, summed over its images, with one draw per image. `svi.step(x)` computes that loss,
# its gradient with respect to $\theta$ and $\phi$ together, and takes one Adam step.
#
# An epoch is one pass over the training images in a fresh random order, in mini-batches of 128.
# The loss printed is in nats per image; after every epoch the test images' loss is measured too
# (`svi.evaluate_loss`: the same estimate, no step).

# %%
pyro.set_rng_seed(args.seed)
pyro.clear_param_store()
vae = VAE().to(args.device)
svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": LR}), loss=Trace_ELBO())


def test_loss(x: torch.Tensor, batch: int = 1000) -> float:
    """The negative ELBO per image of ``x``, one draw per image, no training step."""
    return sum(svi.evaluate_loss(x[i : i + batch]) for i in range(0, x.shape[0], batch)) / x.shape[0]


order = torch.Generator().manual_seed(args.seed)
n = x_train.shape[0]
batch_losses, history = [], {"train": [], "test": []}
start = time.perf_counter()
for epoch in range(1, epochs + 1):
    permutation = torch.randperm(n, generator=order).to(args.device)
    total = 0.0
    for i in range(0, n, BATCH):
        x = x_train[permutation[i : i + BATCH]]
        loss = svi.step(x)  # -ELBO summed over the batch's images
        total += loss
        batch_losses.append(loss / x.shape[0])
    history["train"].append(total / n)
    history["test"].append(test_loss(x_test))
    print(
        f"epoch {epoch:2d}: loss {history['train'][-1]:7.2f} nats per training image, "
        f"{history['test'][-1]:7.2f} per test image ({time.perf_counter() - start:.0f} s)"
    )
train_seconds = time.perf_counter() - start

# %%
fig, ax = plt.subplots(figsize=(7, 4))
steps_per_epoch = math.ceil(n / BATCH)
ax.plot([(s + 1) / steps_per_epoch for s in range(len(batch_losses))], batch_losses, lw=0.5, alpha=0.5, label="batch")
ax.plot(range(1, epochs + 1), history["train"], "o-", label="epoch mean, training images")
ax.plot(range(1, epochs + 1), history["test"], "s--", label="test images")
top = 1.25 * max(history["train"][0], history["test"][0])  # (the first batches lie far above: untrained)
ax.set_ylim(min(batch_losses + history["test"]) - 5, top)
ax.set(
    xlabel="epoch", ylabel="-ELBO (nats per image)", title=f"SVI with Trace_ELBO (first batch: {batch_losses[0]:.0f})"
)
ax.grid(alpha=0.3)
ax.legend()
save_figure(fig, args.out, "training.png")


# %% [markdown]
# What the trained networks do. A reconstruction decodes the encoder's mean $\mu_\phi(x)$ and
# shows the pixel probabilities $\mathrm{sigmoid}(f_\theta(\mu_\phi(x)))$; a sample decodes a code
# drawn from the prior, $z \sim \mathcal{N}(0, I)$, which is how the model makes new images.


# %%
def grid(images: torch.Tensor, cols: int) -> torch.Tensor:
    """Images (n, 784) as one (rows·28, cols·28) picture, row by row."""
    rows = images.shape[0] // cols
    return images[: rows * cols].reshape(rows, cols, 28, 28).permute(0, 2, 1, 3).reshape(rows * 28, cols * 28)


with torch.no_grad():
    shown = spread(x_test, 24)
    reconstructions = torch.sigmoid(vae.decoder(vae.encoder(shown)[0]))
    pairs = torch.stack([shown.reshape(3, 8, -1), reconstructions.reshape(3, 8, -1)], 1).reshape(48, -1)
    torch.manual_seed(args.seed)
    samples = torch.sigmoid(vae.decoder(torch.randn(48, LATENT).to(args.device)))  # (drawn on the CPU)
fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
for ax, images, title in [
    (axes[0], pairs, "test images (rows 1, 3, 5) and reconstructions"),
    (axes[1], samples, "decoded z ~ N(0, I): samples"),
]:
    ax.imshow(grid(images, 8).cpu().numpy(), cmap="gray_r", vmin=0, vmax=1)
    ax.set_title(title, fontsize=10)
    ax.axis("off")
save_figure(fig, args.out, "images.png")

# %% [markdown]
# ## 3. The loss written by hand
#
# Per image, the loss SVI minimises is the negative ELBO,
#
# $$-\mathrm{ELBO}(x) = \mathbb{E}_{q_\phi(z \mid x)}\big[-\log p_\theta(x \mid z) - \log p(z)
# + \log q_\phi(z \mid x)\big]
# = \mathbb{E}_{q_\phi}\big[-\log p_\theta(x \mid z)\big] + \mathrm{KL}\big(q_\phi(z \mid x) \,\|\, p(z)\big).$$
#
# **The reconstruction term.** With $\pi_d = \mathrm{sigmoid}(\eta_d)$,
#
# $$-\log p_\theta(x \mid z) = -\sum_{d} \big[x_d \log \pi_d + (1 - x_d) \log(1 - \pi_d)\big],$$
#
# the *binary cross-entropy* between the image and the decoder's pixel probabilities, summed
# over the pixels (not averaged: the sum is the log-density of the whole image). In logits it is
# $\sum_d \log(1 + e^{\eta_d}) - x_d \eta_d$, which `F.binary_cross_entropy_with_logits` computes.
#
# **The KL term.** For one coordinate, $q = \mathcal{N}(\mu, \sigma^2)$ and $p = \mathcal{N}(0, 1)$:
#
# $$\log q(z) - \log p(z) = -\log \sigma - \frac{(z - \mu)^2}{2 \sigma^2} + \frac{z^2}{2}$$
#
# (the $\frac12 \log 2\pi$ of the two densities cancel). Under $q$,
# $\mathbb{E}[(z - \mu)^2] = \sigma^2$ and $\mathbb{E}[z^2] = \mu^2 + \sigma^2$, so
#
# $$\mathrm{KL}(q \,\|\, p) = \mathbb{E}_q[\log q(z) - \log p(z)] = -\log \sigma - \frac12 + \frac{\mu^2 + \sigma^2}{2}
# = \frac12 \big(\mu^2 + \sigma^2 - 1 - \log \sigma^2\big),$$
#
# and a diagonal Gaussian's KL is the sum over the $L$ coordinates. The "VAE loss" of Kingma &
# Welling is therefore
#
# $$\mathcal{L}(x) = \mathrm{BCE}\big(x, f_\theta(z)\big)
# + \frac12 \sum_{l=1}^{L} \big(\mu_l^2 + \sigma_l^2 - 1 - \log \sigma_l^2\big),
# \qquad z = \mu + \sigma \odot \varepsilon,$$
#
# with one draw $\varepsilon \sim \mathcal{N}(0, I)$ for the reconstruction term.
#
# Pyro offers both forms. `Trace_ELBO` estimates the whole expectation by Monte Carlo:
# $-\log p(x \mid z) - \log p(z) + \log q(z \mid x)$ at the draw. `TraceMeanField_ELBO` puts the KL
# in closed form where it has one, which gives $\mathcal{L}$. At a given draw the two differ (the
# Monte-Carlo KL is not the KL), but both average to $-\mathrm{ELBO}(x)$. Three checks, in float64
# on 100 test images (evenly spaced through the test split: every digit) with the trained networks:
#
# - (a) on the same draw of $z$ (the guide traced once and replayed), `Trace_ELBO`'s loss equals
#   the hand-written Monte-Carlo form;
# - (b) on the same draw, `TraceMeanField_ELBO`'s loss equals BCE + closed-form KL;
# - (c) over N independent draws each, the mean of `Trace_ELBO`'s loss agrees with the mean of the
#   closed-form-KL loss within 4 standard errors.
#
# "Equal" means to $10^{-10}$ nats per image and $10^{-10}$ relative, the tolerance of the
# package's own tests of its losses against Pyro's (`tests/objectives/`); float64 rounding is
# near $10^{-14}$ here.


# %%
def bce(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x | z): binary cross-entropy summed over the pixels, one value per image."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def gaussian_kl(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) = 1/2 sum(mu^2 + sigma^2 - 1 - log sigma^2), one value per image."""
    return 0.5 * (mu**2 + sigma**2 - 1 - torch.log(sigma**2)).sum(-1)


def log_normal(z: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag sigma^2), summed over the code's coordinates."""
    return (-0.5 * ((z - mu) / sigma) ** 2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)).sum(-1)


def vae_loss(x, logits, mu, sigma) -> torch.Tensor:
    """BCE + closed-form KL per image, with ``logits`` the decoder's output at a draw z."""
    return bce(logits, x) + gaussian_kl(mu, sigma)


def monte_carlo_loss(x, logits, z, mu, sigma) -> torch.Tensor:
    """-log p(x | z) - log p(z) + log q(z | x) per image, at the draw z."""
    return bce(logits, x) - log_normal(z, torch.zeros_like(z), torch.ones_like(z)) + log_normal(z, mu, sigma)


def errors(pyro_losses: list[float], hand_losses: list[float], images: int) -> dict:
    """The largest difference, in nats per image and relative to the loss."""
    diffs = [abs(a - b) for a, b in zip(pyro_losses, hand_losses)]
    return {
        "max_abs_per_image": max(diffs) / images,
        "max_rel": max(d / abs(b) for d, b in zip(diffs, hand_losses)),
    }


# %% [markdown]
# (a) and (b): trace the guide once (`poutine.trace` records the $z$ it drew), give Pyro's losses
# the guide replayed from that trace (`poutine.replay`: the same $z$ every time), and compute the
# hand-written forms at that $z$. The draw is also rebuilt by hand from the seed, as
# $\mu + \sigma \odot \varepsilon$ with $\varepsilon$ = `torch.randn` after the same
# `torch.manual_seed`: that is all `rsample` does.

# %%
pyro.clear_param_store()
hand = copy.deepcopy(vae).double()  # float64 copies of the trained networks
x64 = spread(x_test, 100).double()
images = x64.shape[0]
seeds = list(range(5))
found = {"trace": [], "monte_carlo": [], "mean_field": [], "closed_form": [], "kl_gap": [], "z_rebuilt": []}
with torch.no_grad():
    mu, sigma = hand.encoder(x64)
    for seed in seeds:
        pyro.set_rng_seed(seed)
        guide_trace = poutine.trace(hand.guide).get_trace(x64)
        z = guide_trace.nodes["z"]["value"]
        replayed = poutine.replay(hand.guide, trace=guide_trace)
        found["trace"].append(Trace_ELBO().loss(hand.model, replayed, x64))
        found["mean_field"].append(TraceMeanField_ELBO().loss(hand.model, replayed, x64))
        logits = hand.decoder(z)
        found["monte_carlo"].append(monte_carlo_loss(x64, logits, z, mu, sigma).sum().item())
        found["closed_form"].append(vae_loss(x64, logits, mu, sigma).sum().item())
        found["kl_gap"].append(abs(found["trace"][-1] - found["mean_field"][-1]) / images)
        torch.manual_seed(seed)
        eps = torch.randn(mu.shape, dtype=mu.dtype, device=mu.device)  # what rsample draws
        found["z_rebuilt"].append((z - (mu + sigma * eps)).abs().max().item())
same_draw = {
    "images": images,
    "seeds": seeds,
    "trace_vs_monte_carlo": errors(found["trace"], found["monte_carlo"], images),
    "mean_field_vs_closed_form": errors(found["mean_field"], found["closed_form"], images),
    "min_kl_gap_per_image": min(found["kl_gap"]),
    "max_z_rebuilt_error": max(found["z_rebuilt"]),
}
for seed, t, m, mf, c in zip(seeds, found["trace"], found["monte_carlo"], found["mean_field"], found["closed_form"]):
    print(
        f"seed {seed}: Trace_ELBO {t / images:.12f}  Monte-Carlo by hand {m / images:.12f}   "
        f"TraceMeanField_ELBO {mf / images:.12f}  BCE + KL by hand {c / images:.12f}  (nats per image)"
    )
for key in ("trace_vs_monte_carlo", "mean_field_vs_closed_form"):
    e = same_draw[key]
    print(f"{key}: largest difference {e['max_abs_per_image']:.1e} nats per image, {e['max_rel']:.1e} relative")
print(f"the two estimators differ at every draw by at least {same_draw['min_kl_gap_per_image']:.3f} nats per image")
print(f"z = mu + sigma * randn rebuilt from the seed to {same_draw['max_z_rebuilt_error']:.1e}")

# %% [markdown]
# (c): in expectation. N independent draws of `Trace_ELBO`'s loss (fresh $z$ each time, as in
# training) and N independent draws of BCE + closed-form KL; the difference of their means over
# its standard error, $z = (\bar a - \bar b) / \sqrt{s_a^2 / N + s_b^2 / N}$, should be within
# ±4.
#
# Their spreads (the standard deviation over the draws) are printed too. One might expect the
# closed form, with no Monte-Carlo noise in its KL term, to be the quieter of the two. But a draw
# of `Trace_ELBO`'s loss is $\log q_\phi(z \mid x) - \log p_\theta(x, z)$, which would be the same
# number, $-\log p_\theta(x)$, for every $z$ if $q_\phi$ were the exact posterior
# $p_\theta(z \mid x) = p_\theta(x, z) / p_\theta(x)$. The closer the guide, the more the noise of its
# Monte-Carlo KL cancels the noise of the reconstruction term, which the closed form keeps whole.

# %%
pyro.set_rng_seed(args.seed + 1)
with torch.no_grad():
    trace_draws = [Trace_ELBO().loss(hand.model, hand.guide, x64) for _ in range(n_draws)]
    trace_draws = torch.tensor(trace_draws, dtype=torch.float64) / images
    closed_draws = torch.stack(
        [vae_loss(x64, hand.decoder(mu + sigma * torch.randn_like(mu)), mu, sigma).mean() for _ in range(n_draws)]
    ).cpu()
se_trace, se_closed = (trace_draws.std() / n_draws**0.5).item(), (closed_draws.std() / n_draws**0.5).item()
expectation = {
    "n": n_draws,
    "images": images,
    "trace_mean": trace_draws.mean().item(),
    "trace_se": se_trace,
    "trace_sd": trace_draws.std().item(),
    "closed_form_mean": closed_draws.mean().item(),
    "closed_form_se": se_closed,
    "closed_form_sd": closed_draws.std().item(),
}
expectation["z_score"] = (expectation["trace_mean"] - expectation["closed_form_mean"]) / math.hypot(se_trace, se_closed)
e = expectation
print(
    f"N = {n_draws} draws: Trace_ELBO {e['trace_mean']:.3f} ± {e['trace_se']:.3f} (sd {e['trace_sd']:.3f}), "
    f"BCE + closed-form KL {e['closed_form_mean']:.3f} ± {e['closed_form_se']:.3f} (sd {e['closed_form_sd']:.3f}) "
    f"nats per image; z = {e['z_score']:+.2f}"
)

# %% [markdown]
# ## 4. The same model from the package
#
# `pyro_vae` builds exactly this model by default: `load_config(None, [])` gives the default
# configuration (an MLP of one hidden layer of 400 softplus units, $L = 50$, a standard-normal
# prior, a Bernoulli likelihood, a diagonal-Gaussian guide, `Trace_ELBO`, Adam at $10^{-3}$ on
# batches of 128) and `build_vae` turns it into a `pyro_vae.model.VAE`. Its Pyro `model` and
# `guide` are written once as a *story* that emits the sample sites; `model` and `guide` run the
# story inside `pyro.plate("data", B)`, emitting each site with `pyro.sample`:

# %%
from pyro_vae import build_elbo, build_vae, load_config  # noqa: E402
from pyro_vae.model import VAE as PackageVAE  # noqa: E402
from pyro_vae.model import PyroEmit, Structure  # noqa: E402
from pyro_vae.objectives.fast import build_loss  # noqa: E402

cfg = load_config(None, [])
print(cfg.model)
package = build_vae(cfg.model, PIXELS, data.image_shape).to(args.device)
print(package)
for function in (Structure.model, PackageVAE.model_story, Structure.guide, PackageVAE.guide_story, PyroEmit.latent):
    print(textwrap.dedent(inspect.getsource(function)))

# %% [markdown]
# Which package piece stands for which hand-written one:
#
# | written out here | in `pyro_vae` |
# |---|---|
# | `Encoder` | `package.encoder`, the guide `DiagNormal`: `trunk` = `fc1` + softplus, `head` = `fc21` over `fc22` |
# | `Decoder` | `package.decoder`, the decoder of the network `MLP` (`pyro_vae.components.nets`) |
# | `dist.Normal(0, 1).to_event(1)` in `model` | `package.prior`, `standard_normal` (`pyro_vae.components.priors`) |
# | `dist.Bernoulli(logits=...).to_event(1)` | `package.likelihood`, `bernoulli` (`pyro_vae.components.likelihoods`) |
# | `model` | `Structure.model` running `VAE.model_story` |
# | `guide` | `Structure.guide` running `VAE.guide_story` |
# | `Trace_ELBO()` | `build_elbo(cfg.train)`: `ELBOS["trace"]` (`pyro_vae.objectives.elbos`) |
# | the SVI loop of section 2 | `pyro_vae.fit`: the same loop, plus checkpoints, validation and IWAE evaluation |
#
# Copy the trained weights in: the package's encoder head is `fc21` and `fc22` stacked (its first
# $L$ outputs are $\mu$, the last $L$ go through the same softplus), and everything else maps
# one layer to one layer. Then, in float64 on the same 100 test images and the same seeds, the
# package's losses against the hand-written ones:
#
# - its `trace` ELBO from the registry, on its own `model` and `guide`, against `Trace_ELBO` on ours;
# - its `mean_field` ELBO against `TraceMeanField_ELBO` on ours;
# - the loss `pyro_vae.fit` actually trains with (`build_loss`: the same estimator, on the story
#   run without Pyro's effect handlers, which is faster), against `Trace_ELBO` on ours.

# %%
encoder, decoder = vae.encoder, vae.decoder
weights = {
    "encoder.trunk.0.weight": encoder.fc1.weight,
    "encoder.trunk.0.bias": encoder.fc1.bias,
    "encoder.head.weight": torch.cat([encoder.fc21.weight, encoder.fc22.weight]),
    "encoder.head.bias": torch.cat([encoder.fc21.bias, encoder.fc22.bias]),
    "decoder.0.weight": decoder.fc1.weight,
    "decoder.0.bias": decoder.fc1.bias,
    "decoder.2.weight": decoder.fc2.weight,
    "decoder.2.bias": decoder.fc2.bias,
}
package.load_state_dict({**package.state_dict(), **weights})  # (prior.loc and prior.scale: the buffers 0 and 1)
package.double()  # float64, as the hand-written copy
mean_field_cfg = load_config(None, ["train.elbo=mean_field"])
estimators = {"trace": build_elbo(cfg.train), "mean_field": build_elbo(mean_field_cfg.train)}
training_loss = build_loss(package, cfg.train, x64)
print(
    f"package ELBOs: {', '.join(f'{k} = {type(v).__name__}' for k, v in estimators.items())}; "
    f"the training loss runs on the {'lean story' if training_loss.fast else 'Pyro traces'}"
)
losses = {
    key: [] for key in ("hand_trace", "hand_mean_field", "package_trace", "package_mean_field", "package_training")
}
runs = [
    ("hand_trace", lambda: Trace_ELBO().loss(hand.model, hand.guide, x64)),
    ("hand_mean_field", lambda: TraceMeanField_ELBO().loss(hand.model, hand.guide, x64)),
    ("package_trace", lambda: estimators["trace"].loss(package.model, package.guide, x64)),
    ("package_mean_field", lambda: estimators["mean_field"].loss(package.model, package.guide, x64)),
    ("package_training", lambda: training_loss(x64).item()),
]
with torch.no_grad():
    for seed in seeds:
        for key, run in runs:
            pyro.set_rng_seed(seed)  # the same seed: the same epsilon, the same z for every loss
            losses[key].append(run())
package_checks = {
    "trace_vs_hand": errors(losses["package_trace"], losses["hand_trace"], images),
    "mean_field_vs_hand": errors(losses["package_mean_field"], losses["hand_mean_field"], images),
    "training_loss_vs_hand": errors(losses["package_training"], losses["hand_trace"], images),
    "training_loss_fast": training_loss.fast,
    "hand_trace_per_image": [v / images for v in losses["hand_trace"]],
}
for key in ("trace_vs_hand", "mean_field_vs_hand", "training_loss_vs_hand"):
    e = package_checks[key]
    print(f"package {key}: largest difference {e['max_abs_per_image']:.1e} nats per image, {e['max_rel']:.1e} relative")

# %%
results = {
    "smoke": args.smoke_test,
    "latent_dim": LATENT,
    "hidden": HIDDEN,
    "batch_size": BATCH,
    "lr": LR,
    "epochs": epochs,
    "train_images": n,
    "test_images": x_test.shape[0],
    "train_seconds": train_seconds,
    "first_batch_loss": batch_losses[0],
    "train_loss": history["train"],
    "test_loss": history["test"],
    "tolerance": 1e-10,
    "same_draw": same_draw,
    "expectation": expectation,
    "package": package_checks,
}
save_results(results, args.out)

# %% [markdown]
# From notebook 08 on, the notebooks use the package: `train_vae` in `examples/_common.py`
# (which calls `pyro_vae.fit`) stands for the training loop written here, and `build_vae` for the
# encoder, decoder, model and guide.

# %% [markdown]
# ## What the full run shows
#
# Fifteen epochs of SVI (`Trace_ELBO`, Adam at $10^{-3}$, batches of 128) on the 50,000 training
# images, with the model, guide and loop written out in plain Pyro: the loss fell from 579 nats on
# the first batch (an untrained decoder) to 102.0 nats per training image over the last epoch and
# 102.3 per test image after it. The first epoch's training mean (176.2) lies above the test loss
# measured after it (145.2) because it averages batches seen while the networks were still
# learning; from then on the two curves stay together, so 15 epochs do not overfit. The
# reconstructions keep each test digit's class and shape; the samples, decoded from
# $z \sim \mathcal{N}(0, I)$, are mostly recognisable digits, some of them blurred between two
# classes.
#
# The loss written by hand is Pyro's loss. In float64, on 100 test images and five draws of $z$,
# `Trace_ELBO` equals $-\log p(x \mid z) - \log p(z) + \log q(z \mid x)$ and
# `TraceMeanField_ELBO` equals BCE + $\frac12 \sum (\mu^2 + \sigma^2 - 1 - \log \sigma^2)$, both to
# $1.8 \times 10^{-14}$ nats per image ($2 \times 10^{-16}$ relative: rounding), although the two
# estimators differ from each other by at least 0.10 nats per image at every draw. Over
# N = 2,000 independent draws each they agree in expectation: 103.215 ± 0.009 against
# 103.208 ± 0.011 nats per image, z = +0.53. `Trace_ELBO` was the quieter (standard deviation
# 0.38 against 0.50 nats per image): with a trained guide its Monte-Carlo KL cancels part of the
# reconstruction term's noise.
#
# The package's default VAE (`build_vae` on `load_config(None, [])`) has exactly these layers.
# With the weights trained here copied in, its registered `trace` and `mean_field` ELBOs, and the
# loss `pyro_vae.fit` trains with, equal the hand-written ones on the same draws to
# $1.8 \times 10^{-14}$ nats per image. From notebook 08 on, `train_vae` in `_common.py`
# (`pyro_vae.fit`) stands for the loop written here.

#
# The full run's figures:
#
# ![training (full run)](../docs/figures/examples/07_vae_in_pyro_training.png)
# ![images (full run)](../docs/figures/examples/07_vae_in_pyro_images.png)
