"""Priors p(z): ``forward(batch_size)`` returns a distribution with batch (B,) and event (L,)."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from .registry import Registry

PRIORS: Registry = Registry("prior")


@PRIORS.register("standard_normal")
class StandardNormal(nn.Module):
    """p(z) = N(0, I_L). Has a closed-form KL against a diagonal-Gaussian guide."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self, batch_size: int) -> dist.Distribution:
        return dist.Normal(self.loc, self.scale).expand([batch_size, self.latent_dim]).to_event(1)
