"""Using the latent space of a trained model, through its latent API (:class:`pyro_vae.model.Structure`),
for every structure: samples at a temperature, interpolations between two images' codes,
traversals of one latent dimension of one layer at a time (most active first), the active units of
every layer, codes of a whole split, and reconstructions of one's own image files.

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
from pyro_vae.data.pixels import blocks, chw
from pyro_vae.evaluation.metrics import layer_means
from pyro_vae.model import Structure

log = logging.getLogger(__name__)

ACTIVE_THRESHOLD = 1e-2  # Burda et al.: a unit is active if Cov_x(E_q[z_u | x]) exceeds this


@torch.no_grad()
def sample(vae: Structure, n: int, temperature: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Expected pixels of ``n`` ancestral draws at ``temperature`` (n, D): the top layer's draws
    scaled about the origin (for the standard-normal prior, z ~ N(0, T² I); T < 1 gives typical,
    T > 1 unusual images), every lower layer's about its conditional mean
    (:meth:`~pyro_vae.model.Structure.sample_latents`)."""
    if n < 1 or not temperature > 0:
        raise ValueError(f"need n >= 1 and temperature > 0, got n = {n}, temperature = {temperature}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        codes = vae.sample_latents(n, temperature)
    return vae.decode(codes)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between codes ``a`` and ``b`` (L,) at fractions ``t`` (T,), (T, L);
    linear where the two are (anti)parallel."""
    cos = torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1, 1))
    if float(torch.sin(omega).detach().abs()) < 1e-6:  # (which formula, not a gradient path)
        return (1 - t)[:, None] * a + t[:, None] * b
    return (torch.sin((1 - t) * omega)[:, None] * a + torch.sin(t * omega)[:, None] * b) / torch.sin(omega)


@torch.no_grad()
def background_hint(x: torch.Tensor, train: torch.Tensor) -> str | None:
    """A hint when images ``x`` (N, D) in [0, 1] look inverted relative to the training images
    (float, or uint8 levels): one set mostly dark and the other mostly light (mean pixels on either
    side of 0.5 and more than 0.4 apart), as when dark ink on white paper meets MNIST's white ink on
    black. None when they agree."""
    yours = float(x.float().mean())
    total, count = 0.0, 0
    for block in blocks(train):
        total, count = total + float(block.sum()), count + block.numel()
    theirs = total / max(count, 1)
    if (yours < 0.5) == (theirs < 0.5) or abs(yours - theirs) <= 0.4:
        return None
    tone = {True: "dark", False: "light"}
    return (
        f"your images are mostly {tone[yours < 0.5]} (mean pixel {yours:.2f}) and the training images mostly "
        f"{tone[theirs < 0.5]} (mean {theirs:.2f}): the background may be inverted relative to the training data"
    )


def interpolate(vae: Structure, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 10) -> dict[str, torch.Tensor]:
    """Decoded paths between the codes of two images (D,), every layer's code interpolated
    together: ``linear`` and ``spherical``, (steps, D) each."""
    if steps < 2:
        raise ValueError(f"--steps must be at least 2 (the two ends), got {steps}")
    codes = vae.point(torch.stack([x_a, x_b]))
    linear, spherical = {}, {}
    for name, z in codes.items():
        t = torch.linspace(0, 1, steps, device=z.device, dtype=z.dtype)
        linear[name] = (1 - t)[:, None] * z[0] + t[:, None] * z[1]
        spherical[name] = slerp(z[0], z[1], t)
    return {"linear": vae.decode(linear), "spherical": vae.decode(spherical)}


def active_units_per_layer(vae: Structure, x: torch.Tensor) -> dict[str, dict]:
    """Burda et al.'s activity of every latent dimension of every layer, Cov_x(E_q[z_u | x]), top
    layer first; each layer's entry as :func:`active_units` gives it. E_q[z_i | x] is the guide's
    mean given the layers above at theirs (:meth:`~pyro_vae.model.Structure.point`): exact for the
    top layer, a point estimate below it."""
    return {name: _activity(means, name) for name, means in layer_means(vae, x).items()}


def active_units(vae: Structure, x: torch.Tensor, layer: str | None = None) -> dict:
    """One layer's (default the top's) activity of every dimension, Cov_x(E_q[z_u | x]), and the
    count above :data:`ACTIVE_THRESHOLD`; ``order`` lists dimensions most active first."""
    units = active_units_per_layer(vae, x)
    return units[_layer(vae, layer)]


def _activity(means: torch.Tensor, layer: str) -> dict:
    means = means.double()
    activity = means.var(0, unbiased=True) if means.shape[0] > 1 else torch.zeros(means.shape[1])
    order = torch.argsort(activity, descending=True)
    return {
        "activity": activity.tolist(),
        "order": order.tolist(),
        "threshold": ACTIVE_THRESHOLD,
        "active": int((activity > ACTIVE_THRESHOLD).sum()),
        "images": int(means.shape[0]),
        "layer": layer,
    }


def _layer(vae: Structure, layer: str | None) -> str:
    layers = vae.layers()
    if layer is None:
        return next(iter(layers))
    if layer not in layers:
        raise ValueError(
            f"--layer {layer} is not a latent layer of this model; its layers (top first): {', '.join(layers)}"
        )
    return layer


@torch.no_grad()
def traverse(
    vae: Structure,
    z0: torch.Tensor | dict[str, torch.Tensor],
    dims: list[int],
    span: float = 3.0,
    steps: int = 9,
    layer: str | None = None,
) -> torch.Tensor:
    """Decode the codes ``z0`` with one dimension of ``layer`` (default the top) at a time set to
    ``steps`` values in [-span, span]: (len(dims) * steps, D), one row per dimension.

    ``z0``: that layer's code (d,), or a dict of codes (d,) that holds it and every layer above; the
    layers below it are dropped, to follow the traversed layer at their conditional means.
    """
    layer = _layer(vae, layer)
    names = list(vae.layers())
    codes = {layer: z0} if isinstance(z0, torch.Tensor) else dict(z0)
    missing = [n for n in names[: names.index(layer) + 1] if n not in codes]
    if missing:
        raise ValueError(
            f"traversing {layer} needs the codes of {', '.join(missing)}: its own and those of the layers above it"
        )
    codes = {n: codes[n] for n in names[: names.index(layer) + 1]}
    size = codes[layer].shape[0]
    bad = [d for d in dims if not 0 <= d < size]
    if bad:
        where = "the latent space" if len(names) == 1 else f"layer {layer}"
        raise ValueError(f"--dims {bad} out of range: {where} has dimensions 0..{size - 1}")
    z0 = codes[layer]
    values = torch.linspace(-span, span, steps, device=z0.device, dtype=z0.dtype)
    rows = []
    for d in dims:
        z = z0.repeat(steps, 1)
        z[:, d] = values
        rows.append(vae.decode({**{n: c.repeat(steps, 1) for n, c in codes.items()}, layer: z}))
    return torch.cat(rows)


@torch.no_grad()
def encode(vae: Structure, x: torch.Tensor, batch_size: int = 1000, draws: int = 100) -> dict[str, np.ndarray]:
    """Means and scales of q for every image and layer (:meth:`~pyro_vae.model.Structure.encode`:
    exact for Gaussian guides, the mean and standard deviation of ``draws`` samples otherwise):
    ``loc`` and ``scale`` for a model of one latent layer, ``NAME_loc`` and ``NAME_scale`` per
    layer otherwise."""
    device = next(vae.parameters()).device
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in blocks(x, batch_size, device):
        codes = vae.encode(batch, draws=draws)
        for name, (loc, scale) in codes.items():
            parts.setdefault(name, [[], []])
            parts[name][0].append(loc.cpu())
            parts[name][1].append(scale.cpu())
    single = len(parts) == 1
    out = {}
    for name, (locs, scales) in parts.items():
        prefix = "" if single else f"{name}_"
        out[f"{prefix}loc"], out[f"{prefix}scale"] = torch.cat(locs).numpy(), torch.cat(scales).numpy()
    return out


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
            raise ValueError(
                f"{path} is {pixels.shape[1]}x{pixels.shape[0]} pixels; the model takes {w}x{h} "
                f"{'grey' if c == 1 else 'colour'} images: resize it first"
            )
        pixels = pixels[None] if c == 1 else pixels.transpose(2, 0, 1)  # (C, H, W)
        images.append(torch.from_numpy(np.ascontiguousarray(1.0 - pixels if invert else pixels)).reshape(-1))
    if transparent:
        ground = "white paper (--invert)" if invert else "black"
        log.warning(
            "%d of the %d image files have transparent pixels, composited onto %s; the first %s",
            len(transparent),
            len(images),
            ground,
            transparent[0],
        )
    x = torch.stack(images)
    return (x > 0.5).float() if binarize else x
