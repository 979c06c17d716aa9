"""Likelihoods p(x | z): the decoder's head is sized by ``param_dim(D)``; ``forward(h)`` returns a
distribution with event (D,). ``validate(x, source)`` rejects data outside the support."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from .data import count_non_binary
from .registry import Registry

LIKELIHOODS: Registry = Registry("likelihood")


@LIKELIHOODS.register("bernoulli")
class Bernoulli(nn.Module):
    """x_d ~ Bernoulli(sigmoid(h_d)), parameterised by logits; needs binary pixels (0 or 1)."""

    def param_dim(self, data_dim: int) -> int:
        return data_dim

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        return dist.Bernoulli(logits=h, validate_args=False).to_event(1)

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        """Expected pixel values, for pictures."""
        return torch.sigmoid(h)

    def validate(self, x: torch.Tensor, source: str) -> None:
        n_bad = count_non_binary(x)
        if n_bad:
            raise ValueError(
                f"{source}: the bernoulli likelihood needs binary pixels, but {n_bad} values are "
                "neither 0 nor 1; binarize grey-level images with data.binarize=static or dynamic"
            )
