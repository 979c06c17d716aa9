"""The VAE as a Pyro model/guide pair, and the factory that builds it from a config.

Generative model (sites ``z`` and ``x`` inside ``plate("data", B)``)::

    z ~ p(z)                     prior,       event (L,)
    x ~ p(x | decoder(z))        likelihood,  event (D,)

Guide: ``z ~ q(z | x)``, an amortized encoder. Parameters live in ordinary ``nn.Module``s and
reach the ELBO through the tensors the model and guide use, so a plain torch optimizer over
``vae.parameters()`` trains them (wrap in ``pyro.module`` for :class:`pyro.infer.SVI`).
"""

from __future__ import annotations

import itertools
from contextlib import nullcontext

import pyro
import torch
from pyro import poutine
from torch import nn

from pyro_vae.components.guides import GUIDES
from pyro_vae.components.likelihoods import LIKELIHOODS
from pyro_vae.components.nets import NETWORKS
from pyro_vae.components.priors import PRIORS
from pyro_vae.config import ConfigError, ModelConfig
from pyro_vae.data.pixels import chw

_instances = itertools.count()


class VAE(nn.Module):
    """Prior, likelihood, encoder (the guide's network) and decoder, injected as modules."""

    def __init__(self, prior: nn.Module, likelihood: nn.Module, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.prior = prior
        self.likelihood = likelihood
        self.encoder = encoder
        self.decoder = decoder
        self.store_name = f"vae{next(_instances)}"  # its name in Pyro's param store (see registered)

    def model(self, x: torch.Tensor, beta: torch.Tensor | None = None) -> None:
        """p(x, z) for a batch ``x`` of shape (B, D).

        :param beta: KL warm-up weight in (0, 1]: scales the ``z`` site here and in the guide, so
            every ELBO sees ``log p(x|z) + beta (log p(z) - log q(z|x))`` (its analytic KL too).
        """
        with pyro.plate("data", x.shape[0]):
            with _scaled(beta):
                z = pyro.sample("z", self.prior(x.shape[0]))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x: torch.Tensor, beta: torch.Tensor | None = None) -> None:
        """q(z | x) for a batch ``x`` of shape (B, D); ``beta`` as in :meth:`model`."""
        with pyro.plate("data", x.shape[0]):
            with _scaled(beta):
                pyro.sample("z", self.encoder(x))

    def traces(self, x: torch.Tensor, *args) -> tuple[poutine.Trace, poutine.Trace]:
        """``(guide_trace, model_trace)``: the guide run on ``x``, then the model replayed against
        the guide's samples (the pair every ELBO scores)."""
        guide_trace = poutine.trace(self.guide).get_trace(x, *args)
        model_trace = poutine.trace(poutine.replay(self.model, trace=guide_trace)).get_trace(x, *args)
        return guide_trace, model_trace

    def log_weights(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """``log p(x, z_k) - log q(z_k | x)`` for ``z_k ~ q(z | x)``, shape (num_samples, B).

        Their mean is an ELBO estimate, their log-mean-exp the IWAE bound on log p(x).
        """
        q = self.encoder(x)
        z = q.rsample((num_samples,))
        log_pz = self.prior(x.shape[0]).log_prob(z)
        log_px_z = self.likelihood(self.decoder(z)).log_prob(x)
        return log_px_z + log_pz - q.log_prob(z)

    def registered(self):
        """``(model, guide)`` that also register this VAE in Pyro's param store, for what sees
        parameters only there (``pyro.infer.SVI``, JIT ELBOs, ``RenyiELBO.loss_and_grads``). The
        name, :attr:`store_name`, is unique to this VAE, so several VAEs can be live at once."""

        def model(*args):
            pyro.module(self.store_name, self)
            self.model(*args)

        def guide(*args):
            pyro.module(self.store_name, self)
            self.guide(*args)

        return model, guide

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Expected pixels of p(x | z) at the guide's representative code (its mean for a
        Gaussian guide), shape (B, D)."""
        return self.likelihood.mean(self.decoder(self.encoder.point(x)))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Expected pixels of p(x | z), shape (..., D)."""
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Expected pixels for ``n`` draws of z from the prior, shape (n, D)."""
        return self.decode(self.prior(n).sample())


def _scaled(beta: torch.Tensor | None):
    return nullcontext() if beta is None else poutine.scale(scale=beta)


def build_vae(cfg: ModelConfig, data_dim: int, image_shape: tuple[int, ...] | None = None) -> VAE:
    """Turn the names in ``cfg`` into a :class:`VAE` for data of dimension ``data_dim``, images of
    ``image_shape`` ((H, W) or (C, H, W); the convolutional networks need it, the others ignore it).

    Components that cannot work together (a ``ValueError`` from a component's constructor)
    raise :class:`~pyro_vae.config.ConfigError` naming the choice and the fix.
    """
    try:
        shape = chw(image_shape) if image_shape is not None else None
        network = NETWORKS.build(cfg.network, cfg.settings, cfg=cfg, image_shape=shape)
        likelihood = LIKELIHOODS.build(cfg.likelihood, cfg.settings, data_dim=data_dim, cfg=cfg)
        decoder = network.decoder(cfg.latent_dim, likelihood.param_dim(data_dim))
        encoder = GUIDES.build(cfg.guide, cfg.settings, data_dim=data_dim, latent_dim=cfg.latent_dim, cfg=cfg,
                               network=network)  # fmt: skip
        prior = PRIORS.build(cfg.prior, cfg.settings, latent_dim=cfg.latent_dim, data_dim=data_dim, encoder=encoder,
                             cfg=cfg)  # fmt: skip
    except ValueError as exc:
        raise ConfigError(f"model.network={cfg.network}, model.prior={cfg.prior}, model.guide={cfg.guide}, "
                          f"model.likelihood={cfg.likelihood}: {exc}") from None  # fmt: skip
    return VAE(prior, likelihood, encoder, decoder)
