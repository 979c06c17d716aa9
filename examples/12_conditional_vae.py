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
# # 12 — A conditional VAE
#
# The model completes the missing quadrants of a digit from the given one.
#
# Given the top-left quadrant x of a binarized digit, predict the other three, y. A deterministic
# network can only give one answer per pixel, p(y_d | x), so where the given quadrant leaves
# several digits possible it paints their average: a blur. A conditional VAE (Sohn et al., 2015)
# puts the uncertainty in a latent z instead:
#
# $$z \sim p(z \mid x) = \mathcal{N}\left(\mu(x), \operatorname{diag} \sigma(x)^2\right) \quad
# \text{(prior network)}, \qquad
# y \sim p(y \mid x, z) = \prod_d \mathrm{Bernoulli}\left(f(x, z)_d\right) \quad \text{(generation network)},$$
#
# with a guide $q(z \mid x, y)$ (the recognition network), trained on the conditional ELBO
#
# $$\log p(y \mid x) \ge \mathbb{E}_{q}\left[\log p(y \mid x, z)\right]
# - \mathrm{KL}\left(q(z \mid x, y) \,\|\, p(z \mid x)\right)$$
#
# with
# ``Trace_ELBO``. Each draw of z gives one sharp completion. Both models are scored by the
# conditional log-likelihood -log p(y | x) of test digits in nats (the CVAE's by importance
# sampling with the package's IWAE estimator, ``pyro_vae.evaluate``), and the figure shows the
# baseline's blur next to several CVAE samples.
#
# Writes completions.png, curves.png and results.json.
#
# Run it as a script, `python examples/12_conditional_vae.py [--smoke-test] [--out DIR] [--device cpu|cuda]`,
# or as a notebook (`jupytext --to ipynb examples/12_conditional_vae.py`); in a kernel the arguments come from
# `PYRO_VAE_EXAMPLE_ARGS`, for example `--smoke-test`.

# %%
import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from _common import parse_args, save_figure, save_results
from torch import nn

from pyro_vae.components.nets import mlp
from pyro_vae.config import DataConfig, TrainConfig
from pyro_vae.data import load_data
from pyro_vae.data.pixels import evenly_spaced, image_grid
from pyro_vae.evaluation.metrics import evaluate
from pyro_vae.objectives.elbos import build_elbo
from pyro_vae.training.engine import make_optimizer, train_step

GRID = torch.arange(784).reshape(28, 28)
GIVEN = GRID[:14, :14].flatten()  # the top-left quadrant
MISSING = torch.tensor(sorted(set(range(784)) - set(GIVEN.tolist())))  # the other three


