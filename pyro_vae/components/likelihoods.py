r"""Likelihoods p(x | z): the decoder's head is sized by ``param_dim(D)``; ``forward(h)`` returns a
distribution with event (D,); ``mean(h)`` gives expected pixels for pictures; ``validate(x,
source)`` rejects data outside the support before training starts.

Every likelihood is built as ``cls(data_dim=D, cfg=ModelConfig, settings=Settings)`` and takes what
it needs (``settings``: the class's own ``Settings`` from its ``[model.NAME]`` table, if it has one).
Discrete likelihoods (``bernoulli``, ``discretized_logistic``) give probabilities, so their
negative log-likelihoods are code lengths in nats; continuous ones (``continuous_bernoulli``,
``gaussian``) give densities, which are not comparable with them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from torch import nn
from torch.distributions.utils import broadcast_all

from pyro_vae.data.pixels import blocks, count_non_binary, is_binary
from pyro_vae.registry import Registry

LIKELIHOODS: Registry = Registry("likelihood", config_key="model.likelihood")


def _check_range(x: torch.Tensor, source: str, name: str, fix: str) -> None:
    """Reject values outside [0, 1] (and NaN), streaming so no float copy of ``x`` is made."""
    n_bad = sum(int((~((c >= 0) & (c <= 1))).sum()) for c in blocks(x))
    if n_bad:
        raise ValueError(f"{source}: the {name} likelihood needs pixels in [0, 1], but {n_bad} values are not; {fix}")


def density_note(likelihood: nn.Module, name: str, x: torch.Tensor) -> str | None:
    """What a report must say of a likelihood that is a density on continuous pixel values
    (``density = True``): its log-likelihoods are log densities, not the log probability of the
    image, so they can be negative in nats (positive log density) and do not compare with a
    probability's; on binary pixels ``x`` (the images scored), where such a density can grow
    without bound, say that too.
    None for a likelihood of discrete values (bernoulli, the discretized logistics)."""
    if not getattr(likelihood, "density", False):
        return None
    note = (
        f"model.likelihood = {name} is a density on continuous pixel values: its nats are a log "
        "density, not the log probability of the image, and do not compare with those of bernoulli "
        "or discretized_logistic"
    )
    if is_binary(x):
        note += (
            "; on these binary pixels a density can grow without bound (a negative NLL is no sign "
            "of a good model): model.likelihood = bernoulli gives the probability of binary images"
        )
    return note


class _BernoulliLogits(dist.Bernoulli):
    """Pyro's ``Bernoulli(logits=η)`` with ``log_prob(x) = x η + log σ(-η)``: torch's
    ``-binary_cross_entropy_with_logits(η, x)`` up to float rounding, as one ``logsigmoid`` (an
    ``exp`` and a ``log1p`` per pixel). Torch's compiler turns its own form into two ``exp``, a
    ``log`` and a division over two passes of the pixels, the slowest of the compiled CPU step's
    fused loops (docs/performance.md, "The likelihood's formula")."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits, value = broadcast_all(self.logits, value)
        return value * logits + F.logsigmoid(-logits)


@LIKELIHOODS.register("bernoulli")
class Bernoulli(nn.Module):
    """x_d ~ Bernoulli(sigmoid(h_d)), parameterised by logits; needs binary pixels (0 or 1)."""

    def __init__(self, **_) -> None:
        super().__init__()

    def param_dim(self, data_dim: int) -> int:
        return data_dim

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        return _BernoulliLogits(logits=h, validate_args=False).to_event(1)

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(h)

    def validate(self, x: torch.Tensor, source: str) -> None:
        n_bad = count_non_binary(x)
        if n_bad:
            raise ValueError(
                f"{source}: the bernoulli likelihood needs binary pixels, but {n_bad} values are "
                "neither 0 nor 1; binarize grey-level images with data.binarize=static or dynamic, "
                "or use model.likelihood=continuous_bernoulli, gaussian or discretized_logistic"
            )


@LIKELIHOODS.register("continuous_bernoulli")
class ContinuousBernoulli(nn.Module):
    """x_d ~ ContinuousBernoulli(sigmoid(h_d)) on [0, 1] (Loaiza-Ganem & Cunningham, 2019): the
    Bernoulli's form with the normalising constant that makes it a density on grey levels."""

    density = True  # a density on pixel values: reports say so (density_note)

    def __init__(self, **_) -> None:
        super().__init__()

    def param_dim(self, data_dim: int) -> int:
        return data_dim

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        return dist.ContinuousBernoulli(logits=h, validate_args=False).to_event(1)

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        return dist.ContinuousBernoulli(logits=h, validate_args=False).mean

    def validate(self, x: torch.Tensor, source: str) -> None:
        _check_range(x, source, "continuous_bernoulli", "rescale the images to [0, 1]")


