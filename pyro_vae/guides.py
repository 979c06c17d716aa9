"""Guides q(z | x): amortized encoders; ``forward(x)`` with x (B, D) returns a distribution with
batch (B,) and event (L,)."""

from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from .nets import mlp
from .registry import Registry

GUIDES: Registry = Registry("guide")


@GUIDES.register("diag_normal")
class DiagNormal(nn.Module):
    """q(z | x) = N(loc(x), diag(scale(x)^2)), an MLP with one fused head for loc and scale.

    ``scale = softplus(.) + min_scale`` keeps the scale positive without the overflow of exp.
    """

    min_scale = 1e-5

    def __init__(self, data_dim: int, latent_dim: int, hidden: tuple[int, ...], activation: str) -> None:
        super().__init__()
        self.trunk = mlp([data_dim, *hidden], activation, final_activation=True)
        self.head = nn.Linear(hidden[-1] if hidden else data_dim, 2 * latent_dim)

    def loc_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = self.head(self.trunk(x)).chunk(2, dim=-1)
        return loc, F.softplus(raw) + self.min_scale

    def forward(self, x: torch.Tensor) -> dist.Distribution:
        loc, scale = self.loc_scale(x)
        return dist.Normal(loc, scale).to_event(1)
