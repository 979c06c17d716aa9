r"""Priors p(z): ``forward(batch_size)`` returns a distribution with batch (B,) and event (L,).

Every prior is built as ``cls(latent_dim=L, data_dim=D, encoder=guide_network, cfg=ModelConfig,
settings=Settings)`` and takes what it needs (``settings``: an instance of the class's own
``Settings`` dataclass, from its ``[model.NAME]`` table, where it declares one); a prior that
cannot work with the given guide raises ``ValueError``
with a fix hint, which :func:`pyro_vae.model.build_vae` reports before anything trains.

References:
    Tomczak & Welling, *VAE with a VampPrior*, AISTATS 2018 (``vamp``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from torch import nn

from pyro_vae.data.pixels import decode
from pyro_vae.registry import Registry

PRIORS: Registry = Registry("prior", config_key="model.prior")


@PRIORS.register("standard_normal")
class StandardNormal(nn.Module):
    """p(z) = N(0, I_L). Has a closed-form KL against a diagonal-Gaussian guide."""

    def __init__(self, latent_dim: int, **_) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self, batch_size: int) -> dist.Distribution:
        return dist.Normal(self.loc, self.scale).expand([batch_size, self.latent_dim]).to_event(1)


@PRIORS.register("student_t")
class StudentT(nn.Module):
    """p(z) = prod_l StudentT(z_l; df, 0, 1), heavy tailed (``model.student_t.df`` degrees of freedom).

    No KL between a Gaussian and a Student-t has a closed form, so ``mean_field`` falls back to
    the Monte-Carlo term for it (and ``train.kl_fallback=false`` rejects the pair up front).
    """

    @dataclass(frozen=True)
    class Settings:
        df: float = 5.0  # degrees of freedom

        def __post_init__(self) -> None:
            if not (math.isfinite(self.df) and self.df > 0):
                raise ValueError(f"df = {self.df} must be a positive finite number of degrees of freedom")

    def __init__(self, latent_dim: int, settings: Settings, **_) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.register_buffer("df", torch.tensor(float(settings.df)))

    def forward(self, batch_size: int) -> dist.Distribution:
        return StandardStudentT(self.df, [batch_size, self.latent_dim]).to_event(1)


class StandardStudentT(dist.TorchDistribution):
    r"""Independent standard Student-t coordinates with ``df`` degrees of freedom, batch
    ``batch_shape``: :math:`\log p(z) = \log\Gamma(\frac{\nu+1}2) - \log\Gamma(\frac\nu2) - \frac12
    \log(\nu\pi) - \frac{\nu+1}2 \log(1 + z^2/\nu)`, written out because torch's ``StudentT``
    builds ``Chi2(df)``, whose ``Gamma(df / 2, 0.5)`` turns the Python 0.5 into a new device tensor
    at every construction: a host-to-device copy inside the training step, which a CUDA graph
    cannot capture. Equal to ``torch.distributions.StudentT(df)`` (tested)."""

    arg_constraints = {"df": constraints.positive}
    support = constraints.real
    has_rsample = False

    def __init__(self, df: torch.Tensor, batch_shape=(), validate_args=None) -> None:
        self.df = df
        super().__init__(torch.Size(batch_shape), torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return StandardStudentT(self.df, batch_shape)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        df = self.df
        log_norm = torch.lgamma((df + 1) / 2) - torch.lgamma(df / 2) - 0.5 * torch.log(df * math.pi)
        return (log_norm - (df + 1) / 2 * torch.log1p(z * z / df)).expand(
            torch.broadcast_shapes(z.shape, self.batch_shape)
        )

    def sample(self, sample_shape=()) -> torch.Tensor:
        with torch.no_grad():
            return torch.distributions.StudentT(self.df).sample(self._extended_shape(sample_shape))


class GaussianMixture(dist.TorchDistribution):
    r"""An equal-shape mixture of K diagonal Gaussians over R^L, batch ``batch_shape``, event (L,).

    ``log_prob`` needs no (..., K, L) temporary: the K quadratic forms come from two matrix
    products, :math:`\sum_l (z_l - \mu_{kl})^2 / \sigma_{kl}^2 = (z^2) (1/\sigma^2)^T -
    2 z (\mu/\sigma^2)^T + \sum_l \mu_{kl}^2/\sigma_{kl}^2`, so memory is (..., K).
    Equal to ``MixtureSameFamily(Categorical(logits), Independent(Normal(loc, scale), 1))``
    (tested).
    """

    arg_constraints = {"logits": constraints.real_vector, "loc": constraints.real, "scale": constraints.positive}
    support = constraints.real_vector
    has_rsample = False

    def __init__(
        self, logits: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, batch_shape=(), validate_args=None
    ) -> None:
        self.logits, self.loc, self.scale = logits, loc, scale
        super().__init__(torch.Size(batch_shape), loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return GaussianMixture(self.logits, self.loc, self.scale, batch_shape)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        shape = torch.broadcast_shapes(z.shape[:-1], self.batch_shape)
        flat = z.reshape(-1, z.shape[-1])
        precision = self.scale.pow(-2)  # (K, L)
        quad = flat.pow(2) @ precision.T - 2 * flat @ (self.loc * precision).T + (self.loc.pow(2) * precision).sum(-1)
        log_norm = -self.scale.log().sum(-1) - 0.5 * self.loc.shape[-1] * math.log(2 * math.pi)
        log_comp = self.logits.log_softmax(-1) + log_norm - 0.5 * quad  # (N, K)
        return torch.logsumexp(log_comp, -1).reshape(z.shape[:-1]).expand(shape)

    def sample(self, sample_shape=()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        with torch.no_grad():
            k = torch.distributions.Categorical(logits=self.logits).sample(shape)
            return self.loc[k] + self.scale[k] * torch.randn(
                shape + self.event_shape, dtype=self.loc.dtype, device=self.loc.device
            )


@PRIORS.register("mixture_of_gaussians")
class MixtureOfGaussians(nn.Module):
    """p(z) = sum_k pi_k N(z; mu_k, diag sigma_k^2) with learnable weights, means and scales;
    K = ``model.mixture_of_gaussians.components``. Means start as N(0, I) draws, scales at 1,
    weights equal."""

    @dataclass(frozen=True)
    class Settings:
        components: int = 500  # K, the mixture's components

        def __post_init__(self) -> None:
            if self.components < 1:
                raise ValueError(f"components = {self.components} must be at least 1")

    def __init__(self, latent_dim: int, settings: Settings, **_) -> None:
        super().__init__()
        k = settings.components
        self.logits = nn.Parameter(torch.zeros(k))
        self.loc = nn.Parameter(torch.randn(k, latent_dim))
        self.raw_scale = nn.Parameter(torch.full((k, latent_dim), math.log(math.e - 1)))  # softplus -> 1

    def forward(self, batch_size: int) -> dist.Distribution:
        return GaussianMixture(self.logits, self.loc, F.softplus(self.raw_scale) + 1e-4, [batch_size])


@PRIORS.register("vamp")
class VampPrior(nn.Module):
    """p(z) = 1/K sum_k q(z | u_k): the guide's own posterior at K learnable pseudo-inputs u_k
    (``model.vamp.components``). Needs a guide with ``loc_scale(x)`` (a diagonal-Gaussian encoder).

    ``model.vamp.pseudo_inputs`` says how the u_k are held and where they start:

    - ``data`` (the default): kept in [0, 1] by a sigmoid; they start near 0.05 (the mean
      brightness of MNIST) and :meth:`init_from_data` (called by ``fit`` before the first step)
      replaces them by randomly chosen training images, which keeps training from settling where
      every image is encoded alike and the latents go unused;
    - ``tomczak``: Tomczak & Welling's own, clamped to [0, 1] (their Hardtanh(0, 1): the gradient
      passes unscaled inside) and started at N(0.05, 0.01), not at training images.
    """

    @dataclass(frozen=True)
    class Settings:
        components: int = 500  # K, the pseudo-inputs
        pseudo_inputs: str = "data"  # data (sigmoid, started at training images) | tomczak (clamped, N(0.05, 0.01))

        def __post_init__(self) -> None:
            if self.components < 1:
                raise ValueError(f"components = {self.components} must be at least 1")
            if self.pseudo_inputs not in ("data", "tomczak"):
                raise ValueError(
                    f"pseudo_inputs = {self.pseudo_inputs!r} is not one of 'data' (a sigmoid, started at training "
                    "images) or 'tomczak' (clamped to [0, 1], started at N(0.05, 0.01))"
                )

    def __init__(self, latent_dim: int, data_dim: int, encoder: nn.Module, settings: Settings, **_) -> None:
        super().__init__()
        if not callable(getattr(encoder, "loc_scale", None)):
            raise ValueError(
                "the vamp prior evaluates the guide's density at its pseudo-inputs and needs a diagonal-Gaussian "
                f"guide; {type(encoder).__name__} has none. Use model.guide=diag_normal with model.prior=vamp"
            )
        self.clamped = settings.pseudo_inputs == "tomczak"
        if self.clamped:
            self.pseudo_values = nn.Parameter(0.05 + 0.01 * torch.randn(settings.components, data_dim))
        else:
            self.pseudo_logits = nn.Parameter(math.log(0.05 / 0.95) + 0.1 * torch.randn(settings.components, data_dim))
        self._encoder = [encoder]  # shared with the VAE, not a submodule (its weights are saved once)

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, generator: torch.Generator) -> None:
        """Start the pseudo-inputs at randomly chosen rows of ``x`` (N, D; float, or uint8 levels),
        squeezed into [0.05, 0.95] (``pseudo_inputs = "data"``; Tomczak & Welling's are left at
        their start)."""
        if self.clamped:
            return
        rows = torch.randint(x.shape[0], (self.pseudo_logits.shape[0],), generator=generator).to(x.device)
        self.pseudo_logits.copy_(torch.logit(decode(x[rows]).clamp(0.05, 0.95)))

    def pseudo_inputs(self) -> torch.Tensor:
        if self.clamped:
            return F.hardtanh(self.pseudo_values, 0.0, 1.0)
        return torch.sigmoid(self.pseudo_logits)

    def forward(self, batch_size: int) -> dist.Distribution:
        loc, scale = self._encoder[0].loc_scale(self.pseudo_inputs())
        return GaussianMixture(torch.zeros_like(loc[:, 0]), loc, scale, [batch_size])
