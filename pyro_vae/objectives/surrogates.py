r"""Gradient estimators as surrogate losses on per-sample log weights.

Both ways of computing a loss share these functions: the registered Pyro ELBOs
(:mod:`pyro_vae.objectives.elbos`, terms read from Pyro traces) and the fast path (:mod:`pyro_vae.objectives.fast`).
For N = M K samples :math:`z_n \sim q_\phi(z|x)` (reparameterised) of each of B images they take,
each of shape (N, B):

- ``log_p`` :math:`\log p_\theta(x, z_n)` (the KL warm-up weight already applied to the prior),
- ``log_q`` :math:`\log q_\phi(z_n|x)` with the guide's parameters attached (weighted likewise),
- ``log_q_stop`` the same density with the guide's parameters detached: its gradient reaches
  :math:`\phi` only through :math:`z_n` (the path derivative),
- ``log_q_fixed_z`` :math:`\log q_\phi(\bar z_n|x)` at the detached samples (the score term alone),
- ``log_p_fixed_z`` :math:`\log p_\theta(x, \bar z_n)` at the detached samples (PIWAE only),

and ``zs``: the samples themselves (tensors in the autograd graph, one per latent site, with their
event dimensions), on which DReG places a gradient hook, and ``beta``, the KL warm-up weight the
terms carry (1 without warm-up). They travel together as :class:`Terms`.
Every function returns the negative objective summed over images: its value is the objective's,
its gradient the estimator's. Samples are ordered so that group m of MIWAE and PIWAE holds
samples m K ... (m + 1) K - 1.

- ``stl`` (Roeder et al., 2017): the ELBO, with the score term
  :math:`\partial_\phi \log q_\phi(z)|_{z\text{ fixed}}` dropped: the same expectation, and zero
  variance where q is the exact posterior.
- ``iwae_dreg`` (Tucker et al., 2019): the IWAE bound; decoder gradient
  :math:`\sum_n \tilde w_n \nabla_\theta \log w_n` (the IWAE one), encoder gradient
  :math:`\sum_n ((1-\beta)\tilde w_n + \beta\tilde w_n^2)\, \partial_z \log w_n\, \partial_\phi z_n`,
  whose signal-to-noise ratio does not decay with K. With KL warm-up,
  :math:`\log w = \log p(x|z) + \beta(\log p(z) - \log q_\phi(z|x))`, so the score term that DReG
  rewrites is :math:`-\beta \sum_n \tilde w_n \partial_\phi \log q_\phi(z_n)`, and
  :math:`E[\tilde w_n \partial_\phi \log q_\phi(z_n)] = E[\tilde w_n (1 - \tilde w_n) \partial_z \log w_n
  \partial_\phi z_n]`; at :math:`\beta = 1` the weights are the paper's :math:`\tilde w_n^2`.
- ``miwae`` (Rainforth et al., 2018): the mean over M groups of the K-sample IWAE bound.
- ``ciwae``: :math:`\beta\,\mathrm{ELBO} + (1-\beta)\,\mathrm{IWAE}_K` on the same K samples.
- ``piwae``: the IWAE bound of all M K samples for the decoder, MIWAE(M, K) for the encoder; the
  value is the IWAE bound. (It evaluates the decoder a second time, at the detached samples.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import torch


@dataclass
class Terms:
    """The per-sample terms of one batch, each (N, B) (see the module's docstring); the optional
    ones are computed only for the estimators that need them (``needs`` of the ELBO classes)."""

    log_p: torch.Tensor
    log_q: torch.Tensor
    log_q_stop: torch.Tensor | None = None
    log_q_fixed_z: torch.Tensor | None = None
    log_p_fixed_z: torch.Tensor | None = None
    zs: list[tuple[torch.Tensor, int]] = field(default_factory=list)
    beta: torch.Tensor | float = 1.0

    def with_particle_dim(self) -> Terms:
        """The same terms with a leading particle dimension of one where a term has none."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("log_p", "log_q", "log_q_stop", "log_q_fixed_z", "log_p_fixed_z"):
            value = out[name]
            if torch.is_tensor(value) and value.dim() <= 1:
                out[name] = value.unsqueeze(0)
        return Terms(**out)


def log_mean_exp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])