@LIKELIHOODS.register("gaussian")
class Gaussian(nn.Module):
    """x_d ~ N(h_d, sigma_d^2): ``model.gaussian.scale`` > 0 fixes sigma; 0 learns one sigma
    per pixel (a parameter, floored at ``min_scale`` so a pixel that never varies cannot make
    the density infinite)."""

    density = True  # a density on pixel values: reports say so (density_note)

    min_scale = 1e-2

    @dataclass(frozen=True)
    class Settings:
        scale: float = 0.0  # fixed pixel scale; 0 = one learned scale per pixel

        def __post_init__(self) -> None:
            if not (math.isfinite(self.scale) and self.scale >= 0):
                raise ValueError(f"scale = {self.scale} must be positive (fixed) or 0 (learned)")

    def __init__(self, data_dim: int, settings: Settings, **_) -> None:
        super().__init__()
        self.fixed = settings.scale > 0
        if self.fixed:
            self.register_buffer("raw_scale", torch.full((data_dim,), float(settings.scale)))
        else:
            self.raw_scale = nn.Parameter(torch.full((data_dim,), math.log(math.expm1(0.1))))  # sigma starts at ~0.1

    def scale(self) -> torch.Tensor:
        return self.raw_scale if self.fixed else F.softplus(self.raw_scale) + self.min_scale

    def param_dim(self, data_dim: int) -> int:
        return data_dim

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        return dist.Normal(h, self.scale(), validate_args=False).to_event(1)

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        return h.clamp(0, 1)

    def validate(self, x: torch.Tensor, source: str) -> None:
        n_bad = sum(int((~torch.isfinite(c)).sum()) for c in blocks(x))
        if n_bad:
            raise ValueError(f"{source}: the gaussian likelihood needs finite pixels, but {n_bad} values are not")


