r"""The ``mixture`` structure (``model.structure = "mixture"``): a Gaussian-mixture VAE that
clusters without labels, a discrete latent ``c`` over K components above a continuous ``z``, all in
``plate("data", B)``.

Generative model::

    c ~ Categorical(1/K, ..., 1/K)                 one-hot, event (K,)
    z | c ~ N(mu_c, diag sigma_c^2)                 learned per component, event (L,)
    x | z ~ likelihood(decoder(z))

Guide (Shu's GMVAE; Dilokthanakul et al., 2016)::

    q(c | x)    = Categorical(softmax(head(h(x))))          h: the network's encoder trunk
    q(z | x, c) = N(mu(h(x), c), diag sigma(h(x), c)^2)

``train.elbo = enum`` sums ``c`` out exactly (:class:`pyro.infer.TraceEnum_ELBO`: every component
is decoded for every image, K times the work of a ``vae`` step); ``trace`` samples it and trains
q(c | x) by the score function. The marginal prior p(z) = Σ_c p(c) p(z | c) is a mixture of
Gaussians, and the cluster of an image is the guide's most probable component,
:meth:`Mixture.clusters` (scored against labels by :mod:`pyro_vae.evaluation.clustering`).

The latent API's layers are the continuous ones (``z``); the discrete ``c`` is read through
:meth:`Mixture.clusters`, :meth:`~Mixture.components` and :meth:`~Mixture.sample_latents`
(which draws ``c`` first).

References:
    Dilokthanakul et al., *Deep Unsupervised Clustering with Gaussian Mixture Variational
    Autoencoders*, arXiv:1611.02648 (2016).
    Rui Shu, *Gaussian Mixture VAE: Lessons in Variational Inference, Generative Models, and Deep
    Nets* (2016), the guide q(c | x) q(z | x, c) used here.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae.components.guides import MIN_SCALE, log_var_range
from pyro_vae.components.likelihoods import LIKELIHOODS
from pyro_vae.config import ConfigError
from pyro_vae.hierarchical import ConditionalNormal, build_network
from pyro_vae.model import STRUCTURES, Structure, _held

MAX_COMPONENTS = 10_000

_instances = itertools.count()


def broadcast_cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a`` (..., m) and ``b`` (..., n) broadcast against each other but for the last
    dimension, and concatenated there (..., m + n): features of x beside an enumerated c (K, 1, K)."""
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(*shape, a.shape[-1]), b.expand(*shape, b.shape[-1])], -1)


class OneHotCategorical(dist.OneHotCategorical):
    """Pyro's one-hot categorical, drawn by the Gumbel-max trick, ``one_hot(argmax(logits + G))``
    with G standard Gumbel noise from ``torch.rand``: the same distribution without
    ``torch.multinomial``, whose argument checks read the probabilities back to the host (a sync a
    CUDA graph cannot hold). Enumeration, ``log_prob`` and ``expand`` are the parent's."""

    def sample(self, sample_shape: torch.Size | tuple = ()) -> torch.Tensor:
        logits = self.logits.expand(self._extended_shape(torch.Size(sample_shape)))
        tiny = torch.finfo(logits.dtype).tiny
        u = torch.rand(logits.shape, dtype=logits.dtype, device=logits.device).clamp(tiny, 1 - 1e-7)
        index = (logits - (-u.log()).log()).argmax(-1, keepdim=True)
        return torch.zeros_like(logits).scatter_(-1, index, 1.0)  # (F.one_hot checks the range on the host)