def _with_gradient_of(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """``value``'s number with ``surrogate``'s gradient."""
    return value.detach() + (surrogate - surrogate.detach())


def _scale_gradients(zs: Sequence[tuple[torch.Tensor, int]], scale: torch.Tensor) -> None:
    """Multiply the gradient arriving at each sample ``z`` (with ``event_dim`` event dimensions)
    by ``scale`` (N, B), sample by sample."""
    scale = scale.detach()
    for z, event_dim in zs:
        if z.requires_grad:
            z.register_hook(_multiply_by(scale.reshape(*z.shape[: z.dim() - event_dim], *(1,) * event_dim)))


def _multiply_by(factor: torch.Tensor):
    return lambda grad: grad * factor


def stl(log_p: torch.Tensor, log_q_stop: torch.Tensor) -> torch.Tensor:
    """The negative ELBO with the path-derivative ("sticking the landing") gradient."""
    return -(log_p - log_q_stop).mean(0).sum()


def miwae_value(log_w: torch.Tensor, groups: int) -> torch.Tensor:
    """Per image: the mean over ``groups`` groups of the IWAE bound of each group's samples."""
    n, b = log_w.shape
    return log_mean_exp(log_w.reshape(groups, n // groups, b), 1).mean(0)


def miwae(log_w: torch.Tensor, groups: int) -> torch.Tensor:
    return -miwae_value(log_w, groups).sum()


def ciwae(log_w: torch.Tensor, beta: float) -> torch.Tensor:
    return -(beta * log_w.mean(0) + (1 - beta) * log_mean_exp(log_w)).sum()


def iwae_dreg(
    log_p: torch.Tensor,
    log_q: torch.Tensor,
    log_q_stop: torch.Tensor,
    zs: Sequence[tuple[torch.Tensor, int]],
    beta: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """The negative IWAE bound with the doubly reparameterised gradient. The surrogate
    :math:`\\sum_n \\tilde w_n (\\log p - \\log q_{stop})` gives the decoder its IWAE gradient and
    reaches the encoder only through z, where a hook multiplies each sample's gradient by
    :math:`(1 - \\beta) + \\beta \\tilde w_n`: encoder weights
    :math:`(1 - \\beta) \\tilde w_n + \\beta \\tilde w_n^2` for the KL weight ``beta`` the terms carry
    (:math:`\\tilde w_n^2` at 1)."""
    log_w = log_p - log_q
    weights = torch.softmax(log_w.detach(), 0)
    _scale_gradients(zs, (1 - beta) + beta * weights)
    surrogate = (weights * (log_p - log_q_stop)).sum(0)
    return -_with_gradient_of(log_mean_exp(log_w), surrogate).sum()


def iwae_dreg_hookless(
    log_p: torch.Tensor,
    log_q: torch.Tensor,
    log_q_stop: torch.Tensor,
    log_p_fixed_z: torch.Tensor,
    beta: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    r""":func:`iwae_dreg`'s estimator without hooks, for guides of several latent sites where one
    depends on another (a hook on each sample would scale the gradient reaching an upper sample
    through a lower one twice). With normalised weights :math:`\tilde w_n` and encoder weights
    :math:`c_n = (1 - \beta) \tilde w_n + \beta \tilde w_n^2`, the surrogate
    :math:`\sum_n c_n (\log p - \log q_{stop}) + (\tilde w_n - c_n) \log p(x, \bar z_n)` gives the
    encoder :math:`\sum_n c_n \partial_z \log w_n \partial_\phi z_n` and the decoder its IWAE
    gradient :math:`\sum_n \tilde w_n \nabla_\theta \log p(x, z_n)` (the second term, at the detached
    samples ``log_p_fixed_z``, tops the decoder's weights up from c to w)."""
    log_w = log_p - log_q
    weights = torch.softmax(log_w.detach(), 0)
    encoder = (1 - beta) * weights + beta * weights**2
    surrogate = (encoder * (log_p - log_q_stop)).sum(0) + ((weights - encoder) * log_p_fixed_z).sum(0)
    return -_with_gradient_of(log_mean_exp(log_w), surrogate).sum()


def piwae(
    log_p: torch.Tensor,
    log_q: torch.Tensor,
    log_q_stop: torch.Tensor,
    log_q_fixed_z: torch.Tensor,
    log_p_fixed_z: torch.Tensor,
    groups: int,
) -> torch.Tensor:
    """The negative IWAE bound of all samples, with the decoder's IWAE gradient and the encoder's
    MIWAE(M = ``groups``) gradient. Both are sums of the gradients of log w_n with different
    normalised weights: b over all samples (the decoder's), a within each group, over M (the
    encoder's). The surrogate weighs everything by a, then adds (b - a) times log p(x, z) at the
    detached samples (``log_p_fixed_z``, a second decoder pass), which moves the decoder's weights
    from a to b without touching the encoder. (Rescaling a b-weighted path gradient by a / b
    with a hook on z instead overflows early in training, when whole groups carry weights below
    float precision.)"""
    n, b = log_p.shape
    lw = (log_p - log_q).detach()
    all_weights = torch.softmax(lw, 0)
    group_weights = (torch.softmax(lw.reshape(groups, n // groups, b), 1) / groups).reshape(n, b)
    surrogate = (group_weights * (log_p - log_q_stop - log_q_fixed_z)).sum(0) + (
        (all_weights - group_weights) * log_p_fixed_z
    ).sum(0)
    return -_with_gradient_of(log_mean_exp(log_p - log_q), surrogate).sum()


class NotDetachable(ValueError):
    """A distribution whose parameters cannot be separated from it (they live in transforms)."""


def detach_distribution(d: torch.distributions.Distribution) -> torch.distributions.Distribution:
    """The same distribution with its parameters detached (``log_prob`` then has a gradient only
    through the value): Independent, Pyro's expanded wrappers, and distributions whose
    ``arg_constraints`` parameters are stored on them (Normal, LowRankMultivariateNormal, ...);
    MultivariateNormal by its ``scale_tril``. Raises :class:`NotDetachable` for anything else
    (a transformed distribution such as an IAF keeps its parameters inside its transforms)."""
    from torch.distributions import Independent, MultivariateNormal

    if isinstance(d, Independent):
        return type(d)(detach_distribution(d.base_dist), d.reinterpreted_batch_ndims)
    if type(d).__name__ == "ExpandedDistribution":  # pyro.distributions.torch_distribution
        return type(d)(detach_distribution(d.base_dist), d.batch_shape)
    if isinstance(d, MultivariateNormal):
        return type(d)(d.loc.detach(), scale_tril=d.scale_tril.detach(), validate_args=False)
    names = [k for k in d.arg_constraints if torch.is_tensor(vars(d).get(k))]
    if not names or isinstance(d, torch.distributions.TransformedDistribution):
        raise NotDetachable(
            f"cannot detach the parameters of a {type(d).__name__} (they are not stored on it as tensors)"
        )
    return type(d)(**{k: vars(d)[k].detach() for k in names}, validate_args=False)
