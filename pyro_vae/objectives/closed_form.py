r"""The negative ELBO of the default VAE written by hand in plain torch: the oracle that the
Pyro losses are checked against (see ``tests/objectives/test_closed_form.py``).

For a Bernoulli likelihood with logits :math:`\eta = f(z)`, a standard-normal prior and a
diagonal-Gaussian guide :math:`q(z|x) = \mathcal N(\mu, \operatorname{diag}\sigma^2)`:

.. math::

    \log p(x|z) = \sum_d x_d \eta_d - \log(1 + e^{\eta_d}),\qquad
    \mathrm{KL}(q \,\|\, p) = \tfrac12 \sum_l \left(\sigma_l^2 + \mu_l^2 - 1 - \log \sigma_l^2\right).

The analytic negative ELBO is :math:`-\log p(x|z) + \mathrm{KL}` with one draw of z; the
Monte-Carlo one replaces the KL by :math:`\log q(z|x) - \log p(z)` at the same z.
All functions return one value per image (nats), shape (..., B).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """:math:`\\sum_d x_d\\eta_d - \\operatorname{softplus}(\\eta_d)`, summed over the last dim."""
    return (x * logits - F.softplus(logits)).sum(-1)


def log_normal(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Diagonal-Gaussian log density summed over the last dim."""
    return (-0.5 * ((z - loc) / scale) ** 2 - torch.log(scale) - 0.5 * LOG_2PI).sum(-1)


def kl_normal_std_normal(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """KL(N(loc, scale^2) || N(0, 1)) = 1/2 sum(scale^2 + loc^2 - 1 - log scale^2)."""
    return 0.5 * (scale**2 + loc**2 - 1 - 2 * torch.log(scale)).sum(-1)


def neg_elbo_analytic(x: torch.Tensor, logits: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) + KL(q || p), with ``logits`` the decoder's output at a draw z ~ q."""
    return -bernoulli_log_likelihood(logits, x) + kl_normal_std_normal(loc, scale)


def log_weights(
    x: torch.Tensor, logits: torch.Tensor, z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """log p(x|z) + log p(z) - log q(z|x): one importance weight per draw z, shape (..., B)."""
    log_prior = log_normal(z, torch.zeros_like(z), torch.ones_like(z))
    return bernoulli_log_likelihood(logits, x) + log_prior - log_normal(z, loc, scale)


def neg_elbo_monte_carlo(
    x: torch.Tensor, logits: torch.Tensor, z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """-(log p(x|z) + log p(z) - log q(z|x)) at the draw ``z``: what Trace_ELBO estimates."""
    return -log_weights(x, logits, z, loc, scale)


def iwae_bound(log_w: torch.Tensor) -> torch.Tensor:
    """log (1/K sum_k exp log_w_k) over the first dim (K draws), per image."""
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])
