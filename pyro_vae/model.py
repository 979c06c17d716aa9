"""Model structures: a Pyro model p(x, z_1..z_L) and guide q(z | x) over images, chosen by name
(``model.structure``, the :data:`STRUCTURES` registry), and the factory that builds one from a config.

A structure writes its generative story once, against a two-method ``emit`` interface
(``emit.latent(name, fn, mask=None, scale=1.0)``, ``emit.observed(name, fn, value, mask=None, scale=1.0)``;
``mask`` as ``poutine.mask``, ``scale`` as ``poutine.scale``): :meth:`Structure.model_story` and
:meth:`Structure.guide_story`. Emitted with :class:`PyroEmit` they are the Pyro ``model`` and
``guide`` (``pyro.sample`` inside ``pyro.plate("data", B)``); emitted with :class:`LeanEmit` they
are the same sites with no effect handler at all (the training step's fast path). The default
structure, ``vae`` (:class:`VAE`)::

    z ~ p(z)                     prior,       event (L,)
    x ~ p(x | decoder(z))        likelihood,  event (D,)

with the guide ``z ~ q(z | x)``, an amortized encoder. ``hierarchical``
(:mod:`pyro_vae.hierarchical`) stacks L >= 2 latent layers. Parameters live in ordinary
``nn.Module``s and reach the ELBO through the tensors the model and guide use, so a plain torch
optimizer over ``model.parameters()`` trains them (:meth:`Structure.registered` for
:class:`pyro.infer.SVI`).

Evaluation, the figures, the latent commands and export read a structure through its latent API
(:meth:`Structure.layers`, :meth:`~Structure.log_weights`, :meth:`~Structure.point`,
:meth:`~Structure.encode`, :meth:`~Structure.decode`, :meth:`~Structure.sample_latents`), never
through its parts.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import nn
from torch.distributions import Distribution
from torch.overrides import TorchFunctionMode

from pyro_vae.components.guides import GUIDES
from pyro_vae.components.likelihoods import LIKELIHOODS
from pyro_vae.components.nets import NETWORKS
from pyro_vae.components.priors import PRIORS
from pyro_vae.config import MAX_MODEL_SIZE, ConfigError, ModelConfig
from pyro_vae.data.pixels import chw
from pyro_vae.registry import Registry

log = logging.getLogger(__name__)

STRUCTURES: Registry = Registry("model structure", config_key="model.structure")

_instances = itertools.count()


# ---------------------------------------------------------------- sites and the two ways to emit them


@dataclass(eq=False)
class Site:
    """One sample site of one run of a story (or of a Pyro trace): its distribution ``fn`` as the
    story passed it, its ``value`` (drawn, replayed or observed) and its ``scale``, the KL warm-up
    weight beta on latent sites (1.0 without warm-up, and on observed sites). ``enumerated``: a
    discrete guide site whose value is its whole support, in a dimension of its own left of the
    plates (parallel enumeration, as Pyro's ``poutine.enum`` lays it out). ``mask``: where the
    site counts (a bool tensor over the images, as ``poutine.mask``), its log-density 0 elsewhere.
    ``relaxed``: a discrete guide site whose value is a Gumbel-softmax draw (:class:`Relaxation`),
    ``fn`` still the categorical it relaxes."""

    name: str
    fn: Distribution
    value: torch.Tensor
    observed: bool
    scale: torch.Tensor | float = 1.0
    enumerated: bool = False
    mask: torch.Tensor | None = None
    relaxed: bool = False
    _lp: torch.Tensor | None = field(default=None, repr=False)

    def log_prob(self) -> torch.Tensor:
        """``fn.log_prob(value)``, unscaled, 0 where masked out (Pyro's ``scale_and_mask``),
        computed on the first call and kept."""
        if self._lp is None:
            lp = self.fn.log_prob(self.value)
            self._lp = lp if self.mask is None else torch.where(self.mask, lp, lp.new_zeros(()))
        return self._lp


@dataclass(frozen=True)
class Relaxation:
    """How a one-hot categorical guide site is drawn under the Gumbel-softmax relaxation (Jang et
    al., 2017; Maddison et al., 2017): softmax((logits + G) / temperature), G standard Gumbel noise
    (as ``RelaxedOneHotCategorical.rsample`` draws it), reparameterised; ``straight_through``: the one-hot of
    its argmax forward, the relaxed draw's gradient backward."""

    temperature: float
    straight_through: bool = False

    def draw(self, fn: Distribution) -> torch.Tensor:
        """One relaxed draw of the categorical ``fn`` (its batch shape), from ``torch.rand`` (the
        temperature a Python number: no tensor made from host data in the step)."""
        logits = fn.logits
        u = torch.rand(logits.shape, dtype=logits.dtype, device=logits.device)
        u = u.clamp(torch.finfo(logits.dtype).tiny, 1 - torch.finfo(logits.dtype).eps)
        soft = torch.softmax((logits - (-u.log()).log()) / self.temperature, -1)
        if not self.straight_through:
            return soft
        hard = torch.zeros_like(soft).scatter_(-1, soft.argmax(-1, keepdim=True), 1.0)
        return hard + (soft - soft.detach())

    @staticmethod
    def applies(fn: Distribution) -> bool:
        """Whether ``fn`` is a one-hot categorical (what the relaxation replaces)."""
        return isinstance(fn, torch.distributions.OneHotCategorical)


def enumerated_log_q(guide_sites) -> torch.Tensor | None:
    """log q of the enumerated guide sites' values, summed (the joint of their supports, each in
    its own dimension), unscaled: the weights ``exp(.)`` of an enumerated expectation; None when no
    site is enumerated."""
    terms = [site.log_prob() for site in guide_sites if site.enumerated]
    return sum(terms[1:], terms[0]) if terms else None


class EnumeratedWeights(NamedTuple):
    """The log weights of a guide whose discrete sites are enumerated: ``log_w`` = log p(x, z, c) -
    log q(z, c | x) of shape (*E, N, B), E the enumerated sites' supports (one dimension each), N
    draws of the continuous sites for every value c; ``log_q`` = log q(c | x), of a shape that
    broadcasts to ``log_w``'s. The ELBO is Σ_c q(c | x) log_w averaged over the N draws;
    ``log_w + log_q`` = log p(x, z, c) - log q(z | x, c), whose log-sum-exp over c and the draws,
    less log N, is the IWAE bound with c summed out exactly (stratified: N draws per value)."""

    log_w: torch.Tensor
    log_q: torch.Tensor


class LeanEmit:
    """Runs a story with no Pyro effect handler, recording its :class:`Site` s in order (``sites``).

    A latent site takes its value from ``values`` when given (a replay), else a draw: ``N =
    particles`` draws ``fn.rsample((N,))`` when ``fn``'s batch is the data batch (B,) alone, one
    ``fn.rsample()`` when N = 1 or when ``fn`` already has batch (N, B) (conditioned on a drawn
    latent), and ``fn`` expanded to (..., N, B) first when its batch is (..., 1, B) (conditioned
    on an enumerated site); ``fn.sample`` the same way for a distribution without ``rsample``.
    That is what Pyro draws inside its vectorised particle plate.

    With ``enumerate``, a discrete site (``has_enumerate_support`` and no ``rsample``) takes its
    whole support instead, in a new dimension left of the plates (data, and the particles when
    N > 1) and of the sites enumerated before it: Pyro's parallel enumeration
    (``config_enumerate`` and ``poutine.enum``), so everything downstream is computed once for
    every value. With ``relax``, a one-hot categorical site takes a Gumbel-softmax draw
    (:class:`Relaxation`). ``mask`` and ``scale`` are recorded on the site (``poutine.mask``,
    ``poutine.scale``; a latent site's scale multiplies ``beta``).

    :param beta: the KL warm-up weight, the ``scale`` of every latent site (None: 1.0).
    """

    def __init__(
        self,
        particles: int = 1,
        beta: torch.Tensor | float | None = None,
        values: dict[str, torch.Tensor] | None = None,
        enumerate: bool = False,
        relax: Relaxation | None = None,
    ) -> None:
        self.particles, self.beta, self.values, self.enumerate = particles, beta, values, enumerate
        self.relax = relax
        self.sites: dict[str, Site] = {}
        self._enum_dim = -2 if particles > 1 else -1  # the leftmost dimension in use (the plates')

    def latent(self, name: str, fn: Distribution, mask: torch.Tensor | None = None, scale: float = 1.0) -> torch.Tensor:
        if name in self.sites:
            raise ValueError(f"sample site {name!r} is emitted twice; every site needs its own name")
        enumerated = relaxed = False
        if self.values is not None and name in self.values:
            value = self.values[name]
            if self.particles > 1 and len(fn.batch_shape) == 1 and _particle_size(value, fn) == 1:
                fn = fn.expand((self.particles, *fn.batch_shape))  # (an enumerated value: as Pyro's plate expands it)
        elif self.enumerate and fn.has_enumerate_support and not fn.has_rsample:
            if self.particles > 1 and len(fn.batch_shape) == 1:  # (Pyro's particle plate expands it so)
                fn = fn.expand((self.particles, *fn.batch_shape))
            self._enum_dim -= 1
            support = fn.enumerate_support(expand=False)
            value = support.reshape((support.shape[0],) + (1,) * (-self._enum_dim - 1) + fn.event_shape)
            enumerated = True
        elif self.relax is not None and Relaxation.applies(fn):
            value, relaxed = self._draw(fn, self.relax), True
        else:
            value = self._draw(fn)
        weight = scale if self.beta is None else (self.beta if scale == 1.0 else self.beta * scale)
        self.sites[name] = Site(name, fn, value, False, weight, enumerated, mask, relaxed)
        return value

    def _draw(self, fn: Distribution, relax: Relaxation | None = None) -> torch.Tensor:
        batch, n = fn.batch_shape, self.particles
        if n > 1 and len(batch) == 1 and fn.has_rsample:
            return fn.rsample((n,))
        if n > 1 and len(batch) == 1:  # (expanded first: torch.multinomial draws in another order for (N,))
            fn = fn.expand((n, *batch))
        elif n > 1 and len(batch) > 2 and batch[-2] == 1:
            fn = fn.expand(batch[:-2] + (n, batch[-1]))
        if relax is not None:
            return relax.draw(fn)
        return fn.rsample() if fn.has_rsample else fn.sample()

    def observed(
        self, name: str, fn: Distribution, value: torch.Tensor, mask: torch.Tensor | None = None, scale: float = 1.0
    ) -> torch.Tensor:
        if name in self.sites:
            raise ValueError(f"sample site {name!r} is emitted twice; every site needs its own name")
        if self.particles > 1 and len(fn.batch_shape) == 1:  # (no draw before it: expanded as Pyro's plate does)
            fn = fn.expand((self.particles, *fn.batch_shape))
        self.sites[name] = Site(name, fn, value, True, scale, mask=mask)
        return value


def _particle_size(value: torch.Tensor, fn: Distribution) -> int | None:
    """The size of ``value``'s particle dimension (left of the data's), None if it has none."""
    dim = value.dim() - fn.event_dim - 2
    return value.shape[dim] if dim >= 0 else None


class PyroEmit:
    """Runs a story through ``pyro.sample``: latent sites scaled by ``beta`` (``poutine.scale``)."""

    def __init__(self, beta: torch.Tensor | float | None = None) -> None:
        self.beta = beta

    def latent(self, name: str, fn: Distribution, mask: torch.Tensor | None = None, scale: float = 1.0) -> torch.Tensor:
        with _scaled(self.beta), _scaled(None if scale == 1.0 else scale), _masked(mask):
            return pyro.sample(name, fn)

    def observed(
        self, name: str, fn: Distribution, value: torch.Tensor, mask: torch.Tensor | None = None, scale: float = 1.0
    ) -> torch.Tensor:
        with _scaled(None if scale == 1.0 else scale), _masked(mask):
            return pyro.sample(name, fn, obs=value)


def labelled(labels: torch.Tensor | None) -> dict:
    """The keyword arguments that give a story the batch's labels (none without: a story that does
    not learn from labels takes none)."""
    return {} if labels is None else {"labels": labels}


def _scaled(beta: torch.Tensor | float | None):
    return nullcontext() if beta is None else poutine.scale(scale=beta)


def _masked(mask: torch.Tensor | None):
    return nullcontext() if mask is None else poutine.mask(mask=mask)


def _moments(fn: Distribution, draws: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of ``fn``: exact where it has them, else from ``draws`` samples."""
    try:
        return fn.mean, fn.stddev
    except NotImplementedError:
        z = fn.sample((draws,))
        return z.mean(0), z.std(0)


class _PointEmit:
    """Runs a guide story at representative codes: every latent takes its distribution's mean
    (given the layers above at theirs), recording it in ``codes`` and (``scales``) the standard
    deviation in ``loc_scale``."""

    def __init__(self, scales: bool = False, draws: int = 100) -> None:
        self.scales, self.draws = scales, draws
        self.codes: dict[str, torch.Tensor] = {}
        self.loc_scale: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def latent(self, name: str, fn: Distribution, mask=None, scale: float = 1.0) -> torch.Tensor:
        if self.scales:
            loc, scale = _moments(fn, self.draws)
            self.loc_scale[name] = (loc, scale)
        else:
            try:
                loc = fn.mean
            except NotImplementedError:
                loc = fn.sample((self.draws,)).mean(0)
        self.codes[name] = loc
        return loc

    def observed(self, name: str, fn: Distribution, value: torch.Tensor, mask=None, scale: float = 1.0) -> torch.Tensor:
        return value


class _AncestralEmit:
    """Runs a model story top-down without data. A latent takes its code from ``codes`` when given;
    else, with ``temperature`` None, its conditional mean given the layers above (the top layer
    must be given); else a draw at that temperature: the top layer's scaled about the origin
    (T z), a lower layer's about its conditional mean (mu + T (z - mu)). ``values`` holds every
    latent's code, ``likelihood`` the observed site's distribution."""

    def __init__(self, codes: dict[str, torch.Tensor], temperature: float | None = None) -> None:
        self.codes, self.temperature = codes, temperature
        self.values: dict[str, torch.Tensor] = {}
        self.likelihood: Distribution | None = None

    def latent(self, name: str, fn: Distribution, mask=None, scale: float = 1.0) -> torch.Tensor:
        top = not self.values
        if name in self.codes:
            value = self.codes[name]
        elif self.temperature is None:
            if top:
                raise ValueError(
                    f"the code of the top layer {name!r} is needed: only the layers below the ones "
                    "given are filled in (at their conditional means)"
                )
            value = fn.mean
        else:
            value = fn.sample()
            if self.temperature != 1:
                value = self.temperature * value if top else fn.mean + self.temperature * (value - fn.mean)
        self.values[name] = value
        return value

    def observed(self, name: str, fn: Distribution, value: torch.Tensor, mask=None, scale: float = 1.0) -> torch.Tensor:
        self.likelihood = fn
        return value


# ---------------------------------------------------------------- structures


class Structure(nn.Module):
    """A Pyro model p(x, z_1..z_L) and guide q(z_1..z_L | x) over images x (B, D): every sample site
    inside ``pyro.plate("data", B)`` (dim -1) and no other plate; the KL warm-up weight ``beta``
    scales every latent site, in the model and in the guide.

    A subclass either writes the two stories, :meth:`model_story` (every model site, the top latent
    first, the observed ``x`` last) and :meth:`guide_story` (every latent site, in the model's
    order), from which :meth:`model`, :meth:`guide` and the fast per-step traces all come; or it
    overrides :meth:`model` and :meth:`guide` with plain Pyro (then Pyro traces every step). Every
    story must work when a latent's value has leading particle dimensions (N, B, ...).

    The latent API (what evaluation, the figures, the latent commands and export use) has generic
    versions here, run through the stories; :meth:`layers` must be given, and :meth:`decode`,
    :meth:`complete` and :meth:`sample_latents` need the story-writing subclass to set an integer
    ``data_dim`` (they run the model story on a dummy batch).
    """

    max_plate_nesting = 1
    uses_labels = False  # its stories take the batch's labels (labels=, -1 where unknown) in training
    likelihood: nn.Module  # .validate(x, source), .mean(h): a likelihood component (annotation only: see nn.Module)

    # -- the generative story, written once --------------------------------------------------------------------

    def model_story(self, x: torch.Tensor, emit) -> None:
        """Emit every model site for the images ``x`` (B, D): the top latent first, the observed ``x`` last."""
        raise NotImplementedError(
            f"{type(self).__name__} writes no model story; override model_story and guide_story, or model and guide"
        )

    def guide_story(self, x: torch.Tensor, emit) -> None:
        """Emit every latent site of the guide, in the model's order (top first)."""
        raise NotImplementedError(
            f"{type(self).__name__} writes no guide story; override model_story and guide_story, or model and guide"
        )

    @property
    def has_stories(self) -> bool:
        """Whether both stories are written (and the Pyro model and guide are theirs)."""
        cls = type(self)
        return (
            cls.model_story is not Structure.model_story
            and cls.guide_story is not Structure.guide_story
            and cls.model is Structure.model
            and cls.guide is Structure.guide
        )

    # -- Pyro ----------------------------------------------------------------------------------------------------

    def model(self, x: torch.Tensor, beta: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> None:
        """p(x, z) for a batch ``x`` of shape (B, D).

        :param beta: KL warm-up weight in (0, 1]: scales every latent site here and in the guide, so
            every ELBO sees ``log p(x|z) + beta (log p(z) - log q(z|x))`` (its analytic KL too).
        :param labels: the batch's labels (B,), -1 where unknown, for a structure that learns from
            them (:attr:`uses_labels`); passed on to the story.
        """
        with pyro.plate("data", x.shape[0], device=x.device):
            self.model_story(x, PyroEmit(beta), **labelled(labels))

    def guide(self, x: torch.Tensor, beta: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> None:
        """q(z | x) for a batch ``x`` of shape (B, D); ``beta`` and ``labels`` as in :meth:`model`."""
        with pyro.plate("data", x.shape[0], device=x.device):
            self.guide_story(x, PyroEmit(beta), **labelled(labels))

    def traces(self, x: torch.Tensor, *args) -> tuple[poutine.Trace, poutine.Trace]:
        """``(guide_trace, model_trace)``: the guide run on ``x``, then the model replayed against
        the guide's samples (the pair every ELBO scores)."""
        guide_trace = poutine.trace(self.guide).get_trace(x, *args)
        model_trace = poutine.trace(poutine.replay(self.model, trace=guide_trace)).get_trace(x, *args)
        return guide_trace, model_trace

    def registered(self):
        """``(model, guide)`` that also register this structure in Pyro's param store, for what sees
        parameters only there (``pyro.infer.SVI``, JIT ELBOs, ``RenyiELBO.loss_and_grads``). The
        name, ``store_name``, is unique to this structure, so several can be live at once."""
        if not isinstance(getattr(self, "store_name", None), str):
            self.store_name = f"{type(self).__name__.lower()}{next(_instances)}"

        def model(*args):
            pyro.module(self.store_name, self)
            self.model(*args)

        def guide(*args):
            pyro.module(self.store_name, self)
            self.guide(*args)

        return model, guide

    def validate(self, x: torch.Tensor, source: str) -> None:
        """Reject data outside the likelihood's support (a ``ValueError`` naming ``source``)."""
        self.likelihood.validate(x, source)

    # -- the latent API ------------------------------------------------------------------------------------------

    def layers(self) -> dict[str, int]:
        """Latent site -> its size, top first."""
        raise NotImplementedError(
            f"{type(self).__name__} does not list its latent layers: implement layers() -> {{site: size}}, top first"
        )

    def log_weights(self, x: torch.Tensor, num_samples: int) -> torch.Tensor | EnumeratedWeights:
        """``log p(x, z_k) - log q(z_k | x)`` for ``z_k ~ q(z | x)``, shape (num_samples, B): every
        model site's log-density minus every guide site's, unscaled.

        Their mean is an ELBO estimate, their log-mean-exp the IWAE bound on log p(x). A structure
        whose guide has discrete sites (written as stories) enumerates them: the draws are
        :class:`EnumeratedWeights`, ``num_samples`` draws of the continuous sites for every value
        of the discrete ones.
        """
        if self.has_stories:
            guide = LeanEmit(num_samples, enumerate=True)
            self.guide_story(x, guide)
            model = LeanEmit(num_samples, values={name: s.value for name, s in guide.sites.items()})
            self.model_story(x, model)
            model_sites, guide_sites = list(model.sites.values()), list(guide.sites.values())
        else:
            particles = pyro.plate(
                "num_particles_vectorized", num_samples, dim=-(self.max_plate_nesting + 1), device=x.device
            )
            guide_trace = poutine.trace(particles(self.guide)).get_trace(x)
            model_trace = poutine.trace(poutine.replay(particles(self.model), trace=guide_trace)).get_trace(x)
            model_sites, guide_sites = trace_sites(model_trace).values(), trace_sites(guide_trace).values()
        log_w = sum(s.log_prob() for s in model_sites) - sum(s.log_prob() for s in guide_sites)
        log_q = enumerated_log_q(guide_sites)
        if log_q is None:
            return log_w.unsqueeze(0) if log_w.dim() == 1 else log_w
        if num_samples == 1:  # (no particle dimension was made: add it)
            log_w, log_q = log_w.unsqueeze(-2), log_q.unsqueeze(-2)
        return EnumeratedWeights(log_w, log_q)

    def weigher(self, x: torch.Tensor) -> Callable[[int], torch.Tensor]:
        """:meth:`log_weights` of ``x`` as a function of the number of samples (an evaluation draws
        K samples per image in chunks); a structure may build what does not depend on the draws
        once (the one-layer VAE encodes once)."""
        return lambda num_samples: self.log_weights(x, num_samples)

    def point(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """A representative code per layer for the images ``x`` (B, D), top first: each layer's guide
        mean given the layers above at theirs (B, d) (from the guide story; a guide distribution
        without a mean is averaged over 100 draws)."""
        emit = _PointEmit()
        self.guide_story(x, emit)
        return emit.codes

    def encode(self, x: torch.Tensor, draws: int = 100) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``(loc, scale)`` of q per layer, top first, each given the layers above at their
        :meth:`point` codes: exact where the distribution has a mean and a standard deviation, else
        over ``draws`` samples."""
        emit = _PointEmit(scales=True, draws=draws)
        self.guide_story(x, emit)
        return emit.loc_scale

    @torch.no_grad()
    def complete(self, codes: dict[str, torch.Tensor] | torch.Tensor) -> dict[str, torch.Tensor]:
        """Every layer's code, top first: those given (n, d), the missing lower layers at their
        conditional means given the layer above. A tensor is the top layer's code."""
        codes = self._codes(codes)
        emit = _AncestralEmit(codes)
        self._run_model(_rows(codes), emit)
        return emit.values

    @torch.no_grad()
    def decode(self, codes: dict[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Expected pixels (n, D) from the codes of :meth:`complete` (the mean of the observed site)."""
        codes = self._codes(codes)
        emit = _AncestralEmit(codes)
        self._run_model(_rows(codes), emit)
        return emit.likelihood.mean

    @torch.no_grad()
    def sample_latents(
        self, n: int, temperature: float = 1.0, fixed: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Ancestral draws of every layer for ``n`` images, top first (n, d): the top layer from the
        prior scaled about the origin by ``temperature``, each lower one from p(z_i | z_{i+1}) scaled
        about its conditional mean; the layers in ``fixed`` ((d,) or (n, d)) are held there."""
        emit = _AncestralEmit(_held(fixed, n), temperature)
        self._run_model(n, emit)
        return emit.values

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Expected pixels for ``n`` ancestral draws of the latents, shape (n, D)."""
        return self.decode(self.sample_latents(n))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Expected pixels at the guide's representative codes (:meth:`point`), shape (B, D)."""
        return self.decode(self.point(x))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The parameters by role, for the laboratory: ``encoder`` (the guide's alone), ``decoder``
        (the model's alone) and, where some serve both, ``shared``. This generic version cannot
        tell them apart: everything is in ``all``."""
        return {"all": list(self.parameters())}

    def components(self) -> int:
        """How many clusters (mixture components) :meth:`clusters` assigns images to; 0 for a
        structure that does not cluster (this generic version)."""
        return 0

    def clusters(self, x: torch.Tensor) -> torch.Tensor:
        """Each image's cluster (B,), integers in 0 .. :meth:`components` - 1."""
        raise NotImplementedError(f"{type(self).__name__} does not cluster images (components() is 0)")

    @property
    def has_score_baseline(self) -> bool:
        """Whether :meth:`score_baseline` gives a learned baseline (this generic version: no)."""
        return False

    def score_baseline(self, x: torch.Tensor) -> torch.Tensor | None:
        """A learned baseline b(x) (B,) of the log weight, for score-function gradients of discrete
        guide sites (``train.elbo=tracegraph``); None for a structure without one (this generic
        version)."""
        return None

    def classes(self) -> int:
        """How many classes :meth:`classify` tells apart (a structure that learns from labels,
        :attr:`uses_labels`); 0 for one that does not classify (this generic version)."""
        return 0

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Each image's most probable class (B,), integers in 0 .. :meth:`classes` - 1."""
        raise NotImplementedError(f"{type(self).__name__} does not classify images (classes() is 0)")

    # -- helpers ------------------------------------------------------------------------------------------------

    def _codes(self, codes: dict[str, torch.Tensor] | torch.Tensor) -> dict[str, torch.Tensor]:
        if isinstance(codes, torch.Tensor):
            return {next(iter(self.layers())): codes}
        unknown = sorted(set(codes) - set(self.layers()))
        if unknown:
            raise ValueError(f"codes for {unknown}: this model's latent layers are {', '.join(self.layers())}")
        return dict(codes)

    def _run_model(self, n: int, emit) -> None:
        """The model story on a dummy batch of ``n`` images (zeros), for the latent API."""
        data_dim = getattr(self, "data_dim", None)
        if isinstance(data_dim, bool) or not isinstance(data_dim, int):
            raise NotImplementedError(
                f"{type(self).__name__} has no integer data_dim, which the generic decode, "
                "complete and sample_latents need (they run the model story); set it, or "
                "implement them"
            )
        like = next(itertools.chain(self.parameters(), self.buffers()), None)
        dtype = like.dtype if like is not None and like.is_floating_point() else torch.get_default_dtype()
        x = torch.zeros(n, data_dim, dtype=dtype, device=like.device if like is not None else None)
        self.model_story(x, emit)


def _rows(codes: dict[str, torch.Tensor]) -> int:
    if not codes:
        raise ValueError("no codes given: give at least the top layer's")
    return next(iter(codes.values())).shape[0]


def _held(fixed: dict[str, torch.Tensor] | None, n: int) -> dict[str, torch.Tensor]:
    return {name: z.expand(n, z.shape[-1]) if z.dim() == 1 else z for name, z in (fixed or {}).items()}


def trace_sites(trace: poutine.Trace) -> dict[str, Site]:
    """The sample sites of a Pyro trace (subsample sites left out) as :class:`Site` records, in order."""
    return {
        name: Site(
            name,
            node["fn"],
            node["value"],
            bool(node["is_observed"]),
            node["scale"],
            node["infer"].get("_enumerate_dim") is not None,
            node["mask"] if torch.is_tensor(node["mask"]) else None,
            bool(node["infer"].get("relaxed", False)),
        )
        for name, node in trace.nodes.items()
        if node["type"] == "sample" and not site_is_subsample(node)
    }


class VAE(Structure):
    """The ``vae`` structure: one latent ``z`` with prior, likelihood, encoder (the guide's network)
    and decoder injected as modules."""

    def __init__(self, prior: nn.Module, likelihood: nn.Module, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.prior = prior
        self.likelihood = likelihood
        self.encoder = encoder
        self.decoder = decoder
        self.store_name = f"vae{next(_instances)}"  # its name in Pyro's param store (see registered)

    def model_story(self, x: torch.Tensor, emit) -> None:
        z = emit.latent("z", self.prior(x.shape[0]))
        emit.observed("x", self.likelihood(self.decoder(z)), x)

    def guide_story(self, x: torch.Tensor, emit) -> None:
        emit.latent("z", self.encoder(x))

    def log_weights(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """``log p(x, z_k) - log q(z_k | x)`` for ``z_k ~ q(z | x)``, shape (num_samples, B).

        Their mean is an ELBO estimate, their log-mean-exp the IWAE bound on log p(x).
        """
        return self.weigher(x)(num_samples)

    def weigher(self, x: torch.Tensor) -> Callable[[int], torch.Tensor]:
        """:meth:`log_weights` of ``x`` as a function of the number of samples, with q(z | x) and
        the prior built once: an evaluation that draws K samples in chunks encodes each batch once
        (the draws are the same as one call per chunk would make)."""
        q, prior = self.encoder(x), self.prior(x.shape[0])

        def log_weights(num_samples: int) -> torch.Tensor:
            z = q.rsample((num_samples,))
            log_pz = prior.log_prob(z)
            log_px_z = self.likelihood(self.decoder(z)).log_prob(x)
            return log_px_z + log_pz - q.log_prob(z)

        return log_weights

    def layers(self) -> dict[str, int]:
        with torch.no_grad():
            return {"z": int(self.prior(1).event_shape[-1])}

    def point(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The guide's representative code (its mean for a Gaussian guide)."""
        return {"z": self.encoder.point(x)}

    def encode(self, x: torch.Tensor, draws: int = 100) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Mean and scale of q(z | x): exact for Gaussian guides (``loc_scale``), the mean and
        standard deviation of ``draws`` samples otherwise."""
        if hasattr(self.encoder, "loc_scale"):
            return {"z": tuple(self.encoder.loc_scale(x))}
        z = self.encoder(x).sample((draws,))
        return {"z": (z.mean(0), z.std(0))}

    @torch.no_grad()
    def complete(self, codes: dict[str, torch.Tensor] | torch.Tensor) -> dict[str, torch.Tensor]:
        return {"z": self._codes(codes)["z"]}

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Expected pixels of p(x | z) at the guide's representative code (its mean for a
        Gaussian guide), shape (B, D)."""
        return self.likelihood.mean(self.decoder(self.encoder.point(x)))

    @torch.no_grad()
    def decode(self, z: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        """Expected pixels of p(x | z), shape (..., D); ``z`` a tensor or ``{"z": tensor}``."""
        if isinstance(z, dict):
            z = self._codes(z)["z"]
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def sample_latents(
        self, n: int, temperature: float = 1.0, fixed: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"z": T z}`` for ``n`` draws z ~ p(z) (or ``fixed["z"]``)."""
        held = _held(fixed, n)
        if "z" in held:
            return {"z": held["z"]}
        return {"z": temperature * self.prior(n).sample()}

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Expected pixels for ``n`` draws of z from the prior, shape (n, D)."""
        return self.decode(self.prior(n).sample())

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The encoder's and the decoder's parameters (the laboratory's split since it began; a
        prior's or likelihood's own parameters are in neither)."""
        return {"encoder": list(self.encoder.parameters()), "decoder": list(self.decoder.parameters())}


# ---------------------------------------------------------------- building from a config


@STRUCTURES.register("vae")
def vae_structure(
    cfg: ModelConfig, data_dim: int, image_shape: tuple[int, ...] | None = None, settings=None, **_
) -> VAE:
    """The ``vae`` structure: one latent layer of ``model.latent_dim``, the components by name."""
    try:
        shape = chw(image_shape) if image_shape is not None else None
        network = NETWORKS.build(cfg.network, cfg.settings, cfg=cfg, image_shape=shape)
        likelihood = LIKELIHOODS.build(cfg.likelihood, cfg.settings, data_dim=data_dim, cfg=cfg)
        decoder = network.decoder(cfg.latent_dim, likelihood.param_dim(data_dim))
        encoder = GUIDES.build(
            cfg.guide, cfg.settings, data_dim=data_dim, latent_dim=cfg.latent_dim, cfg=cfg, network=network
        )
        prior = PRIORS.build(
            cfg.prior, cfg.settings, latent_dim=cfg.latent_dim, data_dim=data_dim, encoder=encoder, cfg=cfg
        )
    except ValueError as exc:
        raise ConfigError(
            f"model.network={cfg.network}, model.prior={cfg.prior}, model.guide={cfg.guide}, "
            f"model.likelihood={cfg.likelihood}: {exc}"
        ) from None
    return VAE(prior, likelihood, encoder, decoder)


def build_vae(cfg: ModelConfig, data_dim: int, image_shape: tuple[int, ...] | None = None) -> Structure:
    """Turn the names in ``cfg`` into the :class:`Structure` ``cfg.structure`` (default ``vae``, a
    :class:`VAE`) for data of dimension ``data_dim``, images of ``image_shape`` ((H, W) or (C, H, W);
    the convolutional networks need it, the others ignore it).

    Components that cannot work together (a ``ValueError`` from a constructor) raise
    :class:`~pyro_vae.config.ConfigError` naming the choice and the fix, and so does a model
    larger than :data:`~pyro_vae.config.MAX_MODEL_SIZE`, counted on the meta device
    (:func:`meta_vae`) before anything is allocated.
    """
    meta_vae(cfg, data_dim, image_shape)
    return _build(cfg, data_dim, image_shape)


build_model = build_vae


def meta_vae(cfg: ModelConfig, data_dim: int, image_shape: tuple[int, ...] | None = None) -> Structure | None:
    """The model :func:`build_vae` would build, with its tensors on the meta device (shapes, no
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
        log.warning(
            "the VAE's size is not checked before it is built: a component does not build on PyTorch's meta "
            "device (%s: %s)",
            type(exc).__name__,
            exc,
        )
        return None
    size = sum(t.numel() for t in vae.state_dict().values())
    if size > MAX_MODEL_SIZE:
        shape = f" ({' x '.join(map(str, image_shape))})" if image_shape is not None else ""
        structure = f"model.structure = {cfg.structure}, " if cfg.structure != "vae" else ""
        raise ConfigError(
            f"the VAE would hold {size:,} parameters and buffers, above the limit of {MAX_MODEL_SIZE:,} "
            f"(pyro_vae.config.MAX_MODEL_SIZE, 2 GiB as float32): {structure}model.latent_dim = "
            f"{cfg.latent_dim}, model.hidden = {list(cfg.hidden)}, model.network = {cfg.network}, images "
            f"of {data_dim:,} values{shape}; choose a smaller latent_dim, smaller hidden widths or "
            "smaller images"
        )
    return vae


def _build(cfg: ModelConfig, data_dim: int, image_shape: tuple[int, ...] | None) -> Structure:
    """The structure ``cfg.structure`` built by its registered factory, with its ``[model.NAME]``
    settings; a ``ValueError`` from the factory or the settings is a :class:`ConfigError`."""
    name = cfg.structure
    try:
        factory = STRUCTURES.get(name)
        settings = STRUCTURES.settings(name, cfg.settings)
    except ValueError as exc:
        raise ConfigError(f"model.structure={name}: {exc}") from None
    try:
        model = factory(cfg=cfg, data_dim=data_dim, image_shape=image_shape, settings=settings)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(
            f"model.structure={name}, model.network={cfg.network}, model.prior={cfg.prior}, "
            f"model.guide={cfg.guide}, model.likelihood={cfg.likelihood}: {exc}"
        ) from None
    if not isinstance(model, Structure):
        raise ConfigError(
            f"model.structure={name} built a {type(model).__name__}, not a pyro_vae.model.Structure; "
            "a structure subclasses Structure (see docs/components.md)"
        )
    if cfg.init == "he":
        he_init(model)
    return model


@torch.no_grad()
def he_init(module: torch.nn.Module) -> None:
    """Every ``nn.Linear`` weight of ``module`` drawn from N(0, 2 / fan_in) (He et al., 2015, as
    Tomczak & Welling initialise their models; ``model.init = "he"``); biases keep PyTorch's."""
    for m in module.modules():
        if isinstance(m, torch.nn.Linear):
            m.weight.normal_(0.0, math.sqrt(2.0 / m.in_features))


_SIZED = (
    torch.empty,
    torch.empty_strided,
    torch.zeros,
    torch.ones,
    torch.full,
    torch.rand,
    torch.randn,
    torch.randint,
    torch.randperm,
    torch.arange,
    torch.eye,
    torch.linspace,
    torch.logspace,
)


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


def state_dict_problems(vae: nn.Module, tensors: dict, finite: bool = True) -> list[str]:
    """What keeps ``tensors`` from loading into ``vae``: tensors missing, extra, not tensors or of
    another shape, and (``finite``) NaN or infinite values, each naming the tensor."""
    expected = {name: tuple(t.shape) for name, t in vae.state_dict().items()}
    return tensor_problems(
        expected,
        {n: tuple(t.shape) if torch.is_tensor(t) else None for n, t in tensors.items()},
        tensors if finite else {},
    )


def tensor_problems(expected: dict[str, tuple], got: dict[str, tuple | None], values: dict | None = None) -> list[str]:
    """Differences between the ``expected`` and the ``got`` shapes by name (None: not a tensor), and
    the NaN or infinite values among ``values``."""
    problems = [f"missing tensor {n} {expected[n]}" for n in sorted(set(expected) - set(got))]
    problems += [f"extra tensor {n} {got[n]}" for n in sorted(set(got) - set(expected))]
    problems += [f"{n} is not a tensor" for n in sorted(set(got) & set(expected)) if got[n] is None]
    problems += [
        f"tensor {n} has shape {got[n]}, the VAE needs {expected[n]}"
        for n in sorted(set(got) & set(expected))
        if got[n] is not None and got[n] != expected[n]
    ]
    for name in sorted(values or {}):
        t = values[name]
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            problems.append(f"tensor {name} has {bad:,} NaN or infinite value(s) of {t.numel():,}")
    return problems
