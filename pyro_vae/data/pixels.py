"""Pixel helpers shared by the data loaders and the components: the stored form of images
(uint8 grey levels for 8-bit images, else float32), streaming over row blocks and tiling images
into one grid (:func:`image_grid`, drawn by the figures and TensorBoard).

The lowest layer beside :mod:`pyro_vae.config` and :mod:`pyro_vae.registry`: priors and
likelihoods use these without importing the data module.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def encode(x: torch.Tensor, rows: int = 4096) -> torch.Tensor:
    """Images ``x`` (N, D) in [0, 1] as stored: uint8 levels ``k`` when every value is exactly
    ``k / 255`` in float32 (so :func:`decode` gives ``x`` back bit for bit), else float32.
    uint8 input is taken to be levels already. Works in row blocks: small temporaries."""
    if x.dtype == torch.uint8:
        return x
    x = x.to(torch.float32)
    levels = torch.empty(x.shape, dtype=torch.uint8, device=x.device)
    for block, out in zip(x.split(rows), levels.split(rows)):
        out.copy_((block * 255).round_().clamp_(0, 255))
        if not torch.equal(decode(out), block):
            return x
    return levels


def decode(x: torch.Tensor) -> torch.Tensor:
    """Stored images as float32 in [0, 1]: uint8 levels are divided by 255; floats pass through."""
    return x.to(torch.float32).div_(255) if x.dtype == torch.uint8 else x


def evenly_spaced(total: int, n: int) -> torch.Tensor:
    """Indices of ``min(n, total)`` evenly spaced items out of ``total`` (all when ``n`` is 0)."""
    if n <= 0 or n >= total:
        return torch.arange(total)
    return torch.linspace(0, total - 1, n).round().long()


def blocks(x: torch.Tensor, rows: int = 4096, device: torch.device | str | None = None) -> Iterator[torch.Tensor]:
    """Float32 row blocks of images ``x`` (float, or uint8 levels), each moved to ``device`` (if
    given) before it is decoded: checks and evaluations over a whole split stream through these,
    so no float copy of the split is made."""
    return (decode(block if device is None else block.to(device)) for block in x.split(rows))


def count_non_binary(x: torch.Tensor) -> int:
    """How many values of ``x`` (float, or uint8 levels) are neither 0 nor 1."""
    return sum(int(((block != 0) & (block != 1)).sum()) for block in blocks(x))


def is_binary(x: torch.Tensor) -> bool:
    return count_non_binary(x) == 0


def chw(image_shape) -> tuple[int, int, int]:
    """``(C, H, W)`` of an image shape given as ``(H, W)`` (one grey channel) or ``(C, H, W)``."""
    shape = tuple(int(n) for n in image_shape)
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) != 3:
        raise ValueError(f"an image shape is (H, W) or (C, H, W), got {shape}")
    return shape


def image_grid(images: torch.Tensor, image_shape, nrow: int) -> torch.Tensor:
    """Tile (N, D) images of shape (H, W) or (C, H, W) into one (nrow*H, ncol*W) array, row by row
    ((nrow*H, ncol*W, 3) for colour images)."""
    c, h, w = chw(image_shape)
    n = images.shape[0]
    ncol = -(-n // nrow)
    canvas = torch.ones(nrow * h, ncol * w, c)
    for i, img in enumerate(images.detach().cpu().float()):
        r, col = divmod(i, ncol)
        canvas[r * h : (r + 1) * h, col * w : (col + 1) * w] = img.reshape(c, h, w).permute(1, 2, 0)
    return canvas[..., 0] if c == 1 else canvas.clamp(0, 1)