class DiscretizedLogisticDist(dist.TorchDistribution):
    r"""A logistic density integrated over the ``bins`` equal bins of [0, 1] (PixelCNN++,
    Salimans et al. 2017), so it gives probabilities to grey levels ``k / (bins - 1)``.

    With bin half-width :math:`h` and :math:`a = (x + h - \mu)/s`, :math:`b = (x - h - \mu)/s`:
    :math:`\log P(x) = \log(\sigma(a) - \sigma(b)) = \log\sigma(a) + \log(1 - \sigma(b)) +
    \log(1 - e^{b - a})`, stable for every :math:`a > b`; the end bins take the tails
    (:math:`\log\sigma(a)` at 0, :math:`\log(1-\sigma(b))` at 1).
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.unit_interval

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, bins: int = 256, validate_args=None) -> None:
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        self.bins = bins
        super().__init__(self.loc.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return DiscretizedLogisticDist(self.loc.expand(batch_shape), self.scale.expand(batch_shape), self.bins)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        half = 0.5 / (self.bins - 1)
        a = (x + half - self.loc) / self.scale
        b = (x - half - self.loc) / self.scale
        log_cdf_a, log_sf_b = F.logsigmoid(a), F.logsigmoid(-b)
        inner = log_cdf_a + log_sf_b + torch.log(-torch.expm1(b - a))
        return torch.where(x < half, log_cdf_a, torch.where(x > 1 - half, log_sf_b, inner))

    def sample(self, sample_shape=()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device).clamp(1e-7, 1 - 1e-7)
            y = self.loc + self.scale * (torch.log(u) - torch.log1p(-u))
            return (y.clamp(0, 1) * (self.bins - 1)).round() / (self.bins - 1)


@LIKELIHOODS.register("discretized_logistic")
class DiscretizedLogistic(nn.Module):
    """x_d ~ DiscretizedLogistic(mu_d, s_d) over the 256 grey levels k/255 (PixelCNN++): a
    probability, so -log p(x) is in nats like the Bernoulli's. The decoder gives mu and log s."""

    bins = 256
    min_log_scale = -7.0
    name = "discretized_logistic"  # (in messages)

    def __init__(self, **_) -> None:
        super().__init__()

    def param_dim(self, data_dim: int) -> int:
        return 2 * data_dim

    def _loc_scale(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_scale = h.chunk(2, dim=-1)
        return loc, log_scale.clamp(min=self.min_log_scale).exp()

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        loc, scale = self._loc_scale(h)
        return DiscretizedLogisticDist(loc, scale, self.bins, validate_args=False).to_event(1)

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        return self._loc_scale(h)[0].clamp(0, 1)

    def validate(self, x: torch.Tensor, source: str) -> None:
        _check_range(x, source, self.name, "rescale the images to [0, 1]")
        levels = self.bins - 1
        n_bad = sum(int(((c * levels - (c * levels).round()).abs() > 1e-3).sum()) for c in blocks(x))
        if n_bad:
            raise ValueError(
                f"{source}: the {self.name} likelihood needs grey levels k/{levels} (8-bit images scaled "
                f"to [0, 1]), but {n_bad} values are between levels; use model.likelihood=continuous_bernoulli or "
                "gaussian for continuous pixels"
            )


class DiscretizedLogisticMixtureDist(dist.TorchDistribution):
    """Per pixel, a mixture of ``K`` discretized logistics (the last dimension of ``logits``,
    ``loc`` and ``scale``): log P(x) = logsumexp_k [log pi_k + log P_k(x)], each P_k a
    :class:`DiscretizedLogisticDist`. Batch shape: the pixels'."""

    arg_constraints = {"logits": constraints.real, "loc": constraints.real, "scale": constraints.positive}
    support = constraints.unit_interval

    def __init__(
        self, logits: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, bins: int = 256, validate_args=None
    ) -> None:
        self.logits, self.loc, self.scale = torch.broadcast_tensors(logits, loc, scale)
        self.bins = bins
        super().__init__(self.loc.shape[:-1], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        shape = (*batch_shape, self.loc.shape[-1])
        return DiscretizedLogisticMixtureDist(
            self.logits.expand(shape), self.loc.expand(shape), self.scale.expand(shape), self.bins
        )

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        components = DiscretizedLogisticDist(self.loc, self.scale, self.bins).log_prob(x.unsqueeze(-1))
        return torch.logsumexp(F.log_softmax(self.logits, -1) + components, -1)

    def sample(self, sample_shape=()) -> torch.Tensor:
        with torch.no_grad():
            k = dist.Categorical(logits=self.logits).sample(sample_shape)
            loc = self.loc.expand(*sample_shape, *self.loc.shape).gather(-1, k.unsqueeze(-1)).squeeze(-1)
            scale = self.scale.expand(*sample_shape, *self.scale.shape).gather(-1, k.unsqueeze(-1)).squeeze(-1)
            return DiscretizedLogisticDist(loc, scale, self.bins).sample()


@LIKELIHOODS.register("discretized_logistic_mixture")
class DiscretizedLogisticMixture(DiscretizedLogistic):
    """x_d ~ sum_k pi_dk DiscretizedLogistic(mu_dk, s_dk) over the 256 levels, K =
    ``model.discretized_logistic_mixture.components`` (PixelCNN++'s mixture, here per channel and
    without its autoregressive coupling of the colour channels). The decoder gives, in blocks of D,
    K mixture logits, K locations and K log-scales; a probability, so its NLL is in nats."""

    name = "discretized_logistic_mixture"

    @dataclass(frozen=True)
    class Settings:
        components: int = 5  # K logistics per pixel

        def __post_init__(self) -> None:
            if self.components < 1:
                raise ValueError(f"components = {self.components} must be at least 1")

    def __init__(self, settings: Settings | None = None, **_) -> None:
        super().__init__()
        self.k = (settings or self.Settings()).components

    def param_dim(self, data_dim: int) -> int:
        return 3 * self.k * data_dim

    def _parts(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        blocks = h.unflatten(-1, (3 * self.k, -1)).movedim(-2, -1)  # (..., D, 3K)
        logits, loc, log_scale = blocks.chunk(3, dim=-1)
        return logits, loc, log_scale.clamp(min=self.min_log_scale).exp()

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        return DiscretizedLogisticMixtureDist(*self._parts(h), self.bins, validate_args=False).to_event(1)

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        """The mixture-weighted component locations in [0, 1], for pictures."""
        logits, loc, _ = self._parts(h)
        return (F.softmax(logits, -1) * loc.clamp(0, 1)).sum(-1)
