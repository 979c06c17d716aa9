r"""The ``hierarchical`` structure (``model.structure = "hierarchical"``): L >= 2 stochastic layers
z_1 (bottom) .. z_L (top), sites ``z1`` .. ``zL``, all in ``plate("data", B)``.

Generative model, top-down::

    z_L ~ p(z_L)                                   the model.prior registry, event (d_L,)
    z_i | z_{i+1} ~ N(mu_i(z_{i+1}), diag sigma_i(z_{i+1})^2)        i = L-1 .. 1
    x | z ~ likelihood(decoder(z_1, ..., z_L))      (skip = true; decoder(z_1) with skip = false)

Guide, top-down in the model's order (so the analytic KL terms of ``mean_field`` are valid),
Tomczak & Welling's HVAE generalised to L layers:

    q(z_L | x)           = the model.guide registry (the ``vae``'s guide, its own trunk)
    q(z_i | x, z_{i+1})  = N(mu(h(x), z_{i+1}), diag sigma(h(x), z_{i+1})^2),   h: one bottom-up trunk

``lower = "deep"`` (the default): h is the network's encoder trunk and (mu, sigma) its ``dense`` on
[h, z_{i+1}]; ``lower = "shallow"``, Tomczak & Welling's own: h is one layer of the network on x,
z_{i+1} passes one layer of its own, one joint layer on both, then a linear head (the network's
``layer``: ``mlp``, ``gated_mlp``), all of width ``model.hidden[0]``.

With ``ladder = true``, the Ladder VAE's guide (Sønderby et al., 2016): a deterministic bottom-up
pass d_1 = trunk(x), d_i = up_i(d_{i-1}) gives (mû_i, σ̂_i) = head_i(d_i); then q(z_L | x) =
N(mû_L, σ̂_L²) and, below, the precision-weighted merge with the generative p(z_i | z_{i+1}) =
N(μ_p, σ_p²) (its parameters shared with the model):

.. math:: \sigma_q^{-2} = \hat\sigma^{-2} + \sigma_p^{-2}, \qquad
          \mu_q = (\hat\mu \hat\sigma^{-2} + \mu_p \sigma_p^{-2}) \sigma_q^2

(computed as μ_q = w μ̂ + (1 - w) μ_p, w = σ_p² / (σ̂² + σ_p²), σ_q = σ̂ σ_p / √(σ̂² + σ_p²), which
stays in range for any scales). No batch normalisation: its running statistics would change inside
a captured step; use ``train.kl_warmup_epochs`` for the warm-up the paper pairs it with.

Every scale is ``softplus(.) + 1e-5``, or a clamped log-variance with
``model.diag_normal.log_var_range``. The conditional layers are the network's ``dense(in, out)``
(:mod:`pyro_vae.components.nets`; ``mlp([in, *model.hidden, out])`` for a network without it).

References:
    Tomczak & Welling, *VAE with a VampPrior*, AISTATS 2018 (the two-layer HVAE).
    Sønderby, Raiko, Maaløe, Sønderby & Winther, *Ladder Variational Autoencoders*, NeurIPS 2016.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.components.guides import GUIDES, log_var_range, scale_of
from pyro_vae.components.likelihoods import LIKELIHOODS
from pyro_vae.components.nets import ACTIVATIONS, NETWORKS, mlp
from pyro_vae.components.priors import PRIORS
from pyro_vae.config import MAX_LATENT_DIM
from pyro_vae.data.pixels import chw
from pyro_vae.model import STRUCTURES, Structure

LOWER = ("deep", "shallow")  # the guide's conditionals below the top layer (Settings.lower)
MAX_LAYERS = 64  # far above what is trained; a slip (layers = 1e6) is refused before anything is built

_instances = itertools.count()


def build_network(cfg, image_shape, structure: str) -> tuple[object, Callable[[int, int], nn.Module]]:
    """The network ``cfg.network`` for images of ``image_shape``, checked to give an encoder trunk
    and a decoder, and its ``dense(in, out)`` (``mlp([in, *model.hidden, out])`` for a network
    without one): what the structures beyond ``vae`` build their parts with."""
    network = NETWORKS.build(
        cfg.network, cfg.settings, cfg=cfg, image_shape=chw(image_shape) if image_shape is not None else None
    )
    missing = [m for m in ("encoder", "decoder") if not callable(getattr(network, m, None))]
    if missing:
        raise ValueError(
            f"the network {cfg.network} has no {' or '.join(missing)}(...), which the {structure} "
            "structure builds its trunk and decoder with; give it both (see "
            "pyro_vae/components/nets.py)"
        )
    make = getattr(network, "dense", None)

    def dense(n_in: int, n_out: int) -> nn.Module:
        return make(n_in, n_out) if callable(make) else mlp([n_in, *cfg.hidden, n_out], cfg.activation)

    return network, dense


class ConditionalNormal(nn.Module):
    """N(loc(h), diag scale(h)²) with ``(loc, raw) = net(h)`` split in two, ``scale = softplus(raw) + 1e-5``
    or, with ``log_var_range``, ``exp(clamp(raw, lo, hi) / 2)`` (:func:`~pyro_vae.components.guides.scale_of`)."""

    def __init__(self, net: nn.Module, log_var_range: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.net, self.log_var_range = net, log_var_range

    def loc_scale(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = self.net(h).chunk(2, dim=-1)
        return loc, scale_of(raw, self.log_var_range)

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        loc, scale = self.loc_scale(h)
        return dist.Normal(loc, scale).to_event(1)


class _Joint(nn.Module):
    """The ``shallow`` guide's network on [h(x), z_(i+1)] (Tomczak & Welling's q(z1 | x, z2)): a layer
    on z_(i+1), a joint layer on both, a linear head."""

    def __init__(self, features: int, z_path: nn.Module, joint: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.features, self.z_path, self.joint, self.head = features, z_path, joint, head

    def forward(self, hz: torch.Tensor) -> torch.Tensor:
        h, z = hz.split([self.features, hz.shape[-1] - self.features], dim=-1)
        return self.head(self.joint(torch.cat([h, self.z_path(z)], dim=-1)))


def merge(
    loc_a: torch.Tensor, scale_a: torch.Tensor, loc_b: torch.Tensor, scale_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The precision-weighted product of two diagonal Gaussians N(a) N(b), normalised: (loc, scale)."""
    var_a, var_b = scale_a.square(), scale_b.square()
    total = var_a + var_b
    loc = (var_b * loc_a + var_a * loc_b) / total
    return loc, scale_a * scale_b * total.rsqrt()


