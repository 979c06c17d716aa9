"""Networks: the encoder trunk and the decoder of a VAE, by name (``model.network``; no Pyro here).

A network is built as ``cls(cfg=ModelConfig, image_shape=(C, H, W), settings=Settings)``
(``settings``: the class's own ``Settings`` from its ``[model.NAME]`` table, if it declares one;
``image_shape``: the data's, so convolutions see images where the rest of pyro-vae sees flat
vectors of D = C·H·W pixels) and provides

- ``encoder(data_dim) -> (module, features)``: a trunk mapping x (B, D) to features (B, features),
  on which a guide puts its heads;
- ``decoder(latent_dim, out_dim) -> module``: z (..., L) to the likelihood's parameters (..., out_dim);
- optionally ``dense(in_dim, out_dim) -> module``: a dense map of vectors (..., in_dim) to (..., out_dim) in
  the network's style, for the conditional layers of the ``hierarchical`` structure
  (:mod:`pyro_vae.hierarchical`; without it they are ``mlp([in_dim, *model.hidden, out_dim])``);
- optionally ``layer(in_dim, out_dim) -> module``: one hidden layer in the network's style (with
  its nonlinearity), for the ``hierarchical`` structure's ``lower = "shallow"`` guide.

Both are plain ``nn.Module`` s taking and giving flat tensors; the guide and the likelihood
contracts do not depend on them. A decoder's output for a likelihood with P parameters per pixel
is P blocks of D values (``h.chunk(P, -1)`` gives one per parameter), so a convolutional decoder
emits P·C channels.

References:
    Tomczak & Welling, *VAE with a VampPrior*, AISTATS 2018 (``gated_mlp``: gated dense layers).
    He, Zhang, Ren & Sun, *Deep Residual Learning*, CVPR 2016 (``resnet``'s blocks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from pyro_vae.registry import Registry

NETWORKS: Registry = Registry("network", config_key="model.network")

ACTIVATIONS = {"relu": nn.ReLU, "softplus": nn.Softplus, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}


def mlp(sizes: list[int] | tuple[int, ...], activation: str = "softplus", final_activation: bool = False) -> nn.Module:
    """``Linear -> act -> ... -> Linear`` through ``sizes`` (``nn.Identity`` for a single size).

    :param sizes: layer widths, input first, output last.
    :param final_activation: also apply the activation after the last layer (for a trunk).
    """
    if len(sizes) < 1:
        raise ValueError("an MLP needs at least an input size")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2 or final_activation:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers) if layers else nn.Identity()


@NETWORKS.register("mlp")
class MLP:
    """Dense layers of widths ``model.hidden`` (encoder) and their mirror (decoder), with
    ``model.activation`` between them: the classic VAE of Kingma & Welling (2014)."""

    def __init__(self, cfg, **_) -> None:
        self.hidden, self.activation = tuple(cfg.hidden), cfg.activation

    def encoder(self, data_dim: int) -> tuple[nn.Module, int]:
        trunk = mlp([data_dim, *self.hidden], self.activation, final_activation=True)
        return trunk, self.hidden[-1] if self.hidden else data_dim

    def decoder(self, latent_dim: int, out_dim: int) -> nn.Module:
        return mlp([latent_dim, *reversed(self.hidden), out_dim], self.activation)

    def dense(self, in_dim: int, out_dim: int) -> nn.Module:
        return mlp([in_dim, *self.hidden, out_dim], self.activation)

    def layer(self, in_dim: int, out_dim: int) -> nn.Module:
        return mlp([in_dim, out_dim], self.activation, final_activation=True)


class Gated(nn.Module):
    """h = (W1 x + b1) * sigmoid(W2 x + b2): a dense layer with a learned gate on every unit."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.value, self.gate = nn.Linear(n_in, n_out), nn.Linear(n_in, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value(x) * torch.sigmoid(self.gate(x))


@NETWORKS.register("gated_mlp")
class GatedMLP:
    """Gated dense layers of widths ``model.hidden`` (encoder) and their mirror, then a linear head
    (decoder): the architecture of the VampPrior paper (300-300, z = 40)."""

    def __init__(self, cfg, **_) -> None:
        self.hidden = tuple(cfg.hidden)

    def encoder(self, data_dim: int) -> tuple[nn.Module, int]:
        sizes = [data_dim, *self.hidden]
        return nn.Sequential(*(Gated(a, b) for a, b in zip(sizes[:-1], sizes[1:]))), sizes[-1]

    def decoder(self, latent_dim: int, out_dim: int) -> nn.Module:
        sizes = [latent_dim, *reversed(self.hidden)]
        return nn.Sequential(*(Gated(a, b) for a, b in zip(sizes[:-1], sizes[1:])), nn.Linear(sizes[-1], out_dim))

    def dense(self, in_dim: int, out_dim: int) -> nn.Module:
        sizes = [in_dim, *self.hidden]
        return nn.Sequential(*(Gated(a, b) for a, b in zip(sizes[:-1], sizes[1:])), nn.Linear(sizes[-1], out_dim))

    def layer(self, in_dim: int, out_dim: int) -> nn.Module:
        return Gated(in_dim, out_dim)


