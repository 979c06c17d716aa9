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
# # 01 — Autoencoders
#
# An autoencoder squeezes an image through a small code and rebuilds it: an encoder
# $f_\phi$ maps an image $x$ (784 pixels) to a code $z = f_\phi(x)$ with a few numbers, and a
# decoder $g_\theta$ maps the code back to an image $\hat x = g_\theta(z)$. Both are trained
# together to make $\hat x$ close to $x$. The model has no randomness in it (the code is a fixed
# function of the image) and nothing here is Pyro: it is plain PyTorch, and it is where the course
# starts, because the VAE keeps this shape and changes what the code is.
#
# "Close" needs a loss, and the example trains the same networks with each of two.
#
# **Squared error**, $\lVert x - \hat x \rVert^2 = \sum_{d=1}^{784} (x_d - \hat x_d)^2$, is a
# Gaussian log-likelihood with a fixed variance in disguise: for
# $p(x \mid z) = \mathcal{N}(x; \hat x, \sigma^2 I)$,
#
# $$-\log p(x \mid z) = \frac{\lVert x - \hat x \rVert^2}{2 \sigma^2} + \frac{784}{2} \log(2 \pi \sigma^2),$$
#
# so minimising the squared error is maximising that likelihood; the constants do not move the
# minimum.
#
# **Binary cross-entropy** is the negative log-likelihood of binary pixels: the decoder gives a
# probability $\hat x_d$ that pixel $d$ is on,
# $p(x \mid z) = \prod_d \hat x_d^{x_d} (1 - \hat x_d)^{1 - x_d}$, and
#
# $$-\log p(x \mid z) = -\sum_{d=1}^{784} \left[ x_d \log \hat x_d + (1 - x_d) \log (1 - \hat x_d) \right]$$
#
# nats per image. The pixels of binarized MNIST are 0 or 1, so this is the likelihood that matches
# the data; it is the one every later notebook uses.
#
# Each loss is tried with a 2-D code (which can be drawn) and a 16-D code (which reconstructs
# better). Both are scored on the test images in both measures, next to the simplest model of all:
# the mean training image, the same guess for every image. Then the 2-D codes are drawn coloured
# by digit, and points between and beyond two codes are decoded, which shows the autoencoder's
# limit: it compresses and reconstructs, but nothing makes its code space a distribution we could
# sample new images from. Notebook 09 (autoencoder versus VAE) shows what the VAE changes.
#
# Writes reconstructions.png (test images and their four reconstructions), codes.png (the 2-D test
# codes coloured by digit), interpolation.png (decoding along a line through two test codes) and
# results.json.
#
# Run it as a script, `python examples/01_autoencoders.py [--smoke-test] [--out DIR] [--device cpu|cuda]`,
# or as a notebook (`jupytext --to ipynb examples/01_autoencoders.py`); in a kernel the arguments come from
# `PYRO_VAE_EXAMPLE_ARGS`, for example `--smoke-test`.

# %%
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from _common import parse_args, save_figure, save_results
from torch import nn

from pyro_vae.config import DataConfig
from pyro_vae.data import load_data

HIDDEN = 400  # width of the one hidden layer of the encoder and of the decoder
LOSSES = ("squared error", "Bernoulli")


# %% [markdown]
# ## The networks and the two losses
#
# The encoder is one hidden layer and a linear map to the code; the decoder mirrors it and ends in
# 784 logits, one per pixel, whose sigmoid is the reconstruction $\hat x \in (0, 1)^{784}$. Both
# losses see the same decoder: the squared error compares $\hat x$ with $x$, the binary cross-entropy
# takes the logits (`binary_cross_entropy_with_logits`, which is exact where $\hat x$ rounds to 0
# or 1).


