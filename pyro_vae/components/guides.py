r"""Guides q(z | x): amortized encoders; ``forward(x)`` with x (B, D) returns a reparameterised
distribution with batch (B,) and event (L,); ``point(x)`` returns one representative code per
image (for reconstructions and latent plots).

Every guide is built as ``cls(data_dim=D, latent_dim=L, cfg=ModelConfig, network=Network,
settings=Settings)`` (``network``: the ``model.network`` whose ``encoder(D)`` gives the trunk;
``settings``: the class's own ``Settings`` from its ``[model.NAME]`` table, if it has one).

References:
    Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling, *Improved Variational Inference
    with Inverse Autoregressive Flow*, NeurIPS 2016 (``iaf``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn

from pyro_vae.registry import Registry

GUIDES: Registry = Registry("guide", config_key="model.guide")


MIN_SCALE = 1e-5
MAX_LOG_VAR = 30.0  # |log sigma^2| bound of a log_var_range (scales from 3e-7 to 3e6)


def scale_of(raw: torch.Tensor, log_var_range: tuple[float, float] | None = None) -> torch.Tensor:
    """A Gaussian's scale from a network's raw output: ``softplus(raw) + 1e-5`` (the default, no
    overflow of exp), or, with ``log_var_range = (lo, hi)``, the raw output read as a log-variance
    clamped to [lo, hi], ``exp(clamp(raw, lo, hi) / 2)`` (Tomczak & Welling's Hardtanh(-6, 2): scales
    between 0.05 and 2.7)."""
    if log_var_range is None:
        return F.softplus(raw) + MIN_SCALE
    return torch.exp(0.5 * raw.clamp(*log_var_range))


def log_var_range(cfg) -> tuple[float, float] | None:
    """``model.diag_normal.log_var_range`` of the model config ``cfg`` as ``(lo, hi)``, None where
    unset: the scale of every Gaussian a structure's guide and conditional layers compute from a
    network (:func:`scale_of`)."""
    return DiagNormal.Settings.range_of(GUIDES.settings("diag_normal", cfg.settings))


@GUIDES.register("diag_normal")
class DiagNormal(nn.Module):
    """q(z | x) = N(loc(x), diag(scale(x)^2)), the network's encoder trunk with one fused head for
    loc and scale.

    ``scale = softplus(.) + 1e-5`` keeps the scale positive without the overflow of exp; with
    ``model.diag_normal.log_var_range = [lo, hi]`` the head gives a log-variance clamped to that
    range instead (Tomczak & Welling's [-6, 2]; :func:`scale_of`), in every Gaussian layer of the
    structure (the hierarchical conditionals, q(z | x, y) of ``semi_supervised`` and ``mixture``).
    """

    @dataclass(frozen=True)
    class Settings:
        log_var_range: tuple[float, ...] = ()  # () = softplus(.) + 1e-5; [lo, hi] = exp(clamp(., lo, hi) / 2)

        def __post_init__(self) -> None:
            r = tuple(self.log_var_range)
            if r and (
                len(r) != 2
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in r)
                or not -MAX_LOG_VAR <= r[0] < r[1] <= MAX_LOG_VAR
            ):
                raise ValueError(
                    f"log_var_range = {list(r)} must be [] (softplus scales) or two numbers lo < hi between "
                    f"{-MAX_LOG_VAR:g} and {MAX_LOG_VAR:g}, the log-variance's clamp (Tomczak & Welling: [-6, 2])"
                )

        @staticmethod
        def range_of(settings: DiagNormal.Settings | None) -> tuple[float, float] | None:
            """``(lo, hi)`` as floats, None where unset (or no settings)."""
            r = tuple(settings.log_var_range) if settings is not None else ()
            return (float(r[0]), float(r[1])) if r else None

    def __init__(self, data_dim: int, latent_dim: int, network, settings: Settings | None = None, **_) -> None:
        super().__init__()
        self.trunk, self.features = network.encoder(data_dim)
        self.head = nn.Linear(self.features, 2 * latent_dim)
        self.log_var_range = self.Settings.range_of(settings)

    def loc_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = self.head(self.trunk(x)).chunk(2, dim=-1)
        return loc, scale_of(raw, self.log_var_range)

    def forward(self, x: torch.Tensor) -> dist.Distribution:
        loc, scale = self.loc_scale(x)
        return dist.Normal(loc, scale).to_event(1)

    def point(self, x: torch.Tensor) -> torch.Tensor:
        return self.loc_scale(x)[0]


@GUIDES.register("iaf")
class IAF(nn.Module):
    r"""q(z | x): a diagonal Gaussian pushed through ``model.iaf.steps`` inverse autoregressive
    flow steps (Kingma et al., 2016), each a MADE conditioned on the encoder's features h(x):

    .. math:: z_0 \sim \mathcal N(\mu(x), \sigma(x)^2),\quad
              z_t = \mathrm{sigmoid}(s_t) \odot z_{t-1} + (1 - \mathrm{sigmoid}(s_t)) \odot m_t,\quad
              (m_t, s_t) = \mathrm{MADE}_t(z_{t-1}, h(x)).

    (Pyro's ``ConditionalAffineAutoregressive(stable=True)``, with a different variable order in
    every step.) Sampling and the density of the guide's own samples cost one MADE pass per step;
    the density of any *other* z needs L passes, which is why ``vamp`` rejects this guide.
    """

    @dataclass(frozen=True)
    class Settings:
        steps: int = 2  # flow steps on top of the Gaussian

        def __post_init__(self) -> None:
            if self.steps < 1:
                raise ValueError(f"steps = {self.steps} must be at least 1")

    def __init__(self, data_dim: int, latent_dim: int, network, settings: Settings, **_) -> None:
        super().__init__()
        self.base = DiagNormal(data_dim, latent_dim, network)
        context = self.base.features
        width = max(0 if isinstance(self.base.trunk, nn.Identity) else context, 2 * latent_dim)
        self.steps = nn.ModuleList(
            ConditionalAffineAutoregressive(ConditionalAutoRegressiveNN(latent_dim, context, [width]), stable=True)
            for _ in range(settings.steps)
        )

    def _base_and_transforms(self, x: torch.Tensor):
        h = self.base.trunk(x)
        loc, raw = self.base.head(h).chunk(2, dim=-1)
        base = dist.Normal(loc, scale_of(raw, self.base.log_var_range)).to_event(1)
        return base, [step.condition(h) for step in self.steps]

    def forward(self, x: torch.Tensor) -> dist.Distribution:
        base, transforms = self._base_and_transforms(x)
        return dist.TransformedDistribution(base, transforms)

    def point(self, x: torch.Tensor) -> torch.Tensor:
        base, transforms = self._base_and_transforms(x)
        z = base.mean
        for t in transforms:
            z = t(z)
        return z
