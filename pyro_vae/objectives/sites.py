"""The sample sites of one draw of a model and its guide: what every estimator reads.

An estimator (:mod:`pyro_vae.objectives.elbos`) computes its loss from :class:`Traces`: the
guide's latent sites and the model's sites (latent and observed) of one draw, each a
:class:`~pyro_vae.model.Site` (its distribution, value, whether it is observed, its scale: the KL
warm-up weight). Two sources produce them, with the same random numbers in the same order:

- :class:`PyroSource`: Pyro's own ``poutine.trace`` and ``replay`` of any model and guide (a
  structure's, or plain Pyro functions), particles as Pyro's vectorised ELBOs draw them (an outer
  ``plate("num_particles_vectorized")``). No host sync, no tensor from Python data: capture-safe
  with validation off. It is the reference, and the path of a plugin written as plain Pyro.
- :class:`LeanSource`: a structure's *stories* (:meth:`~pyro_vae.model.Structure.model_story`,
  :meth:`~pyro_vae.model.Structure.guide_story`) run with :class:`~pyro_vae.model.LeanEmit`, no
  effect handler at all: the same sites at the cost of the arithmetic alone. :func:`pyro_vae.objectives.fast.build_loss`
  checks it against :class:`PyroSource` once per run.

:func:`record_structure` reads a model/guide pair's structure from real Pyro traces, once, and
says what the estimators cannot handle (:meth:`StructureInfo.problems`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.infer import config_enumerate
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import nn
from torch.distributions import kl_divergence
from torch.nn.utils.stateless import _reparametrize_module

from pyro_vae.model import LeanEmit, Relaxation, Site, enumerated_log_q, labelled, trace_sites
from pyro_vae.objectives.surrogates import NotDetachable, detach_distribution
from pyro_vae.seeding import fork_rng

Sites = dict[str, Site]
PARTICLES = "num_particles_vectorized"  # Pyro's name for the particle plate of its vectorised ELBOs


def weigh(value: torch.Tensor, site: Site) -> torch.Tensor:
    """``value`` times the site's scale, as ``poutine.scale`` weighs a site's log-density (no
    operation at all for the scale 1)."""
    scale = site.scale
    return value if isinstance(scale, (int, float)) and scale == 1.0 else value * scale


class LeanSource:
    """Sites from a structure's stories, run without effect handlers."""

    def __init__(self, structure: nn.Module) -> None:
        self.structure = structure

    def guide(
        self,
        x: torch.Tensor,
        beta,
        particles: int,
        values: dict | None = None,
        detach_params: bool = False,
        enumerate: bool = False,
        labels: torch.Tensor | None = None,
        relax: Relaxation | None = None,
    ) -> Sites:
        emit = LeanEmit(particles, beta, values, enumerate, relax)
        if detach_params:
            _with_detached_parameters(self.structure, lambda s: s.guide_story(x, emit, **labelled(labels)))
        else:
            self.structure.guide_story(x, emit, **labelled(labels))
        return emit.sites

    def model(self, x: torch.Tensor, beta, particles: int, values: dict, labels: torch.Tensor | None = None) -> Sites:
        emit = LeanEmit(particles, beta, values)
        self.structure.model_story(x, emit, **labelled(labels))
        return emit.sites


class PyroSource:
    """Sites from Pyro traces of ``model`` and ``guide`` (called as ``fn(x)`` or ``fn(x, beta)``);
    ``module`` (the structure) lets the guide run again with its parameters detached."""

    def __init__(self, model: Callable, guide: Callable, module: nn.Module | None = None) -> None:
        self.model_fn, self.guide_fn, self.module = model, guide, module

    def _trace(
        self,
        fn: Callable,
        x,
        beta,
        particles: int,
        values: dict | None,
        enumerate: bool = False,
        labels=None,
        relax: Relaxation | None = None,
    ) -> poutine.Trace:
        if particles > 1:
            fn = pyro.plate(PARTICLES, particles, dim=-2, device=x.device)(fn)
        if relax is not None:
            fn = _Relax(relax)(fn)
        if enumerate:  # TraceEnum_ELBO's guide: its discrete sites in parallel, left of the plates
            fn = poutine.enum(config_enumerate(fn, "parallel"), first_available_dim=-3 if particles > 1 else -2)
        if values:
            fn = poutine.replay(fn, trace=_values_trace(values))
        args = (x,) if beta is None else (x, beta)
        return poutine.trace(fn).get_trace(*args, **labelled(labels))

    def guide(
        self,
        x: torch.Tensor,
        beta,
        particles: int,
        values: dict | None = None,
        detach_params: bool = False,
        enumerate: bool = False,
        labels: torch.Tensor | None = None,
        relax: Relaxation | None = None,
    ) -> Sites:
        def run() -> Sites:
            return trace_sites(self._trace(self.guide_fn, x, beta, particles, values, enumerate, labels, relax))

        if not detach_params:
            return run()
        if self.module is None:
            raise NotDetachable("the guide's parameters can be detached only for a structure (an nn.Module)")
        out = {}
        _with_detached_parameters(self.module, lambda s: out.update(run()))
        return out

    def model(self, x: torch.Tensor, beta, particles: int, values: dict, labels: torch.Tensor | None = None) -> Sites:
        return trace_sites(self._trace(self.model_fn, x, beta, particles, values, labels=labels))


