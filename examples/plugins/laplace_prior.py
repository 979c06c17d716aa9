"""A plugin prior: p(z) = prod_l Laplace(z_l; 0, b), sparser codes than the standard normal.

    pyro-vae train --plugin examples/plugins/laplace_prior.py --set model.prior=laplace
    pyro-vae train --plugin examples/plugins/laplace_prior.py --set model.prior=laplace \\
        --set model.laplace.scale=0.5 --set train.elbo=mean_field     # the analytic KL below

It also registers KL(Normal || Laplace) in closed form, so ``train.elbo=mean_field`` uses it:

    KL = -1/2 log(2 pi e sigma^2) + log(2b) + E|z| / b,
    E|z| = sigma sqrt(2/pi) exp(-mu^2 / (2 sigma^2)) + mu (1 - 2 Phi(-mu / sigma))   for z ~ N(mu, sigma^2).
"""

import math
from dataclasses import dataclass

import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import kl

from pyro_vae import PRIORS


@PRIORS.register("laplace")
class LaplacePrior(nn.Module):
    @dataclass(frozen=True)
    class Settings:
        scale: float = 1.0  # b, the Laplace scale of every coordinate

        def __post_init__(self):
            if not self.scale > 0:
                raise ValueError(f"scale = {self.scale} must be positive")

    def __init__(self, latent_dim, settings, **_):
        super().__init__()
        self.latent_dim = latent_dim
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.full((latent_dim,), settings.scale))

    def forward(self, batch_size):
        return dist.Laplace(self.loc, self.scale).expand([batch_size, self.latent_dim]).to_event(1)


@kl.register_kl(dist.Normal, dist.Laplace)
def kl_normal_laplace(q, p):
    mu, sigma, b = q.loc - p.loc, q.scale, p.scale
    abs_mean = sigma * math.sqrt(2 / math.pi) * torch.exp(-(mu**2) / (2 * sigma**2)) + mu * torch.erf(
        mu / (sigma * math.sqrt(2))
    )
    return -0.5 * torch.log(2 * math.pi * math.e * sigma**2) + torch.log(2 * b) + abs_mean / b
