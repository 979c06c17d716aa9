"""The contract of each registry, checked on a component by name: what a prior, likelihood, guide,
network, structure, ELBO or data set must do for every other part of pyro-vae to work with it.

:func:`check_component` builds the component the way the factories do, inside a tiny VAE
(latent size 3, 4 x 4 grey images, double precision, a fixed seed), and runs it once: shapes, finite
values, samples the likelihood accepts, gradients that reach the parameters. pyro-vae runs it on
every plugin as it is imported; a plugin author can run it in their own tests::

    from pyro_vae.plugins import check_component
    check_component("model.prior", "laplace")     # raises ContractError naming what is wrong
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from pyro.distributions import Distribution
from pyro.infer import ELBO
from torch import nn

from pyro_vae.components.likelihoods import LIKELIHOODS
from pyro_vae.components.nets import NETWORKS
from pyro_vae.config import ConfigError, ModelConfig, TrainConfig
from pyro_vae.data.splits import DATASETS
from pyro_vae.model import VAE, EnumeratedWeights, Structure, build_vae
from pyro_vae.objectives.elbos import ELBOFlags, build_elbo
from pyro_vae.objectives.fast import build_loss
from pyro_vae.objectives.sites import record_structure
from pyro_vae.registry import by_config_key
from pyro_vae.seeding import fork_rng

L, B = 3, 4  # latent size, batch of the checks
SHAPE = (1, 4, 4)  # images of the checks (C, H, W)
D = 16  # their pixels


class ContractError(ValueError):
    """A component does not do what its registry promises the rest of pyro-vae."""


def check_component(config_key: str, name: str) -> None:
    """Check the component registered as ``name`` under ``config_key`` (``"model.prior"``,
    ``"model.likelihood"``, ``"model.guide"``, ``"model.network"``, ``"model.structure"``, ``"train.elbo"`` or
    ``"data.name"``) against its registry's contract.

    :raises ContractError: saying what the component did and what was expected.
    """
    if config_key not in _CHECKS:
        raise ContractError(f"no contract for {config_key!r}; the registries are {', '.join(sorted(_CHECKS))}")
    registry = by_config_key()[config_key]
    if name not in registry:
        raise ContractError(f"{registry.kind} {name!r} is not registered; registered: {', '.join(registry.names())}")
    with fork_rng("cpu"):
        torch.manual_seed(0)
        try:
            _CHECKS[config_key](name)
        except ContractError:
            raise
        except Exception as exc:  # a component that raises where it should answer breaks its contract too
            raise ContractError(f"{type(exc).__name__}: {exc}") from exc


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ContractError(message)


def _vae(**model) -> VAE:
    try:
        return build_vae(ModelConfig(latent_dim=L, hidden=(8,), **model), D, SHAPE).double()
    except ConfigError as exc:
        raise ContractError(f"building it in a VAE failed: {exc}") from None


def _distribution(d, what: str, batch: tuple, event: tuple) -> None:
    _expect(isinstance(d, Distribution), f"{what} must return a torch/Pyro Distribution, got {type(d).__name__}")
    _expect(
        tuple(d.batch_shape) == batch and tuple(d.event_shape) == event,
        f"{what} must return batch shape {batch} and event shape {event}, got batch {tuple(d.batch_shape)} and "
        f"event {tuple(d.event_shape)} (use .to_event(1) for a vector per image)",
    )


def _finite(t: torch.Tensor, what: str, shape: tuple) -> None:
    got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
    _expect(isinstance(t, torch.Tensor) and tuple(t.shape) == shape, f"{what} must have shape {shape}, got {got}")
    _expect(bool(torch.isfinite(t).all()), f"{what} is not finite: {t}")


def _module(obj, what: str) -> None:
    _expect(
        isinstance(obj, nn.Module),
        f"{what} must be a torch.nn.Module (its parameters train and are saved), got {type(obj).__name__}",
    )


def _whole_vae(vae: VAE) -> None:
    """Data drawn from the model itself is scored: finite log weights, gradients to every part."""
    x = vae.likelihood(vae.decoder(vae.prior(B).sample())).sample()
    _finite(x, "a sample of the likelihood", (B, D))
    vae.likelihood.validate(x, "the likelihood's own samples")
    log_w = vae.log_weights(x, 2)
    _finite(log_w, "log p(x, z) - log q(z | x) of the VAE built with it", (2, B))
    log_w.sum().backward()
    for part in ("encoder", "decoder"):
        grads = [p.grad for p in getattr(vae, part).parameters()]
        _expect(
            bool(grads) and all(g is not None for g in grads),
            f"the {part}'s parameters get no gradient through the log weights",
        )


def _prior(name: str) -> None:
    vae = _vae(prior=name)
    _module(vae.prior, "a prior")
    p = vae.prior(B)
    _distribution(p, f"prior {name!r} forward({B})", (B,), (L,))
    z = p.sample()
    _finite(p.log_prob(z), "log_prob of the prior's own sample", (B,))
    _whole_vae(vae)


def _likelihood(name: str) -> None:
    cls = LIKELIHOODS.get(name)
    _expect(
        callable(getattr(cls, "param_dim", None)),
        f"a likelihood needs param_dim(data_dim), the decoder's output size for D pixels; {cls.__name__} has none",
    )
    for method in ("mean", "validate"):
        _expect(callable(getattr(cls, method, None)), f"a likelihood needs {method}(...); {cls.__name__} has none")
    vae = _vae(likelihood=name)
    _module(vae.likelihood, "a likelihood")
    k = vae.likelihood.param_dim(D)
    _expect(isinstance(k, int) and k >= 1, f"param_dim({D}) must be a positive int, got {k!r}")
    h = torch.randn(B, k, dtype=torch.float64)
    _distribution(vae.likelihood(h), f"likelihood {name!r} forward(h) with h of shape {(B, k)}", (B,), (D,))
    _finite(vae.likelihood.mean(h), f"mean(h) with h of shape {(B, k)}", (B, D))
    _whole_vae(vae)


def _guide(name: str) -> None:
    vae = _vae(guide=name)
    _module(vae.encoder, "a guide")
    x = torch.rand(B, D, dtype=torch.float64).round()
    q = vae.encoder(x)
    _distribution(q, f"guide {name!r} forward(x) with x of shape {(B, D)}", (B,), (L,))
    _expect(q.has_rsample, "a guide's distribution must be reparameterised (has_rsample), so ELBO gradients flow")
    _finite(vae.encoder.point(x), "point(x), one code per image", (B, L))
    _whole_vae(vae)


def _network(name: str) -> None:
    network = NETWORKS.build(name, {}, cfg=ModelConfig(latent_dim=L, hidden=(8,), network=name), image_shape=SHAPE)
    for method in ("encoder", "decoder"):
        _expect(
            callable(getattr(network, method, None)),
            f"a network needs {method}(...); {type(network).__name__} has none",
        )
    made = network.encoder(D)
    _expect(
        isinstance(made, tuple) and len(made) == 2 and isinstance(made[1], int),
        f"encoder({D}) must return (module, features: int), got {made!r}",
    )
    trunk, features = made
    _module(trunk, f"encoder({D})[0]")
    _finite(trunk.double()(torch.rand(B, D, dtype=torch.float64)), "the encoder's features", (B, features))
    out = 2 * D  # two parameters per pixel, as a likelihood with a location and a scale asks
    decoder = network.decoder(L, out)
    _module(decoder, f"decoder({L}, {out})")
    decoder.double()
    _finite(decoder(torch.randn(B, L, dtype=torch.float64)), f"the decoder's output for z of shape {(B, L)}", (B, out))
    _finite(
        decoder(torch.randn(2, B, L, dtype=torch.float64)),
        f"the decoder's output for z of shape {(2, B, L)} (several particles)",
        (2, B, out),
    )
    _whole_vae(_vae(network=name))


def _elbo(name: str) -> None:
    cls = by_config_key()["train.elbo"].get(name)
    _expect(inspect.isclass(cls) and issubclass(cls, ELBO), f"an ELBO must be a pyro.infer.ELBO subclass, got {cls!r}")
    _expect(
        issubclass(cls, ELBOFlags),
        "an ELBO must subclass pyro_vae.objectives.elbos.Estimator (one method, "
        "objective(traces): the fast, captured path), or mix in pyro_vae.objectives.elbos.ELBOFlags over a Pyro "
        "ELBO "
        f"(class {cls.__name__}(ELBOFlags, Trace_ELBO)), which says what it needs",
    )
    particles = max(1, cls.min_particles)
    elbo = build_elbo(TrainConfig(elbo=name, num_particles=particles, iw_groups=2 if cls.grouped else 1))
    vae = _vae()
    x = torch.rand(B, D, dtype=torch.float64).round()
    loss = elbo.differentiable_loss(*vae.registered(), x)
    _finite(loss, "differentiable_loss on a batch", ())
    loss.backward()
    _expect(all(p.grad is not None for p in vae.encoder.parameters()), "the loss gives the encoder no gradient")


def _structure(name: str) -> None:
    """A structure (a model and guide over the images) builds from the config, is a
    :class:`~pyro_vae.model.Structure`, has sites the estimators handle (KL warm-up reaching every
    latent site), scores data with finite log weights and trains: the ``trace`` loss is finite and
    reaches its parameters; its samples and reconstructions are images."""
    structure = _vae(structure=name)
    _expect(
        isinstance(structure, Structure),
        "a structure must subclass pyro_vae.model.Structure (a Pyro model and "
        f"guide with the latent API), got {type(structure).__name__}",
    )
    x = torch.rand(B, D, dtype=torch.float64).round()
    problems = record_structure(structure.model, structure.guide, x, warmup=True).problems(warmup=True)
    _expect(not problems, "its model and guide: " + "; ".join(problems))
    draws = structure.log_weights(x, 2)
    if isinstance(draws, EnumeratedWeights):  # discrete guide sites, enumerated: (values..., 2, B)
        _finite(draws.log_w, "log p(x, z) - log q(z | x) (log_weights)", (*draws.log_w.shape[:-2], 2, B))
    else:
        _finite(draws, "log p(x, z) - log q(z | x) (log_weights)", (2, B))
    loss = build_loss(structure, TrainConfig(), x)(x)
    _finite(loss, "the trace loss of a batch", ())
    loss.backward()
    _expect(any(p.grad is not None for p in structure.parameters()), "the loss gives its parameters no gradient")
    with torch.no_grad():
        _finite(structure.sample(B), "sample(n)", (B, D))
        _finite(structure.reconstruct(x), "reconstruct(x)", (B, D))


def _data_set(name: str) -> None:
    loader: Callable = DATASETS.get(name)
    _expect(callable(loader), f"a data set must be a callable (DataConfig) -> Splits, got {loader!r}")
    try:
        inspect.signature(loader).bind(object())
    except TypeError:
        raise ContractError("a data set must be callable with one argument, the DataConfig") from None


_CHECKS: dict[str, Callable[[str], None]] = {
    "model.prior": _prior,
    "model.likelihood": _likelihood,
    "model.guide": _guide,
    "model.network": _network,
    "train.elbo": _elbo,
    "model.structure": _structure,
    "data.name": _data_set,
}