class _Relax(Messenger):
    """Draws every one-hot categorical latent site by ``relax`` (the Gumbel-softmax relaxation;
    the site's distribution unchanged, its ``infer`` marked ``relaxed``): :class:`LeanEmit`'s
    draw, inside Pyro's handlers (plates expand the distribution first)."""

    def __init__(self, relax: Relaxation) -> None:
        super().__init__()
        self.relax = relax

    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"] or msg["value"] is not None or not Relaxation.applies(msg["fn"]):
            return
        msg["value"] = self.relax.draw(msg["fn"])
        msg["infer"] = {**msg["infer"], "relaxed": True}


def _values_trace(values: dict[str, torch.Tensor]) -> poutine.Trace:
    """A trace that ``poutine.replay`` reads ``values`` from."""
    trace = poutine.Trace()
    for name, value in values.items():
        trace.add_node(name, type="sample", value=value, is_observed=False, infer={})
    return trace


def _with_detached_parameters(module: nn.Module, run: Callable[[nn.Module], None]) -> None:
    """``run(module)`` with every parameter and buffer of ``module`` detached (the values the same):
    gradients then reach them only through the samples (the path derivative). (The context
    :func:`torch.func.functional_call` is built on, used directly: a wrapper module made here
    would be a class definition inside the step, which ``torch.compile`` cannot trace.)"""
    detached = {name: t.detach() for name, t in (*module.named_parameters(), *module.named_buffers())}
    with _reparametrize_module(module, detached):
        run(module)


@dataclass
class Traces:
    """One draw of the guide and the model: ``guide`` and ``model`` map site names to sites in
    the order they ran; ``latent`` and ``observed`` name the model's sites; ``labels``: the batch's
    labels (-1 where unknown) for a structure that learns from them, else None."""

    x: torch.Tensor
    beta: torch.Tensor | float | None
    particles: int
    guide: Sites
    model: Sites
    source: LeanSource | PyroSource
    labels: torch.Tensor | None = None

    @property
    def latent(self) -> list[str]:
        return [name for name, site in self.model.items() if not site.observed]

    @property
    def observed(self) -> list[str]:
        return [name for name, site in self.model.items() if site.observed]

    @property
    def structure(self) -> nn.Module | None:
        """The structure the sites come from (None for plain Pyro functions)."""
        return self.source.structure if isinstance(self.source, LeanSource) else self.source.module

    def log_q_enumerated(self) -> torch.Tensor | None:
        """:func:`~pyro_vae.model.enumerated_log_q` of the guide's sites."""
        return enumerated_log_q(self.guide.values())

    def values(self, detach: bool = False) -> dict[str, torch.Tensor]:
        return {name: (s.value.detach() if detach else s.value) for name, s in self.guide.items()}

    def stopped_guide(self) -> Sites:
        """The guide's sites at the same values with its parameters detached (log q_{stop(phi)}(z)).
        With one latent site the site's distribution is rebuilt from its detached parameters; with
        several (or a distribution that cannot be rebuilt, such as the IAF), the guide runs again
        with detached parameters and the values replayed, so that q(z1 | x, z2) keeps its
        dependence on z2 (detaching q(z1|.)'s parameters would cut it: a biased estimator)."""
        if len(self.guide) == 1:
            ((name, site),) = self.guide.items()
            try:
                return {name: Site(name, detach_distribution(site.fn), site.value, False, site.scale)}
            except NotDetachable:
                pass
        return self.source.guide(
            self.x, self.beta, self.particles, self.values(), detach_params=True, labels=self.labels
        )

    def guide_at_detached(self) -> Sites:
        """The guide's log-densities at the detached samples (the score term alone)."""
        if len(self.guide) == 1:
            ((name, site),) = self.guide.items()
            return {name: Site(name, site.fn, site.value.detach(), False, site.scale)}
        return self.source.guide(self.x, self.beta, self.particles, self.values(detach=True), labels=self.labels)

    def model_at_detached(self) -> Sites:
        """The model's sites at the detached samples (log p(x, z) with z fixed)."""
        return self.source.model(self.x, self.beta, self.particles, self.values(detach=True), self.labels)


def without_analytic_kl(structure: nn.Module, x: torch.Tensor) -> tuple[str, object, object, bool] | None:
    """The first latent site whose KL(q || p) torch has no closed form for, on one draw of
    ``structure`` on ``x`` through Pyro's traces: ``(site, q, p, several_sites)``; None if every
    site has one."""
    with torch.no_grad(), pyro.validation_enabled(False):
        t = draw(PyroSource(structure.model, structure.guide, structure), x, None, 1)
    for name in t.latent:
        q, p = t.guide[name].fn, t.model[name].fn
        try:
            kl_divergence(q, p)
        except NotImplementedError:
            return name, q, p, len(t.latent) > 1
    return None


