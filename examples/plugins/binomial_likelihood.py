"""A plugin likelihood: each grey level x_d = k_d / 255 with k_d ~ Binomial(255, sigmoid(h_d)).

    pyro-vae train --plugin examples/plugins/binomial_likelihood.py \\
        --set data.name=mnist --set data.root=PATH --set model.likelihood=binomial

A probability of the 256 levels, so its negative log-likelihood is a code length in nats, like
the discretized logistic's. It needs pixels on the grid k / 255 (grey-level data, not binarized).
"""

import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae import LIKELIHOODS

LEVELS = 255


@LIKELIHOODS.register("binomial")
class Binomial(nn.Module):
    def __init__(self, **_):
        super().__init__()

    def param_dim(self, data_dim):
        return data_dim  # one logit per pixel

    def forward(self, h):
        return _Levels(dist.Binomial(total_count=LEVELS, logits=h, validate_args=False)).to_event(1)

    def mean(self, h):
        return torch.sigmoid(h)

    def validate(self, x, source):
        k = x * LEVELS
        n_bad = int(((k - k.round()).abs() > 1e-4).sum() + ((x < 0) | (x > 1)).sum())
        if n_bad:
            raise ValueError(
                f"{source}: the binomial likelihood needs grey levels k/255 in [0, 1]; {n_bad} values are not"
            )


class _Levels(dist.TorchDistribution):
    """Binomial counts k seen as pixels k / 255 (log_prob of x is that of k = 255 x)."""

    arg_constraints = {}
    support = dist.constraints.unit_interval

    def __init__(self, counts):
        self.counts = counts
        super().__init__(counts.batch_shape, counts.event_shape, validate_args=False)

    def sample(self, sample_shape=()):
        return self.counts.sample(torch.Size(sample_shape)) / LEVELS

    def log_prob(self, x):
        return self.counts.log_prob((x * LEVELS).round())

    @property
    def mean(self):
        return self.counts.mean / LEVELS