# %%
class Autoencoder(nn.Module):
    def __init__(self, data_dim: int, code_dim: int, hidden: int = HIDDEN):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(data_dim, hidden), nn.ReLU(), nn.Linear(hidden, code_dim))
        self.decoder = nn.Sequential(nn.Linear(code_dim, hidden), nn.ReLU(), nn.Linear(hidden, data_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction's logits."""
        return self.decoder(self.encoder(x))


def squared_error(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """||x - x_hat||^2 of each image, summed over its pixels."""
    return ((torch.sigmoid(logits) - x) ** 2).sum(-1)


def bernoulli_nats(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x | z) of each image under independent Bernoulli pixels, in nats."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


LOSS = {"squared error": squared_error, "Bernoulli": bernoulli_nats}


# %%
def train(model: Autoencoder, loss_name: str, x_train: torch.Tensor, epochs: int, seed: int) -> list[float]:
    """Adam on mini-batches of 128; returns the mean training loss of each epoch."""
    loss_fn, optim = LOSS[loss_name], torch.optim.Adam(model.parameters(), lr=1e-3)
    gen, curve = torch.Generator().manual_seed(seed), []
    for _ in range(epochs):
        perm, total = torch.randperm(x_train.shape[0], generator=gen).to(x_train.device), 0.0
        for i in range(0, x_train.shape[0], 128):
            x = x_train[perm[i : i + 128]]
            loss = loss_fn(model(x), x).mean()
            optim.zero_grad()
            loss.backward()
            optim.step()
            total += loss.item() * x.shape[0]
        curve.append(total / x_train.shape[0])
    return curve


# %%
args = parse_args("01_autoencoders")
epochs, subset = (5, 2000) if args.smoke_test else (15, 0)
data = load_data(DataConfig(subset=subset))  # statically binarized MNIST, shipped with the package
x_train, x_test, labels = data.train.to(args.device), data.test.to(args.device), data.test_labels
print(f"{x_train.shape[0]} training and {x_test.shape[0]} test images of {data.data_dim} binary pixels")

# %%
models, results = {}, {"epochs": epochs, "train_images": x_train.shape[0], "test_images": x_test.shape[0]}
for code_dim in (2, 16):
    for loss_name in LOSSES:
        torch.manual_seed(args.seed)  # the same starting weights for both losses
        model = Autoencoder(data.data_dim, code_dim).to(args.device)
        curve = train(model, loss_name, x_train, epochs, args.seed)
        model.eval()
        with torch.no_grad():
            logits = model(x_test)
            sq, bce = float(squared_error(logits, x_test).mean()), float(bernoulli_nats(logits, x_test).mean())
        key = f"{code_dim}-D, {loss_name}"
        models[key] = model
        results[key] = {"code_dim": code_dim, "loss": loss_name, "train_curve": curve}
        results[key].update({"squared_error": sq, "bce_nats": bce})
        print(f"{key:>20}: test squared error {sq:6.2f} per image, binary cross-entropy {bce:7.2f} nats per image")

# %% [markdown]
# ## A baseline: the mean image
#
# The same guess $\hat x = \bar x$ (the mean of the training images) for every test image, with
# each pixel's probability nudged off 0 and 1 by one half-count
# ($\hat x_d = (\text{ones}_d + \frac12) / (N + 1)$), else a pixel never on in training but on in a
# test image would cost infinitely many nats. Any code worth having must beat it.

# %%
mean_image = (x_train.sum(0) + 0.5) / (x_train.shape[0] + 1)
mean_logits = torch.logit(mean_image).expand_as(x_test)
results["mean image"] = {
    "squared_error": float(squared_error(mean_logits, x_test).mean()),
    "bce_nats": float(bernoulli_nats(mean_logits, x_test).mean()),
}
print(
    f"{'mean image':>20}: test squared error {results['mean image']['squared_error']:6.2f} per image, "
    f"binary cross-entropy {results['mean image']['bce_nats']:7.2f} nats per image"
)

# %% [markdown]
# ## Reconstructions
#
# One test image of each digit (top row) and what each autoencoder rebuilds from its code, drawn as
# the decoder's pixel probabilities $\hat x$ (grey where it is unsure). Two numbers cannot hold
# every detail of a digit, sixteen hold far more.

# %%
pick = torch.stack([(labels == d).nonzero()[0, 0] for d in range(10)]).to(args.device)
rows = {"test image": x_test[pick]}
with torch.no_grad():
    rows.update({key: torch.sigmoid(model(x_test[pick])) for key, model in models.items()})
fig, axes = plt.subplots(len(rows), 1, figsize=(8, 1.05 * len(rows)))
for ax, (name, images) in zip(axes, rows.items()):
    strip = images.cpu().reshape(10, 28, 28).permute(1, 0, 2).reshape(28, 280)
    ax.imshow(strip.numpy(), cmap="gray_r", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
fig.suptitle("Test images and their reconstructions", fontsize=10)
save_figure(fig, args.out, "reconstructions.png")

# %% [markdown]
# ## The 2-D codes
#
# Every test image's code, coloured by its digit (the labels are used only for the colours; the
# autoencoders never saw them). Images of a digit land near each other, and the codes of the two
# losses differ in shape and scale: nothing asks the codes to fill any particular region, so they
# go wherever the training put them. The black line joins the codes of two test images, a 0 and a
# 1, and the dashed parts continue it beyond them; the next figure decodes points along it.

# %%
ends = torch.stack([(labels == d).nonzero()[0, 0] for d in (0, 1)]).to(args.device)
ts = torch.tensor([-1.0, -0.5, 0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.5, 2.0])
codes, results["codes_2d"] = {}, {}
fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
for ax, loss_name in zip(axes, LOSSES):
    model = models[f"2-D, {loss_name}"]
    with torch.no_grad():
        c = model.encoder(x_test).cpu()
    codes[loss_name] = c
    results["codes_2d"][loss_name] = {"mean": c.mean(0).tolist(), "sd": c.std(0).tolist()}
    points = ax.scatter(c[:, 0], c[:, 1], c=labels.numpy(), cmap="tab10", s=3, alpha=0.6)
    a, b = c[ends.cpu()]
    line = a + ts[:, None] * (b - a)
    ax.plot(*line[(ts >= 0) & (ts <= 1)].T, "k-", lw=1.5)
    ax.plot(*line[ts <= 0].T, "k--", lw=1)
    ax.plot(*line[ts >= 1].T, "k--", lw=1)
    ax.plot(*torch.stack([a, b]).T, "ko", ms=5)
    ax.set(title=f"2-D codes, {loss_name} loss", xlabel="z[0]", ylabel="z[1]")
fig.colorbar(points, ax=axes, ticks=range(10), label="digit")
save_figure(fig, args.out, "codes.png")
for loss_name, r in results["codes_2d"].items():
    print(f"2-D codes ({loss_name}): mean {[round(v, 2) for v in r['mean']]}, sd {[round(v, 2) for v in r['sd']]}")

# %% [markdown]
# ## Between and beyond the codes
#
# Decoding $z(t) = z_a + t\,(z_b - z_a)$ for the codes $z_a$ of a test 0 and $z_b$ of a test 1:
# $t = 0$ and $t = 1$ are the two reconstructions, $0 < t < 1$ lies between them and $t < 0$ or
# $t > 1$ beyond them, where no training image put its code. The decoder returns an image for any
# $z$, but only near the codes of training images was it ever asked to return a good one: between
# them the images are whatever the line happens to cross (other digits, or blends), and beyond them
# they are shapes no data set contains. An autoencoder gives no rule for choosing a $z$ that
# decodes to a new, plausible digit; choosing one at random, from a Gaussian say, is what notebook
# 09 tries, and it fails for the autoencoder and works for the VAE, whose training makes the codes
# fill a chosen distribution.

# %%
fig, axes = plt.subplots(len(models), len(ts) + 2, figsize=(1.0 * (len(ts) + 2), 1.15 * len(models)))
results["interpolation"] = {"digits": [0, 1], "t": ts.tolist()}
for i, (key, model) in enumerate(models.items()):
    with torch.no_grad():
        za, zb = model.encoder(x_test[ends])
        decoded = torch.sigmoid(model.decoder(za + ts.to(args.device)[:, None] * (zb - za))).cpu()
    images = [x_test[ends[0]].cpu(), *decoded, x_test[ends[1]].cpu()]
    titles = ["test 0", *[f"t={t:g}" for t in ts.tolist()], "test 1"]
    for ax, image, title in zip(axes[i], images, titles):
        ax.imshow(image.reshape(28, 28).numpy(), cmap="gray_r", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        if i == 0:
            ax.set_title(title, fontsize=8)
    axes[i, 0].set_ylabel(key, rotation=0, ha="right", va="center", fontsize=8)
fig.suptitle("Decoding z(t) = z_a + t (z_b - z_a): between the codes (0 < t < 1) and beyond them", fontsize=10)
save_figure(fig, args.out, "interpolation.png")
save_results(results, args.out)

# %% [markdown]
# ## What the full run shows
#
# Four autoencoders, each trained for 15 epochs on the 50,000 training images and scored on the
# 10,000 test images (per image: the squared error summed over the 784 pixels, and the binary
# cross-entropy in nats):
#
# | model | squared error | cross-entropy (nats) |
# |---|---|---|
# | the mean image, for every image | 67.4 | 205.8 |
# | 2-D code, trained on squared error | 48.3 | 158.1 |
# | 2-D code, trained on cross-entropy | 47.7 | 146.3 |
# | 16-D code, trained on squared error | 21.5 | 70.7 |
# | 16-D code, trained on cross-entropy | 21.2 | 68.6 |
#
# Every autoencoder beats the mean image in both measures, and the code's size matters most: two
# numbers per image give blurred, sometimes wrong digits (a 4 comes back as a 9, a 5 as a 3 or an
# 8), sixteen give recognisable copies, with less than half the squared error and less than half
# the nats. Between the losses, the one trained on cross-entropy is ahead in both measures here,
# far ahead in its own (12 nats per image with the 2-D code) and a little even in squared error.
# The squared error is no worse a target for that measure; it is slower to train through the
# sigmoid: its gradient with respect to a pixel's logit is
# $2 (\hat x_d - x_d)\, \hat x_d (1 - \hat x_d)$, which fades when $\hat x_d$ is near 0 or 1 even if
# it is wrong, while the cross-entropy's is $\hat x_d - x_d$, which does not.
#
# The 2-D codes sort the digits into overlapping regions (1s apart, 4s and 9s together) with
# nothing to say where they must lie: trained on squared error they spread with standard deviations
# of 3.9 and 3.3, trained on cross-entropy 4.1 and 6.4, with the 1s some 20 units below the rest.
# Decoding along the line from a 0's code to a 1's passes through a 6 (squared error) or an 8
# (cross-entropy) in 2-D and through broken blends in 16-D, and beyond the two codes the decoder
# returns blots, or thick and shrunken strokes. The decoder answers everywhere, but only near the
# codes of training images is the answer a digit, and the autoencoder gives no distribution over
# codes from which to draw a new one: notebook 09 tries drawing from $\mathcal{N}(0, I)$ and finds
# the VAE's codes fill it while an autoencoder's do not.
#
# The full run's figures:
#
# ![reconstructions (full run)](../docs/figures/examples/01_autoencoders_reconstructions.png)
# ![codes (full run)](../docs/figures/examples/01_autoencoders_codes.png)
# ![interpolation (full run)](../docs/figures/examples/01_autoencoders_interpolation.png)
