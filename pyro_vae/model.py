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
import logging
from contextlib import nullcontext

import pyro
import torch
from pyro import poutine
from torch import nn
from torch.overrides import TorchFunctionMode

from pyro_vae.components.guides import GUIDES
from pyro_vae.components.likelihoods import LIKELIHOODS
from pyro_vae.components.nets import NETWORKS
from pyro_vae.components.priors import PRIORS
from pyro_vae.config import MAX_MODEL_SIZE, ConfigError, ModelConfig
from pyro_vae.data.pixels import chw

log = logging.getLogger(__name__)

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
    raise :class:`~pyro_vae.config.ConfigError` naming the choice and the fix, and so does a VAE
    larger than :data:`~pyro_vae.config.MAX_MODEL_SIZE`, counted on the meta device
    (:func:`meta_vae`) before anything is allocated.
    """
    meta_vae(cfg, data_dim, image_shape)
    return _build(cfg, data_dim, image_shape)


def meta_vae(cfg: ModelConfig, data_dim: int, image_shape: tuple[int, ...] | None = None) -> VAE | None:
    """The VAE :func:`build_vae` would build, with its tensors on the meta device (shapes, no
    memory), once its size is checked against :data:`~pyro_vae.config.MAX_MODEL_SIZE`. Random
    streams are left as they were. Every built-in component builds there; for a plugin's component
    that cannot (one that reads a tensor's values while it is built), a warning says the size goes
    unchecked, and None is returned."""
    if isinstance(data_dim, bool) or not isinstance(data_dim, int) or data_dim < 1:
        raise ConfigError(f"the data dimension must be a positive integer, got {data_dim!r}")
    try:
        with torch.random.fork_rng(devices=[]), _OnMeta():
            vae = _build(cfg, data_dim, image_shape)
    except ConfigError:
        raise
    except Exception as exc:  # (what a component raises on the meta device varies: RuntimeError, NotImplementedError)
        log.warning("the VAE's size is not checked before it is built: a component does not build on PyTorch's meta "
                    "device (%s: %s)", type(exc).__name__, exc)  # fmt: skip
        return None
    size = sum(t.numel() for t in vae.state_dict().values())
    if size > MAX_MODEL_SIZE:
        shape = f" ({' x '.join(map(str, image_shape))})" if image_shape is not None else ""
        raise ConfigError(f"the VAE would hold {size:,} parameters and buffers, above the limit of {MAX_MODEL_SIZE:,} "
                          f"(pyro_vae.config.MAX_MODEL_SIZE, 2 GiB as float32): model.latent_dim = {cfg.latent_dim}, "
                          f"model.hidden = {list(cfg.hidden)}, model.network = {cfg.network}, images of "
                          f"{data_dim:,} values{shape}; choose a smaller latent_dim, smaller hidden widths or smaller "
                          "images")  # fmt: skip
    return vae


def _build(cfg: ModelConfig, data_dim: int, image_shape: tuple[int, ...] | None) -> VAE:
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


_SIZED = (torch.empty, torch.empty_strided, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn, torch.randint,
          torch.randperm, torch.arange, torch.eye, torch.linspace, torch.logspace)  # fmt: skip


class _OnMeta(TorchFunctionMode):
    """Tensors made by size (``torch.empty``, ``zeros``, ``randn``, ...: parameters, buffers,
    masks) go to the meta device, except single values; tensors made from values
    (``torch.tensor``) stay real, so that a constructor can read them (Pyro's MADE, in the
    ``iaf`` guide, calls ``.item()``); an operation on a meta tensor moves the others there."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SIZED and kwargs.get("device") is None:
            out = func(*args, **{**kwargs, "device": "meta"})
            return out if out.numel() > 1 else func(*args, **kwargs)
        if _any_meta(args) or _any_meta(kwargs):
            args, kwargs = _to_meta(args), _to_meta(kwargs)
        return func(*args, **kwargs)


def _any_meta(value) -> bool:
    if isinstance(value, torch.Tensor):
        return value.is_meta
    if isinstance(value, (list, tuple)):
        return any(_any_meta(v) for v in value)
    return isinstance(value, dict) and any(_any_meta(v) for v in value.values())


def _to_meta(value):
    if isinstance(value, torch.Tensor):
        return value.to("meta")
    if type(value) in (list, tuple):
        return type(value)(_to_meta(v) for v in value)
    return {k: _to_meta(v) for k, v in value.items()} if isinstance(value, dict) else value


def state_dict_problems(vae: VAE, tensors: dict, finite: bool = True) -> list[str]:
    """What keeps ``tensors`` from loading into ``vae``: tensors missing, extra, not tensors or of
    another shape, and (``finite``) NaN or infinite values, each naming the tensor."""
    expected = {name: tuple(t.shape) for name, t in vae.state_dict().items()}
    return tensor_problems(expected, {n: tuple(t.shape) if torch.is_tensor(t) else None for n, t in tensors.items()},
                           tensors if finite else {})  # fmt: skip


def tensor_problems(expected: dict[str, tuple], got: dict[str, tuple | None], values: dict | None = None) -> list[str]:
    """Differences between the ``expected`` and the ``got`` shapes by name (None: not a tensor), and
    the NaN or infinite values among ``values``."""
    problems = [f"missing tensor {n} {expected[n]}" for n in sorted(set(expected) - set(got))]
    problems += [f"extra tensor {n} {got[n]}" for n in sorted(set(got) - set(expected))]
    problems += [f"{n} is not a tensor" for n in sorted(set(got) & set(expected)) if got[n] is None]
    problems += [f"tensor {n} has shape {got[n]}, the VAE needs {expected[n]}"
                 for n in sorted(set(got) & set(expected)) if got[n] is not None and got[n] != expected[n]]  # fmt: skip
    for name in sorted(values or {}):
        t = values[name]
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            problems.append(f"tensor {name} has {bad:,} NaN or infinite value(s) of {t.numel():,}")
    return problems