# %%
class Baseline(nn.Module):
    """A deterministic MLP: independent Bernoulli probabilities for the missing pixels."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = mlp([len(GIVEN), hidden, hidden, len(MISSING)], "relu")

    def log_prob(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.net(images[:, GIVEN])
        return -F.binary_cross_entropy_with_logits(logits, images[:, MISSING], reduction="none").sum(-1)

    def complete(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(images[:, GIVEN]))


# %%
class CVAE(nn.Module):
    """p(y | x) = ∫ p(y | x, z) p(z | x) dz with Gaussian p(z | x) and q(z | x, y); images hold both."""

    def __init__(self, hidden: int, latent: int) -> None:
        super().__init__()
        self.prior_net = mlp([len(GIVEN), hidden, 2 * latent], "relu")
        self.recognition = mlp([784, hidden, 2 * latent], "relu")
        self.generation = mlp([len(GIVEN) + latent, hidden, hidden, len(MISSING)], "relu")

    @staticmethod
    def _gaussian(h: torch.Tensor) -> dist.Distribution:
        loc, raw = h.chunk(2, -1)
        return dist.Normal(loc, F.softplus(raw) + 1e-4).to_event(1)

    def p_z(self, x):
        return self._gaussian(self.prior_net(x))

    def p_y(self, x, z):
        return dist.Bernoulli(logits=self.generation(torch.cat([x.expand(*z.shape[:-1], -1), z], -1))).to_event(1)

    def q_z(self, images):
        return self._gaussian(self.recognition(images))

    def model(self, images):
        x, y = images[:, GIVEN], images[:, MISSING]
        with pyro.plate("data", images.shape[0]):
            z = pyro.sample("z", self.p_z(x))
            pyro.sample("y", self.p_y(x, z), obs=y)

    def guide(self, images):
        with pyro.plate("data", images.shape[0]):
            pyro.sample("z", self.q_z(images))

    def log_weights(self, images, num_samples: int) -> torch.Tensor:
        """log p(y | x, z_k) + log p(z_k | x) - log q(z_k | x, y), shape (K, B): what
        ``pyro_vae.evaluate`` turns into the IWAE bound on log p(y | x)."""
        x, y = images[:, GIVEN], images[:, MISSING]
        q = self.q_z(images)
        z = q.rsample((num_samples,))
        return self.p_y(x, z).log_prob(y) + self.p_z(x).log_prob(z) - q.log_prob(z)

    @torch.no_grad()
    def complete(self, images, n: int) -> torch.Tensor:
        """``n`` completions per image, drawn from p(z | x) then p(y | x, z) (mean pixels), (n, B, |y|)."""
        x = images[:, GIVEN]
        z = self.p_z(x).sample((n,))
        return torch.sigmoid(self.generation(torch.cat([x.expand(n, -1, -1), z], -1)))


# %%
def train(model, loss_fn, x_train, epochs, batch, seed, x_valid, score):
    optim = make_optimizer(model, 1e-3)
    g = torch.Generator().manual_seed(seed)
    curve = []
    for _ in range(epochs):
        perm = torch.randperm(x_train.shape[0], generator=g)
        for i in range(0, x_train.shape[0], batch):
            train_step(loss_fn, optim, x_train[perm[i : i + batch]])
        with torch.no_grad():
            curve.append(score(x_valid))
    return curve


# %%
def paint(images: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    """Full images with the missing quadrants replaced by ``missing``."""
    out = images.clone()
    out[:, MISSING] = missing
    return out


# %%
args = parse_args("12_conditional_vae")
epochs, subset, k, images = (2, 2000, 20, 200) if args.smoke_test else (15, 0, 200, 2000)
pyro.set_rng_seed(args.seed)
data = load_data(DataConfig(subset=subset))
x_train = data.train.to(args.device)
x_test = data.test[evenly_spaced(data.test.shape[0], images)].to(args.device)
x_valid = data.valid[evenly_spaced(data.valid.shape[0], min(images, 1000))].to(args.device)

# %%
baseline = Baseline(400).to(args.device)
base_curve = train(
    baseline,
    lambda b: -baseline.log_prob(b).sum(),
    x_train,
    epochs,
    128,
    args.seed,
    x_valid,
    lambda v: float(-baseline.log_prob(v).mean()),
)
cvae = CVAE(400, 20).to(args.device)
elbo = build_elbo(TrainConfig(elbo="trace"))
cvae_curve = train(
    cvae,
    lambda b: elbo.differentiable_loss(cvae.model, cvae.guide, b),
    x_train,
    epochs,
    128,
    args.seed,
    x_valid,
    lambda v: evaluate(cvae, v, seed=args.seed)["neg_elbo"].mean,
)

# %%
with torch.no_grad():
    base = -baseline.log_prob(x_test)
base_nll = (float(base.mean()), float(base.std() / base.numel() ** 0.5))
est = evaluate(cvae, x_test, k=k, batch_size=100, seed=args.seed)
results = {
    "epochs": epochs,
    "iwae_k": k,
    "test_images": images,
    "given": "top-left quadrant",
    "baseline_nll": base_nll,
    "cvae_nll": [est["nll"].mean, est["nll"].se],
    "cvae_neg_elbo": [est["neg_elbo"].mean, est["neg_elbo"].se],
    "baseline_valid_curve": base_curve,
    "cvae_valid_neg_elbo_curve": cvae_curve,
}
print(f"-log p(missing | given), nats per image on {images} test digits:")
print(f"  deterministic baseline          {base_nll[0]:.2f} ± {base_nll[1]:.2f}")
print(f"  conditional VAE, IWAE K={k:<5} {est['nll']}   (negative ELBO {est['neg_elbo']})")

# %%
show = x_test[evenly_spaced(x_test.shape[0], 8)]
given_only = paint(show, 0.5)  # grey where the network has to guess
samples = cvae.complete(show, 4)
rows = [show, given_only, paint(show, baseline.complete(show).detach()), *[paint(show, s) for s in samples]]
rows = [row.cpu() for row in rows]
fig, ax = plt.subplots(figsize=(6, 5.4))
ax.imshow(image_grid(torch.cat(rows), data.image_shape, len(rows)).numpy(), cmap="gray_r", vmin=0, vmax=1)
labels = ["test digit", "given", "baseline", *[f"CVAE sample {i + 1}" for i in range(len(samples))]]
ax.set_yticks([14 + 28 * i for i in range(len(rows))], labels)
ax.set_xticks([])
ax.set_title("Completing three quadrants from the top-left one")
save_figure(fig, args.out, "completions.png")

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.4))
epochs_axis = range(1, epochs + 1)
ax.plot(epochs_axis, base_curve, "o-", label="baseline: -log p(y | x)")
ax.plot(epochs_axis, cvae_curve, "o-", label="CVAE: negative conditional ELBO")
ax.set_xlabel("epoch")
ax.set_ylabel("validation nats per image")
ax.legend()
save_figure(fig, args.out, "curves.png")
save_results(results, args.out)

# %% [markdown]
# ## What the full run shows
#
# Given the top-left quadrant x of a digit, predict the other three, y. A deterministic network
# (an MLP giving independent Bernoulli probabilities for the 588 missing pixels) can only paint
# one answer, and where the quadrant leaves several digits possible it paints their average. A
# conditional VAE (Sohn et al., 2015) moves that uncertainty into a latent z, with a prior that
# depends on what is given:
#
# ```
# z ~ p(z | x) = N(μ(x), diag σ(x)²)             prior network
# y ~ p(y | x, z) = Π_d Bernoulli(f(x, z)_d)     generation network
# q(z | x, y)                                    recognition network (the guide)
# log p(y | x) ≥ E_q[log p(y | x, z)] − KL(q(z | x, y) ‖ p(z | x))
# ```
#
# It is the same Pyro program as the VAE with x threaded through (the model and guide are a dozen
# lines in the script), trained with the package's `Trace_ELBO`, and its conditional
# log-likelihood is estimated with the package's IWAE evaluator, K = 200. On 2,000 test digits
# after 15 epochs (nats per image, over the missing pixels):
#
# | model | −log p(y \| x) |
# |---|---|
# | deterministic baseline | 127.22 ± 0.94 |
# | conditional VAE (IWAE, K = 200) | **70.64 ± 0.46** (negative conditional ELBO 74.96) |
#
# The gap is large because independent pixels cannot express "either a 4 or a 9": the baseline
# pays for every pixel it hedges on, while the CVAE picks a digit with z and draws it sharply. The
# pictures show it: the baseline's completions are blurs, and each CVAE sample is one plausible digit
# (row by row, four draws of z for the same given quadrant).

#
# The full run's figures:
#
# ![completions (full run)](../docs/figures/examples/12_conditional_vae_completions.png)
# ![curves (full run)](../docs/figures/examples/12_conditional_vae_curves.png)