def draw(
    source: LeanSource | PyroSource,
    x: torch.Tensor,
    beta,
    particles: int,
    enumerate: bool = False,
    labels: torch.Tensor | None = None,
    relax: Relaxation | None = None,
) -> Traces:
    """One draw: the guide run on ``x`` (and the batch's ``labels``, for a structure that learns
    from them; its discrete sites enumerated in parallel with ``enumerate``, or its one-hot ones
    relaxed with ``relax``), then the model against the guide's values."""
    guide = source.guide(x, beta, particles, enumerate=enumerate, labels=labels, relax=relax)
    model = source.model(x, beta, particles, {name: site.value for name, site in guide.items()}, labels)
    return Traces(x, beta, particles, guide, model, source, labels)


# ---------------------------------------------------------------- the structure, read once


@dataclass(frozen=True)
class SiteInfo:
    trace: str  # "model" or "guide"
    name: str
    observed: bool
    plates: tuple[str, ...]
    batch_shape: tuple[int, ...]
    event_shape: tuple[int, ...]
    reparameterized: bool
    discrete: bool  # has an enumerable support (a discrete distribution)
    one_hot: bool  # a one-hot categorical (what the Gumbel-softmax relaxation relaxes)
    masked: bool
    scaled: bool  # carries the warm-up weight


@dataclass(frozen=True)
class StructureInfo:
    """What :func:`record_structure` saw of a model and guide."""

    sites: tuple[SiteInfo, ...]
    static: bool  # the same sites and shapes on two draws

    def of(self, trace: str) -> list[SiteInfo]:
        return [s for s in self.sites if s.trace == trace]

    @property
    def latent(self) -> list[str]:
        return [s.name for s in self.of("model") if not s.observed]

    def problems(self, warmup: bool = False) -> list[str]:
        """What the estimators do not handle: every site in ``plate("data")`` alone (a mask over its
        images allowed), the guide's sites exactly the model's latent sites, no observed site in the guide, at least one
        observed site in the model; with KL warm-up (``warmup``), every latent site scaled."""
        out = []
        model, guide = self.of("model"), self.of("guide")
        for site in self.sites:
            if site.plates != ("data",):
                out.append(
                    f"{site.trace} site '{site.name}' is in plates {list(site.plates)} (every site must be "
                    "in pyro.plate('data') alone: per-image weights need it)"
                )
        observed_in_guide = [s.name for s in guide if s.observed]
        if observed_in_guide:
            out.append(f"the guide observes {observed_in_guide} (a guide draws latent sites only)")
        latent = [s.name for s in model if not s.observed]
        drawn = [s.name for s in guide if not s.observed]
        if sorted(latent) != sorted(drawn):
            out.append(f"the model's latent sites {latent} are not the guide's {drawn}")
        if not any(s.observed for s in model):
            out.append("the model observes no site (the data x must be an observed site)")
        if warmup:
            unscaled = [s.name for s in model + guide if not s.observed and not s.scaled]
            if unscaled:
                out.append(
                    f"sites {sorted(set(unscaled))} are not scaled by beta, so KL warm-up "
                    "(train.kl_warmup_epochs, train.kl_weight) would not reach them"
                )
        if not self.static:
            out.append("its sites change between draws")
        return out


def _info(trace: poutine.Trace, which: str) -> list[SiteInfo]:
    return [
        SiteInfo(
            which,
            name,
            bool(node["is_observed"]),
            tuple(f.name for f in node["cond_indep_stack"]),
            tuple(node["fn"].batch_shape),
            tuple(node["fn"].event_shape),
            bool(node["fn"].has_rsample),
            bool(getattr(node["fn"], "has_enumerate_support", False)),
            Relaxation.applies(node["fn"]),
            node["mask"] is not None,
            torch.is_tensor(node["scale"]),
        )
        for name, node in trace.nodes.items()
        if node["type"] == "sample" and not site_is_subsample(node)
    ]


def record_structure(
    model: Callable, guide: Callable, x: torch.Tensor, warmup: bool = False, labels: torch.Tensor | None = None
) -> StructureInfo:
    """The sites of ``model`` and ``guide`` on the batch ``x`` (and its ``labels``, for a structure
    that learns from them) from real Pyro traces (Pyro's own checks on; with ``warmup``, the KL
    warm-up weight given as a tensor to see which sites it scales), twice to see whether the
    structure is static; the random state is left alone."""
    args = (x, torch.tensor(0.5, dtype=x.dtype, device=x.device)) if warmup else (x,)
    kwargs = labelled(labels)
    seen = []
    with fork_rng(x.device), torch.no_grad(), pyro.validation_enabled(True):
        for seed in (0, 1):
            torch.manual_seed(seed)
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
            seen.append((*_info(guide_trace, "guide"), *_info(model_trace, "model")))
    return StructureInfo(seen[0], static=seen[0] == seen[1])
