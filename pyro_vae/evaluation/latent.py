"""Using the latent space of a trained VAE: samples at a temperature, interpolations between two
images' codes, traversals of one latent dimension at a time (most active first), the active
units, codes of a whole split, and reconstructions of one's own image files.

Every function returns numbers or tensors; :mod:`pyro_vae.cli` draws them (``plot_images``).

References:
    Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders*, ICLR 2016 (active units).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from pyro_vae.data.images import open_image
from pyro_vae.data.pixels import chw, decode
from pyro_vae.evaluation.plots import latent_means
from pyro_vae.model import VAE

log = logging.getLogger(__name__)

ACTIVE_THRESHOLD = 1e-2  # Burda et al.: a unit is active if Cov_x(E_q[z_u | x]) exceeds this


@torch.no_grad()
def sample(vae: VAE, n: int, temperature: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Expected pixels of ``n`` draws z ~ p(z) scaled about the origin by ``temperature`` (for the
    standard-normal prior, z ~ N(0, T² I); T < 1 gives typical, T > 1 unusual images), (n, D)."""
    if n < 1 or not temperature > 0:
        raise ValueError(f"need n >= 1 and temperature > 0, got n = {n}, temperature = {temperature}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        z = vae.prior(n).sample().cpu()
    return vae.decode(temperature * z.to(next(vae.parameters()).device))


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between codes ``a`` and ``b`` (L,) at fractions ``t`` (T,), (T, L);
    linear where the two are (anti)parallel."""
    cos = torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1, 1))
    if float(torch.sin(omega).abs()) < 1e-6:
        return (1 - t)[:, None] * a + t[:, None] * b
    return (torch.sin((1 - t) * omega)[:, None] * a + torch.sin(t * omega)[:, None] * b) / torch.sin(omega)


@torch.no_grad()
def interpolate(vae: VAE, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 10) -> dict[str, torch.Tensor]:
    """Decoded paths between the codes of two images (D,): ``linear`` and ``spherical``, (steps, D) each."""
    if steps < 2:
        raise ValueError(f"--steps must be at least 2 (the two ends), got {steps}")
    z = vae.encoder.point(torch.stack([x_a, x_b]))
    t = torch.linspace(0, 1, steps, device=z.device, dtype=z.dtype)
    linear = (1 - t)[:, None] * z[0] + t[:, None] * z[1]
    return {"linear": vae.decode(linear), "spherical": vae.decode(slerp(z[0], z[1], t))}


def active_units(vae: VAE, x: torch.Tensor) -> dict:
    """Burda et al.'s activity of every latent dimension, Cov_x(E_q[z_u | x]), and the count above
    :data:`ACTIVE_THRESHOLD`; ``order`` lists dimensions most active first."""
    means = latent_means(vae, x).double()
    activity = means.var(0, unbiased=True) if means.shape[0] > 1 else torch.zeros(means.shape[1])
    order = torch.argsort(activity, descending=True)
    return {"activity": activity.tolist(), "order": order.tolist(), "threshold": ACTIVE_THRESHOLD,
            "active": int((activity > ACTIVE_THRESHOLD).sum()), "images": int(x.shape[0])}  # fmt: skip


@torch.no_grad()
def traverse(vae: VAE, z0: torch.Tensor, dims: list[int], span: float = 3.0, steps: int = 9) -> torch.Tensor:
    """Decode ``z0`` (L,) with one dimension at a time set to ``steps`` values in [-span, span]:
    (len(dims) * steps, D), one row per dimension."""
    latent = z0.shape[0]
    bad = [d for d in dims if not 0 <= d < latent]
    if bad:
        raise ValueError(f"--dims {bad} out of range: the latent space has dimensions 0..{latent - 1}")
    values = torch.linspace(-span, span, steps, device=z0.device, dtype=z0.dtype)
    rows = []
    for d in dims:
        z = z0.repeat(steps, 1)
        z[:, d] = values
        rows.append(vae.decode(z))
    return torch.cat(rows)


@torch.no_grad()
def encode(vae: VAE, x: torch.Tensor, batch_size: int = 1000, draws: int = 100) -> dict[str, np.ndarray]:
    """Means and scales of q(z | x) for every image: exact for Gaussian guides (``loc_scale``),
    the mean and standard deviation of ``draws`` samples otherwise."""
    device = next(vae.parameters()).device
    locs, scales = [], []
    for i in range(0, x.shape[0], batch_size):
        xb = decode(x[i : i + batch_size].to(device))
        if hasattr(vae.encoder, "loc_scale"):
            loc, scale = vae.encoder.loc_scale(xb)
        else:
            z = vae.encoder(xb).sample((draws,))
            loc, scale = z.mean(0), z.std(0)
        locs.append(loc.cpu())
        scales.append(scale.cpu())
    return {"loc": torch.cat(locs).numpy(), "scale": torch.cat(scales).numpy()}


def read_images(paths: list[str | Path], image_shape, binarize: bool, invert: bool = False) -> torch.Tensor:
    """Image files as a batch (N, C*H*W) in [0, 1], grey or colour as the model's ``image_shape``
    ((H, W) or (C, H, W)); white = 1, as MNIST stores ink (``invert`` for dark ink on white paper);
    thresholded at 0.5 when the model was trained on binary pixels. Files are read by
    :func:`pyro_vae.data.images.open_image` (16-bit grey scaled, PIL's size limit); transparent
    pixels become the background: black, or white paper with ``invert`` (a warning says how many
    files had them). A missing or unreadable file, or another size, is a ``ValueError`` naming it."""
    c, h, w = chw(image_shape)
    images, transparent = [], []
    for path in map(Path, paths):
        if not path.is_file():
            raise ValueError(f"image file {path} does not exist")
        img, had_alpha = open_image(path, c, background=255 if invert else 0)
        if had_alpha:
            transparent.append(path)
        pixels = np.asarray(img, dtype=np.float32) / 255.0
        if pixels.shape[:2] != (h, w):
            raise ValueError(f"{path} is {pixels.shape[1]}x{pixels.shape[0]} pixels; the model takes {w}x{h} "
                             f"{'grey' if c == 1 else 'colour'} images: resize it first")  # fmt: skip
        pixels = pixels[None] if c == 1 else pixels.transpose(2, 0, 1)  # (C, H, W)
        images.append(torch.from_numpy(np.ascontiguousarray(1.0 - pixels if invert else pixels)).reshape(-1))
    if transparent:
        ground = "white paper (--invert)" if invert else "black"
        log.warning("%d of the %d image files have transparent pixels, composited onto %s; the first %s",
                    len(transparent), len(images), ground, transparent[0])  # fmt: skip
    x = torch.stack(images)
    return (x > 0.5).float() if binarize else x