class _LadderTop:
    """q(z_L | x)'s ``loc_scale`` for the ``vamp`` prior (its pseudo-inputs through the bottom-up
    pass); a plain object, not a submodule, so the weights are the structure's own, saved once."""

    def __init__(self, structure: Hierarchical) -> None:
        self.structure = structure

    def loc_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.structure._bottom_up(x)[-1]


@STRUCTURES.register("hierarchical")
class Hierarchical(Structure):
    """L >= 2 latent layers, top-down generative and inference paths (see the module's docstring)."""

    @dataclass(frozen=True)
    class Settings:
        layers: int = 2  # L, the stochastic layers (at least 2)
        latent_dims: tuple[int, ...] = ()  # sizes of z1 (bottom) .. zL; () = model.latent_dim for every layer
        ladder: bool = False  # Sønderby et al. (2016): merge the bottom-up and the top-down pass in the guide
        skip: bool = True  # the decoder sees every layer, p(x | z1..zL) (T&W's); false: p(x | z1) alone
        lower: str = "deep"  # q(z_i | x, z_i+1): deep (trunk, then dense) | shallow (T&W's, one layer each)

        def __post_init__(self) -> None:
            if isinstance(self.layers, bool) or not 2 <= self.layers <= MAX_LAYERS:
                raise ValueError(
                    f"layers = {self.layers} must be between 2 and {MAX_LAYERS}: a hierarchical VAE has "
                    "at least two stochastic layers (model.structure=vae has one)"
                )
            if self.latent_dims and len(self.latent_dims) != self.layers:
                raise ValueError(
                    f"latent_dims = {list(self.latent_dims)} gives {len(self.latent_dims)} sizes for "
                    f"layers = {self.layers}; give one size per layer, z1 (the bottom) first, or [] for "
                    "model.latent_dim in every layer"
                )
            if self.lower not in LOWER:
                raise ValueError(f"lower = {self.lower!r} is not one of: {', '.join(LOWER)}")
            if self.ladder and self.lower != "deep":
                raise ValueError(
                    f"lower = {self.lower!r} shapes q(z_i | x, z_(i+1)), which the ladder replaces by its "
                    "merge; leave lower = deep with ladder = true"
                )
            bad = [d for d in self.latent_dims if not 1 <= d <= MAX_LATENT_DIM]
            if bad:
                raise ValueError(
                    f"latent_dims = {list(self.latent_dims)}: every size must be between 1 and {MAX_LATENT_DIM:,}"
                )

    def __init__(self, cfg, data_dim: int, image_shape=None, settings: Settings | None = None, **_) -> None:
        super().__init__()
        settings = settings or self.Settings()
        dims = tuple(settings.latent_dims) or (cfg.latent_dim,) * settings.layers
        self.dims, self.ladder, self.skip, self.data_dim = dims, settings.ladder, settings.skip, data_dim
        self.store_name = f"hierarchical{next(_instances)}"
        if cfg.guide == "iaf":
            raise ValueError(
                "the hierarchical structure does not build per-layer conditional flows; use "
                "model.guide=diag_normal (or model.structure=vae with the iaf guide)"
            )
        if settings.ladder and cfg.guide != "diag_normal":
            raise ValueError(
                f"the ladder merges Gaussian parameters by precision, so its guide is a diagonal Gaussian "
                f"in every layer, not model.guide={cfg.guide}; use model.guide=diag_normal or "
                "model.hierarchical.ladder=false"
            )
        network, dense = build_network(cfg, image_shape, "hierarchical")
        self.log_var_range = log_var_range(cfg)  # (model.diag_normal's: every Gaussian layer's scale)

        self.likelihood = LIKELIHOODS.build(cfg.likelihood, cfg.settings, data_dim=data_dim, cfg=cfg)
        self.decoder = network.decoder(sum(dims) if settings.skip else dims[0], self.likelihood.param_dim(data_dim))
        # conditionals[i]: p(z_{i+1} | z_{i+2}) (sites counted from 1), the generative path below the top
        self.conditionals = nn.ModuleList(
            ConditionalNormal(dense(dims[i + 1], 2 * dims[i]), self.log_var_range) for i in range(len(dims) - 1)
        )
        if settings.lower == "shallow":
            layer = getattr(network, "layer", None)
            if not callable(layer):
                raise ValueError(
                    f"lower = shallow builds q(z_i | x, z_(i+1)) from single layers of the network, which "
                    f"{cfg.network} does not give (no layer(...)); use model.network=gated_mlp or mlp, or "
                    "model.hierarchical.lower=deep"
                )
            features = cfg.hidden[0]
            self.trunk = layer(data_dim, features)
        else:
            self.trunk, features = network.encoder(data_dim)
        if settings.ladder:
            act = ACTIVATIONS[cfg.activation]
            self.ups = nn.ModuleList(nn.Sequential(dense(features, features), act()) for _ in range(len(dims) - 1))
            self.heads = nn.ModuleList(nn.Linear(features, 2 * d) for d in dims)
            top_encoder = _LadderTop(self)
        else:
            self.top = GUIDES.build(
                cfg.guide, cfg.settings, data_dim=data_dim, latent_dim=dims[-1], cfg=cfg, network=network
            )
            # lower[i]: q(z_{i+1} | x, z_{i+2}) on the trunk's features and the layer above
            if settings.lower == "shallow":
                nets = [
                    _Joint(
                        features,
                        layer(dims[i + 1], features),
                        layer(2 * features, features),
                        nn.Linear(features, 2 * dims[i]),
                    )
                    for i in range(len(dims) - 1)
                ]
            else:
                nets = [dense(features + dims[i + 1], 2 * dims[i]) for i in range(len(dims) - 1)]
            self.lower = nn.ModuleList(ConditionalNormal(net, self.log_var_range) for net in nets)
            top_encoder = self.top
        self.prior = PRIORS.build(
            cfg.prior, cfg.settings, latent_dim=dims[-1], data_dim=data_dim, encoder=top_encoder, cfg=cfg
        )

    @staticmethod
    def site(i: int) -> str:
        """The site of layer ``i`` counted from 0 at the bottom: ``z1`` .. ``zL``."""
        return f"z{i + 1}"

    # -- the stories -------------------------------------------------------------------------------------------

    def model_story(self, x: torch.Tensor, emit) -> None:
        top = len(self.dims) - 1
        z = emit.latent(self.site(top), self.prior(x.shape[0]))
        codes = [z]
        for i in range(top - 1, -1, -1):
            z = emit.latent(self.site(i), self.conditionals[i](z))
            codes.append(z)
        emit.observed("x", self.likelihood(self.decoder(self._decoder_input(codes))), x)

    def guide_story(self, x: torch.Tensor, emit) -> None:
        top = len(self.dims) - 1
        if self.ladder:
            up = self._bottom_up(x)
            z = emit.latent(self.site(top), dist.Normal(*up[top]).to_event(1))
            for i in range(top - 1, -1, -1):
                loc, scale = merge(*up[i], *self.conditionals[i].loc_scale(z))
                z = emit.latent(self.site(i), dist.Normal(loc, scale).to_event(1))
            return
        z = emit.latent(self.site(top), self.top(x))
        h = self.trunk(x)
        for i in range(top - 1, -1, -1):
            z = emit.latent(self.site(i), self.lower[i](torch.cat([h.expand(*z.shape[:-1], h.shape[-1]), z], -1)))

    def _bottom_up(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The ladder's bottom-up (mû_i, σ̂_i) of every layer, bottom first."""
        d, out = self.trunk(x), []
        for i, head in enumerate(self.heads):
            if i:
                d = self.ups[i - 1](d)
            loc, raw = head(d).chunk(2, dim=-1)
            out.append((loc, scale_of(raw, self.log_var_range)))
        return out

    def _decoder_input(self, codes_top_first: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(codes_top_first[::-1], -1) if self.skip else codes_top_first[-1]

    # -- the latent API ----------------------------------------------------------------------------------------

    def layers(self) -> dict[str, int]:
        return {self.site(i): self.dims[i] for i in range(len(self.dims) - 1, -1, -1)}

    @torch.no_grad()
    def decode(self, codes: dict[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Expected pixels (n, D) of p(x | z) (the likelihood's ``mean``) at the codes given, the
        missing lower layers at their conditional means (:meth:`complete`); without ``skip``, a
        code of ``z1`` alone is enough. A tensor is the top layer's code."""
        codes = self._codes(codes)
        if not self.skip and self.site(0) in codes:
            z = codes[self.site(0)]
        else:
            complete = self.complete(codes)
            z = self._decoder_input([complete[name] for name in self.layers()])
        return self.likelihood.mean(self.decoder(z))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``encoder``: the guide's alone; ``decoder``: the model's alone (prior, conditionals,
        decoder, likelihood); ``shared``: the ladder's generative conditionals (its guide uses them
        too) and the guide's parameters the prior's density reads (``vamp``: the top layer's q at
        its pseudo-inputs)."""
        guide = [self.trunk, *self.ups, *self.heads] if self.ladder else [self.top, self.trunk, self.lower]
        model = [self.prior, self.conditionals, self.decoder, self.likelihood]
        shared = {id(p) for p in self.conditionals.parameters()} if self.ladder else set()
        shared |= self._read_by_prior([p for m in guide for p in m.parameters()])
        in_guide = {id(p) for m in guide for p in m.parameters()} | shared
        groups = {
            "encoder": _unique(p for m in guide for p in m.parameters() if id(p) not in shared),
            "decoder": _unique(p for m in model for p in m.parameters() if id(p) not in in_guide),
            "shared": _unique(p for p in self.parameters() if id(p) in shared),
        }
        return {name: ps for name, ps in groups.items() if ps or name != "shared"}

    def _read_by_prior(self, params: list[nn.Parameter]) -> set[int]:
        """The ids of those of ``params`` that the prior's density depends on (one evaluation at 0)."""
        params = [p for p in params if p.requires_grad]
        with torch.enable_grad():
            p = self.prior(1)
            like = next(self.decoder.parameters(), None)
            z = torch.zeros(
                1,
                self.dims[-1],
                dtype=like.dtype if like is not None else None,
                device=like.device if like is not None else None,
            )
            log_p = p.log_prob(z).sum()
            if not params or not log_p.requires_grad:
                return set()
            grads = torch.autograd.grad(log_p, params, allow_unused=True)
        return {id(q) for q, g in zip(params, grads) if g is not None}


def _unique(params) -> list[nn.Parameter]:
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out
