"""The training loss of a structure and an estimator: one path, checked once.

:func:`build_loss` reads the structure of the model and guide from real Pyro traces
(:func:`~pyro_vae.objectives.sites.record_structure`) and refuses up front what the estimators do
not handle, naming the site and the reason. The loss is then the estimator's
(:class:`~pyro_vae.objectives.elbos.Estimator`) on draws of one of two sources with the same
random numbers: Pyro's traces (any model and guide, capture-safe, the reference), or, for a
structure that writes its generative story once (:class:`~pyro_vae.model.Structure`), that story
run without effect handlers (the *lean* path: no per-step cost beyond the arithmetic). The lean
path is used when its loss equals the Pyro-traced one on one batch and seed, as a check that a
structure's stories and its Pyro model and guide agree. JIT ELBOs and a plugin's Pyro ELBO class
run through Pyro's own ``differentiable_loss``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
from pyro.infer import ELBO

from pyro_vae.config import ConfigError, TrainConfig
from pyro_vae.model import Structure
from pyro_vae.objectives.elbos import Estimator, build_elbo
from pyro_vae.objectives.sites import LeanSource, PyroSource, draw, record_structure
from pyro_vae.seeding import fork_rng

log = logging.getLogger(__name__)


def check_structure(structure: Structure, x: torch.Tensor, warmup: bool = False) -> None:
    """Raise ``ValueError`` naming what the estimators cannot handle in ``structure``'s model and
    guide, seen on real Pyro traces of the batch ``x`` (:meth:`~pyro_vae.objectives.sites.StructureInfo.problems`)."""
    problems = record_structure(structure.model, structure.guide, x, warmup).problems(warmup)
    if problems:
        raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class Loss:
    """A training loss and what it is: ``fn(x, beta=None)`` is the summed negative objective of
    the batch ``x`` (its KL terms weighted by ``beta``), computed by ``elbo``. ``fast``: on the
    lean path (a structure's stories, checked against Pyro's traces); ``static``: an estimator of
    ours on a structure whose sites are the same every step (the engine may capture it in a CUDA
    graph, once the capture check passes); ``hooks``: it reweights gradients with hooks on z."""

    fn: Callable[..., torch.Tensor]
    elbo: ELBO
    fast: bool
    static: bool = False
    hooks: bool = False

    @property
    def compilable(self) -> bool:
        """Whether ``torch.compile`` compiles it and keeps its gradients: the lean path, without
        gradient hooks (the compiled backward drops them)."""
        return self.fast and not self.hooks

    def __call__(self, x: torch.Tensor, beta: torch.Tensor | float | None = None, **labels) -> torch.Tensor:
        return self.fn(x, **labels) if beta is None else self.fn(x, beta, **labels)


def _pyro_loss(vae: Structure, elbo) -> Callable[..., torch.Tensor]:
    """``(x, beta=None) -> loss`` through Pyro's ``elbo.differentiable_loss``. A JIT ELBO sees the
    parameters only through the param store, so its model and guide register the VAE there
    (under its own :attr:`~pyro_vae.model.VAE.store_name`, cleared first so that entries left by
    an earlier loss of the same VAE cannot be picked up)."""
    model, guide = vae.model, vae.guide
    if getattr(elbo, "jit", False):
        store = pyro.get_param_store()
        for name in [n for n in store.keys() if n.startswith(f"{vae.store_name}$$$")]:
            del store[name]
        model, guide = vae.registered()

    def loss(x: torch.Tensor, beta: torch.Tensor | None = None, **labels) -> torch.Tensor:
        args = (x,) if beta is None else (x, torch.as_tensor(beta, dtype=x.dtype, device=x.device))
        with warnings.catch_warnings():  # torch deprecates jit.trace in favour of torch.compile; Pyro still uses it
            warnings.filterwarnings("ignore", message=".*torch.jit.trace.* is deprecated", category=FutureWarning)
            return elbo.differentiable_loss(model, guide, *args, **labels)

    return loss


def build_loss(
    structure: Structure,
    cfg: TrainConfig,
    x: torch.Tensor,
    elbo: ELBO | None = None,
    labels: torch.Tensor | None = None,
) -> Loss:
    """The :class:`Loss` of ``elbo`` (built from ``cfg`` when not given) for ``structure`` (a VAE),
    ``(batch, beta=None) -> summed negative objective``: refused with a ``ConfigError`` naming the
    site when the structure is one the estimators do not handle (seen on the batch ``x``); on the
    lean path when ``cfg.fast_path`` is set, the structure writes stories and their loss equals the
    Pyro-traced one on ``x`` for one seed; else on Pyro's traces. A structure that learns from
    labels is checked on ``labels`` for the batch (-1 where unknown; give some of each). The checks
    leave the RNG alone."""
    elbo = build_elbo(cfg) if elbo is None else elbo
    if not isinstance(elbo, Estimator):  # JIT ELBOs, a plugin's Pyro ELBO class
        return Loss(_pyro_loss(structure, elbo), elbo, fast=False)
    warmup = cfg.kl_warmup_epochs > 0 or cfg.kl_weight != 1.0
    info = record_structure(structure.model, structure.guide, x, warmup, labels)
    problems = info.problems(warmup) + elbo.check(info) + elbo.check_structure(structure, info)
    if problems:
        name = getattr(structure, "structure_name", type(structure).__name__)
        raise ConfigError(f"train.elbo={cfg.elbo} cannot train this model ({name}): " + "; ".join(problems))
    hooks = elbo.uses_hooks(len(info.latent))
    pyro_source = PyroSource(structure.model, structure.guide, structure)
    if cfg.fast_path and structure.has_stories:  # (false where a subclass overrides model or guide)
        lean = LeanSource(structure)
        try:
            _verify(elbo, lean, pyro_source, x, labels)
            return Loss(elbo.loss_fn(lean), elbo, fast=True, static=info.static, hooks=hooks)
        except ValueError as exc:
            log.warning("%s; using Pyro's traces", exc)
    return Loss(elbo.loss_fn(pyro_source), elbo, fast=False, static=info.static, hooks=hooks)


def _verify(
    elbo: Estimator, lean: LeanSource, pyro_source: PyroSource, x: torch.Tensor, labels: torch.Tensor | None = None
) -> None:
    """``ValueError`` unless the lean draw has the Pyro-traced one's sites (names, observed, shapes)
    and the estimator's loss on both agrees for one seed (RNG left alone)."""
    n = elbo.num_particles if elbo.vectorize_particles else 1
    with fork_rng(x.device), pyro.validation_enabled(True), torch.no_grad():
        torch.manual_seed(0)
        ours = draw(lean, x, None, n, elbo.enumerates, labels, elbo.relaxation())
        torch.manual_seed(0)
        theirs = draw(pyro_source, x, None, n, elbo.enumerates, labels, elbo.relaxation())

        def shapes(t):
            relaxed = {name for name, s in t.guide.items() if s.relaxed}  # (scored by their closed-form KL)
            return [
                (w, name, s.observed, bool(s.fn.has_rsample), tuple(s.value.shape))
                + (() if name in relaxed else (tuple(s.log_prob().shape),))
                for w, sites in (("guide", t.guide), ("model", t.model))
                for name, s in sites.items()
            ]

        if shapes(ours) != shapes(theirs):
            raise ValueError(
                f"the structure's stories do not match its Pyro model and guide: {shapes(ours)} against "
                f"{shapes(theirs)}"
            )
        a, b = elbo.objective(ours), elbo.objective(theirs)
    if not torch.allclose(a, b, rtol=1e-5, atol=1e-4):
        raise ValueError(
            f"the structure's stories give the loss {a.item():.6g}, its Pyro model and guide "
            f"{b.item():.6g} on the same draw"
        )