@STRUCTURES.register("mixture")
class Mixture(Structure):
    """K Gaussian components in the latent space, a discrete ``c`` above ``z`` (see the module's docstring)."""

    @dataclass(frozen=True)
    class Settings:
        components: int = 10  # K, the mixture's components (clusters)
        baseline: bool = False  # learn b(x), the score function's baseline of train.elbo=tracegraph

        def __post_init__(self) -> None:
            if isinstance(self.components, bool) or not 2 <= self.components <= MAX_COMPONENTS:
                raise ValueError(
                    f"components = {self.components} must be between 2 and {MAX_COMPONENTS:,} (the clusters "
                    "of the mixture; model.structure=vae has a single Gaussian prior)"
                )

    def __init__(self, cfg, data_dim: int, image_shape=None, settings: Settings | None = None, **_) -> None:
        super().__init__()
        settings = settings or self.Settings()
        if cfg.prior != "standard_normal":
            raise ConfigError(
                f"model.structure=mixture has its own prior, the mixture of K learned Gaussians p(z | c), so "
                f"model.prior={cfg.prior} has no place in it; leave model.prior=standard_normal"
            )
        if cfg.guide != "diag_normal":
            raise ConfigError(
                f"model.structure=mixture's guide q(z | x, c) is a diagonal Gaussian conditioned on the "
                f"component, not model.guide={cfg.guide}; leave model.guide=diag_normal"
            )
        k, dim = settings.components, cfg.latent_dim
        self.k, self.latent_dim, self.data_dim = k, dim, data_dim
        self.store_name = f"mixture{next(_instances)}"
        network, dense = build_network(cfg, image_shape, "mixture")
        self.likelihood = LIKELIHOODS.build(cfg.likelihood, cfg.settings, data_dim=data_dim, cfg=cfg)
        self.decoder = network.decoder(dim, self.likelihood.param_dim(data_dim))
        self.trunk, features = network.encoder(data_dim)
        self.classifier = nn.Linear(features, k)
        self.lower = ConditionalNormal(dense(features + k, 2 * dim), log_var_range(cfg))
        # b(x) for train.elbo=tracegraph (its score function's baseline), on the trunk's detached features
        self.baseline = nn.Linear(features, 1) if settings.baseline else None
        # p(z | c): component means spread as draws of N(0, I) (fixed by the run's seed), unit scales
        self.loc = nn.Parameter(torch.randn(k, dim))
        self.raw_scale = nn.Parameter(torch.full((k, dim), math.log(math.e - 1)))

    # -- the stories -------------------------------------------------------------------------------------------

    def prior_c(self, like: torch.Tensor, n: int) -> OneHotCategorical:
        return OneHotCategorical(logits=like.new_zeros(n, self.k))

    def prior_z(self, c: torch.Tensor) -> dist.Distribution:
        """p(z | c) for one-hot (or enumerated) ``c`` (..., K)."""
        return dist.Normal(c @ self.loc, F.softplus(c @ self.raw_scale) + MIN_SCALE).to_event(1)

    def model_story(self, x: torch.Tensor, emit) -> None:
        c = emit.latent("c", self.prior_c(x, x.shape[0]))
        z = emit.latent("z", self.prior_z(c))
        emit.observed("x", self.likelihood(self.decoder(z)), x)

    def guide_story(self, x: torch.Tensor, emit) -> None:
        h = self.trunk(x)
        c = emit.latent("c", OneHotCategorical(logits=self.classifier(h)))
        emit.latent("z", self.lower(broadcast_cat(h, c)))

    @property
    def has_score_baseline(self) -> bool:
        return self.baseline is not None

    def score_baseline(self, x: torch.Tensor) -> torch.Tensor | None:
        """b(x) (B,): a linear head on the trunk's features, detached (the baseline learns to
        predict the log weight; it does not shape the trunk)."""
        return None if self.baseline is None else self.baseline(self.trunk(x).detach()).squeeze(-1)

    # -- clusters ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """q(c | x) for the images ``x`` (B, D): (B, K)."""
        return torch.softmax(self.classifier(self.trunk(x)), -1)

    @torch.no_grad()
    def clusters(self, x: torch.Tensor) -> torch.Tensor:
        """Each image's most probable component under q(c | x): (B,) integers in 0..K-1."""
        return self.classifier(self.trunk(x)).argmax(-1)

    def components(self) -> int:
        return self.k

    # -- the latent API (the continuous layer z) -------------------------------------------------------------

    def layers(self) -> dict[str, int]:
        return {"z": self.latent_dim}

    def _q_z(self, x: torch.Tensor) -> dist.Distribution:
        """q(z | x, c) at the image's most probable component."""
        h = self.trunk(x)
        c = F.one_hot(self.classifier(h).argmax(-1), self.k).to(h.dtype)
        return self.lower(torch.cat([h, c], -1))

    def point(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The mean of q(z | x, c) at the most probable component."""
        return {"z": self._q_z(x).mean}

    def encode(self, x: torch.Tensor, draws: int = 100) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        q = self._q_z(x)
        return {"z": (q.mean, q.stddev)}

    @torch.no_grad()
    def complete(self, codes: dict[str, torch.Tensor] | torch.Tensor) -> dict[str, torch.Tensor]:
        return {"z": self._codes(codes)["z"]}

    @torch.no_grad()
    def decode(self, codes: dict[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
        return self.likelihood.mean(self.decoder(self._codes(codes)["z"]))

    @torch.no_grad()
    def sample_latents(
        self,
        n: int,
        temperature: float = 1.0,
        fixed: dict[str, torch.Tensor] | None = None,
        component: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """``n`` draws of z: c ~ p(c) (or ``component`` for all n), then z = mu_c + T sigma_c eps
        (a draw of p(z | c) scaled about its mean by ``temperature``); ``fixed["z"]`` is held."""
        held = _held(fixed, n)
        if "z" in held:
            return {"z": held["z"]}
        if component is not None and not 0 <= component < self.k:
            raise ValueError(f"component {component} does not exist: this mixture has components 0..{self.k - 1}")
        like = self.loc
        if component is None:
            c = self.prior_c(like, n).sample()
        else:
            c = F.one_hot(torch.full((n,), component, device=like.device), self.k).to(like.dtype)
        p = self.prior_z(c)
        loc = p.mean
        return {"z": loc + temperature * (p.sample() - loc)}

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``encoder``: the guide's (trunk, q(c | x), q(z | x, c)); ``decoder``: the model's (p(z | c),
        the decoder, the likelihood's own)."""
        guide = [self.trunk, self.classifier, self.lower]
        return {
            "encoder": [p for m in guide for p in m.parameters()],
            "decoder": [self.loc, self.raw_scale, *self.decoder.parameters(), *self.likelihood.parameters()],
        }
