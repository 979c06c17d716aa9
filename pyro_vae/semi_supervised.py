r"""The ``semi_supervised`` structure (``model.structure = "semi_supervised"``): Kingma et al.'s M2,
a class ``y`` beside the style ``z``, learnt from a few labels (``data.labels``) and many images
without; with ``auxiliary_dim = A > 0``, Maaløe et al.'s auxiliary deep generative model (ADGM).

Generative model, for every image::

    y ~ Categorical(1/K, ..., 1/K)                  one-hot, event (K,)
    z ~ p(z)                                        the model.prior registry, event (L,)
    x | y, z ~ likelihood(decoder([z, y]))

Guide::

    q(y | x)    = Categorical(softmax(classifier(x)))    a classifier on its own trunk
    q(z | x, y) = N(mu(h(x), y), diag sigma(h(x), y)^2)  h: a second trunk

ADGM (``auxiliary_dim = A``): an auxiliary ``a`` (A-D) that leaves p(x) unchanged but makes the
guide richer: the model adds ``a | x, y, z ~ N(mu(x, y, z), diag sigma(x, y, z)^2)`` after x, and the
guide draws it first::

    q(a | x)        = N(mu(x), diag sigma(x)^2)
    q(y | a, x)     = Categorical(softmax(classifier([h_y(x), a])))
    q(z | a, y, x)  = N(mu(h(x), y, a), diag sigma(h(x), y, a)^2)

The class of an image is read from q(y | E[a | x], x) (the mean of a, no draw).

In training every batch holds images whose label is unknown and (``labelled_per_batch``) images
whose label is known; the stories take the batch's ``labels`` (-1 where unknown) and write two
branches under masks, as Pyro's ``poutine.mask`` does:

- label unknown: ``y`` is latent, summed out by ``train.elbo = enum`` (every class decoded), or
  sampled with its score function by ``trace``; sites ``y``, ``z``, ``x``;
- label known: ``y_l`` is observed, with ``z_l`` and ``x_l``; and the classification term
  α log q(y | x) (Kingma's α; Pyro's ``aux_loss_multiplier``), an observed site ``y_class`` of
  the classifier's distribution scaled by α, so that q(y | x) learns from the labels directly.

The labelled images repeat over an epoch (each about ``r`` times); their branch is scaled by 1/r,
so that an epoch's loss stays an unbiased estimate of the ELBO of the whole training split, and
the classification term weighs α N / N_L per labelled image (N images, N_L labelled), also over r
(:meth:`SemiSupervised.weigh_labels`, set by the training loop). Without labels (evaluation) the
stories are the unknown-label branch alone: the ELBO and the IWAE bound of log p(x), y summed out.

References:
    Kingma, Rezende, Mohamed & Welling, *Semi-supervised Learning with Deep Generative Models*,
    NeurIPS 2014 (M2; α = 0.1 N).
    Pyro's ``examples/vae/ss_vae_M2.py`` and its ``ss-vae`` tutorial.
    Maaløe, Sønderby, Sønderby & Winther, *Auxiliary Deep Generative Models*, ICML 2016 (ADGM).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from pyro_vae.components.guides import log_var_range
from pyro_vae.components.likelihoods import LIKELIHOODS
from pyro_vae.components.priors import PRIORS
from pyro_vae.config import MAX_LATENT_DIM, ConfigError
from pyro_vae.hierarchical import ConditionalNormal, build_network
from pyro_vae.mixture import OneHotCategorical, broadcast_cat
from pyro_vae.model import STRUCTURES, Structure, _held

MAX_CLASSES = 10_000

_instances = itertools.count()


def one_hot(labels: torch.Tensor, classes: int, dtype: torch.dtype) -> torch.Tensor:
    """``labels`` (B,) as one-hot rows (B, classes), -1 (unknown) as class 0; made on the device
    without reading the labels back (``F.one_hot`` checks their range on the host)."""
    rows = torch.zeros(*labels.shape, classes, dtype=dtype, device=labels.device)
    return rows.scatter_(-1, labels.clamp(min=0).unsqueeze(-1), 1.0)


@STRUCTURES.register("semi_supervised")
class SemiSupervised(Structure):
    """Kingma et al.'s M2 (see the module's docstring)."""

    uses_labels = True

    @dataclass(frozen=True)
    class Settings:
        classes: int = 10  # K, the classes of y
        alpha: float = 0.1  # Kingma's alpha over N: the classification term weighs alpha N / N_L per label
        labelled_per_batch: int = 10  # labelled images in every training batch (they repeat over an epoch)
        baseline: bool = False  # learn b(x), the score function's baseline of train.elbo=tracegraph
        auxiliary_dim: int = 0  # A > 0: Maaløe et al.'s ADGM, an auxiliary a ~ q(a | x) the classifier sees; 0 = M2

        def __post_init__(self) -> None:
            if isinstance(self.classes, bool) or not 2 <= self.classes <= MAX_CLASSES:
                raise ValueError(f"classes = {self.classes} must be between 2 and {MAX_CLASSES:,}")
            if not self.alpha >= 0:
                raise ValueError(f"alpha = {self.alpha} must be 0 or more (0: no classification term)")
            if isinstance(self.auxiliary_dim, bool) or not 0 <= self.auxiliary_dim <= MAX_LATENT_DIM:
                raise ValueError(
                    f"auxiliary_dim = {self.auxiliary_dim} must be between 0 (M2) and {MAX_LATENT_DIM:,} "
                    "(the ADGM's auxiliary a)"
                )
            if isinstance(self.labelled_per_batch, bool) or self.labelled_per_batch < 1:
                raise ValueError(
                    f"labelled_per_batch = {self.labelled_per_batch} must be at least 1: every batch needs "
                    "labelled images for the labels to reach the classifier"
                )

    def __init__(self, cfg, data_dim: int, image_shape=None, settings: Settings | None = None, **_) -> None:
        super().__init__()
        settings = settings or self.Settings()
        if cfg.prior == "vamp":
            raise ConfigError(
                "model.structure=semi_supervised puts p(z) beside the class y; the VampPrior is a mixture of "
                "q(z | u) at pseudo-inputs u, which here would need a class too: use model.prior=standard_normal, "
                "student_t or mixture_of_gaussians"
            )
        if cfg.guide != "diag_normal":
            raise ConfigError(
                f"model.structure=semi_supervised's guide q(z | x, y) is a diagonal Gaussian conditioned on the "
                f"class, not model.guide={cfg.guide}; leave model.guide=diag_normal"
            )
        k, dim, aux = settings.classes, cfg.latent_dim, settings.auxiliary_dim
        self.k, self.latent_dim, self.data_dim, self.aux = k, dim, data_dim, aux
        self.alpha, self.labelled_per_batch = settings.alpha, settings.labelled_per_batch
        self.labelled_scale, self.class_scale = 1.0, settings.alpha  # (weigh_labels sets them for a data set)
        self.store_name = f"semi_supervised{next(_instances)}"
        network, dense = build_network(cfg, image_shape, "semi_supervised")
        self.likelihood = LIKELIHOODS.build(cfg.likelihood, cfg.settings, data_dim=data_dim, cfg=cfg)
        self.decoder = network.decoder(dim + k, self.likelihood.param_dim(data_dim))
        self.prior = PRIORS.build(cfg.prior, cfg.settings, latent_dim=dim, data_dim=data_dim, encoder=None, cfg=cfg)
        self.class_trunk, features = network.encoder(data_dim)
        self.classifier = dense(features + aux, k) if aux else nn.Linear(features, k)
        self.trunk, features = network.encoder(data_dim)
        self.lower = ConditionalNormal(dense(features + k + aux, 2 * dim), log_var_range(cfg))
        # the ADGM's q(a | x) (guide) and p(a | x, y, z) (model)
        self.q_a = ConditionalNormal(dense(data_dim, 2 * aux), log_var_range(cfg)) if aux else None
        self.p_a = ConditionalNormal(dense(data_dim + k + dim, 2 * aux), log_var_range(cfg)) if aux else None
        # b(x) for train.elbo=tracegraph (its score function's baseline), on the trunk's detached features
        self.baseline = nn.Linear(features, 1) if settings.baseline else None

    def weigh_labels(self, images: int, labelled: int, repeats: float) -> None:
        """Scale the labelled branch for a training split of ``images`` images, ``labelled`` of them
        labelled, each seen ``repeats`` times an epoch: 1/repeats, and the classification term
        alpha images / labelled / repeats. The training loop sets them from its data (they are not
        saved: a reopened model's labelled stories use 1 and alpha until set again)."""
        self.labelled_scale = 1.0 / repeats
        self.class_scale = self.alpha * images / labelled / repeats

    # -- the stories -------------------------------------------------------------------------------------------

    def prior_y(self, x: torch.Tensor) -> OneHotCategorical:
        return OneHotCategorical(logits=x.new_zeros(x.shape[0], self.k))

    def q_y(self, x: torch.Tensor, a: torch.Tensor | None = None) -> OneHotCategorical:
        return OneHotCategorical(logits=self._logits(x, a))

    def _logits(self, x: torch.Tensor, a: torch.Tensor | None = None) -> torch.Tensor:
        """The classifier's logits of q(y | x), or of the ADGM's q(y | a, x) (a: (..., B, A))."""
        return self.classifier(self._with_a(self.class_trunk(x), a))

    def _with_a(self, h: torch.Tensor, a: torch.Tensor | None) -> torch.Tensor:
        """Features ``h`` with the ADGM's auxiliary ``a`` beside them (broadcast), or ``h`` alone."""
        return h if a is None else broadcast_cat(h, a)

    def model_story(self, x: torch.Tensor, emit, labels: torch.Tensor | None = None) -> None:
        unknown = None if labels is None else labels < 0
        y = emit.latent("y", self.prior_y(x), mask=unknown)
        z = emit.latent("z", self.prior(x.shape[0]), mask=unknown)
        emit.observed("x", self.likelihood(self.decoder(broadcast_cat(z, y))), x, mask=unknown)
        if self.aux:
            emit.latent("a", self.p_a(broadcast_cat(broadcast_cat(x, y), z)), mask=unknown)
        if labels is None:
            return
        known, y_l, s = labels >= 0, one_hot(labels, self.k, x.dtype), self.labelled_scale
        emit.observed("y_l", self.prior_y(x), y_l, mask=known, scale=s)
        z_l = emit.latent("z_l", self.prior(x.shape[0]), mask=known, scale=s)
        emit.observed("x_l", self.likelihood(self.decoder(broadcast_cat(z_l, y_l))), x, mask=known, scale=s)
        a_l = None
        if self.aux:
            a_l = emit.latent("a_l", self.p_a(broadcast_cat(broadcast_cat(x, y_l), z_l)), mask=known, scale=s)
        emit.observed("y_class", self.q_y(x, a_l), y_l, mask=known, scale=self.class_scale)

    def guide_story(self, x: torch.Tensor, emit, labels: torch.Tensor | None = None) -> None:
        unknown = None if labels is None else labels < 0
        a = emit.latent("a", self.q_a(x), mask=unknown) if self.aux else None
        y = emit.latent("y", self.q_y(x, a), mask=unknown)
        h = self.trunk(x)
        emit.latent("z", self.lower(broadcast_cat(self._with_a(h, a), y)), mask=unknown)
        if labels is not None:
            known, y_l, s = labels >= 0, one_hot(labels, self.k, x.dtype), self.labelled_scale
            a_l = emit.latent("a_l", self.q_a(x), mask=known, scale=s) if self.aux else None
            emit.latent("z_l", self.lower(broadcast_cat(self._with_a(h, a_l), y_l)), mask=known, scale=s)

    @property
    def has_score_baseline(self) -> bool:
        return self.baseline is not None

    def score_baseline(self, x: torch.Tensor) -> torch.Tensor | None:
        """b(x) (B,): a linear head on the trunk's features, detached."""
        return None if self.baseline is None else self.baseline(self.trunk(x).detach()).squeeze(-1)

    # -- classes -------------------------------------------------------------------------------------------------

    def _point(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The ADGM's a at the mean of q(a | x) (None for M2) and q(y | x)'s logits there."""
        a = self.q_a(x).mean if self.aux else None
        return a, self._logits(x, a)

    def _point_logits(self, x: torch.Tensor) -> torch.Tensor:
        """q(y | x)'s logits; the ADGM's at the mean of q(a | x)."""
        return self._point(x)[1]

    @torch.no_grad()
    def class_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """q(y | x) for the images ``x`` (B, D): (B, K); the ADGM's q(y | E[a | x], x)."""
        return torch.softmax(self._point_logits(x), -1)

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable class under q(y | x) of each image (B,)."""
        return self._point_logits(x).argmax(-1)

    def classes(self) -> int:
        return self.k

    # -- the latent API: z (the style), then y (the class, one-hot) ---------------------------------------------

    def layers(self) -> dict[str, int]:
        return {"z": self.latent_dim, "y": self.k}

    def _q_z(self, x: torch.Tensor) -> tuple[torch.distributions.Distribution, torch.Tensor, torch.Tensor]:
        """q(z | x, y) at the most probable class y (one-hot), and q(y | x)'s logits."""
        a, logits = self._point(x)
        y = one_hot(logits.argmax(-1), self.k, x.dtype)
        return self.lower(torch.cat([self._with_a(self.trunk(x), a), y], -1)), y, logits

    def point(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The mean of q(z | x, y) at the most probable class, and that class one-hot."""
        q, y, _ = self._q_z(x)
        return {"z": q.mean, "y": y}

    def encode(self, x: torch.Tensor, draws: int = 100) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """q(z | x, y)'s mean and scale at the most probable class; q(y | x)'s probabilities and
        their standard deviations (one-hot coordinates)."""
        q, _, logits = self._q_z(x)
        p = torch.softmax(logits, -1)
        return {"z": (q.mean, q.stddev), "y": (p, (p * (1 - p)).sqrt())}

    @torch.no_grad()
    def complete(self, codes: dict[str, torch.Tensor] | torch.Tensor) -> dict[str, torch.Tensor]:
        """Both codes: a missing style at the prior's mean (0), a missing class at the uniform
        mixture of the classes (1/K each)."""
        codes = self._codes(codes)
        n = next(iter(codes.values())).shape[0] if codes else 1
        like = next(self.decoder.parameters())
        z = codes.get("z", like.new_zeros(n, self.latent_dim))
        y = codes.get("y", like.new_full((n, self.k), 1.0 / self.k))
        return {"z": z, "y": y}

    @torch.no_grad()
    def decode(self, codes: dict[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
        c = self.complete(codes)
        return self.likelihood.mean(self.decoder(torch.cat([c["z"], c["y"]], -1)))

    @torch.no_grad()
    def sample_latents(
        self, n: int, temperature: float = 1.0, fixed: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """z ~ p(z) scaled about the origin by ``temperature``, y ~ p(y) one-hot; those in ``fixed`` held."""
        held = _held(fixed, n)
        like = next(self.decoder.parameters())
        z = held.get("z", temperature * self.prior(n).sample())
        y = held.get("y", self.prior_y(like.new_zeros(n, 1)).sample())
        return {"z": z, "y": y}

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``encoder``: the guide's (the classifier, q(z | x, y), the ADGM's q(a | x)); ``decoder``:
        the model's (the ADGM's p(a | x, y, z) too)."""
        guide = [self.class_trunk, self.classifier, self.trunk, self.lower, self.q_a]
        model = [self.prior, self.decoder, self.likelihood, self.p_a]
        return {
            "encoder": [p for m in guide if m is not None for p in m.parameters()],
            "decoder": [p for m in model if m is not None for p in m.parameters()],
        }