def _halve(n: int) -> int:
    return math.ceil(n / 2)  # a 3x3 convolution with stride 2 and padding 1


class _Flat(nn.Module):
    """Flat (..., prod(shape)) in as (N, *shape), a module inside, flat (..., F) out: convolutions
    see images, everything around them flat vectors with any leading (particle) dimensions."""

    def __init__(self, shape: tuple[int, ...], inner: nn.Module) -> None:
        super().__init__()
        self.shape, self.inner = shape, inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        return self.inner(x.reshape(-1, *self.shape)).reshape(*lead, -1)


class Residual(nn.Module):
    """x + conv(act(conv(x))), then the activation: a basic residual block at constant width."""

    def __init__(self, width: int, activation: str) -> None:
        super().__init__()
        self.inner = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), ACTIVATIONS[activation](), nn.Conv2d(width, width, 3, padding=1)
        )
        self.act = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.inner(x))


@NETWORKS.register("conv")
class Conv:
    """Strided 3x3 convolutions (``model.conv.channels``, each halving the image), a dense layer of
    ``model.conv.features``; the decoder mirrors it with transposed convolutions that land on the
    exact H x W. For images of any C x H x W (28 x 28 grey, 32 x 32 and 64 x 64 colour)."""

    residual_blocks = 0

    @dataclass(frozen=True)
    class Settings:
        channels: tuple[int, ...] = (32, 64)  # widths of the strided convolutions, input side first
        features: int = 256  # the dense layer between the convolutions and the latent heads

        def __post_init__(self) -> None:
            if not self.channels or min(self.channels) < 1 or self.features < 1:
                raise ValueError(
                    f"channels = {list(self.channels)} needs at least one width >= 1 and features = "
                    f"{self.features} must be >= 1"
                )

    def __init__(self, cfg, image_shape=None, settings: Settings | None = None, **_) -> None:
        if image_shape is None:
            raise ValueError(
                f"the {type(self).__name__.lower()} network needs the images' shape (C, H, W); build it "
                "through build_vae(cfg, data_dim, image_shape)"
            )
        self.shape, self.activation = tuple(image_shape), cfg.activation
        self.settings = settings or self.Settings()
        sizes = [self.shape[1:]]
        for _ in self.settings.channels:
            sizes.append(tuple(_halve(n) for n in sizes[-1]))
        self.sizes = sizes  # (H, W) at the input of every stage, and after the last

    def _blocks(self, width: int) -> list[nn.Module]:
        return [Residual(width, self.activation) for _ in range(self.residual_blocks)]

    def encoder(self, data_dim: int) -> tuple[nn.Module, int]:
        act, (c, h, w) = ACTIVATIONS[self.activation], self.shape
        if data_dim != c * h * w:
            raise ValueError(f"data of {data_dim} values are not images of shape {self.shape}")
        layers, n_in = [], c
        for width in self.settings.channels:
            layers += [nn.Conv2d(n_in, width, 3, stride=2, padding=1), act(), *self._blocks(width)]
            n_in = width
        flat = n_in * math.prod(self.sizes[-1])
        layers += [nn.Flatten(), nn.Linear(flat, self.settings.features), act()]
        return _Flat(self.shape, nn.Sequential(*layers)), self.settings.features

    def decoder(self, latent_dim: int, out_dim: int) -> nn.Module:
        act, (c, h, w) = ACTIVATIONS[self.activation], self.shape
        if out_dim % (c * h * w):
            raise ValueError(
                f"a convolutional decoder gives whole channels: {out_dim} outputs are not a multiple of "
                f"the {c * h * w} pixels of {self.shape}"
            )
        widths = list(self.settings.channels)
        last = (widths[-1], *self.sizes[-1])
        layers: list[nn.Module] = [nn.Unflatten(1, last)]
        outs = [*reversed(widths[:-1]), out_dim // (h * w)]
        for stage, (n_in, n_out) in enumerate(zip(reversed(widths), outs)):
            target = self.sizes[-2 - stage]
            small = self.sizes[-1 - stage]
            padding = tuple(t - (2 * s - 1) for t, s in zip(target, small))  # 0 or 1: the exact size
            final = stage == len(widths) - 1
            layers += [
                *self._blocks(n_in),
                nn.ConvTranspose2d(n_in, n_out, 3, stride=2, padding=1, output_padding=padding),
                *([] if final else [act()]),
            ]
        dense = nn.Sequential(
            nn.Linear(latent_dim, self.settings.features),
            act(),
            nn.Linear(self.settings.features, math.prod(last)),
            act(),
        )
        return _Flat((latent_dim,), nn.Sequential(dense, *layers))

    def dense(self, in_dim: int, out_dim: int) -> nn.Module:
        return mlp([in_dim, self.settings.features, out_dim], self.activation)


@NETWORKS.register("resnet")
class ResNet(Conv):
    """``conv`` with a residual block (3x3, 3x3, skip) after every strided convolution and before
    every transposed one: more depth at the same resolution schedule."""

    residual_blocks = 1
