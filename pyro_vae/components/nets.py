"""Networks: the encoder trunk and the decoder of a VAE, by name (``model.network``; no Pyro here).

A network is built as ``cls(cfg=ModelConfig, settings=Settings)`` (``settings``: the class's own
``Settings`` from its ``[model.NAME]`` table, if it declares one) and provides

- ``encoder(data_dim) -> (module, features)``: a trunk mapping x (B, D) to features (B, features),
  on which a guide puts its heads;
- ``decoder(latent_dim, out_dim) -> module``: z (..., L) to the likelihood's parameters (..., out_dim).

Both are plain ``nn.Module`` s; the guide and the likelihood contracts do not depend on them.
"""

from __future__ import annotations

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
